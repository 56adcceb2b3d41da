"""Typed, validated settings: what websms.conf means once it has been read.

`websmsd.config` turns a websms.conf file into these objects; everything else in the
daemon reads only these.  Pure Python: no Twisted, no I/O.

Interface names are the `[index]` of websms.conf (`api-1`, or `0`, `1`... for `[]`);
the interface of a section that uses no index at all is named "".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_address(text: str) -> Optional[Address]:
    """An IP address as seen on a socket or in a header, or None if it is not one.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack listener
    reports) are turned into IPv4 so that IPv4 CIDRs match them.
    """
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" from some proxies
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(addr: Optional[Address], networks: Sequence[Network]) -> bool:
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


@dataclass(frozen=True)
class OutboundInterface:
    """One [websms] interface: how to hand an SMS to an ITSP's HTTP API."""

    name: str = ""
    url_host: str = "http://localhost"
    url_path: str = "/"
    auth_method: str = "basic"
    auth_user: Optional[str] = None
    auth_secret: Optional[str] = None
    key_user: Optional[str] = None
    key_secret: Optional[str] = None
    key_to: str = "To"
    key_from: str = "From"
    key_body: str = "Body"
    resp_check: Optional[str] = None
    val_numform: Optional[str] = None
    val_static: Optional[str] = None
    val_unicode: Optional[str] = None
    # New in websmsd: a CA bundle (PEM) to verify this ITSP's certificate with, for a
    # provider or test server with a private CA.  Certificates are always verified.
    tls_ca: Optional[str] = None
    # -- today's ITSPs (JSON APIs, tokens, ids) ----------------------------------------
    encoding: str = "form"  # "form" (byte-compatible with the PHP) or "json"
    method: str = "POST"  # POST, PUT, or GET (fields in the query string)
    # auth_method bearer: `Authorization: Bearer <auth_secret>`; header: `<auth_header>:
    # [<auth_scheme> ]<auth_secret>`; query: key_secret=<auth_secret> (and
    # key_user=<auth_user>) in the URL's query string.
    auth_header: Optional[str] = None
    auth_scheme: Optional[str] = None
    resp_id: Optional[str] = None  # path of the provider's message id in the JSON answer
    num_country: Optional[str] = None  # ISO 3166 country: normalise numbers to E.164
    preset: Optional[str] = None  # the preset the defaults came from, for check-config

    @property
    def url(self) -> str:
        # The PHP concatenates the two; so do we (the zadarma signature needs url_path).
        return self.url_host + self.url_path


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Selection:
    """The outcome of choosing an inbound interface for one request."""

    interface: Optional[InboundInterface]
    reason: str  # why it was chosen or refused, for the log (one line)

    @property
    def allowed(self) -> bool:
        return self.interface is not None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class OutboundSettings:
    """All of [websms]."""

    interfaces: Tuple[OutboundInterface, ...] = (OutboundInterface(),)

    def select(self, index: Optional[str]) -> Optional[OutboundInterface]:
        """The interface WEBSMS_INDEX names; the first one when it names none."""
        if not index:
            return self.interfaces[0] if self.interfaces else None
        for iface in self.interfaces:
            if iface.name == index:
                return iface
        return None


@dataclass(frozen=True)
class AstQueueSettings:
    """[astqueue]: how inbound messages become Asterisk call files."""

    outgoingdir: str = "/var/spool/asterisk/outgoing"
    stagingdir: str = "/var/spool/asterisk/staging"
    waittime: str = "45"
    maxretries: str = "0"
    retrytime: str = "300"
    archive: str = "no"
    channel_context: str = "default"
    context: str = "default"
    priority: str = "1"
    message_encode: str = "rfc3986"
    account: Optional[str] = None
    application: Optional[str] = None
    data: Optional[str] = None
    # Known to the PHP but without effect there; websmsd applies them to each call file
    # so that an Asterisk running as another user can read and delete it.
    filemode: Optional[int] = None
    fileowner: Optional[str] = None  # "user" or "user:group"


@dataclass(frozen=True)
class DaemonSettings:
    """[daemon]: what is new in websmsd (listeners, store, retry policy)."""

    # Endpoint strings (twisted.internet.endpoints.serverFromString).  The webhook
    # listener defaults to WEBSMSD_PORT (all interfaces, as php -S 0.0.0.0 did) when
    # that variable is numeric, else to none at all, as in the PHP service.
    webhook_listen: Tuple[str, ...] = ()
    agi_listen: Tuple[str, ...] = ("tcp:4573:interface=127.0.0.1",)
    status_listen: Tuple[str, ...] = ("tcp:8480:interface=127.0.0.1",)
    # TLS for every ssl: webhook endpoint that names no key/cert itself.
    tls_key: Optional[str] = None
    tls_cert: Optional[str] = None
    store: str = "/var/lib/websmsd/websmsd.sqlite3"
    max_body: int = 1024 * 1024  # bytes of a webhook request body
    http_timeout: float = 30.0  # seconds for one outbound HTTP request
    agi_wait: float = 10.0  # seconds a FastAGI session waits for the first attempt
    retry_base: float = 30.0  # first retry delay, doubled on each attempt...
    retry_max: float = 3600.0  # ...up to this
    max_attempts: int = 10  # then the message fails for good
    max_age: float = 2 * 86400.0  # or once it is this old (seconds)
    spool_poll: float = 0.5  # seconds between checks that Asterisk took a call file part
    # The status page and local API answer loopback clients freely; any other client
    # must give HTTP Basic credentials (status_user + status_password) or the token
    # (Authorization: Bearer <status_token>).  Without either, only loopback is served.
    status_user: Optional[str] = None
    status_password: Optional[str] = None
    status_token: Optional[str] = None


@dataclass(frozen=True)
class Settings:
    path: str = ""
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
    astqueue: AstQueueSettings = field(default_factory=AstQueueSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    # What the reader noticed but accepted (older key names, PHP quirks), for the log
    # and `websmsd check-config`.
    warnings: Tuple[str, ...] = ()
