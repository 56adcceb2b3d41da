"""[websms]: the ITSP interfaces that messages from the PBX go out through."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Mapping, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import (_Context, _fields_of, _interface_names, _Key, _keys, _Read,
                                   _read_section, _warn_preset_needs, _which, _with_preset)
from websmsd.config.values import (_auth_method, _choice, _country, _header_name,
                                   _numbers, _numform, _optional_text, _path, _preset_name, _resp_check,
                                   _text, _url_host, _url_path, _val_static, _val_unicode)
from websmsd.record import frozen


@frozen
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
    # The DIDs of this account: a reply from one of them goes out through this interface.
    number: Tuple[str, ...] = ()
    # Which fields websms.conf (or a preset) gave, for check-config: ((name, origin), ...).
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def url(self) -> str:
        # The PHP concatenates the two; so do we (the zadarma signature needs url_path).
        return self.url_host + self.url_path


@frozen
class OutboundSettings:
    """All of [websms]."""

    interfaces: Tuple[OutboundInterface, ...] = ()

    def select(self, index: Optional[str]) -> Optional[OutboundInterface]:
        """The interface WEBSMS_INDEX names; the first one when it names none."""
        if not index:
            return self.interfaces[0] if self.interfaces else None
        for iface in self.interfaces:
            if iface.name == index:
                return iface
        return None



# Keys of the older documentation that never did anything: read, ignored, mentioned.
IGNORED = {"charset": "charset is ignored (the PHP service did not use it either)"}

KEYS = _keys(
    _Key("url_host", _url_host, ("host",)),
    _Key("url_path", _url_path, ("path",)),
    _Key("auth_method", _auth_method, reads_booleans=True),
    _Key("auth_user", _optional_text),
    _Key("auth_secret", _optional_text, ("auth_passwd",)),
    _Key("key_user", _optional_text),
    _Key("key_secret", _optional_text),
    _Key("key_to", _text),
    _Key("key_from", _text),
    _Key("key_body", _text),
    _Key("resp_check", _resp_check, ("response_check",)),
    _Key("val_numform", _numform, ("number_format",)),
    _Key("val_static", _val_static),
    _Key("val_unicode", _val_unicode),
    _Key("tls_ca", _optional_text),
    _Key("encoding", _choice("form", "json")),
    _Key("method", _choice("POST", "PUT", "GET", upper=True)),
    _Key("auth_header", _header_name),
    _Key("auth_scheme", _optional_text),
    _Key("resp_id", _path),
    _Key("num_country", _country),
    _Key("preset", _preset_name),
    _Key("number", _numbers),
)


# -- [websms] ----------------------------------------------------------------------------

_CREDENTIALS = {
    "plain": ("auth_user", "auth_secret", "key_user", "key_secret"),
    "basic": ("auth_user", "auth_secret"),
    "zadarma": ("auth_user", "auth_secret"),
    "bearer": ("auth_secret",),
    "header": ("auth_secret",),
    "query": ("key_secret", "auth_secret"),
}


def read(section: Optional[IniSection], context: _Context) -> OutboundSettings:
    if section is None:
        return OutboundSettings()
    settings = _read_section(section, context, KEYS, IGNORED)
    lines = _interface_names(settings)
    names = list(lines) or [""]
    interfaces = []
    for name in names:
        reads = _with_preset("websms", settings, name, context, KEYS)
        exists = "url_host" in reads
        interface = OutboundInterface(name=name, **_fields_of(reads, OutboundInterface))
        # What is written is checked all the same (a mistake is one, url_host or not).
        interface = _check_credentials(interface, reads, section, context, quiet=not exists)
        _check_request_shape(interface, reads, section, context)
        if not exists:
            # An interface nobody pointed anywhere does not exist: the PHP's default
            # http://localhost would hand texts to whatever web server runs here.
            if "preset" in reads:
                _warn_preset_needs("websms", reads, name, context)  # says: needs url_host
            elif reads:
                context.warn(lines.get(name, section.line), None,
                             f"[websms] interface{_which(name) or ' (the only one)'} has no"
                             " url_host: it does not exist, and sends nothing")
            continue
        interfaces.append(interface)
        _warn_preset_needs("websms", reads, name, context)
    return OutboundSettings(tuple(interfaces))


def _check_request_shape(
    interface: OutboundInterface,
    reads: Mapping[str, "_Read"],
    section: IniSection,
    context: _Context,
) -> None:
    """Build a request once at start, so that key paths that collide, or a `:=` value
    that is no JSON, stop the daemon here rather than fail every message later."""
    if interface.encoding != "json":  # a form body takes every key literally, as the PHP
        return
    from websmsd.itsp import request  # the request builder is pure (no Twisted)

    try:
        request.json_document(request.build_fields(interface, "+15550000000", "+15550000001", "x"))
    except ValueError as e:
        for name in ("val_static", "key_to", "key_from", "key_body", "encoding"):
            read = reads.get(name)
            if read is not None:
                raise context.error(read.line, read.label,
                                    f"the request cannot be built: {e}{_which(interface.name)}")
        raise context.error(section.line, None, f"the request cannot be built: {e}")


def _check_credentials(
    interface: OutboundInterface,
    reads: Mapping[str, _Read],
    section: IniSection,
    context: _Context,
    quiet: bool = False,
) -> OutboundInterface:
    """Refuse an auth_method whose credentials are incomplete (PHP sent such requests
    without authentication and logged a warning each time).  `reads`: what the file (or
    the interface's preset) says for this interface."""
    needed = _CREDENTIALS.get(interface.auth_method, ())
    # PHP tests them with empty(), for which "0" is as unset as "" (http/itsp.py too).
    missing = [name for name in needed if getattr(interface, name) in (None, "", "0")]
    if not missing:
        return interface
    method = reads.get("auth_method")
    given = [reads[name] for name in needed if name not in missing and name in reads]
    if method is None and not given:
        # Nothing about authentication at all, e.g. an outbound side nobody uses: the
        # default basic has nothing to send, so say plainly that there is no auth.
        if quiet:
            return dataclasses.replace(interface, auth_method="none")
        context.warn(
            section.line, "auth_method",
            "no auth_method and no credentials: requests carry no authentication"
            + _which(interface.name),
        )
        return dataclasses.replace(interface, auth_method="none")
    where = method or given[0]
    raise context.error(
        where.line, where.label,
        f"auth_method {interface.auth_method} needs {', '.join(needed)};"
        f" missing: {', '.join(missing)}{_which(interface.name)}",
    )
