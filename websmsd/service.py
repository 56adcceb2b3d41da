"""The wiring diagram: one MultiService, a child for each listener and worker.

This is the only module that knows every channel.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from websmsd.message import IN, OUT
from websmsd.settings import Settings

log = Logger()


class StoreService(service.Service):
    """Opens the store when the daemon starts, closes it (after the last commit) on stop."""

    def __init__(self, store: Any):
        self.store = store

    def startService(self) -> None:
        self.store.open()
        super().startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.store.close()


class _OnStop(service.Service):
    def __init__(self, action: Any):
        self.action = action

    def stopService(self) -> Any:
        super().stopService()
        return self.action()


def _on_stop(parent: service.MultiService, action: Any) -> None:
    """Run `action` (which may return a Deferred) when the daemon stops."""
    _OnStop(action).setServiceParent(parent)


def _tls_endpoint(description: str, settings: Settings) -> str:
    """Add [daemon] tls_key / tls_cert to an `ssl:` endpoint that names neither."""
    d = settings.daemon
    if description.startswith("ssl:") and "privateKey=" not in description and d.tls_key:
        description += ":privateKey=" + d.tls_key.replace(":", "\\:")
        if d.tls_cert and "certKey=" not in description:
            description += ":certKey=" + d.tls_cert.replace(":", "\\:")
    return description


def _listen(parent: service.MultiService, reactor: Any, description: str,
            factory: Any, name: str) -> StreamServerEndpointService:
    ep = endpoints.serverFromString(reactor, description)
    svc = StreamServerEndpointService(ep, factory)
    # Fail the start (twistd exits non-zero) rather than run deaf on a busy port.
    svc._raiseSynchronously = True
    svc.setName(f"{name} {description}")
    svc.setServiceParent(parent)
    return svc


def make_service(settings: Settings, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from websmsd.asterisk.agi import AGIResult, FastAGIFactory
    from websmsd.asterisk.callfile import CallFileSpool
    from websmsd.delivery import CallFileSink, ITSPSink
    from websmsd.dispatch import Dispatcher, RetryPolicy
    from websmsd.http import status
    from websmsd.http.api import Access
    from websmsd.http.itsp import ITSPClient
    from websmsd.http.webhook import WebhookResource, make_site
    from websmsd.metrics import MeasuredClient, Metrics
    from websmsd.outbox import Outbox
    from websmsd.store import Store
    from twisted.internet.threads import deferToThreadPool

    d = settings.daemon
    top = service.MultiService()
    started = reactor.seconds()
    metrics = Metrics()
    board = status.ChannelBoard()  # each channel adds its rows to the status page
    store = Store(d.store, reactor)
    StoreService(store).setServiceParent(top)

    policy = RetryPolicy(d.retry_base, d.retry_max, d.max_attempts, d.max_age)
    dispatcher = Dispatcher(store, reactor)
    spool = CallFileSpool(settings.astqueue)
    calls = CallFileSink(store, dispatcher, spool, settings.astqueue, policy, reactor,
                         poll=d.spool_poll)
    dispatcher.add_sink(IN, calls, linger=0.02)
    client = ITSPClient(reactor, timeout=d.http_timeout)
    _on_stop(top, client.close)
    measured = MeasuredClient(client, metrics.send_seconds, reactor.seconds)
    itsp = ITSPSink(store, dispatcher, measured, settings.outbound, policy, reactor)
    board.register(status.itsp_reporter(settings.outbound, measured))
    board.register(status.spool_reporter(
        calls, spool, since=started, clock=reactor.seconds,
        run_in_thread=lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f)))
    dispatcher.add_sink(OUT, itsp)
    dispatcher.setServiceParent(top)
    outbox = Outbox(store, dispatcher, settings.outbound, reactor, wait=d.agi_wait)

    webhook = WebhookResource(settings.inbound, store.add, max_body=d.max_body,
                              report=store.report)
    webhook_site = make_site(webhook, d.max_body)
    summary = TimerService(60, webhook.log_summary)
    summary.setServiceParent(top)
    for description in d.webhook_listen:
        svc = _listen(top, reactor, _tls_endpoint(description, settings), webhook_site,
                      "webhook")
        board.register(status.listener_reporter("webhook", description, svc, started,
                                                status.webhook_detail(webhook)))

    def agi_handler(request: Any) -> defer.Deferred:
        result = outbox.submit(request.to, request.sender, request.body, request.index)
        return result.addCallback(lambda r: AGIResult(r.status, r.message_id, r.reason))

    agi = FastAGIFactory(agi_handler, reactor=reactor)
    for description in d.agi_listen:
        svc = _listen(top, reactor, description, agi, "fastagi")
        board.register(status.listener_reporter("fastagi", description, svc, started))

    # The status page, the JSON API (the `websms` command) and /metrics.
    model = status.StatusModel(
        store, board, metrics=metrics, measured=measured, calls=calls, webhook=webhook,
        outbound=settings.outbound, inbound=settings.inbound, started=started,
        clock=reactor.seconds, wake=dispatcher.wake)
    local = make_site(status.make_status_resource(model, outbox, Access.from_settings(d)),
                      status.MAX_REQUEST_BODY)
    for description in d.status_listen:
        svc = _listen(top, reactor, _tls_endpoint(description, settings), local, "status")
        board.register(status.listener_reporter("status", description, svc, started))

    # For the status page and tests: the parts, by name.
    top.store = store
    top.dispatcher = dispatcher
    top.webhook = webhook
    top.sinks = {IN: calls, OUT: itsp}
    top.metrics = metrics
    top.board = board
    return top
