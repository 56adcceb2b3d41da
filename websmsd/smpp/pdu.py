"""SMPP 3.4 PDU codec, sans-IO.

The body of every command is described as data (``BODIES``: the mandatory fields in
order; ``TLVS``: the optional parameters by tag), and one encoder and one decoder walk
those tables. ``PDUReader.feed(bytes)`` frames a byte stream into events:

- :class:`PDU`: a decoded PDU;
- :class:`DecodeError`: a PDU whose header was sound but whose body was not. It carries
  the sequence number and the command_status to answer with (``error_response()``
  builds that answer); the session stays bound;
- :class:`FramingError`: a command_length that cannot be right (below 16 or above the
  cap). The stream can no longer be framed: the caller sends a generic_nack and drops
  the connection. The reader returns nothing after it.

Leniencies, each for a real peer: a C-octet string that runs to the end of the PDU
without its NUL is complete (a GoIP's bind_transceiver_resp carries its system_id
without one); a response whose body is absent or cut short has its missing fields
defaulted (SMPP 3.4 omits the body of an error response); unknown optional parameters
are kept as raw ``(tag, bytes)``, and so is a known one whose length is not the one the
specification gives, rather than refusing a message for an SMSC's vendor tag.

Nothing here imports Twisted. Errors are :class:`PDUError` (a ``ValueError``) for what
the caller asked to encode; decoding never raises.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from websmsd import sms

HEADER = struct.Struct(">IIII")
HEADER_SIZE = 16
MAX_PDU_LENGTH = 64 * 1024
RESPONSE_BIT = 0x80000000


class PDUError(ValueError):
    """A PDU that cannot be encoded as asked (unknown field, value out of range...)."""


# -- command_status ------------------------------------------------------------------------

ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RINVPRTFLG = 0x06
ESME_RINVREGDLVFLG = 0x07
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RINVMSGID = 0x0C
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RCANCELFAIL = 0x11
ESME_RREPLACEFAIL = 0x13
ESME_RMSGQFUL = 0x14
ESME_RINVSERTYP = 0x15
ESME_RINVNUMDESTS = 0x33
ESME_RINVDLNAME = 0x34
ESME_RINVDESTFLAG = 0x40
ESME_RINVSUBREP = 0x42
ESME_RINVESMCLASS = 0x43
ESME_RCNTSUBDL = 0x44
ESME_RSUBMITFAIL = 0x45
ESME_RINVSRCTON = 0x48
ESME_RINVSRCNPI = 0x49
ESME_RINVDSTTON = 0x50
ESME_RINVDSTNPI = 0x51
ESME_RINVSYSTYP = 0x53
ESME_RINVREPFLAG = 0x54
ESME_RINVNUMMSGS = 0x55
ESME_RTHROTTLED = 0x58
ESME_RINVSCHED = 0x61
ESME_RINVEXPIRY = 0x62
ESME_RINVDFTMSGID = 0x63
ESME_RX_T_APPN = 0x64
ESME_RX_P_APPN = 0x65
ESME_RX_R_APPN = 0x66
ESME_RQUERYFAIL = 0x67
ESME_RINVOPTPARSTREAM = 0xC0
ESME_ROPTPARNOTALLWD = 0xC1
ESME_RINVPARLEN = 0xC2
ESME_RMISSINGOPTPARAM = 0xC3
ESME_RINVOPTPARAMVAL = 0xC4
ESME_RDELIVERYFAILURE = 0xFE
ESME_RUNKNOWNERR = 0xFF

STATUS_NAMES: Dict[int, str] = {
    v: k for k, v in sorted(globals().items()) if k.startswith("ESME_") and isinstance(v, int)
}


def status_name(status: int) -> str:
    """``ESME_RTHROTTLED`` for 0x58; ``0x00000400`` for a code SMPP 3.4 does not name."""
    return STATUS_NAMES.get(status, f"0x{status:08X}")


# -- esm_class and friends ---------------------------------------------------------------

ESM_UDHI = 0x40                 # the short_message starts with a user data header
ESM_TYPE_MASK = 0x3C            # bits 5-2: message type
ESM_SMSC_RECEIPT = 0x04
ESM_SME_ACK = 0x08
ESM_USER_ACK = 0x10
ESM_INTERMEDIATE = 0x20

# -- the tables ----------------------------------------------------------------------------

COMMAND_IDS: Dict[str, int] = {
    "generic_nack": 0x80000000,
    "bind_receiver": 0x00000001, "bind_receiver_resp": 0x80000001,
    "bind_transmitter": 0x00000002, "bind_transmitter_resp": 0x80000002,
    "submit_sm": 0x00000004, "submit_sm_resp": 0x80000004,
    "deliver_sm": 0x00000005, "deliver_sm_resp": 0x80000005,
    "unbind": 0x00000006, "unbind_resp": 0x80000006,
    "bind_transceiver": 0x00000009, "bind_transceiver_resp": 0x80000009,
    "outbind": 0x0000000B,
    "enquire_link": 0x00000015, "enquire_link_resp": 0x80000015,
    "alert_notification": 0x00000102,
    "data_sm": 0x00000103, "data_sm_resp": 0x80000103,
}
COMMAND_NAMES: Dict[int, str] = {v: k for k, v in COMMAND_IDS.items()}

# Field kinds: ("int", size) | ("cstr", max octets with the NUL) | ("sm",): sm_length
# then that many octets of short_message.
_BIND = (
    ("system_id", "cstr", 16), ("password", "cstr", 9), ("system_type", "cstr", 13),
    ("interface_version", "int", 1), ("addr_ton", "int", 1), ("addr_npi", "int", 1),
    ("address_range", "cstr", 41),
)
_SM = (
    ("service_type", "cstr", 6),
    ("source_addr_ton", "int", 1), ("source_addr_npi", "int", 1),
    ("source_addr", "cstr", 21),
    ("dest_addr_ton", "int", 1), ("dest_addr_npi", "int", 1),
    ("destination_addr", "cstr", 21),
    ("esm_class", "int", 1), ("protocol_id", "int", 1), ("priority_flag", "int", 1),
    ("schedule_delivery_time", "cstr", 17), ("validity_period", "cstr", 17),
    ("registered_delivery", "int", 1), ("replace_if_present_flag", "int", 1),
    ("data_coding", "int", 1), ("sm_default_msg_id", "int", 1),
    ("short_message", "sm", 254),
)
_DATA_SM = (
    ("service_type", "cstr", 6),
    ("source_addr_ton", "int", 1), ("source_addr_npi", "int", 1),
    ("source_addr", "cstr", 65),
    ("dest_addr_ton", "int", 1), ("dest_addr_npi", "int", 1),
    ("destination_addr", "cstr", 65),
    ("esm_class", "int", 1), ("registered_delivery", "int", 1), ("data_coding", "int", 1),
)
_BIND_RESP = (("system_id", "cstr", 16),)
_MESSAGE_ID = (("message_id", "cstr", 65),)

BODIES: Dict[str, Tuple[Tuple, ...]] = {
    "generic_nack": (),
    "bind_receiver": _BIND, "bind_transmitter": _BIND, "bind_transceiver": _BIND,
    "bind_receiver_resp": _BIND_RESP, "bind_transmitter_resp": _BIND_RESP,
    "bind_transceiver_resp": _BIND_RESP,
    "outbind": (("system_id", "cstr", 16), ("password", "cstr", 9)),
    "unbind": (), "unbind_resp": (), "enquire_link": (), "enquire_link_resp": (),
    "submit_sm": _SM, "deliver_sm": _SM,
    "submit_sm_resp": _MESSAGE_ID, "deliver_sm_resp": _MESSAGE_ID,
    "data_sm": _DATA_SM, "data_sm_resp": _MESSAGE_ID,
    "alert_notification": (
        ("source_addr_ton", "int", 1), ("source_addr_npi", "int", 1),
        ("source_addr", "cstr", 65),
        ("esme_addr_ton", "int", 1), ("esme_addr_npi", "int", 1),
        ("esme_addr", "cstr", 65),
    ),
}

# tag -> (name, kind, size): kind "int" (size octets, big-endian), "cstr" (size = max
# octets with the NUL), "octets" (size None = any length, else exactly size).
TLVS: Dict[int, Tuple[str, str, Optional[int]]] = {
    0x0005: ("dest_addr_subunit", "int", 1),
    0x0006: ("dest_network_type", "int", 1),
    0x0007: ("dest_bearer_type", "int", 1),
    0x0008: ("dest_telematics_id", "int", 2),
    0x000D: ("source_addr_subunit", "int", 1),
    0x000E: ("source_network_type", "int", 1),
    0x000F: ("source_bearer_type", "int", 1),
    0x0010: ("source_telematics_id", "int", 1),
    0x0017: ("qos_time_to_live", "int", 4),
    0x0019: ("payload_type", "int", 1),
    0x001D: ("additional_status_info_text", "cstr", 256),
    0x001E: ("receipted_message_id", "cstr", 65),
    0x0030: ("ms_msg_wait_facilities", "int", 1),
    0x0201: ("privacy_indicator", "int", 1),
    0x0202: ("source_subaddress", "octets", None),
    0x0203: ("dest_subaddress", "octets", None),
    0x0204: ("user_message_reference", "int", 2),
    0x0205: ("user_response_code", "int", 1),
    0x020A: ("source_port", "int", 2),
    0x020B: ("destination_port", "int", 2),
    0x020C: ("sar_msg_ref_num", "int", 2),
    0x020D: ("language_indicator", "int", 1),
    0x020E: ("sar_total_segments", "int", 1),
    0x020F: ("sar_segment_seqnum", "int", 1),
    0x0210: ("sc_interface_version", "int", 1),
    0x0302: ("callback_num_pres_ind", "int", 1),
    0x0303: ("callback_num_atag", "octets", None),
    0x0304: ("number_of_messages", "int", 1),
    0x0381: ("callback_num", "octets", None),
    0x0420: ("dpf_result", "int", 1),
    0x0421: ("set_dpf", "int", 1),
    0x0422: ("ms_availability_status", "int", 1),
    0x0423: ("network_error_code", "octets", 3),
    0x0424: ("message_payload", "octets", None),
    0x0425: ("delivery_failure_reason", "int", 1),
    0x0426: ("more_messages_to_send", "int", 1),
    0x0427: ("message_state", "int", 1),
    0x0501: ("ussd_service_op", "octets", 1),
    0x1201: ("display_time", "int", 1),
    0x1203: ("sms_signal", "int", 2),
    0x1204: ("ms_validity", "int", 1),
    0x130C: ("alert_on_message_delivery", "octets", None),
    0x1380: ("its_reply_type", "int", 1),
    0x1383: ("its_session_info", "octets", 2),
}
TLV_TAGS: Dict[str, int] = {spec[0]: tag for tag, spec in TLVS.items()}

_MANDATORY_NAMES = {cmd: frozenset(f[0] for f in body) for cmd, body in BODIES.items()}


# -- the PDU -------------------------------------------------------------------------------


class PDU:
    """One SMPP PDU: ``command`` (a name from ``COMMAND_IDS``), ``sequence``,
    ``status`` (command_status), ``fields`` (mandatory fields and known optional
    parameters by name) and ``tlvs`` (other optional parameters as ``(tag, bytes)``).

    C-octet strings are ``str`` (read as Latin-1, so no octet is lost), integers
    ``int``, short_message and octet TLVs ``bytes``. ``pdu['x']`` and ``pdu.get('x')``
    read fields. The password never appears in ``repr``.
    """

    __slots__ = ("command", "sequence", "status", "fields", "tlvs")

    def __init__(self, command: str, sequence: int = 0, status: int = 0,
                 fields: Optional[dict] = None, tlvs: Iterable[Tuple[int, bytes]] = (),
                 **kw):
        if command not in COMMAND_IDS:
            raise PDUError(f"unknown SMPP command {command!r}")
        self.command = command
        self.sequence = sequence
        self.status = status
        self.fields = dict(fields or {}, **kw)
        self.tlvs = [(int(t), bytes(v)) for t, v in tlvs]

    @property
    def command_id(self) -> int:
        return COMMAND_IDS[self.command]

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def __getitem__(self, name):
        return self.fields[name]

    def get(self, name, default=None):
        return self.fields.get(name, default)

    def resp(self, status: int = ESME_ROK, **fields) -> "PDU":
        """The response to this request, same sequence number."""
        name = COMMAND_NAMES.get(self.command_id | RESPONSE_BIT)
        if self.is_response or name is None:
            raise PDUError(f"{self.command} has no response")
        return PDU(name, self.sequence, status, fields)

    def encode(self) -> bytes:
        return encode(self)

    def __eq__(self, other):
        if not isinstance(other, PDU):
            return NotImplemented
        return (self.command, self.sequence, self.status, self.fields, self.tlvs) == (
            other.command, other.sequence, other.status, other.fields, other.tlvs)

    def __repr__(self):
        shown = {k: ("***" if k == "password" else v) for k, v in self.fields.items()}
        extra = f", tlvs={self.tlvs!r}" if self.tlvs else ""
        return (f"PDU({self.command!r}, seq={self.sequence}, "
                f"status={status_name(self.status)}, {shown!r}{extra})")


# -- encoding ------------------------------------------------------------------------------


def _int_bytes(name: str, value, size: int) -> bytes:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < (1 << (8 * size)):
        raise PDUError(f"{name} must be an integer 0..{(1 << (8 * size)) - 1}, got {value!r}")
    return value.to_bytes(size, "big")


def _cstr_bytes(name: str, value, size: int) -> bytes:
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raise PDUError(f"{name} must be Latin-1 text, got {value!r}") from None
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise PDUError(f"{name} must be text, got {value!r}")
    if b"\x00" in raw:
        raise PDUError(f"{name} must not contain NUL")
    if len(raw) + 1 > size:
        raise PDUError(f"{name} longer than {size - 1} octets: {value!r}")
    return raw + b"\x00"


def _octets(name: str, value) -> bytes:
    if isinstance(value, str):
        raise PDUError(f"{name} must be bytes (encode the text first)")
    try:
        return bytes(value)
    except TypeError:
        raise PDUError(f"{name} must be bytes, got {value!r}") from None


def _encode_tlv(name: str, value) -> bytes:
    tag = TLV_TAGS[name]
    _, kind, size = TLVS[tag]
    if kind == "int":
        raw = _int_bytes(name, value, size)
    elif kind == "cstr":
        raw = _cstr_bytes(name, value, size)
    else:
        raw = _octets(name, value)
        if size is not None and len(raw) != size:
            raise PDUError(f"{name} must be {size} octets")
    if len(raw) > 0xFFFF:
        raise PDUError(f"{name} longer than 65535 octets")
    return struct.pack(">HH", tag, len(raw)) + raw


def encode(pdu: PDU) -> bytes:
    """The wire form of ``pdu``. Mandatory fields left out are 0 / empty. PDUError for
    an unknown field name or a value that does not fit its field."""
    body = BODIES[pdu.command]
    fields = pdu.fields
    for name in fields:
        if name not in _MANDATORY_NAMES[pdu.command] and name not in TLV_TAGS:
            raise PDUError(f"{pdu.command} has no field {name!r}")
    out = []
    for name, kind, size in body:
        value = fields.get(name)
        if kind == "int":
            out.append(_int_bytes(name, value or 0, size))
        elif kind == "cstr":
            out.append(_cstr_bytes(name, "" if value is None else value, size))
        else:  # short_message
            raw = _octets(name, value or b"")
            if len(raw) > size:
                raise PDUError(f"short_message longer than {size} octets "
                               "(use message_payload)")
            out.append(bytes((len(raw),)) + raw)
    for name, value in fields.items():
        if name in TLV_TAGS and name not in _MANDATORY_NAMES[pdu.command] and value is not None:
            out.append(_encode_tlv(name, value))
    for tag, raw in pdu.tlvs:
        if not 0 <= tag <= 0xFFFF or len(raw) > 0xFFFF:
            raise PDUError(f"raw TLV 0x{tag:04X} out of range")
        out.append(struct.pack(">HH", tag, len(raw)) + raw)
    data = b"".join(out)
    length = HEADER_SIZE + len(data)
    for name, value in (("sequence", pdu.sequence), ("status", pdu.status)):
        _int_bytes(name, value, 4)
    return HEADER.pack(length, pdu.command_id, pdu.status, pdu.sequence) + data


# -- decoding ------------------------------------------------------------------------------


class DecodeError(NamedTuple):
    """A PDU with a sound header and a bad body (or an unknown command). ``status`` is
    what to answer with; ``header_status`` the command_status it carried."""

    command_id: int
    sequence: int
    status: int
    header_status: int
    reason: str

    @property
    def command(self) -> Optional[str]:
        return COMMAND_NAMES.get(self.command_id)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def error_response(self) -> Optional[PDU]:
        """The answer: the command's own response with ``status``, or generic_nack for
        an unknown command; None for a response (a response is never answered)."""
        if self.is_response:
            return None
        resp = COMMAND_NAMES.get(self.command_id | RESPONSE_BIT)
        if self.command is None or resp is None:
            return PDU("generic_nack", self.sequence, self.status)
        return PDU(resp, self.sequence, self.status)


class FramingError(NamedTuple):
    """A command_length that loses the framing. ``sequence`` is the offending header's
    sequence number when it could be read (else None). Answer with
    ``generic_nack()`` and close the connection."""

    length: int
    sequence: Optional[int]
    reason: str

    def generic_nack(self) -> PDU:
        return PDU("generic_nack", self.sequence or 0, ESME_RINVCMDLEN)


class _Bad(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _read_cstr(data: bytes, pos: int, end: int) -> Tuple[str, int]:
    nul = data.find(b"\x00", pos, end)
    if nul < 0:
        # A string that runs to the end of the PDU is complete (GoIP bind_resp).
        return data[pos:end].decode("latin-1"), end
    return data[pos:nul].decode("latin-1"), nul + 1


def _decode_tlvs(data: bytes, pos: int, end: int, fields: dict, raw: list) -> None:
    while pos < end:
        if end - pos < 4:
            raise _Bad(ESME_RINVOPTPARSTREAM,
                       f"{end - pos} stray octets where an optional parameter should be")
        tag, length = struct.unpack_from(">HH", data, pos)
        pos += 4
        if pos + length > end:
            raise _Bad(ESME_RINVOPTPARSTREAM,
                       f"optional parameter 0x{tag:04X} of {length} octets overruns the PDU")
        value = data[pos:pos + length]
        pos += length
        spec = TLVS.get(tag)
        if spec is None or spec[0] in fields:
            raw.append((tag, value))
            continue
        name, kind, size = spec
        if kind == "int":
            if length != size:
                raw.append((tag, value))
            else:
                fields[name] = int.from_bytes(value, "big")
        elif kind == "cstr":
            if length > size:
                raw.append((tag, value))
            else:
                fields[name] = value.split(b"\x00", 1)[0].decode("latin-1")
        else:
            if size is not None and length != size:
                raw.append((tag, value))
            else:
                fields[name] = value


def decode_body(command: str, data: bytes, pos: int, end: int) -> Tuple[dict, list]:
    """Fields and raw TLVs of one body (``data[pos:end]``). Raises ``_Bad``."""
    fields: dict = {}
    raw: list = []
    is_resp = bool(COMMAND_IDS[command] & RESPONSE_BIT)
    for name, kind, size in BODIES[command]:
        if pos >= end:
            if is_resp:
                # an error response may come without its body; a cut one is read
                # as far as it goes
                fields[name] = b"" if kind == "sm" else ("" if kind == "cstr" else 0)
                continue
            raise _Bad(ESME_RINVCMDLEN, f"{command} body ends before {name}")
        if kind == "int":
            if pos + size > end:
                raise _Bad(ESME_RINVCMDLEN, f"{command} body ends inside {name}")
            fields[name] = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif kind == "cstr":
            fields[name], pos = _read_cstr(data, pos, end)
        else:
            length = data[pos]
            pos += 1
            if pos + length > end:
                raise _Bad(ESME_RINVMSGLEN,
                           f"sm_length {length} exceeds the {end - pos} octets left")
            fields[name] = bytes(data[pos:pos + length])
            pos += length
    _decode_tlvs(data, pos, end, fields, raw)
    return fields, raw


def decode(data: bytes) -> Union[PDU, DecodeError, FramingError]:
    """Decode exactly one whole PDU (header included)."""
    data = bytes(data)
    length = int.from_bytes(data[:4], "big") if len(data) >= 4 else 0
    if len(data) < HEADER_SIZE or length != len(data):
        return FramingError(length, None, f"{len(data)} octets are not one PDU of {length}")
    return _decode_one(data, 0, length)


def _decode_one(data: bytes, start: int, length: int) -> Union[PDU, DecodeError]:
    _, command_id, status, sequence = HEADER.unpack_from(data, start)
    command = COMMAND_NAMES.get(command_id)
    if command is None:
        return DecodeError(command_id, sequence, ESME_RINVCMDID, status,
                           f"unknown command_id 0x{command_id:08X}")
    try:
        fields, raw = decode_body(command, data, start + HEADER_SIZE, start + length)
    except _Bad as bad:
        return DecodeError(command_id, sequence, bad.status, status, bad.reason)
    pdu = PDU.__new__(PDU)
    pdu.command, pdu.sequence, pdu.status, pdu.fields, pdu.tlvs = (
        command, sequence, status, fields, raw)
    return pdu


class PDUReader:
    """Frames a byte stream into PDUs. ``feed(data)`` returns the events completed by
    ``data``: :class:`PDU`, :class:`DecodeError` or :class:`FramingError`. After a
    FramingError the stream is lost: ``broken`` is True and ``feed`` returns nothing.
    Memory is bounded by ``max_length``: a declared length above it is a FramingError
    at once, before its body is read."""

    def __init__(self, max_length: int = MAX_PDU_LENGTH):
        self.max_length = max_length
        self._buf = bytearray()
        self.broken = False

    @property
    def pending(self) -> int:
        """Octets held of a PDU not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Union[PDU, DecodeError, FramingError]]:
        if self.broken:
            return []
        buf = self._buf
        buf += data
        events: list = []
        while len(buf) >= 4:
            length = int.from_bytes(buf[:4], "big")
            if length < HEADER_SIZE or length > self.max_length:
                seq = int.from_bytes(buf[12:16], "big") if len(buf) >= 16 else None
                why = "below the 16-octet header" if length < HEADER_SIZE else (
                    f"above the {self.max_length}-octet limit")
                events.append(FramingError(length, seq, f"command_length {length} is {why}"))
                self.broken = True
                buf.clear()
                break
            if len(buf) < length:
                break
            events.append(_decode_one(bytes(buf[:length]), 0, length))
            del buf[:length]
        return events


