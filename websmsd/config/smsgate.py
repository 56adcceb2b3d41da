"""[smsgate]: Android phones running "SMS Gateway for Android" (capcom6, SMSGate) in its
Local Server mode, which websmsd polls.

    [smsgate]
    url      [phone3] = http://192.168.1.50:8080   ; the app's local server
    user     [phone3] = sms                        ; default sms, as in the app
    password [phone3] = secret
    number   [phone3] = +254700000003              ; the phone's own number: MESSAGE(to)
    poll     [phone3] = 5                          ; seconds between polls (default 10)
    timeout  [phone3] = 30                         ; seconds for one request (default 30)
    sim      [phone3] = 1                          ; which SIM sends (default: the app's)
    delivery_report [phone3] = yes                 ; ask for delivery reports (default yes)
    skip_validation [phone3] = no                  ; send to numbers the app deems invalid

Here the phone is the server: websmsd posts each SMS to it, asks for the state of what it
sent, and reads the phone's inbox for received SMS, every `poll` seconds.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys
from websmsd.config.smssync import _NUMBER_KEY, compact_number, read_phones
from websmsd.config.values import (Note, _boolean, _duration, _optional_text, _positive_integer,
                                   _single_line)
from websmsd.record import frozen

NAME = "smsgate"
KIND = "smsgate"


@frozen
class SMSGatePhone:
    name: str
    url: str = ""
    user: str = "sms"
    password: Optional[str] = None
    number: Tuple[str, ...] = ()
    poll: float = 10.0
    timeout: float = 30.0
    sim: Optional[int] = None
    delivery_report: bool = True
    skip_validation: bool = False

    @property
    def own_number(self) -> str:
        return compact_number(self.number[0]) if self.number else ""


@frozen
class SMSGateSettings:
    interfaces: Tuple[SMSGatePhone, ...] = ()


_URL = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[^\s?#]*)?")


def _phone_url(text: str, note: Note) -> str:
    _single_line(text)
    if "@" in text.partition("//")[2].partition("/")[0]:
        raise ValueError("credentials belong in user and password, not in the url")
    match = _URL.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not http://host:port (the app's local server address)")
    if match.group(3) and not 1 <= int(match.group(3)[1:]) <= 65535:
        raise ValueError(f"{match.group(3)[1:]!r} is not a TCP port (1-65535)")
    if not match.group(3):
        note("no port: the app's local server listens on 8080 unless changed")
    return text.rstrip("/")


def _user(text: str, note: Note) -> str:
    if not text or ":" in text:
        raise ValueError("a user name, not empty and without ':'")
    return _single_line(text)


KEYS = _keys(
    _Key("url", _phone_url),
    _Key("user", _user),
    _Key("password", _optional_text),
    _NUMBER_KEY,
    _Key("poll", _duration),
    _Key("timeout", _duration),
    _Key("sim", _positive_integer),
    _Key("delivery_report", _boolean, reads_booleans=True),
    _Key("skip_validation", _boolean, reads_booleans=True),
)


def read(section: Optional[IniSection], context: _Context) -> SMSGateSettings:
    if section is None:
        return SMSGateSettings()
    phones = read_phones(section, context, KEYS, SMSGatePhone, KIND, {
        "url": "the app's local server, e.g. http://192.168.1.50:8080",
        "password": "the password the app shows under Local Server",
        "number": "the phone's own number, the To of every SMS it receives",
    }, paired=False)
    return SMSGateSettings(tuple(phone for phone, _ in phones))


def interfaces(settings: SMSGateSettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    return [(p.name, KIND, p.number, False) for p in settings.interfaces]
