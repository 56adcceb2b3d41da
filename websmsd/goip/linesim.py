"""GoIP SIMs over the SMS-server protocol (UDP) and over the web API (HTTP).

`UDPSim`: a line of the one `GoIPUDPServer` all UDP SIMs share.  The server checks every
packet's id and password, answers `RECEIVE <id> OK` only once `on_receive`'s Deferred
fired (here: the message committed), resends nothing twice, and runs one send dialogue
at a time per line.  The SIM watches the line's keepalives: without them (or with its
SIM logged out of GSM) the route pauses until they come back.

`WebSim`: a line of a GoIP's web API (send.html, then send_status.xml until DONE), one
message at a time per line (`GoIPWebClient` queues them).  The web API says nothing
unasked, so such a route is paused only when a send finds the line down.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.channel import ChannelState
from websmsd.goip.sim import SimInfo, clock_text, outcome_of
from websmsd.message import Message

log = Logger()


def _dbm(signal: Optional[int]) -> str:
    # AT+CSQ: 0..31, 99 unknown; RSSI = 2 x CSQ - 113 dBm.
    if signal is None or not 0 <= signal <= 31:
        return "unknown"
    return f"{signal} ({2 * signal - 113} dBm)"


class UDPSim:
    """One SIM whose GoIP line talks the SMS-server protocol to our UDP listener."""

    def __init__(self, info: SimInfo, server: Any, *, reactor: Any, store: Any,
                 dispatcher: Any, metrics: Any, reports: Any = None):
        self.info = info
        self.route = info.route
        self.line = info.name
        self.server = server
        self.reactor = reactor
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.reports = reports
        self.down: Optional[str] = None
        self.since = reactor.seconds()
        self.unmatched_reports = 0
        self._told = False

    def check(self) -> None:
        """Compare the line's state with what the route was told; called on a timer."""
        reason = self.server.down_reason(self.line)
        if self._told and reason == self.down:
            return
        if self._told and (reason is None) != (self.down is None):
            self.since = self.reactor.seconds()
        self.down, self._told = reason, True
        self.dispatcher.set_down(self.route, reason)

    def send(self, message: Message) -> defer.Deferred:
        d = self.server.send(self.line, message.recipient, message.body)
        return d.addCallback(outcome_of)

    def ussd(self, code: str) -> defer.Deferred:
        return self.server.ussd(self.line, code)

    # -- what the server hands over ----------------------------------------------------------

    def receive(self, recvid: str, srcnum: str, text: str, dedupe_key: str,
                accept: Any) -> defer.Deferred:
        return accept([self.info.inbound(srcnum, text, dedupe_key)])

    def report(self, sms_no: str, state: str, num: str) -> defer.Deferred:
        # state 0 is "received" (the document); what other values mean is unconfirmed,
        # so they are kept with the message without calling it failed.
        status = "delivered" if state.strip() == "0" else "sent"
        detail = f"GoIP DELIVER state {state.strip()[:8] or '?'}"
        d = self.store.report(sms_no.strip(), [self.route], status, detail)

        def reported(message_id: Optional[str]) -> None:
            if message_id is None:
                self.unmatched_reports += 1
                log.info("GoIP {route}: DELIVER for sms_no {no} matches no message sent here",
                         route=self.route, no=sms_no[:16])
            if self.reports is not None:
                self.reports[status if message_id is not None else "unknown"] += 1

        return d.addCallback(reported)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> ChannelState:
        s = self.server.line_status(self.line)
        if self.down is None:
            state = "up"
            bits = [f"registered from {s.address[0]}:{s.address[1]}" if s.address else "registered",
                    f"signal {_dbm(s.signal)}", f"GSM {s.gsm_status or '?'}"]
        else:
            state = "down"
            bits = [self.down]
            if s.last_keepalive is not None:
                bits.append(f"last keepalive {clock_text(s.last_keepalive)}")
        if self.info.sim.number:
            bits.append(f"number {self.info.sim.number[0]}")
        if s.bad_password:
            bits.append(f"{s.bad_password} packets with a wrong password")
        bits += self.info.sends_detail(self.metrics)
        info = self.info.base_info(self.metrics)
        info.update({
            "goip_id": s.goip_id, "registered": s.registered, "signal": s.signal,
            "gsm_status": s.gsm_status or None, "voip_status": s.voip_status or None,
            "reported_number": s.number or None, "sms_login": s.sms_login or None,
            "address": f"{s.address[0]}:{s.address[1]}" if s.address else None,
            "last_keepalive": s.last_keepalive, "keepalives": s.keepalives,
            "received": s.received, "reports": s.reports, "sent": s.sent,
            "failed": s.failed, "bad_password": s.bad_password, "last_error": s.last_error,
            "unmatched_reports": self.unmatched_reports,
        })
        return ChannelState(self.info.name or "(default)", state, self.since,
                            "; ".join(bits), "goip", info)


class WebSim:
    """One SIM sent through the GoIP's web API, a message at a time."""

    def __init__(self, info: SimInfo, client: Any, *, reactor: Any, dispatcher: Any,
                 metrics: Any):
        self.info = info
        self.route = info.route
        self.channel = int(info.sim.channel or 0)
        self.client = client
        self.reactor = reactor
        self.dispatcher = dispatcher
        self.metrics = metrics

    def send(self, message: Message) -> defer.Deferred:
        d = self.client.send(self.channel, message.recipient, message.body)
        return d.addCallback(outcome_of)

    def status(self) -> ChannelState:
        r = self.metrics.route(self.route)
        sim = self.info.sim
        bits = [f"web API line {self.channel}"]
        if r.down is not None:
            state, since = "down", r.down_since
            bits.append(r.down)
        else:
            state = r.state
            since = r.last_failure if state == "failing" else r.last_success
            if state == "idle":
                bits.append("no send since start")
        if sim.number:
            bits.append(f"number {sim.number[0]}")
        bits += self.info.sends_detail(self.metrics)
        info = self.info.base_info(self.metrics)
        info.update({"channel": self.channel, "signal": None, "gsm_status": None})
        return ChannelState(self.info.name or "(default)", state, since, "; ".join(bits),
                            "goip", info)
