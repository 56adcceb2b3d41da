"""Policy: which interface carries a message.  Pure: plain function calls, no I/O.

Outbound (from the PBX), in this order:

1. WEBSMS_INDEX (the dialplan's 4th FastAGI argument, `websms ... INDEX`, the API's
   `interface`) names an interface of any section: that one, and only that one.
2. A reply goes out through the interface that owns the sender's number: a number
   configured for an interface (`number [sim1] = +4670...`), else the interface the last
   message to that number came in on (the DID or the SIM).  The rule below (or the
   default) follows as fallback.  `[route] replies = no` turns this off.
3. The rule of `[route]` with the longest prefix of the destination: its interfaces in
   order, each the fallback of the one before.
4. `[route] default`, else the first [websms] interface.

Inbound (to the PBX): the routes that deliver to the phones.  With `[astqueue] delivery =
ami`, an SMS to a number goes to every [phones] endpoint that has that number, one copy
each on its own route (`ami:john.doe`, `ami:desk`: each waits for its own phone); an SMS to
a number no endpoint has, and every SMS with delivery = callfile, goes to the call files
(`callfile`: the dialplan decides, as with the PHP service).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from websmsd.channel import route_name
from websmsd.config.route import RouteSettings
from websmsd.message import Message, new_id
from websmsd.record import frozen

NO_INTERFACE = "no interface configured for outbound SMS (give [websms] a url_host)"
PHONE_KIND = "ami"  # the route kind of a PBX phone reached over AMI: ami:<endpoint>


@frozen
class Interface:
    """An interface that can carry a message from the PBX."""

    name: str  # the [index] of its section: what WEBSMS_INDEX names
    kind: str  # itsp, goip, yeastar, smssync, smsgateway, smsgate
    numbers: Tuple[str, ...] = ()  # its own numbers (a SIM's, a DID's)
    # It takes numbers as people write them, "(206) 555-0100", and normalises them
    # itself (an ITSP interface with num_country): punctuation is dropped first.
    compact: bool = False

    @property
    def route(self) -> str:
        return route_name(self.kind, self.name)


@frozen
class Decision:
    routes: Tuple[str, ...]  # the route, then its fallbacks; () when there is none
    reason: str  # why: one line for check-config and the log
    interface: Optional[Interface] = None

    @property
    def route(self) -> Optional[str]:
        return self.routes[0] if self.routes else None

    @property
    def fallback(self) -> Tuple[str, ...]:
        return self.routes[1:]


class Router:
    def __init__(self, interfaces: Sequence[Interface], settings: RouteSettings = RouteSettings(),
                 inbound_route: str = "callfile",
                 phones: Optional[Callable[[str], Sequence[str]]] = None):
        """`phones(number) -> [endpoint]`: the PBX phones that get SMS to `number`
        directly ([phones] with delivery = ami); None: every SMS goes to `inbound_route`."""
        self.phones = phones
        self.interfaces: Dict[str, Interface] = {}
        for iface in interfaces:
            self.interfaces.setdefault(iface.name, iface)
        self.settings = settings
        self.inbound_route = inbound_route
        self._by_route = {i.route: i for i in interfaces}
        self._owners: Dict[str, Interface] = {}
        for iface in interfaces:
            for number in iface.numbers:
                self._owners.setdefault(_digits(number), iface)
        self._rules = sorted(((p, rule) for rule in settings.rules for p in rule.prefixes),
                             key=lambda pr: -len(pr[0]))

    def outbound(self, to: str, sender: str, index: Optional[str] = None,
                 came_in_on: Optional[str] = None) -> Decision:
        """The routes for a message from `sender` to `to`.

        `came_in_on`: the source of the last message to `sender` (websmsd.store's
        `owners`), e.g. "webhook:tw" or "goip:sim1", when the store knows one."""
        if index:
            iface = self.interfaces.get(index)
            if iface is None:
                known = ", ".join(repr(n) for n in self.interfaces) or "none"
                return Decision((), f"no interface named {index!r} (interfaces: {known})")
            return Decision((iface.route,), f"WEBSMS_INDEX names interface {index!r}", iface)
        if not self.interfaces:
            return Decision((), NO_INTERFACE)
        first: Tuple[Interface, ...] = ()
        why = []
        if self.settings.replies and sender:
            owner = self._owners.get(_digits(sender))
            if owner is not None:
                first = (owner,)
                why.append(f"{sender} is a number of interface {owner.name!r}")
            elif came_in_on:
                learned = self._interface_of_source(came_in_on)
                if learned is not None:
                    first = (learned,)
                    why.append(f"a reply: messages to {sender} came in on {learned.name!r}")
        rule = self._rule_for(to)
        if rule is not None:
            rest = tuple(self.interfaces[n] for n in rule[1].via if n in self.interfaces)
            why.append(f"rule {rule[1].name!r} (prefix {rule[0]})")
        elif self.settings.default:
            rest = tuple(self.interfaces[n] for n in self.settings.default if n in self.interfaces)
            why.append("the default of [route]")
        else:
            rest = (next(iter(self.interfaces.values())),)
            if not first:
                why.append("the first interface")
        chain: list = []
        for iface in first + rest:
            if iface not in chain:
                chain.append(iface)
        routes = tuple(i.route for i in chain)
        reason = "; then ".join(why) if why else "the only interface"
        if len(chain) > 1:
            reason += " (then " + ", ".join(repr(i.name) for i in chain[1:]) + " if it fails or is down)"
        return Decision(routes, reason, chain[0])

    def inbound(self, recipient: str) -> str:
        """The (first) route that delivers a message for `recipient` to the PBX's phones."""
        return self.inbound_routes(recipient)[0]

    def inbound_routes(self, recipient: str) -> Tuple[str, ...]:
        """Every route that delivers a message for `recipient`: one per phone that has
        the number, else the inbound route (call files: the dialplan decides)."""
        if self.phones is not None:
            endpoints = self.phones(recipient)
            if endpoints:
                return tuple(route_name(PHONE_KIND, e) for e in endpoints)
        return (self.inbound_route,)

    def _rule_for(self, to: str):
        for prefix, rule in self._rules:
            if to.startswith(prefix):
                return prefix, rule
        return None

    def _interface_of_source(self, source: str) -> Optional[Interface]:
        kind, _, name = source.partition(":")
        if kind == "webhook":
            # An ITSP's webhook interface answers through the [websms] one of its name.
            return next((i for i in self.interfaces.values()
                         if i.kind == "itsp" and i.name == name), None)
        return self._by_route.get(source)


def _digits(number: str) -> str:
    """A number as compared for ownership: +46 70-123 45 67 and +46701234567 alike."""
    return "".join(c for c in number if c.isdigit() or c == "+")


def fan_out(message: Message, routes: Sequence[str]) -> List[Message]:
    """`message` on the first of `routes`, and a copy of it on each other one (an SMS to
    a number that two phones share): each copy has its own id and, when the message has
    a dedupe key, its own key derived from it, so that a resent webhook is still
    recognised for every copy."""
    message.route = routes[0]
    copies = [message]
    for route in routes[1:]:
        copies.append(dataclasses.replace(
            message, id=new_id(message.created), route=route,
            dedupe_key=f"{message.dedupe_key}|{route}" if message.dedupe_key else None))
    return copies


def router_for(settings: Any, inbound_route: str = "callfile") -> Router:
    """The router of a daemon with these settings (websmsd.config.Settings)."""
    interfaces = [Interface(name, kind, numbers, compact)
                  for name, kind, numbers, compact in settings.interfaces()]
    phones = None
    if getattr(settings.astqueue, "delivery", "callfile") == "ami":
        phones = settings.phones.endpoints_of
    return Router(interfaces, settings.route, inbound_route, phones)
