"""[smsgateway]: Android phones running the "SMS Gateway" app (medic/CHT gateway, and
the SysCo/multiOTP fork) that poll websmsd.

    [smsgateway]
    url_path [phone2] = /smsgateway/phone2   ; on the webhook listener
    user     [phone2] = gw                   ; as in the app's URL http://gw:pa$s@host/...
    password [phone2] = pa$s
    number   [phone2] = +254700000002        ; the phone's own number: MESSAGE(to) of its SMS
    poll     [phone2] = 1m                   ; silent after three of these (default 1m)

The app posts to one URL every 30 s or so (Android may stretch that), with the SMS it
received and the status of those it sends; the answer lists the SMS it is to send.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys
from websmsd.config.smssync import (_NUMBER_KEY, _PASSWORD_KEY, _PATH_KEY, _USER_KEY, _label,
                                    compact_number, read_phones)
from websmsd.config.values import _duration
from websmsd.record import frozen

NAME = "smsgateway"
KIND = "smsgateway"


@frozen
class SMSGatewayPhone:
    name: str
    number: Tuple[str, ...] = ()
    url_path: str = ""
    user: Optional[str] = None
    password: Optional[str] = None
    # The app polls every 30 s, and at once when an SMS arrives; Android's battery saving
    # may stretch that.  A phone that makes no request for three of these is silent.
    poll: float = 60.0

    @property
    def own_number(self) -> str:
        return compact_number(self.number[0]) if self.number else ""


@frozen
class SMSGatewaySettings:
    interfaces: Tuple[SMSGatewayPhone, ...] = ()


KEYS = _keys(
    _PATH_KEY,
    _USER_KEY,
    _PASSWORD_KEY,
    _NUMBER_KEY,
    _Key("poll", _duration),
)


def read(section: Optional[IniSection], context: _Context) -> SMSGatewaySettings:
    if section is None:
        return SMSGatewaySettings()
    phones = read_phones(section, context, KEYS, SMSGatewayPhone, KIND, {
        "number": "the phone's own number, the To of every SMS it receives",
    })
    for phone, line in phones:
        if not phone.user:
            context.warn(line, _label("user", phone.name),
                         "no user and password: anyone who finds the URL can post SMS to the"
                         " PBX; set them here and in the app's URL (http://user:pass@host/...)")
    return SMSGatewaySettings(tuple(phone for phone, _ in phones))


def interfaces(settings: SMSGatewaySettings) -> List[Tuple[str, str, Tuple[str, ...], bool]]:
    return [(p.name, KIND, p.number, False) for p in settings.interfaces]
