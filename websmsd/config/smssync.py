"""[smssync]: Android phones running SMSsync (Ushahidi) that call websmsd.

    [smssync]
    url_path [phone1] = /smssync/phone1   ; the Sync URL path, on the webhook listener
    secret   [phone1] = s3cr3t
    number   [phone1] = +254700000001     ; the phone's own number: MESSAGE(to) of its SMS
    poll     [phone1] = 5m                ; the app's task-check interval (default 5m)
    results_api [phone1] = auto           ; the app's "Message Results API": yes, no, auto
    instant_reply [phone1] = no           ; the app's "Get reply from server" (default off)
    user     [phone1] = gw                ; Basic auth, when the Sync URL has user:pass@
    password [phone1] = pa$s

The phone posts the SMS it receives to http(s)://<this machine><url_path> and fetches
the SMS to send from the same URL (``?task=send``).  This module also holds what the
three Android sections share (`read_phones`): interfaces named by [index], a url_path
per phone (default /<section>/<name>), the phone's own number required.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import (_Context, _interface_names, _Key, _keys, _read_section,
                                   _values_for)
from websmsd.config.values import Note, _boolean, _duration, _numbers, _optional_text, _url_path
from websmsd.record import frozen

NAME = "smssync"
KIND = "smssync"


@frozen
class SMSsyncPhone:
    name: str
    number: Tuple[str, ...] = ()
    url_path: str = ""
    secret: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None
    # How often the phone checks for tasks (the app's "task check" interval): a phone
    # that makes no request for three of these is silent, its route down.
    poll: float = 300.0
    # The app's "Message Results API" (the phone confirms with task=sent what it sends):
    # yes, no, or auto (learned from the phone's requests).
    results_api: str = "auto"
    # The app's "Get reply from server": SMS due on this route ride in the answer to a
    # posted SMS.
    instant_reply: bool = False

    @property
    def own_number(self) -> str:
        return compact_number(self.number[0]) if self.number else ""


@frozen
class SMSsyncSettings:
    interfaces: Tuple[SMSsyncPhone, ...] = ()


def compact_number(number: str) -> str:
    """A configured number as it goes into a message: + and digits only."""
    return "".join(c for c in number if c.isdigit() or c == "+")


def _phone_path(text: str, note: Note) -> str:
    _url_path(text, note)
    if "?" in text or "#" in text:
        raise ValueError(f"{text!r}: a path only, without '?' or '#' (the phone adds its own query)")
    return text


def _yes_no_auto(text: str, note: Note) -> str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return "yes" if _boolean(text, note) else "no"
    except ValueError:
        raise ValueError(f"{text!r} is not yes, no or auto") from None


def _user(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    _optional_text(text, note)
    if any(c in text for c in "#/?@:"):
        # Basic auth splits at the first ':'; the apps read user:pass@ from a URL.
        raise ValueError("a user name here cannot contain # / ? @ or :")
    return text


_NUMBER_KEY = _Key("number", _numbers)
_PATH_KEY = _Key("url_path", _phone_path)
_USER_KEY = _Key("user", _user)
_PASSWORD_KEY = _Key("password", _optional_text)

KEYS = _keys(
    _PATH_KEY,
    _Key("secret", _optional_text),
    _NUMBER_KEY,
    _USER_KEY,
    _PASSWORD_KEY,
    _Key("poll", _duration),
    _Key("results_api", _yes_no_auto, reads_booleans=True),
    _Key("instant_reply", _boolean, reads_booleans=True),
)


def _label(key: str, name: str) -> str:
    return f"{key}[{name}]" if name else key


def read_phones(section: IniSection, context: _Context, keys: Mapping[str, _Key], target: type,
                kind: str, required: Mapping[str, str], paired: bool = True) -> tuple:
    """One `target` per phone (the [index] names its keys use; none: one phone named "").

    `required`: key -> why it is needed, refused with the line where the phone begins.
    A `url_path` not given is /<kind>/<name>; two phones of the section may not share one.
    With `paired`, a `user` needs a `password` and the reverse.  Returns (phone, line where it begins)."""
    settings = _read_section(section, context, keys)
    names: Dict[str, int] = _interface_names(settings)
    if not names:
        if not settings:
            return ()  # an empty section: no phone
        names = {"": min(r.line for s in settings.values() for r in s.reads())}
    fields = {f.name for f in dataclasses.fields(target)}
    paths: Dict[str, Tuple[str, int]] = {}
    phones: List[Any] = []
    for name, line in names.items():
        values = _values_for(settings, name, target)
        for key, why in required.items():
            if not values.get(key):
                raise context.error(line, _label(key, name), f"is required: {why}")

        def where(key: str) -> Tuple[int, str]:
            read = settings[key].for_interface(name) if key in settings else None
            return (read.line, read.label) if read is not None else (line, _label(key, name))

        if paired and bool(values.get("user")) != bool(values.get("password")):
            missing = "password" if values.get("user") else "user"
            given = "user" if missing == "password" else "password"
            raise context.error(*where(given), f"needs {missing} too (Basic auth takes both)")
        if "url_path" in fields:
            path = values.get("url_path") or (f"/{kind}/{name}" if name else f"/{kind}")
            values["url_path"] = path
            if path in paths:
                other, other_line = paths[path]
                raise context.error(*where("url_path"),
                                    f"{path} is also the path of {other!r} (line {other_line}):"
                                    " each phone needs its own")
            paths[path] = (name, where("url_path")[0])
        number = values.get("number") or ()
        if number and not compact_number(number[0]).lstrip("+"):
            raise context.error(*where("number"), "is not a phone number")
        phones.append((target(name=name, **values), line))
    return tuple(phones)


def read(section: Optional[IniSection], context: _Context) -> SMSsyncSettings:
    if section is None:
        return SMSsyncSettings()
    phones = read_phones(section, context, KEYS, SMSsyncPhone, KIND, {
        "number": "the phone's own number, the To of every SMS it receives",
    })
    for phone, line in phones:
        if not phone.secret:
            context.warn(line, _label("secret", phone.name),
                         "no secret: anyone who finds the Sync URL can post SMS to the PBX;"
                         " set one here and in the app")
    return SMSsyncSettings(tuple(phone for phone, _ in phones))


def interfaces(settings: SMSsyncSettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    return [(p.name, KIND, p.number, False) for p in settings.interfaces]
