"""The wiring diagram: one MultiService, a named child for each listener and worker.

This is the only module that knows every channel.  Read top to bottom: the store and the
dispatcher; the routes (call files to the PBX, one per interface out of it); the router
and the outbox; then the listeners (webhooks, FastAGI, the status page and API).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from websmsd.config import Settings

log = Logger()

# The channels beyond the ITSPs and call files: a configured section's package builds
# its routes, sources and services with `build(wiring, section_settings)`.  Imported
# only when configured (a Raspberry Pi's memory).
CHANNELS: Dict[str, str] = {
    "yeastar": "websmsd.yeastar.service",
    "goip": "websmsd.goip.service",
    "smssync": "websmsd.android.service",
    "smsgateway": "websmsd.android.service",
    "smsgate": "websmsd.android.service",
}


@dataclass
class Wiring:
    """What a channel's build() gets: the daemon's shared parts."""

    reactor: Any
    parent: service.MultiService  # add the channel's services (named) here
    settings: Any  # the whole websmsd.config.Settings
    store: Any
    dispatcher: Any  # add_route / add_polled_route / set_down / take / record
    board: Any  # register the channel's status rows
    metrics: Any
    webhook: Any  # the webhook listener's root: mount(path, resource)
    # Inbound messages: routed to the PBX and stored (a Deferred of one bool each: new);
    # `state=(name, value)` is committed with them (a channel's read position).
    accept: Callable[..., Any]
    started: float
    # ussd[interface name] = send(code) -> Deferred[reply text], for /api/ussd.
    ussd: Dict[str, Callable[[str], Any]] = field(default_factory=dict)


class StoreService(service.Service):
    """Opens the store when the daemon starts, closes it (after the last commit) on stop.

    It opens (and upgrades) the store in privilegedStartService: the listeners bind their
    ports in theirs, which twistd runs for every service before any startService, and
    nothing may reach a listener before the store can take it."""

    name = "store"

    def __init__(self, store: Any):
        self.store = store

    def privilegedStartService(self) -> None:
        self.store.open()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.store.is_open:  # started without the privileged step (not by twistd)
            self.store.open()
        super().startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.store.close()


class _OnStart(service.Service):
    def __init__(self, name: str, action: Any):
        self.name = name
        self.action = action

    def startService(self) -> None:
        super().startService()
        self.action()


class _OnStop(service.Service):
    def __init__(self, name: str, action: Any):
        self.name = name
        self.action = action

    def stopService(self) -> Any:
        super().stopService()
        return self.action()


def _conversations(top: Any, reactor: Any, settings: Settings, store: Any) -> Tuple[Any, Any]:
    """The conversation index (websmsd.threads), kept close to the store by a catch-up a
    minute (pages catch up themselves: this keeps them quick), and the [web] users,
    whose sessions are signed with a secret kept in the store (they outlive a restart)."""
    from websmsd.http.users import Users
    from websmsd.threads import Threads

    # Steps of 500 messages: a webhook committed with one waits ~20 ms more, not ~80.
    threads = Threads(store, clock=reactor.seconds, chunk=500)
    catch_up = TimerService(60, _quietly, threads.catch_up, "conversation index")
    catch_up.setName("conversation index")
    catch_up.setServiceParent(top)
    users = Users(settings.web, settings.phones, secret=os.urandom(32), reactor=reactor)
    if users.enabled:
        _OnStart("web sessions", lambda: users.restore(store).addErrback(
            lambda f: log.failure("web sessions: the secret could not be kept; sessions "
                                  "end with this process", f))).setServiceParent(top)
    return threads, users


def _quietly(fn: Any, what: str) -> Any:
    """Run a periodic `fn` whose failure is logged, not the end of its TimerService."""
    d = defer.maybeDeferred(fn)
    d.addErrback(lambda f: log.failure("{what} failed", f, what=what))
    return d


def _own_numbers(settings: Settings) -> List[str]:
    """Every own number websms.conf writes: interfaces', [phones]', [web] users'."""
    numbers: List[str] = []
    for _name, _kind, own, _compact in settings.interfaces():
        numbers.extend(own)
    for phone in settings.phones.interfaces:
        numbers.extend(phone.number)
    for user in getattr(settings.web, "users", ()):
        numbers.extend(user.numbers)
    return numbers


def _tls_endpoint(description: str, settings: Settings) -> str:
    """Add [daemon] tls_key / tls_cert to an `ssl:` endpoint that names neither."""
    d = settings.daemon
    if description.startswith("ssl:") and "privateKey=" not in description and d.tls_key:
        description += ":privateKey=" + d.tls_key.replace(":", "\\:")
        if d.tls_cert and "certKey=" not in description:
            description += ":certKey=" + d.tls_cert.replace(":", "\\:")
    return description


