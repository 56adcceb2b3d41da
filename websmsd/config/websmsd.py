"""[websmsd]: how ITSP webhooks are read, and which interface a request is for."""

from __future__ import annotations

from dataclasses import dataclass, field
import ipaddress
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import (_Context, _fields_of, _interface_names, _Key, _keys, _Read,
                                   _read_section, _Setting, _warn_preset_needs, _which,
                                   _with_preset)
from websmsd.config.values import (SIG_METHODS, _allow_networks, _allow_paths, _any_text,
                                   _choice, _country, _dlr_map, _duration, _fields_list,
                                   _filter, _optional_choice, _optional_text, _path,
                                   _preset_name, _proxy_header, _proxy_networks, _public_url,
                                   _text)
from websmsd.itsp import presets
from websmsd.net import Network, in_networks, parse_address
from websmsd.record import frozen


@frozen
class InboundInterface:
    """One [websmsd] interface: how to read an ITSP's webhook."""

    name: str = ""
    key_to: str = "To"
    key_from: str = "From"
    key_body: str = "Body"
    key_echo: Optional[str] = None
    resp_ack: str = ""
    # New in websmsd: the request key holding the provider's message id; retries of a
    # webhook carrying the same id are acknowledged again but stored once.
    key_id: Optional[str] = None
    # How keys are found: "any" (a plain key is searched at any depth, shallowest match,
    # the text never searched: today's websms.conf files) or "path" (every key is a
    # path from the document root: presets name exact places).
    key_lookup: str = "any"
    # -- today's ITSPs -----------------------------------------------------------------
    # Path of the array of events in a body that wraps them (Infobip `results`); a body
    # that is itself a JSON array of events (Bandwidth) needs no key.
    key_events: Optional[str] = None
    val_to: Optional[str] = None  # a fixed recipient, for payloads that lack it
    val_urldecode: Tuple[str, ...] = ()  # of "to", "from", "body": URL-decode these
    key_media: Optional[str] = None  # key or path (with * wildcards) of media URLs
    num_country: Optional[str] = None  # ISO 3166 country: normalise numbers to E.164
    # What a request is: a message when msg_filter matches (path=value, or path present),
    # a delivery report when dlr_filter matches; anything else is acknowledged and ignored.
    msg_filter: Optional[str] = None
    dlr_filter: Optional[str] = None
    dlr_id: Optional[str] = None  # path of the provider's message id in a report
    dlr_status: Optional[str] = None  # path of the provider's status word
    dlr_reason: Optional[str] = None  # path of the provider's error text
    dlr_map: Optional[str] = None  # "provider_word=sent|delivered|failed,..." overrides
    resp_type: str = "text/html; charset=UTF-8"  # Content-Type of resp_ack
    # Signed webhooks: twilio, telnyx, plivo, vonage, zadarma.
    sig_method: Optional[str] = None
    sig_secret: Optional[str] = None  # auth token, signing secret, or public key
    sig_url: Optional[str] = None  # the public base URL the provider signs (behind a proxy)
    sig_tolerance: float = 300.0  # seconds a signed timestamp may be off
    preset: Optional[str] = None
    # The allow-lists as they apply to this interface (None: not set).
    remt_addr: Optional[Tuple[Network, ...]] = None
    url_path: Optional[Tuple[str, ...]] = None
    # Which fields websms.conf (or a preset) gave, for check-config: ((name, origin), ...).
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)


@frozen
class Selection:
    """The outcome of choosing an inbound interface for one request."""

    interface: Optional[InboundInterface]
    reason: str  # why it was chosen or refused, for the log (one line)

    @property
    def allowed(self) -> bool:
        return self.interface is not None


