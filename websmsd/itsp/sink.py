"""The ITSP channel: one route per [websms] interface (`itsp:api-1`), sent with treq.

Each send is one HTTP request (websmsd.itsp.request), judged by websmsd.itsp.response;
the dispatcher applies the retry policy to the Outcome and records what the route
achieved in the metrics, which this channel's status row reads.
"""

from __future__ import annotations

from typing import Any, List

from websmsd.channel import ChannelState, route_name
from websmsd.config.websms import OutboundInterface
from websmsd.itsp.request import safe_url
from websmsd.message import Message
from websmsd.metrics import Metrics
from websmsd.text import local_time

KIND = "itsp"


def _clock(t: float) -> str:
    return local_time(t)


class ITSPSink:
    """Sends the messages of one [websms] interface through its HTTP API."""

    def __init__(self, iface: OutboundInterface, client: Any, metrics: Metrics):
        self.iface = iface
        self.client = client
        self.metrics = metrics
        self.route = route_name(KIND, iface.name)

    def send(self, message: Message) -> Any:
        return self.client.send(self.iface, message.recipient, message.sender, message.body)

    def status(self) -> List[ChannelState]:
        """Its row on the status page: how the sends since start went."""
        r = self.metrics.route(self.route)
        state = r.state
        bits = []
        if state == "idle":
            bits.append("no send since start")
        if r.last_success is not None:
            bits.append(f"last success {_clock(r.last_success)}")
        if r.last_failure is not None:
            bits.append(f"last failure {_clock(r.last_failure)}: {r.last_reason}")
        since = r.last_failure if state == "failing" else r.last_success
        return [ChannelState(
            self.iface.name or "(default)", state, since, "; ".join(bits), KIND,
            {"interface": self.iface.name, "route": self.route,
             "url": safe_url(self.iface.url), "sends": r.sends,
             "last_success": r.last_success, "last_failure": r.last_failure,
             "last_failure_reason": r.last_reason})]
