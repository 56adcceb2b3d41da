"""An ITSP's answer, judged: sent, retry, or failed for good; resp_check and resp_id.

Success is a 2xx status that passes resp_check (`key=value` searched in the JSON answer,
or `/regex/` on the body); 5xx, 408 and 429 are transient; the other 4xx, redirects and
a failed resp_check are permanent (the ITSP answered: sending again could send twice).
Pure Python: no Twisted.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, List, Optional, Sequence, Tuple, Union

from websmsd.channel import Outcome
from websmsd.config.websms import OutboundInterface
from websmsd.itsp.phpcompat import _WS, to_bytes, urlencode
from websmsd.itsp.request import _INDEX, _php_empty, safe_url
from websmsd.text import escape_controls
from websmsd.record import frozen


EXCERPT_CHARS = 120


def secrets_of(iface: OutboundInterface) -> List[str]:
    """The texts that must never appear in a reason or a log line."""
    secrets: List[str] = []
    secret = iface.auth_secret
    if secret:
        secrets.append(secret)
        # As it may come back: form- or URL-encoded, or escaped in a JSON string.
        escaped = (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])
        for encoded in (urlencode(secret), *escaped):
            if encoded != secret and encoded not in secrets:
                secrets.append(encoded)
        if iface.auth_user is not None:
            secrets.append(
                base64.b64encode(to_bytes(f"{iface.auth_user}:{secret}")).decode("ascii")
            )
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def excerpt(data: Union[bytes, str], secrets: Sequence[str] = (), limit: int = EXCERPT_CHARS) -> str:
    """A short, single-line, escaped view of a response body for a reason or log line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = redact(text.strip(), secrets)
    shown = escape_controls(text[: limit * 2])
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return shown