@frozen
class InboundSettings:
    """All of [websmsd].

    remt_addr and url_path are either unset, one plain value (an allow-list that selects
    nothing) or indexed (each index its own list; the last matching index is selected).
    """

    interfaces: Tuple[InboundInterface, ...] = (InboundInterface(),)
    default: InboundInterface = InboundInterface()
    remt_addr_plain: Optional[Tuple[Network, ...]] = None
    remt_addr_indexed: bool = False
    url_path_plain: Optional[Tuple[str, ...]] = None
    url_path_indexed: bool = False
    prox_addr: Tuple[Network, ...] = (
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("192.168.0.0/16"),
    )
    prox_header: Optional[str] = "HTTP_X_FORWARDED_FOR"
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def proxy_header_name(self) -> Optional[str]:
        """prox_header as an HTTP header name: PHP's HTTP_X_FORWARDED_FOR is X-Forwarded-For."""
        if not self.prox_header:
            return None
        name = self.prox_header
        if name.upper().startswith("HTTP_"):
            name = name[5:]
        return name.replace("_", "-")

    def client_address(self, peer: str, header_values: Sequence[str]) -> str:
        """The address the request really came from.

        The proxy header is believed only when the TCP peer is a trusted proxy, and then
        only up to the first hop that is not itself a trusted proxy: in
        ``X-Forwarded-For: forged, client`` appended by our proxy, the right-most
        untrusted entry is the one our proxy saw; everything left of it was written by
        the client and proves nothing.
        """
        peer_addr = parse_address(peer)
        if not (self.prox_addr and self.proxy_header_name) or not in_networks(
            peer_addr, self.prox_addr
        ):
            return peer
        hops = [h.strip() for value in header_values for h in value.split(",")]
        hops = [h for h in hops if h]
        if not hops:
            return peer
        for hop in reversed(hops):
            addr = parse_address(hop)
            if addr is None:
                # Garbage in the chain: we cannot tell who is behind it; stop at the
                # last hop we could read (our proxy itself if none).
                return peer
            if not in_networks(addr, self.prox_addr):
                return str(addr)
            peer = str(addr)
        return peer

    def select(self, client: str, path: str) -> Selection:
        """Choose the interface for a request from `client` to `path` (no query string).

        The rules of the PHP websmsd.php, kept exactly: remt_addr (if set anywhere) is an
        allow-list for every request, and when indexed selects the last matching index;
        then url_path is tested, against the selected interface only if one was chosen.
        """
        # Parsed only when an allow-list needs it (most installations have none).
        addr = parse_address(client) if (self.remt_addr_indexed or self.remt_addr_plain) else None
        chosen: Optional[InboundInterface] = None
        if self.remt_addr_indexed:
            for iface in self.interfaces:
                if iface.remt_addr is not None and in_networks(addr, iface.remt_addr):
                    chosen = iface
            if chosen is None:
                return Selection(None, f"source {client} is not in any remt_addr")
        elif self.remt_addr_plain is not None:
            if not in_networks(addr, self.remt_addr_plain):
                return Selection(None, f"source {client} is not in remt_addr")

        if chosen is not None:
            if chosen.url_path is not None and path not in chosen.url_path:
                return Selection(
                    None, f"path {path} is not a url_path of interface {chosen.name!r}"
                )
            return Selection(chosen, f"interface {chosen.name!r} chosen by source {client}")

        if self.url_path_indexed:
            for iface in self.interfaces:
                if iface.url_path is not None and path in iface.url_path:
                    chosen = iface
            if chosen is None:
                return Selection(None, f"path {path} is not in any url_path")
            return Selection(chosen, f"interface {chosen.name!r} chosen by path {path}")
        if self.url_path_plain is not None and path not in self.url_path_plain:
            return Selection(None, f"path {path} is not in url_path")
        return Selection(self.default, "default interface")



_PROXY_NOT_INDEXABLE = (
    "cannot be indexed: it is used before an interface is chosen"
    " (PHP took an indexed value as unset, which turned the proxy handling off)"
)


IGNORED = {"key_account": "key_account is ignored (the PHP service did not use it either)"}

KEYS = _keys(
    _Key("key_to", _text),
    _Key("key_from", _text),
    _Key("key_body", _text),
    _Key("key_echo", _optional_text),
    _Key("key_id", _optional_text),
    _Key("key_lookup", _choice("any", "path")),
    _Key("resp_ack", _any_text, ("report_success",)),
    _Key("remt_addr", _allow_networks, ("permit_addr", "remote_addr")),
    _Key("url_path", _allow_paths, ("request_uri",)),
    _Key("key_events", _path),
    _Key("val_to", _optional_text),
    _Key("val_urldecode", _fields_list),
    _Key("key_media", _path),
    _Key("num_country", _country),
    _Key("msg_filter", _filter),
    _Key("dlr_filter", _filter),
    _Key("dlr_id", _path),
    _Key("dlr_status", _path),
    _Key("dlr_reason", _path),
    _Key("dlr_map", _dlr_map),
    _Key("resp_type", _text),
    _Key("sig_method", _optional_choice(*SIG_METHODS)),
    _Key("sig_secret", _optional_text),
    _Key("sig_url", _public_url),
    _Key("sig_tolerance", _duration),
    _Key("preset", _preset_name),
    _Key("prox_addr", _proxy_networks, ("proxy_addr",), _PROXY_NOT_INDEXABLE, reads_booleans=True),
    _Key("prox_header", _proxy_header, ("proxy_header",), _PROXY_NOT_INDEXABLE, reads_booleans=True),
)


# -- [websmsd] ---------------------------------------------------------------------------


@dataclass
class _InboundLines:
    """Where [websmsd] said what the webhook-listener checks (in `loads`) point at."""

    remt_addr: Optional[_Read] = None  # the first remt_addr read
    sig_method: Dict[str, _Read] = field(default_factory=dict)  # by interface