EXIT_CANNOT_LISTEN = 2  # websmsd.service's RestartPreventExitStatus: retrying cannot help


class _Listener(StreamServerEndpointService):
    """A listener that stops the start when it cannot bind, in one line that names the
    setting, rather than a traceback and an exit status systemd restarts forever."""

    setting = ""

    def privilegedStartService(self) -> None:
        # Raise a bind error here (twistd exits) rather than run deaf on a busy port.
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            Logger(namespace="websmsd").critical(
                "{setting} {description!r} cannot listen: {why}; websmsd stops (exit {status})",
                setting=self.setting, description=self.name.split(" ", 1)[-1],
                why=_why(e), status=EXIT_CANNOT_LISTEN)
            raise SystemExit(EXIT_CANNOT_LISTEN)


def _why(error: CannotListenError) -> str:
    """'address already in use' for CannotListenError's repr of a socket error."""
    cause = error.socketError
    text = getattr(cause, "strerror", None) or str(cause)
    where = f"{error.interface or '*'}:{error.port}"
    return f"{where}: {text[:1].lower()}{text[1:]}" if text else where


def _listen(parent: service.MultiService, reactor: Any, setting: str, description: str,
            factory: Any, board: Any, started: float) -> Any:
    from twisted.internet.endpoints import serverFromString

    from websmsd.http.board import listener_reporter

    svc = _Listener(serverFromString(reactor, description), factory)
    svc.setting = setting
    svc.setName(f"{setting} {description}")
    svc.setServiceParent(parent)
    kind = "webhook" if setting == "WEBSMSD_PORT" else setting.split("_")[0]
    board.register(listener_reporter(kind, description, svc, started),
                   svc.name)
    return svc