class _JSONNumber(str):
    """A JSON number kept as its text: `1.0` stays "1.0", `1e3` stays "1e3"."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_MISSING = object()


def _last_leaf(document: Any, key: str) -> Any:
    """The value of the last leaf called `key`, at any depth (depth first, in document
    order), like PHP's array_walk_recursive: objects and arrays are walked into, only
    scalars are leaves, and array positions are not keys.  _MISSING if there is none."""
    found: Any = _MISSING
    stack: List[Any] = [iter([(None, document)])]
    while stack:
        try:
            name, value = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(value, dict):
            stack.append(iter(value.items()))
        elif isinstance(value, list):
            stack.append(((None, item) for item in value))
        elif name == key:
            found = value
    return found


def _json_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _JSONNumber):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


@frozen
class _Verdict:
    ok: bool
    detail: str


_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}


_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _split_delimited(check: str) -> Optional[Tuple[str, str]]:
    """(pattern, modifiers) of a PCRE-style `/pattern/flags`, or None if it is not one.

    As preg_match(): leading whitespace is skipped; the delimiter is any character but
    a letter, digit, backslash or NUL; (), [], {} and <> pair up; a backslash escapes
    the closing delimiter.
    """
    text = check.lstrip(_WS)
    if not text:
        return None
    start = text[0]
    if start.isalnum() or start in "\\\x00":
        return None
    end = _BRACKETS.get(start, start)
    depth = 1
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == end and end != start:
            depth -= 1
        elif ch == start and end != start:
            depth += 1
        elif ch == end:
            depth = 0
        if depth == 0:
            return text[1:i], text[i + 1 :]
        i += 1
    return None


def _regex_check(pattern: str, modifiers: str, body: bytes) -> _Verdict:
    flags = 0
    for letter in modifiers:
        if letter in " \n\r":
            continue
        if letter not in _REGEX_FLAGS:
            return _Verdict(False, f"resp_check modifier {letter!r} is not supported (use i, m, s, x)")
        flags |= _REGEX_FLAGS[letter]
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, ValueError, OverflowError, RecursionError) as e:
        return _Verdict(False, f"resp_check is not a usable regular expression ({e})")
    text = body.decode("utf-8", "replace")
    try:
        matched = compiled.search(text) is not None
    except (RecursionError, MemoryError) as e:  # pragma: no cover - defensive
        return _Verdict(False, f"resp_check regular expression failed ({type(e).__name__})")
    return _Verdict(matched, "matched" if matched else "did not match")


def _key_value_check(key: str, want: str, body: bytes) -> _Verdict:
    try:
        document = json.loads(
            body,
            parse_int=_JSONNumber,
            parse_float=_JSONNumber,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):
        return _Verdict(False, "the response is not JSON")
    value = _last_leaf(document, key)
    if value is _MISSING:
        return _Verdict(False, f"no {key!r} in the response")
    # A JSON string matches by its text, a number by its JSON text (1.0 is not 1);
    # true, false and null never match (websms.php compared with ===).
    if isinstance(value, str) and str(value) == want:
        return _Verdict(True, "matched")
    return _Verdict(False, f"{key} is {escape_controls(_json_text(value))[:60]}")


def evaluate_resp_check(check: Optional[str], body: bytes) -> Optional[Tuple[bool, str]]:
    """Test a 2xx response body against resp_check; None when there is no check.

    A complete `/pattern/flags` (any PCRE delimiter) is a regular expression searched
    in the raw body text (Python `re` syntax, flags i m s x); otherwise a value with "="
    is `key=value` (split on "=", the first two parts), looked up among the leaf keys
    of the JSON response.  websms.php took any value with "=" for key=value, so
    `/status=ok/` was the key "/status" there; here it is the regex it looks like.
    Never raises.  Returns (passed, why).
    """
    if _php_empty(check):
        return None
    assert check is not None
    delimited = _split_delimited(check)
    if delimited is not None:
        verdict = _regex_check(delimited[0], delimited[1], body)
    elif "=" in check:
        key, want = check.split("=")[:2]
        verdict = _key_value_check(key, want, body)
    else:
        verdict = _Verdict(False, "resp_check is neither key=value nor /regex/")
    return verdict.ok, verdict.detail


MAX_PROVIDER_ID = 200  # characters; as the webhook's key_id


def response_id(path: Optional[str], body: bytes) -> Optional[str]:
    """The provider's message id at `path` in a JSON answer, or None.

    The path syntax of the JSON keys: dots between object members, a part of digits is
    an array position when it meets an array (`message_uuid.0`, `data.messages.0.id`;
    against an object it is a member name), and `name[]` is `name.0`.  A string is
    taken as it is, a number as its JSON text; anything else, an empty or unprintable
    value, or one over MAX_PROVIDER_ID characters gives None.  Never raises.
    """
    if not path:
        return None
    try:
        value: Any = json.loads(
            body, parse_int=_JSONNumber, parse_float=_JSONNumber, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        return None
    for part in path.split("."):
        names = [part[:-2], "0"] if part.endswith("[]") else [part]
        for name in names:
            if isinstance(value, dict) and name in value:
                value = value[name]
            elif isinstance(value, list) and _INDEX.fullmatch(name) and int(name) < len(value):
                value = value[int(name)]
            else:
                return None
    if not isinstance(value, str):  # _JSONNumber is a str
        return None
    text = str(value)
    if not text or len(text) > MAX_PROVIDER_ID or not text.isprintable():
        return None
    return text


def check_response(
    iface: OutboundInterface,
    status: int,
    body: bytes,
    location: Optional[str] = None,
) -> Outcome:
    """Judge an ITSP's answer.

    Sent: a 2xx status and, when resp_check is set, a passing resp_check (without one,
    any 2xx counts, even with an empty or non-JSON body; a 204 has no content to
    check and counts too).  Transient (retry): 5xx, 408, 429 and any status outside
    1xx-5xx.  Permanent: 3xx (redirects are not followed; `location`, the Location
    header, says where it pointed), the other 4xx, and a 2xx whose resp_check fails:
    the ITSP answered, so sending again could send twice.  When sent, provider_id is
    the value at resp_id in the answer (see response_id).
    """
    secrets = secrets_of(iface)
    shown = excerpt(body, secrets)
    tail = f": {shown}" if shown else ""
    if 200 <= status < 300:
        provider_id = response_id(iface.resp_id, body)
        verdict = evaluate_resp_check(iface.resp_check, body)
        if verdict is None:
            return Outcome(True, f"HTTP {status}{tail}", code=status, provider_id=provider_id)
        if status == 204:
            return Outcome(True, "HTTP 204 (no content: resp_check not applied)", code=status)
        passed, why = verdict
        check = escape_controls(iface.resp_check or "")
        if passed:
            return Outcome(True, f"HTTP {status}, resp_check {check} matched{tail}", code=status,
                           provider_id=provider_id)
        return Outcome(False, f"HTTP {status} but resp_check {check} failed: {why}{tail}",
                       permanent=True, code=status)
    if 300 <= status < 400:
        where = f" to {safe_url(location)}" if location else ""
        return Outcome(False, f"HTTP {status} redirect{where} (not followed; check url_host and"
                              " url_path)", permanent=True, code=status)
    if status in (408, 429) or 500 <= status < 600:
        return Outcome(False, f"HTTP {status}{tail}", code=status)
    if 400 <= status < 500:
        return Outcome(False, f"HTTP {status}{tail}", permanent=True, code=status)
    return Outcome(False, f"unexpected HTTP status {status}{tail}", code=status)