# -- building submit_sm --------------------------------------------------------------------

LONG_METHODS = ("payload", "udh", "sar")


def _address(name: str, value: str, limit: int = 20) -> str:
    if not isinstance(value, str):
        raise PDUError(f"{name} must be text")
    if any(not (0x20 < ord(c) < 0x7F) for c in value) or len(value) > limit:
        raise PDUError(f"{name} must be at most {limit} printable ASCII characters "
                       f"without blanks: {value!r}")
    return value


def submits_for(dest: str, text: str, *, source: str = "", source_ton: int = 5,
                source_npi: int = 1, dest_ton: int = 1, dest_npi: int = 1,
                encoding: Optional[str] = None, long_method: str = "payload",
                ref: Optional[int] = None, registered_delivery: bool = True,
                udh16: bool = False) -> List[dict]:
    """The submit_sm field dicts that carry ``text`` to ``dest``, in order.

    ``encoding`` None picks GSM 03.38 when the text fits it, else UCS-2. A text longer
    than one SMS goes, by ``long_method``: ``payload`` (the default, what a GoIP takes):
    one submit_sm with the whole text in message_payload; ``udh``: one submit_sm per part
    with a concatenation UDH (esm_class 0x40; 8-bit reference, 16-bit with ``udh16``);
    ``sar``: one per part with sar_msg_ref_num / sar_total_segments / sar_segment_seqnum.
    ``udh`` and ``sar`` need ``ref`` (taken modulo 256, or 65536 for ``udh16`` and
    ``sar``). A leading ``+`` of ``dest`` is dropped when ``dest_ton`` is 1
    (international). Every part asks for a receipt when ``registered_delivery``.
    PDUError / sms.SMSError when the text or an address cannot be carried.
    """
    if long_method not in LONG_METHODS:
        raise PDUError(f"unknown long_method {long_method!r} (one of {', '.join(LONG_METHODS)})")
    if dest_ton == 1 and dest.startswith("+"):
        dest = dest[1:]
    _address("destination_addr", dest)
    if not dest:
        raise PDUError("destination_addr is empty")
    _address("source_addr", source)
    info = sms.segments(text, encoding, udh16=udh16)
    base = {
        "source_addr_ton": source_ton, "source_addr_npi": source_npi,
        "source_addr": source,
        "dest_addr_ton": dest_ton, "dest_addr_npi": dest_npi, "destination_addr": dest,
        "esm_class": 0, "registered_delivery": 1 if registered_delivery else 0,
        "data_coding": info.data_coding,
    }
    for name in ("source_addr_ton", "source_addr_npi", "dest_addr_ton", "dest_addr_npi"):
        _int_bytes(name, base[name], 1)
    if info.parts == 1:
        return [dict(base, short_message=sms.encode(text, info.encoding)[1])]
    if long_method == "payload":
        payload = sms.encode(text, info.encoding)[1]
        if len(payload) > 0xFFFF:
            raise PDUError(f"text of {len(payload)} octets exceeds message_payload's 65535")
        return [dict(base, short_message=b"", message_payload=payload)]
    if ref is None:
        raise PDUError(f"long_method {long_method!r} needs a reference number (ref)")
    parts = sms.split(text, info.encoding, udh16=udh16)
    if len(parts) > 255:
        raise PDUError(f"text needs {len(parts)} parts; at most 255 can be joined")
    out = []
    for seq, part in enumerate(parts, 1):
        payload = sms.encode(part, info.encoding)[1]
        if long_method == "udh":
            udh = sms.build_udh(ref % (0x10000 if udh16 else 0x100), len(parts), seq,
                                ref16=udh16)
            out.append(dict(base, esm_class=ESM_UDHI, short_message=udh + payload))
        else:
            out.append(dict(base, short_message=payload, sar_msg_ref_num=ref % 0x10000,
                            sar_total_segments=len(parts), sar_segment_seqnum=seq))
    return out


