"""GoIP in the daemon: one route per SIM (goip:sim1...), each over its transport.

    smpp  one transceiver bind per SIM (websmsd.goip.smppsim)
    udp   a line of the one SMS-server listener on udp_listen (websmsd.goip.linesim)
    http  a line of the GoIP's web API (websmsd.goip.linesim)

USSD goes through the UDP protocol for a udp SIM, and through the web API for the
others when http_url is set (a GoIP has no USSD over SMPP).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.application import internet, service
from twisted.logger import Logger

from websmsd.channel import ChannelState
from websmsd.config.goip import GoIPSettings, GoIPSim

log = Logger()


def build(wiring: Any, settings: GoIPSettings) -> None:
    from websmsd.goip.linesim import WebSim
    from websmsd.goip.sim import SimInfo
    from websmsd.http.site import REPORTS

    reports = wiring.metrics.counter(REPORTS)
    udp_sims = [SimInfo(s) for s in settings.interfaces if s.transport == "udp"]
    listener = _udp_listener(wiring, settings, udp_sims, reports) if udp_sims else None
    clients: Dict[Tuple, Any] = {}
    for sim in settings.interfaces:
        info = SimInfo(sim)
        web = _web_client(wiring, sim, clients) if sim.http_url else None
        if sim.transport == "smpp":
            from websmsd.goip.smppsim import SMPPSim

            sink: Any = SMPPSim(info, reactor=wiring.reactor, endpoint=_endpoint(wiring, sim),
                                accept=wiring.accept, store=wiring.store,
                                dispatcher=wiring.dispatcher, metrics=wiring.metrics,
                                reports=reports)
            sink.setServiceParent(wiring.parent)
        elif sim.transport == "udp":
            sink = listener.sims[sim.name]
        else:
            sink = WebSim(info, web, reactor=wiring.reactor, dispatcher=wiring.dispatcher,
                          metrics=wiring.metrics)
        # An SMPP SIM has `window` submits on their way at once; a line sends one SMS at
        # a time (its client queues them anyway).
        wiring.dispatcher.add_route(info.route, sink,
                                    concurrency=sim.window if sim.transport == "smpp" else 1,
                                    min_interval=sim.send_interval)
        if sim.transport != "http":
            sink.check()  # down until bound / registered
        wiring.board.register(sink.status, info.route)
        if sim.transport == "udp":
            wiring.ussd[sim.name] = sink.ussd
        elif web is not None:
            wiring.ussd[sim.name] = (lambda code, web=web, line=int(sim.channel or 0):
                                     web.ussd(line, code))
    if listener is not None:
        wiring.board.register(listener.status, "goip udp")


def _endpoint(wiring: Any, sim: GoIPSim) -> Any:
    from websmsd.endpoints import tcp_client

    return tcp_client(wiring.reactor, sim.smpp_host, sim.smpp_port, timeout=30)


def _web_client(wiring: Any, sim: GoIPSim, clients: Dict[Tuple, Any]) -> Any:
    """One client per GoIP (and credentials): its per-line queue is the device's."""
    key = (sim.http_url, sim.http_user, sim.http_password, sim.http_method, sim.http_timeout,
           sim.http_poll, sim.http_deadline)
    client = clients.get(key)
    if client is None:
        from websmsd.goip.webclient import GoIPWebClient

        client = clients[key] = GoIPWebClient(
            _TreqOnFirstUse(), sim.http_url, sim.http_user, sim.http_password or "", clock=wiring.reactor,
            timeout=sim.http_timeout, poll_interval=sim.http_poll, deadline=sim.http_deadline,
            send_method=sim.http_method)
    return client


class _TreqOnFirstUse:
    """The treq module, imported by the first request to a GoIP's web API.

    A GoIP's web API is often configured for USSD or as a fallback and then idle for
    days; treq costs ~8 MB of RSS on Debian bookworm (its treq 22.2 imports requests),
    and the daemon's idle RSS is measured (issue #18).
    """

    def __getattr__(self, name: str) -> Any:
        import treq

        return getattr(treq, name)


class _UDPListener(service.MultiService):
    """The SMS-server listener and the timer that tells routes when lines come and go."""

    def __init__(self, server: Any, sims: Dict[str, Any], address: Tuple[str, int],
                 check_every: float, reactor: Any):
        super().__init__()
        self.server = server
        self.sims = sims
        self.address = address
        self.setName(f"goip udp {address[0] or '*'}:{address[1]}")
        udp = internet.UDPServer(address[1], server, interface=address[0],
                                 maxPacketSize=65535, reactor=reactor)
        udp.setName("listener")
        udp.setServiceParent(self)
        self.listener = udp
        watch = internet.TimerService(check_every, self.check)
        watch.clock = reactor
        watch.setName("line watch")
        watch.setServiceParent(self)

    def check(self) -> None:
        for sim in self.sims.values():
            try:
                sim.check()
            except Exception:  # the timer must go on for the other lines
                log.failure("GoIP {route}: checking the line failed", route=sim.route)

    def status(self) -> ChannelState:
        totals = dict(self.server.totals)
        bits = []
        for name, label in (("bad_password", "with a wrong password"),
                            ("unknown_peer", "from unknown ids or places"),
                            ("garbage", "unreadable")):
            if totals.get(name):
                bits.append(f"{totals[name]} packets {label}")
        where = f"udp {self.address[0] or '*'}:{self.address[1]}"
        return ChannelState(where, "listening" if self.running else "stopped", None,
                            "; ".join(bits) or "GoIP SMS-server protocol", "goip",
                            {"listen": where, "lines": len(self.sims), **totals})


def _udp_listener(wiring: Any, settings: GoIPSettings, sims: List[Any], reports: Any) -> Any:
    from websmsd.goip import udp
    from websmsd.goip.linesim import UDPSim
    from websmsd.goip.udpserver import GoIPUDPServer

    by_line: Dict[str, UDPSim] = {}

    def on_receive(line: str, recvid: str, srcnum: str, text: str, dedupe_key: str) -> Any:
        return by_line[line].receive(recvid, srcnum, text, dedupe_key, wiring.accept)

    def on_report(line: str, sms_no: str, state: str, num: str) -> Any:
        return by_line[line].report(sms_no, state, num)

    prefix, _, status = settings.udp_ack.partition(":")
    dialect = udp.Dialect(ack_prefix=prefix, ack_status=status, length_unit=settings.udp_length)
    server = GoIPUDPServer(
        {i.name: (i.sim.goip_id, i.sim.goip_password) for i in sims}, clock=wiring.reactor,
        on_receive=on_receive, on_report=on_report, dialect=dialect,
        keepalive_interval=settings.keepalive, down_after=settings.line_down_after,
        resend_interval=settings.udp_resend, answer_timeout=settings.udp_answer_timeout,
        send_deadline=settings.udp_deadline, ussd_timeout=settings.ussd_timeout)
    for info in sims:
        by_line[info.name] = UDPSim(info, server, reactor=wiring.reactor, store=wiring.store,
                                    dispatcher=wiring.dispatcher, metrics=wiring.metrics,
                                    reports=reports)
    check_every = max(0.2, min(5.0, settings.keepalive / 6))
    listener = _UDPListener(server, by_line, settings.udp_address, check_every, wiring.reactor)
    listener.setServiceParent(wiring.parent)
    return listener