def make_service(settings: Settings, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from websmsd.asterisk.callfile import CallFileSpool
    from websmsd.asterisk.fastagi import AGIResult, FastAGIFactory
    from websmsd.asterisk.spool import ROUTE as CALLFILE_ROUTE
    from websmsd.asterisk.spool import CallFileChannel
    from websmsd.channel import route_name
    from websmsd.dispatch import Dispatcher, RetryPolicy
    from websmsd.http.board import ChannelBoard
    from websmsd.http.ondemand import OnFirstConnection
    from websmsd.http.site import WebhookRoot
    from websmsd.itsp.webhook import WebhookResource
    from websmsd.metrics import Metrics
    from websmsd.outbox import Outbox
    from websmsd.routing import fan_out, router_for
    from websmsd.store import Store

    d = settings.daemon
    top = service.MultiService()
    started = reactor.seconds()
    metrics = Metrics()
    board = ChannelBoard()  # each channel adds its rows to the status page
    store = Store(d.store, reactor)
    StoreService(store).setServiceParent(top)
    policy = RetryPolicy(d.retry_base, d.retry_max, d.max_attempts, d.max_age)
    dispatcher = Dispatcher(store, reactor, policy, metrics)
    dispatcher.setName("dispatcher")
    dispatcher.setServiceParent(top)

    # To the PBX: call files.
    spool = CallFileSpool(settings.astqueue)
    calls = CallFileChannel(spool, settings.astqueue, reactor, poll=d.spool_poll, since=started,
                            metrics=metrics)
    dispatcher.add_batch_route(CALLFILE_ROUTE, calls, linger=0.02)
    board.register(calls.status, "spool")
    _OnStart("spool check", calls.check).setServiceParent(top)
    if calls.results:  # Archive: yes: Asterisk's Status of each call file is read
        from websmsd.asterisk.spool import ResultWatch

        calls.dispatcher = dispatcher
        ResultWatch(calls).setServiceParent(top)

    # From the PBX: one route per interface (the HTTP client's modules only when there
    # is one: a Raspberry Pi's memory).
    itsp_routes = []
    itsp_kind = None
    if settings.outbound.interfaces:
        from websmsd.itsp.client import ITSPClient
        from websmsd.itsp.sink import KIND as itsp_kind, ITSPSink

        client = ITSPClient(reactor, timeout=d.http_timeout)
        _OnStop("itsp client", client.close).setServiceParent(top)
        for iface in settings.outbound.interfaces:
            sink = ITSPSink(iface, client, metrics)
            dispatcher.add_route(sink.route, sink)
            board.register(sink.status, sink.route)
            itsp_routes.append(sink.route)
    router = router_for(settings, inbound_route=CALLFILE_ROUTE)
    outbox = Outbox(store, dispatcher, router, reactor, wait=d.agi_wait,
                    phone_numbers=settings.phones.numbers())

    # Webhooks: every path no channel mounts goes to the ITSP webhook.
    def accept(messages: list, state: Any = None) -> defer.Deferred:
        """Route inbound messages to the PBX and store them: [new?] per message.  An SMS
        to a number that several phones have becomes one copy per phone.  `state`: (name,
        value) a channel keeps with these messages, in their transaction."""
        stored, first = [], []
        for m in messages:
            routes = router.inbound_routes(m.recipient)
            first.append(len(stored))
            if len(routes) == 1:
                m.route = routes[0]
                stored.append(m)
            else:
                stored += fan_out(m, routes)
        d = store.add(stored, state=state)
        return d if len(stored) == len(messages) else d.addCallback(
            lambda new: [new[i] for i in first])

    def report(provider_id: str, status: str, detail: Any, interface: str = "") -> Any:
        # A report about a message sent through the [websms] interface of that name; a
        # webhook interface with no such twin may speak for any ITSP interface.
        own = route_name(itsp_kind, interface) if itsp_kind else None
        return store.report(provider_id, [own] if own in itsp_routes else itsp_routes,
                            status, detail)

    webhook = WebhookResource(settings.inbound, accept, max_body=d.max_body, report=report,
                              metrics=metrics, now=reactor.seconds)
    root = WebhookRoot(webhook)

    # The other channels (GoIP SIMs, Yeastar ports, phones...), each from its section.
    wiring = Wiring(reactor, top, settings, store, dispatcher, board, metrics, root, accept,
                    started)
    for name, module in CHANNELS.items():
        section = settings.channels.get(name)
        if section is not None and section.interfaces:
            importlib.import_module(module).build(wiring, section)
    # The PBX's own phones over its Asterisk's AMI ([ami], [phones]): routes ami:<endpoint>
    # for delivery = ami and for the delivery notices.
    if settings.channels.get("ami") is not None:
        from websmsd.phones.service import build as build_phones

        build_phones(wiring, settings.channels["ami"])
    if os.environ.get("WEBSMSD_HTTP") == "twisted":
        from websmsd.http.twsite import make_site

        webhook_site = make_site(root, d.max_body)
    else:
        # The lean HTTP/1.1 server (issue #18): half of twisted.web's reactor time per
        # webhook.  WEBSMSD_HTTP=twisted serves the listener with twisted.web.
        from websmsd.http.leanhttp import LeanWebhookFactory

        webhook_site = LeanWebhookFactory(root, d.max_body, reactor=reactor)
    summary = TimerService(60, webhook.log_summary)
    summary.setName("webhook summary")
    summary.setServiceParent(top)
    # The PHP service's WEBSMSD_PORT may have given the webhook listener: name that.
    webhook_setting = dict(d.origins).get("webhook_listen") or "webhook_listen"
    if webhook_setting != "WEBSMSD_PORT":
        webhook_setting = "webhook_listen"
    for description in d.webhook_listen:
        _listen(top, reactor, webhook_setting, _tls_endpoint(description, settings),
                webhook_site, board, started)

    # FastAGI: the dialplan hands messages over.
    def agi_handler(request: Any) -> defer.Deferred:
        result = outbox.submit(request.to, request.sender, request.body, request.index)
        return result.addCallback(lambda r: AGIResult(r.status, r.message_id, r.reason))

    agi = FastAGIFactory(agi_handler, reactor=reactor)
    for description in d.agi_listen:
        _listen(top, reactor, "agi_listen", description, agi, board, started)

    # The status page, the JSON API (the `websms` command) and /metrics: twisted.web,
    # built with its first connection (websmsd.http.ondemand: ~3 MB less on a Pi until
    # then).  The conversations' index and the [web] users run from the start.
    threads, users = _conversations(top, reactor, settings, store)
    routes = list(dispatcher.routes)

    def status_site() -> Any:
        from websmsd.http import status
        from websmsd.http.api import Access
        from websmsd.http.model import StatusModel
        from websmsd.http.twsite import make_site

        model = StatusModel(store, board, metrics, routes=routes, started=started,
                            clock=reactor.seconds)
        return make_site(status.make_status_resource(model, outbox, Access.from_settings(d),
                                                     ussd=wiring.ussd, threads=threads,
                                                     users=users,
                                                     configured=_own_numbers(settings)),
                         status.MAX_REQUEST_BODY)

    local = OnFirstConnection(status_site, "status page")
    for description in d.status_listen:
        _listen(top, reactor, "status_listen", _tls_endpoint(description, settings), local,
                board, started)
    return top