# -- reading deliver_sm --------------------------------------------------------------------


def deliver_text(pdu: PDU, *, dc0: str = "gsm") -> Tuple[str, Optional[sms.Concat]]:
    """The text of a deliver_sm (or data_sm) and its concatenation information.

    The text comes from message_payload when present (a GoIP puts a long text there
    with an empty short_message), else from short_message; a UDH (esm_class 0x40) is
    read for 8- and 16-bit references, else the sar_ parameters; the rest is decoded
    by data_coding (``dc0``: see :func:`websmsd.sms.decode_detail`). Concat is None for
    a single message, and for parts whose numbers make no sense (their text is
    returned as it is). Never raises for what a peer sent.
    """
    payload = pdu.get("message_payload")
    if payload is None or (not payload and pdu.get("short_message")):
        payload = pdu.get("short_message") or b""
    concat = None
    if (pdu.get("esm_class") or 0) & ESM_UDHI:
        # A header that does not parse: the payload is read as text whole.
        with contextlib.suppress(sms.SMSError):
            udh, payload = sms.parse_udh(payload)
            concat = udh.concat
    if concat is None:
        total = pdu.get("sar_total_segments")
        seq = pdu.get("sar_segment_seqnum")
        ref = pdu.get("sar_msg_ref_num")
        if total is not None and seq is not None and ref is not None and 1 <= seq <= total:
            concat = sms.Concat(ref, total, seq, "sar")
    if concat is not None and concat.total == 1:
        concat = None
    text = sms.decode(pdu.get("data_coding") or 0, payload, dc0=dc0)
    return text, concat
