"""HTTP Basic credentials as the Android apps send them.  Pure.

- SMSsync takes `user:pass@` from its Sync URL, percent-decodes it (java.net.URI) and
  sends it as UTF-8.
- The SMS Gateway app (medic/CHT, multiOTP fork) percent-encodes the *password* with
  Android's `Uri.encode` (UTF-8, everything but `A-Z a-z 0-9 _ - ! . ~ ' ( ) *`) and never
  decodes it again, then encodes `user:password` as ISO-8859-1.  So a password `pa$s`
  arrives as `pa%24s`, and `pä` as `p%C3%A4`.  `check_basic(..., percent_encoded=True)`
  accepts the password as sent and percent-decoded (UTF-8).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Optional, Tuple, Union
from urllib.parse import unquote_to_bytes

# Longer than any Authorization header a phone sends; a cap on work for a forged one.
MAX_HEADER = 4096

Header = Union[bytes, str, None]


def parse_basic(header: Header, *, charset: str = "utf-8") -> Optional[Tuple[str, str]]:
    """(user, password) from an `Authorization: Basic ...` value, or None.

    The credentials are split at the first `:` (a password may contain `:`).  None for
    another scheme, bad base64, no `:`, or bytes that are not `charset`.
    """
    if header is None:
        return None
    if isinstance(header, str):
        try:
            header = header.encode("latin-1")
        except UnicodeEncodeError:
            return None
    if len(header) > MAX_HEADER:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    token = token.strip()
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return None
    user, colon, password = text.partition(":")
    if not colon:
        return None
    return user, password


def _same(a: str, b: str) -> bool:
    # Encoded with surrogateescape so that no str can make the comparison raise.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def check_basic(
    header: Header,
    user: str,
    password: str,
    *,
    charset: str = "utf-8",
    percent_encoded: bool = False,
) -> bool:
    """True when the header carries `user` and `password`.

    Every comparison runs whatever the outcome of the others (constant time in the
    secrets).  With `percent_encoded`, the received password also matches after
    percent-decoding (UTF-8): what the SMS Gateway app sends.
    """
    parsed = parse_basic(header, charset=charset)
    if parsed is None:
        # Still compare, so that a missing header takes as long as a wrong one.
        _same(user, user + "\x00")
        return False
    got_user, got_password = parsed
    user_ok = _same(got_user, user)
    password_ok = _same(got_password, password)
    if percent_encoded:
        try:
            decoded = unquote_to_bytes(got_password).decode("utf-8")
        except UnicodeDecodeError:
            decoded = got_password
        password_ok = _same(decoded, password) | password_ok
    return user_ok & password_ok


def basic_header(user: str, password: str, *, charset: str = "utf-8") -> str:
    """The `Authorization` value for a client (websmsd calling an SMSGate phone)."""
    token = base64.b64encode(f"{user}:{password}".encode(charset)).decode("ascii")
    return f"Basic {token}"
