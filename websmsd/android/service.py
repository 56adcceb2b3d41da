"""Android phones as gateways, wired into the daemon: `build(wiring, section)`.

One package for three sections ([smssync], [smsgateway], [smsgate]); `build` is given
the settings of one of them and wires each phone of it:

- SMSsync and the SMS Gateway app call websmsd: each phone is a polled route
  (`smssync:phone1`), a resource mounted at its url_path on the webhook listener (with
  the listener's body limits), a silence watch (three poll intervals without a request:
  the route is down until the next one) and a status row.
- SMS Gateway for Android is called by websmsd: each phone is a pushed route
  (`smsgate:phone3`) whose sink posts to the phone, and a poller (inbox, states,
  health) that is a child service of the daemon.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.config.smsgate import SMSGateSettings
from websmsd.config.smsgateway import SMSGatewaySettings
from websmsd.config.smssync import SMSsyncSettings

log = Logger()


def build(wiring: Any, section: Any) -> None:
    if isinstance(section, SMSsyncSettings):
        _build_polled(wiring, section, "smssync")
    elif isinstance(section, SMSGatewaySettings):
        _build_polled(wiring, section, "smsgateway")
    elif isinstance(section, SMSGateSettings):
        _build_smsgate(wiring, section)
    else:
        raise TypeError(f"websmsd.android cannot build {type(section).__name__}")


def _build_polled(wiring: Any, section: Any, kind: str) -> None:
    from .polled import PolledPhone, waiting_counts

    def make(phone: PolledPhone) -> Any:
        if kind == "smssync":
            from .smssync_web import SMSsyncResource

            resource = SMSsyncResource(phone, wiring.dispatcher.policy.max_age)
        else:
            from .medic_web import SMSGatewayResource

            resource = SMSGatewayResource(phone, wiring.dispatcher.policy.max_age)
        # What was under way when the daemon stopped, once the store is open.
        phone.on_start.append(resource.resume)
        return resource
    if not wiring.settings.daemon.webhook_listen:
        log.warn("[{section}] needs the webhook listener, and webhook_listen is not set:"
                 " the phones cannot reach websmsd", section=kind)
    phones: List[PolledPhone] = []
    for settings in section.interfaces:
        phone = PolledPhone(wiring, kind, settings)
        wiring.dispatcher.add_polled_route(phone.route)
        wiring.webhook.mount(settings.url_path, make(phone))
        phone.setServiceParent(wiring.parent)
        phones.append(phone)

    async def rows() -> list:
        waiting = await waiting_counts(wiring.store)
        return [p.status(waiting.get(p.route, 0)) for p in phones]

    wiring.board.register(lambda: defer.ensureDeferred(rows()), kind)


def _build_smsgate(wiring: Any, section: SMSGateSettings) -> None:
    from .polled import waiting_counts
    from .smsgate_channel import SMSGateChannel

    channels = []
    for settings in section.interfaces:
        channel = SMSGateChannel(wiring, settings)
        # One SMS at a time: the app paces sending itself.
        wiring.dispatcher.add_route(channel.route, channel, concurrency=1)
        channel.setServiceParent(wiring.parent)
        channels.append(channel)

    async def rows() -> list:
        waiting = await waiting_counts(wiring.store)
        return [c.status(waiting.get(c.route, 0)) for c in channels]

    wiring.board.register(lambda: defer.ensureDeferred(rows()), "smsgate")
