"""The phones channel: one AMI session to the PBX's Asterisk, one route per phone.

`build(wiring, ami_settings)` (from websmsd.service) makes:

- an `AMIClient` (login, reconnect with backoff, keepalive), child service "pbx";
- a route `ami:<endpoint>` per [phones] endpoint (one message at a time, so a phone gets
  its messages in order), each down while its phone cannot take a message: no AMI
  session, or the phone not registered.  A down route spends no attempts; its messages
  wait (until max_age) and go within moments of the phone registering (ContactStatus),
  oldest first;
- what is known of each phone (`contacts.Registrations`): a PJSIPShowContacts listing
  at every login (when manager.conf allows it), then the ContactStatus / PeerStatus
  events;
- the delivery notices: a store listener that turns an SMS written on a phone and now
  delivered or failed into a notice to that phone (`notices`);
- status rows: the AMI session, and per phone registered or not (since when), messages
  waiting for it, last delivery.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.text import local_time
from websmsd.ami.client import LOGGED_IN, LOGIN_FAILED, AMIClient
from websmsd.ami.protocol import AMIError
from websmsd.channel import ChannelState, route_name
from websmsd.phones.contacts import Registrations
from websmsd.phones.notices import notice_for
from websmsd.phones.sink import KIND, PhoneSink

log = Logger()

NO_SESSION = "no AMI session with Asterisk"
CONTACT_EVENTS = ("ContactStatus", "PeerStatus")


def _clock(t: Optional[float]) -> str:
    return local_time(t) if t is not None else "-"


class PhonesChannel:
    """What the phones' routes share: the AMI session and the phones' state."""

    def __init__(self, settings: Any, phones: Any, dispatcher: Any, store: Any, reactor: Any,
                 metrics: Any = None, client: Optional[AMIClient] = None):
        self.settings = settings
        self.phones = phones
        self.dispatcher = dispatcher
        self.store = store
        self.reactor = reactor
        self.metrics = metrics
        self.endpoints = [p.name for p in phones.interfaces]
        self.registrations = Registrations(self.endpoints, reactor.seconds())
        if client is None:
            from twisted.internet.endpoints import clientFromString

            client = AMIClient(reactor, clientFromString(reactor, settings.endpoint),
                               settings.username, settings.secret, events="system",
                               ping_interval=settings.keepalive,
                               action_timeout=settings.timeout, name="pbx")
        self.client = client
        client.on_state = self._state
        client.subscribe(self._event, CONTACT_EVENTS)
        self.sinks = {e: PhoneSink(e, self) for e in self.endpoints}
        self.listing: Optional[str] = None  # how the contacts were last learned at login
        self.refused: Optional[str] = None  # Asterisk refused MessageSend itself
        self._listing_now = False
        self._held: List[Any] = []  # events that came while the listing ran
        self._applied: Dict[str, Optional[str]] = {}

    @property
    def ami(self) -> AMIClient:
        return self.client

    def add_routes(self) -> None:
        for sink in self.sinks.values():
            self.dispatcher.add_route(sink.route, sink, concurrency=1)
        self._apply()

    # -- the session -----------------------------------------------------------------------

    def _state(self, kind: str, detail: str) -> None:
        if kind == LOGGED_IN:
            self.refused = None
            d = self._list_contacts()
            d.addErrback(lambda f: log.failure("phones: listing the contacts failed", f))
            return
        self._listing_now = False
        self._held = []
        self._apply()

    async def _list(self) -> None:
        self._listing_now = True
        now = self.reactor.seconds
        try:
            result = await self.client.action("PJSIPShowContacts")
        except AMIError as e:
            # The session is gone again (its state change takes the routes down), or
            # Asterisk did not answer: go by the events.
            self.listing = f"PJSIPShowContacts failed: {e}"
            changes = self.registrations.unknown(now(), "not known (no contact listing)")
        else:
            answer = (result.message or "").strip()
            if result.ok:
                self.listing = "PJSIPShowContacts at login, then events"
                changes = self.registrations.listed(result.events, now())
            elif "no contacts found" in answer.lower():
                self.listing = "PJSIPShowContacts at login, then events"
                changes = self.registrations.listed([], now())
            else:
                # read = system, write = message: allowed, and enough (see README).
                self.listing = (f"events only (PJSIPShowContacts: {answer or 'refused'});"
                                " a phone is known once it registers or gets a message")
                changes = self.registrations.unknown(now(), "not known yet (no contact listing)")
        finally:
            self._listing_now = False
        held, self._held = self._held, []
        for packet in held:
            changes += self.registrations.event(packet, now())
        self._log(changes)
        self._apply()

    def _list_contacts(self) -> defer.Deferred:
        return defer.ensureDeferred(self._list())

    def _event(self, packet: Any) -> None:
        if self._listing_now:
            self._held.append(packet)
            return
        changes = self.registrations.event(packet, self.reactor.seconds())
        if changes:
            self._log(changes)
            self._apply()

    # -- what the sinks tell -----------------------------------------------------------------

    def learned(self, endpoint: str, registered: bool, why: str) -> None:
        changes = self.registrations.learned(endpoint, registered, self.reactor.seconds(), why)
        if changes:
            self._log(changes)
            self._apply()

    def hold(self, endpoint: str) -> None:
        """A sink found the route unable to carry its message: make sure it is down (with
        the reason the channel knows) so that the message waits instead of spinning.  The
        session may be closing without having said so yet: down until its next state
        change says more."""
        reason = self.down_reason(endpoint) or f"{NO_SESSION} (closing)"
        self._applied[endpoint] = reason
        self.dispatcher.set_down(route_name(KIND, endpoint), reason)

    def denied(self, reason: str) -> None:
        if self.refused is None:
            log.error("phones: {reason}", reason=reason)
        self.refused = reason
        self._apply()

    # -- routes up and down ------------------------------------------------------------------

    def down_reason(self, endpoint: str) -> Optional[str]:
        """Why the route of `endpoint` cannot carry a message now, or None.  Stable
        texts: each message waiting on the route shows it."""
        if not self.client.logged_in:
            return NO_SESSION
        if self.refused is not None:
            return "Asterisk refuses MessageSend to websmsd (manager.conf write = message)"
        if self.registrations.registered(endpoint) is False:
            return f"phone {endpoint} is not registered"
        return None

    def _apply(self) -> None:
        for endpoint in self.endpoints:
            reason = self.down_reason(endpoint)
            route = route_name(KIND, endpoint)
            if endpoint in self._applied and self._applied[endpoint] == reason:
                continue
            self._applied[endpoint] = reason
            self.dispatcher.set_down(route, reason)

    def _log(self, changes: List[Any]) -> None:
        for endpoint, registered in changes:
            state = self.registrations.state(endpoint)
            word = {True: "registered", False: "not registered", None: "not known"}[registered]
            log.info("phone {endpoint}: {state} ({why})", endpoint=endpoint, state=word,
                     why=state.why if state else "")

    # -- delivery notices --------------------------------------------------------------------

    def finals(self, messages: List[Any]) -> None:
        """A store listener: outbound messages that just became delivered or failed."""
        now = self.reactor.seconds()
        notices = [n for n in (notice_for(m, self.phones, now) for m in messages) if n]
        if not notices:
            return
        d = self.store.add(notices)

        def added(new: List[bool]) -> None:
            for notice, fresh in zip(notices, new):
                if fresh:
                    log.info("phone {endpoint}: notice {body!r} queued ({route})",
                             endpoint=notice.route.partition(":")[2], body=notice.body,
                             route=notice.route)

        d.addCallback(added)
        d.addErrback(lambda f: log.failure("phones: a delivery notice could not be stored", f))

    # -- the status page ---------------------------------------------------------------------

    def status(self) -> defer.Deferred:
        d = self.store.reader.waiting()
        d.addErrback(lambda f: {})
        return d.addCallback(self._rows)

    def _rows(self, waiting: Dict[str, tuple]) -> List[ChannelState]:
        c = self.client
        s = self.settings
        if c.logged_in:
            state, detail = "up", f"logged in as {s.username}"
            if self.listing:
                detail += f"; contacts: {self.listing}"
            if self.refused:
                state, detail = "error", self.refused
        else:
            state = "error" if c.state_kind == LOGIN_FAILED else "down"
            detail = c.state
        rows = [ChannelState(f"AMI {s.host}:{s.port}", state, c.since, detail, "ami",
                             {"state": c.state, "username": s.username, "host": s.host,
                              "port": s.port, "listing": self.listing,
                              "banner": c.banner})]
        for endpoint in self.endpoints:
            route = route_name(KIND, endpoint)
            p = self.registrations.state(endpoint)
            n = (waiting.get(route) or (0,))[0]
            record = self.metrics.route(route) if self.metrics is not None else None
            last = record.last_success if record is not None else None
            registered = p.registered if p is not None else None
            word = {True: "registered", False: "not registered", None: "unknown"}[registered]
            bits = [word + (f" since {_clock(p.since)}" if p and p.since else "")]
            if p is not None and p.why:
                bits.append(p.why)
            bits.append(f"{n} waiting for it" if n else "nothing waiting")
            bits.append(f"last delivery {_clock(last)}" if last else "no delivery since start")
            phone = self.phones.phone(endpoint)
            rows.append(ChannelState(
                endpoint, word if c.logged_in else "down", p.since if p else None,
                "; ".join(bits), "phone",
                {"route": route, "registered": registered,
                 "contacts": dict(p.contacts) if p else {}, "waiting": n,
                 "last_delivery": last, "numbers": list(phone.number) if phone else [],
                 "notify": phone.notify if phone else "none",
                 "down": self.down_reason(endpoint)}))
        return rows


def build(wiring: Any, section: Any, client: Optional[AMIClient] = None) -> PhonesChannel:
    """Wire the phones channel into the daemon: routes, the AMI session (a child service
    named "pbx"), the notices, the status rows."""
    channel = PhonesChannel(section, wiring.settings.phones, wiring.dispatcher, wiring.store,
                            wiring.reactor, wiring.metrics, client)
    channel.add_routes()
    channel.client.setServiceParent(wiring.parent)
    if any(p.notify != "none" for p in wiring.settings.phones.interfaces):
        wiring.store.final_listeners.append(channel.finals)
    wiring.board.register(channel.status, "phones")
    if not channel.endpoints:
        log.warn("[ami] is configured but [phones] names no endpoint: nothing is delivered"
                 " over AMI")
    return channel
