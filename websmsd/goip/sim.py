"""What every GoIP SIM shares, whatever its transport: the inbound message it builds, the
Outcome of a GoIP send, and the wording of its status row."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Dict, List, Optional

from websmsd.text import local_time
from websmsd.channel import Outcome, route_name
from websmsd.config.goip import KIND, GoIPSim
from websmsd.goip.outcome import SendOutcome
from websmsd.message import IN, Message, UnsafeValue, check_sender


def clock_text(t: Optional[float]) -> str:
    return local_time(t) if t is not None else "never"


_SENDER_CHARS = re.compile(r"[^A-Za-z0-9.*_\-+ ]")


def sender_from(value: str) -> str:
    """A peer's sender (a number, a short code, a name such as "Orange") as a message may
    carry it: kept when it passes check_sender, else its safe characters, else
    "unknown".  Never refuses: the SMS itself must not be lost for its sender's form."""
    value = (value or "").strip()
    with contextlib.suppress(UnsafeValue):
        return check_sender(value)
    cleaned = re.sub(r" {2,}", " ", _SENDER_CHARS.sub("", value)).strip()[:32]
    try:
        return check_sender(cleaned)
    except UnsafeValue:
        return "unknown"


class SimInfo:
    """A SIM's route and the number its inbound SMS are addressed to."""

    def __init__(self, sim: GoIPSim):
        self.sim = sim
        self.name = sim.name
        self.route = route_name(KIND, sim.name)
        # MESSAGE(to) of its inbound SMS: the SIM's own number (the SMSC writes the
        # bound system_id there, the UDP protocol nothing).
        self.recipient = sim.number[0] if sim.number else (sim.name or KIND)

    def inbound(self, sender: str, text: str, dedupe_key: Optional[str] = None) -> Message:
        return Message(IN, "", self.recipient, sender_from(sender), text, source=self.route,
                       dedupe_key=dedupe_key)

    def sends_detail(self, metrics: Any) -> List[str]:
        r = metrics.route(self.route)
        bits = []
        if r.last_success is not None:
            bits.append(f"last success {clock_text(r.last_success)}")
        if r.last_failure is not None:
            bits.append(f"last failure {clock_text(r.last_failure)}: {r.last_reason}")
        return bits

    def base_info(self, metrics: Any) -> Dict[str, Any]:
        r = metrics.route(self.route)
        return {"interface": self.name, "route": self.route, "transport": self.sim.transport,
                "number": self.sim.number[0] if self.sim.number else None,
                "sends": r.sends, "last_success": r.last_success,
                "last_failure": r.last_failure, "last_failure_reason": r.last_reason}


def outcome_of(result: SendOutcome) -> Outcome:
    """The dispatcher's Outcome for what a GoIP line (UDP dialogue or web API) said."""
    reason = result.reason or ("sent" if result.ok else "not sent")
    if result.ok:
        return Outcome.sent(provider_id=result.provider_id)
    if result.down:
        # Not an attempt: the line is unregistered, logged out of GSM, unreachable or
        # refuses our credentials; the route pauses and the message waits.
        return Outcome.route_down(reason)
    if result.permanent:
        return Outcome.failed(reason, permanent=True)
    if result.maybe_sent and "may have been sent" not in reason:
        reason += " (the SMS may have been sent)"
    return Outcome.failed(reason)
