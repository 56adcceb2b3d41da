"""[web]: who may read and answer SMS in the browser, and from which own numbers.

    [web]
    password [alice] = scrypt$16384$8$1$<salt>$<key>  ; from `websms passwd alice`
    numbers  [alice] = +12025550160, +12025550183   ; own numbers alice reads and answers from
    phones   [alice] = john.doe, desk               ; ...and the numbers of these [phones] endpoints
    password [bob]   = scrypt$...
    all      [bob]   = yes                          ; every own number, as the owner sees them
    session = 12h                                   ; how long a login lasts (default 12h)

Users are named like interfaces (`[index]`).  The owner's own access (loopback, Basic,
the status token) is not a user here and sees everything.  A password is stored as an
scrypt hash, never in clear: a value that is not such a hash is refused, so a password
typed into the file by hand cannot slip through.  Pure Python.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import field
from typing import Dict, List, NamedTuple, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.phones import PhonesSettings
from websmsd.config.reader import _Context, _interface_names, _Key, _keys, _read_section
from websmsd.config.values import _boolean, _duration, _numbers, _single_line
from websmsd.record import frozen

NAME = "web"

DEFAULT_SESSION = 12 * 3600.0

USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

# What a stored hash may ask of the verifier.  scrypt needs 128 * r * n bytes: a hash
# written (or tampered with) to need a gigabyte would take the Raspberry Pi down at the
# first login, so the file is refused instead.
MAX_N = 2 ** 17
MIN_N = 2 ** 12  # weaker than this, a copy of websms.conf is cheap to crack
MAX_MEMORY = 64 * 1024 * 1024  # 128 * r * n
MAX_WORK = 2 ** 21  # p * r * n: 16 times the default, some seconds on a Pi
MAX_R = 32
MAX_P = 16
SALT_BYTES = (8, 64)
KEY_BYTES = (16, 64)

_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class ScryptHash(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @property
    def memory(self) -> int:
        return 128 * self.r * self.n


def parse_password_hash(stored: str) -> ScryptHash:
    """The parts of `scrypt$n$r$p$salt$key` (salt and key in base64, padding optional),
    or ValueError saying what is wrong without repeating the value (it may be a clear
    password)."""
    if not isinstance(stored, str):
        raise ValueError("is not a password hash")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("is not a password hash (scrypt$n$r$p$salt$key)")
    if not all(_DECIMAL.fullmatch(part) for part in parts[1:4]):
        raise ValueError("scrypt parameters n, r and p must be whole numbers of 1 or more")
    n, r, p = (int(part) for part in parts[1:4])
    if n & (n - 1):
        raise ValueError(f"scrypt n = {n} is not a power of 2")
    if n > MAX_N:
        raise ValueError(f"scrypt n = {n} is more than {MAX_N}: verifying would need too much"
                         " memory on a small machine")
    if n < MIN_N:
        raise ValueError(f"scrypt n = {n} is less than {MIN_N}: too weak")
    if r > MAX_R or p > MAX_P:
        raise ValueError(f"scrypt r = {r}, p = {p}: r may be at most {MAX_R}, p at most {MAX_P}")
    if 128 * r * n > MAX_MEMORY:
        raise ValueError(f"scrypt n = {n} with r = {r} needs {128 * r * n // 2 ** 20} MiB to"
                         f" verify, more than {MAX_MEMORY // 2 ** 20} MiB")
    if p * r * n > MAX_WORK:
        raise ValueError(f"scrypt n = {n}, r = {r}, p = {p} is too slow to verify")
    salt = _base64(parts[4], "salt", SALT_BYTES)
    key = _base64(parts[5], "key", KEY_BYTES)
    return ScryptHash(n, r, p, salt, key)


def _base64(text: str, what: str, sizes: Tuple[int, int]) -> bytes:
    if not _BASE64.fullmatch(text):
        raise ValueError(f"the {what} of the hash is not base64")
    text = text.rstrip("=")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} of the hash is not base64") from None
    if not sizes[0] <= len(data) <= sizes[1]:
        raise ValueError(f"the {what} of the hash has {len(data)} bytes, not {sizes[0]} to"
                         f" {sizes[1]}")
    return data


def encode_password_hash(h: ScryptHash) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii").rstrip("=")

    return f"scrypt${h.n}${h.r}${h.p}${b64(h.salt)}${b64(h.key)}"


@frozen
class WebUser:
    name: str
    password_hash: str = field(default="", repr=False)  # never in a log line or traceback
    numbers: Tuple[str, ...] = ()  # own numbers, as written
    phones: Tuple[str, ...] = ()  # [phones] endpoints whose numbers the user has too
    all: bool = False  # every own number, as the owner sees them


@frozen
class WebSettings:
    users: Tuple[WebUser, ...] = ()
    session: float = DEFAULT_SESSION  # seconds a login lasts

    def user(self, name: str) -> Optional[WebUser]:
        return next((u for u in self.users if u.name == name), None)


def _text(text: str, note) -> str:  # type: ignore[no-untyped-def]
    return _single_line(text)


def _names(text: str, note) -> Tuple[str, ...]:  # type: ignore[no-untyped-def]
    return tuple(n.strip() for n in _single_line(text).split(",") if n.strip())


_NOT_INDEXED = "cannot be indexed: it is one setting for every user"

KEYS = _keys(
    _Key("password", _text),
    _Key("numbers", _numbers),
    _Key("phones", _names),
    _Key("all", _boolean, reads_booleans=True),
    _Key("session", _duration, (), _NOT_INDEXED),
)

_PER_USER = ("password", "numbers", "phones", "all")


def read(section: Optional[IniSection], context: _Context,
         phones: Optional[PhonesSettings] = None) -> WebSettings:
    """`phones`: the [phones] section, whose endpoints `phones [user]` names."""
    if section is None:
        return WebSettings()
    phones = phones or PhonesSettings()
    settings = _read_section(section, context, KEYS)
    for name in _PER_USER:
        setting = settings.get(name)
        if setting is not None and setting.plain is not None:
            raise context.error(setting.plain.line, setting.plain.label,
                                f"{name} belongs to a user: write {name} [NAME] = ...")
    users: List[WebUser] = []
    for name, line in _interface_names(settings).items():
        reads = {key: settings[key].indexed[name] for key in _PER_USER
                 if key in settings and name in (settings[key].indexed or {})}
        label = next(iter(reads.values())).label if reads else name
        if not USER_NAME.fullmatch(name):
            raise context.error(line, label, f"{name!r} is not a user name: 1 to 64 letters,"
                                " digits and _ . @ -")
        if name == "owner":
            raise context.error(line, label, "'owner' is the name of the owner's own access"
                                " (loopback, Basic, token): choose another user name")
        if "password" not in reads:
            raise context.error(line, label, f"user {name!r} has no password: run websms"
                                f" passwd {name} and add the line it prints")
        password = reads["password"]
        try:
            parse_password_hash(password.value)
        except ValueError as exc:
            raise context.error(password.line, password.label,
                                f"{exc}; a password is never stored in clear: run websms passwd"
                                f" {name} and paste the line it prints") from None
        user = WebUser(
            name=name, password_hash=password.value,
            numbers=reads["numbers"].value if "numbers" in reads else (),
            phones=reads["phones"].value if "phones" in reads else (),
            all=reads["all"].value if "all" in reads else False,
        )
        if "phones" in reads:
            _check_phones(reads["phones"].value, reads["phones"].line, reads["phones"].label,
                          phones, context)
        if not (user.all or user.numbers or user.phones):
            context.warn(line, label, f"user {name!r} has no numbers, phones or all = yes:"
                         " they can log in but see no conversation")
        elif not user.all and not user_numbers(user, phones):
            context.warn(line, label, f"user {name!r}: the phones named have no number:"
                         " they can log in but see no conversation")
        users.append(user)
    session = settings["session"].plain.value if "session" in settings else DEFAULT_SESSION
    return WebSettings(tuple(users), session)


def _check_phones(names: Tuple[str, ...], line: int, label: str, phones: PhonesSettings,
                  context: _Context) -> None:
    for endpoint in names:
        if phones.phone(endpoint) is None:
            known = ", ".join(repr(p.name) for p in phones.interfaces) or "none"
            raise context.error(line, label, f"no endpoint named {endpoint!r} in [phones]"
                                f" (endpoints: {known})")


def user_numbers(user: WebUser, phones: PhonesSettings) -> Tuple[str, ...]:
    """The own numbers a user reads and answers from, as written: `numbers`, then the
    numbers of each of `phones`, in order, repeats dropped (`all` is not counted)."""
    found: Dict[str, None] = dict.fromkeys(user.numbers)
    for endpoint in user.phones:
        phone = phones.phone(endpoint)
        found.update(dict.fromkeys(phone.number if phone is not None else ()))
    return tuple(found)


def report_lines(web: WebSettings, phones: PhonesSettings) -> List[str]:
    """check-config's [web] part: users and what they see; never a hash."""
    lines = []
    for user in web.users:
        lines.append(f"    user {user.name}: password set (scrypt hash)")
        if user.all:
            lines.append("        sees every own number (all = yes)")
        if user.numbers:
            lines.append(f"        numbers = {', '.join(user.numbers)}")
        for endpoint in user.phones:
            phone = phones.phone(endpoint)
            numbers = ", ".join(phone.number) if phone and phone.number else "(no number)"
            lines.append(f"        phone {endpoint}: {numbers}")
        if not (user.all or user_numbers(user, phones)):
            lines.append("        sees nothing (no numbers)")
    lines.append(f"    session = {web.session:g}s")
    return lines
