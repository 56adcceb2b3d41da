"""Delivery receipts in deliver_sm, and matching their message ids. Pure.

A receipt is recognised by its esm_class message type (SMSC delivery receipt, SME
acknowledgement, intermediate notification) or by a receipted_message_id parameter;
never by the look of the text, so an SMS that happens to read ``id:1 stat:DELIVRD``
stays an SMS. The optional parameters are read first (receipted_message_id,
message_state, network_error_code), then the text SMSCs write by convention::

    id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm
    stat:DDDDDDD err:E text: . . .

with keys in any case (a GoIP writes ``Text:`` and decimal ids).
"""

from __future__ import annotations

import contextlib
import re
from typing import Dict, NamedTuple, Optional, Tuple

from websmsd import sms
from websmsd.smpp import pdu as _pdu

# message_state values (SMPP 3.4, 5.3.2.35) and the receipt text's stat: words.
MESSAGE_STATES = {
    1: "ENROUTE", 2: "DELIVERED", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIVERABLE",
    6: "ACCEPTED", 7: "UNKNOWN", 8: "REJECTED",
}

_STATE_OF_STAT = {
    "DELIVRD": "delivered", "DELIVERED": "delivered",
    "EXPIRED": "failed", "DELETED": "failed", "UNDELIV": "failed",
    "UNDELIVERABLE": "failed", "REJECTD": "failed", "REJECTED": "failed",
    "FAILED": "failed", "ERROR": "failed",
    # handed on towards the handset, no more news expected from this SMSC
    "SENT": "sent",
    # intermediate, or nothing known: not an outcome
    "ENROUTE": None, "ACCEPTD": None, "ACCEPTED": None, "UNKNOWN": None,
    "BUFFRED": None, "BUFFERED": None, "SCHEDULED": None,
}

_KEY_RE = re.compile(
    r"(?<![A-Za-z0-9_])(submit[ _]date|done[ _]date|dlvrd|stat|text|sub|err|id)\s*:",
    re.IGNORECASE)


class Receipt(NamedTuple):
    """A delivery receipt: ``message_id`` the SMSC gave in submit_sm_resp (as the
    receipt writes it; None when the receipt names none), ``state`` ``'delivered'``,
    ``'failed'``, ``'sent'`` or None (intermediate or unknown: not an outcome),
    ``error`` (the err: value, or network_error_code as ``type:code``; None when absent),
    ``raw_stat`` (the stat: word or the message_state name), and ``fields``: every
    text field found, by lower-case key."""

    message_id: Optional[str]
    state: Optional[str]
    error: Optional[str]
    raw_stat: Optional[str]
    fields: Dict[str, str] = {}


def is_receipt(pdu: "_pdu.PDU") -> bool:
    """True when esm_class says receipt / acknowledgement / intermediate notification,
    or a receipted_message_id parameter is there."""
    if pdu.command not in ("deliver_sm", "data_sm"):
        return False
    if (pdu.get("esm_class") or 0) & _pdu.ESM_TYPE_MASK:
        return True
    return pdu.get("receipted_message_id") is not None


def parse_text(text: str) -> Dict[str, str]:
    """The ``key:value`` fields of a receipt text, keys lower-case with one blank
    (``submit date``). ``text`` takes the rest of the line as it is."""
    found = list(_KEY_RE.finditer(text))
    out: Dict[str, str] = {}
    for i, m in enumerate(found):
        key = m.group(1).lower().replace("_", " ")
        if key == "text":
            out.setdefault("text", text[m.end():])
            break
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.setdefault(key, text[m.end():end].strip())
    return out


def _state(stat: Optional[str]) -> Optional[str]:
    if not stat:
        return None
    return _STATE_OF_STAT.get(stat.strip().upper())


def parse_receipt(pdu: "_pdu.PDU") -> Optional[Receipt]:
    """The receipt in ``pdu``, or None when ``pdu`` is no receipt (an ordinary SMS).
    Never raises for what a peer sent."""
    if not is_receipt(pdu):
        return None
    payload = pdu.get("message_payload") or pdu.get("short_message") or b""
    if (pdu.get("esm_class") or 0) & _pdu.ESM_UDHI:
        with contextlib.suppress(sms.SMSError):  # no usable header: the whole payload
            payload = sms.parse_udh(payload)[1]
    text = sms.decode(pdu.get("data_coding") or 0, payload)
    fields = parse_text(text)

    message_id = pdu.get("receipted_message_id") or fields.get("id") or None
    raw_stat = fields.get("stat") or None
    state = _state(raw_stat)
    mstate = pdu.get("message_state")
    if mstate is not None:
        raw_stat = MESSAGE_STATES.get(mstate, f"state {mstate}")
        state = _state(raw_stat)
    error = fields.get("err") or None
    nec = pdu.get("network_error_code")
    if isinstance(nec, (bytes, bytearray)) and len(nec) == 3:
        network, code = nec[0], int.from_bytes(nec[1:], "big")
        if network or code:
            error = f"{network}:{code}"
    return Receipt(message_id, state, error, raw_stat, fields)


def _norm(s: str) -> str:
    s = s.strip().lower()
    return s.lstrip("0") or ("0" if s else "")


def id_variants(message_id: str) -> Tuple[str, ...]:
    """The forms a receipt may use for ``message_id``: itself, case-folded with
    leading zeros dropped; when it is all digits, the same number in hex; when it is all
    hex digits, the same number in decimal. Two ids name the same message when their
    variants share a member; the first member is the id itself, normalised (prefer an
    exact match over another variant). Empty tuple for an empty id."""
    base = _norm(message_id or "")
    if not base:
        return ()
    out = [base]
    if re.fullmatch(r"[0-9]+", base) and len(base) <= 40:
        out.append(format(int(base, 10), "x"))
    if re.fullmatch(r"[0-9a-f]+", base) and len(base) <= 32:
        out.append(str(int(base, 16)))
    seen = []
    for v in out:
        if v not in seen:
            seen.append(v)
    return tuple(seen)


def ids_match(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` may name the same message (see :func:`id_variants`)."""
    return bool(set(id_variants(a)) & set(id_variants(b)))
