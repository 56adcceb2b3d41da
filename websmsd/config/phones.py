"""[phones]: the PBX's own phones (PJSIP endpoints) and their numbers.

    [phones]
    number [john.doe] = +12025550160
    number [jane.doe] = +12025550183
    number [desk]     = +12025550160    ; two endpoints may share a number: both get it
    notify [john.doe] = all             ; none (default) | failed | all

An SMS that an endpoint writes (Asterisk's MESSAGE(from) is its SIP URI) goes out with
the endpoint's first number as sender, through the interface that owns that number; an
SMS to a number goes to every endpoint that has it.  `notify`: whether the endpoint gets
a notice (a short SIP MESSAGE) when an SMS it wrote is delivered or fails for good.

Numbers are compared by their digits: +12025550160, 12025550160 and 0012025550160 are
one number (ITSPs write the To of a webhook either way).
"""

from __future__ import annotations

from dataclasses import field
from typing import Dict, List, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys, _read_interfaces
from websmsd.config.values import _choice, _numbers
from websmsd.record import frozen

NOTIFY = ("none", "failed", "all")


@frozen
class Phone:
    name: str  # the PJSIP endpoint
    number: Tuple[str, ...] = ()
    notify: str = "none"
    # Which fields websms.conf (or a preset) gave, for check-config: ((name, origin), ...).
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)


@frozen
class PhonesSettings:
    interfaces: Tuple[Phone, ...] = ()  # one per endpoint (named like interfaces)

    def number_of(self, endpoint: str) -> Optional[str]:
        """The number an endpoint writes from (its first), or None."""
        for phone in self.interfaces:
            if phone.name == endpoint and phone.number:
                return phone.number[0]
        return None

    def endpoints_of(self, number: str) -> List[str]:
        """Every endpoint that has `number`, in file order."""
        digits = _digits(number)
        if not digits:
            return []
        return [p.name for p in self.interfaces if any(_digits(n) == digits for n in p.number)]

    def phone(self, endpoint: str) -> Optional[Phone]:
        return next((p for p in self.interfaces if p.name == endpoint), None)

    def numbers(self) -> Dict[str, str]:
        """{endpoint: the number it writes from}."""
        return {p.name: p.number[0] for p in self.interfaces if p.number}


def _digits(number: str) -> str:
    """The digits of a number as compared: its international form without "+" or "00"
    (+46 70-123 45 67, 0046701234567 and 46701234567 alike)."""
    digits = "".join(c for c in number if c.isdigit())
    if number.lstrip().startswith("00") and not number.lstrip().startswith("+"):
        digits = digits[2:]
    return digits


NAME = "phones"
KEYS = _keys(
    _Key("number", _numbers),
    _Key("notify", _choice(*NOTIFY)),
)


def read(section: Optional[IniSection], context: _Context) -> PhonesSettings:
    if section is None:
        return PhonesSettings()
    phones = _read_interfaces(section, context, KEYS, Phone)
    return PhonesSettings(tuple(p for p in phones if p.name))