def read(
    section: Optional[IniSection], context: _Context, lines: Optional[_InboundLines] = None
) -> InboundSettings:
    lines = _InboundLines() if lines is None else lines
    if section is None:
        return InboundSettings()
    settings = _read_section(section, context, KEYS, IGNORED)
    names = _interface_names(settings)
    every_reads = {name: _with_preset("websmsd", settings, name, context, KEYS) for name in names}
    default_reads = _with_preset("websmsd", settings, "", context, KEYS)
    default = InboundInterface(name="", **_fields_of(default_reads, InboundInterface))
    interfaces = tuple(
        InboundInterface(name=name, **_fields_of(every_reads[name], InboundInterface))
        for name in names
    )
    for name, reads in (every_reads.items() if names else [("", default_reads)]):
        _warn_preset_needs("websmsd", reads, name, context)
        _warn_unsigned(reads, name, context)
        if "sig_method" in reads and reads["sig_method"].value is not None:
            lines.sig_method[name] = reads["sig_method"]
    if "remt_addr" in settings:
        lines.remt_addr = settings["remt_addr"].reads()[0]
    remt_addr, url_path = settings.get("remt_addr"), settings.get("url_path")
    proxy = {
        name: settings[name].plain.value for name in ("prox_addr", "prox_header") if name in settings
    }
    inbound = InboundSettings(
        interfaces=interfaces or (default,),
        default=default,
        remt_addr_plain=remt_addr.plain.value if remt_addr and remt_addr.plain else None,
        remt_addr_indexed=bool(remt_addr and remt_addr.indexed is not None),
        url_path_plain=url_path.plain.value if url_path and url_path.plain else None,
        url_path_indexed=bool(url_path and url_path.indexed is not None),
        origins=tuple((name, "file") for name in proxy),
        **proxy,
    )
    _check_selection_order(remt_addr, list(names), _networks_overlap, context)
    _check_selection_order(url_path, list(names), _paths_overlap, context)
    _warn_unreachable(inbound, interfaces, names, context)
    return inbound


def _warn_unsigned(reads: Mapping[str, _Read], interface: str, context: _Context) -> None:
    method = reads.get("sig_method")
    if method is None or method.value is None:
        return
    secret = reads.get("sig_secret")
    if secret is None or not secret.value:
        chosen = reads.get("preset")
        preset = presets.PRESETS[chosen.value] if chosen and chosen.value else None
        what = f" ({preset.name}: {preset.sig_secret})" if preset and preset.sig_secret else ""
        context.warn(
            method.line, method.label,
            f"sig_method {method.value} is set but sig_secret is not: every webhook"
            f"{_which(interface)} is refused (403); give sig_secret{what}, or write"
            ' sig_method = "" to accept unsigned webhooks',
        )
    if method.value == "plivo":
        context.warn(
            method.line, method.label,
            "sig_method plivo also accepts Plivo's older V2 signature, which covers neither"
            " the query nor the body: one captured request lets anyone post any text to"
            f" this URL{_which(interface)}; write sig_method = plivo-v3 (Plivo sends V3 with"
            " every callback)",
        )


def _warn_unreachable(
    inbound: InboundSettings,
    interfaces: Sequence[InboundInterface],
    lines: Mapping[str, int],
    context: _Context,
) -> None:
    """Point out interfaces that InboundSettings.select can never return."""
    for interface in interfaces:
        name = interface.name
        if inbound.remt_addr_indexed and interface.remt_addr is None:
            context.warn(
                lines[name], None,
                f"interface {name!r} has no remt_addr of its own, and an indexed remt_addr"
                " refuses every source it does not list: it can never be chosen",
            )
        elif not inbound.remt_addr_indexed and not (inbound.url_path_indexed and interface.url_path):
            context.warn(
                lines[name], None,
                f"interface {name!r} can never be chosen:"
                f" give it a remt_addr[{name}] or url_path[{name}]",
            )


def _networks_overlap(first: Sequence[Network], second: Sequence[Network]) -> bool:
    return any(a.version == b.version and a.overlaps(b) for a in first for b in second)


def _paths_overlap(first: Sequence[str], second: Sequence[str]) -> bool:
    return bool(set(first) & set(second))


def _check_selection_order(
    setting: Optional[_Setting],
    names: List[str],
    overlap: Callable[[Any, Any], bool],
    context: _Context,
) -> None:
    """PHP chose the last matching index in the order of that key's own array; websmsd
    walks the interfaces in their order of first appearance in the section.  The two
    differ only when another key names an index first: refuse where that could change
    which interface a request gets, i.e. when both indexes can match one request."""
    if setting is None or setting.indexed is None:
        return
    rank = {name: position for position, name in enumerate(names)}
    order = list(setting.indexed)
    for position, earlier in enumerate(order):
        for later in order[position + 1 :]:
            if rank[later] < rank[earlier] and overlap(
                setting.indexed[earlier].value, setting.indexed[later].value
            ):
                read = setting.indexed[later]
                raise context.error(
                    read.line, read.label,
                    f"overlaps [{earlier}] and both can match one request, but interface"
                    f" {later!r} is named earlier in the section than {earlier!r}: PHP would"
                    f" choose {later!r} (last in {setting.key.name} order), websmsd {earlier!r}"
                    f" (last named); name {earlier!r} first",
                )
