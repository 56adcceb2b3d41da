"""The inbound webhook: field extraction (pure) and the HTTP layer, byte for byte.

The HTTP tests drive the webhook listener over a StringTransport with raw request
bytes, each twice: through twisted.web's Site (make_site, WEBSMSD_HTTP=twisted) and
through the lean HTTP/1.1 server the daemon uses (websmsd.http.leanhttp), so both answer
framing (Content-Length, chunked bodies, Expect, keep-alive) alike.  The few tests that
look inside twisted.web's objects run on the Site only; tests/test_leanhttp.py has the
lean server's own.
"""

import ipaddress
import json
from urllib.parse import quote

import pytest
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from websmsd.http.twsite import WebhookRequest, make_site
from websmsd.itsp import inbound as webhook
from websmsd.itsp.body import FieldError, UnsupportedMediaType, parse_fields
from websmsd.itsp.fields import find
from websmsd.itsp.inbound import MissingField, extract, make_message
from websmsd.http.leanhttp import LeanWebhookFactory
from websmsd.itsp.webhook import WebhookResource
from websmsd.message import IN, UnsafeValue
from websmsd.config import InboundInterface, InboundSettings

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def net(*cidrs):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# ---------------------------------------------------------------------------------
# Pure layer: parse_fields
# ---------------------------------------------------------------------------------


def test_form_field_given_twice_is_refused_not_guessed():
    tree = parse_fields(FORM, b"To=100&From=%2B15551234567&Body=hi+there%21&To=200", b"")
    assert tree == {"To": "200", "From": "+15551234567", "Body": "hi there!"}  # as PHP
    # PHP took the last To; which one the provider meant cannot be known.
    with pytest.raises(FieldError, match="'To' is given more than once"):
        find(tree, "To")
    assert find(tree, "From") == "+15551234567"
    assert find(tree, "to") is None  # case-sensitive
    tree = parse_fields(JSON, b'{"To": "1", "From": "2", "To": "3"}', b"")
    with pytest.raises(FieldError, match="'To' is given more than once"):
        find(tree, "To")


def test_nested_php_form_arrays():
    body = (
        b"msg[to]=101&msg[from]=202&msg[parts][]=a&msg[parts][]=b"
        b"&list[]=x&list[5]=y&list[]=z&deep[a][b][c][]=d&sp[ ]=s"
    )
    tree = parse_fields(FORM, body, b"")
    assert tree == {
        "msg": {"to": "101", "from": "202", "parts": {"0": "a", "1": "b"}},
        "list": {"0": "x", "5": "y", "6": "z"},
        "deep": {"a": {"b": {"c": {"0": "d"}}}},
        "sp": {"0": "s"},  # PHP reads "[ ]" as "[]"
    }
    assert find(tree, "to") == "101"
    assert find(tree, "msg") is None  # a key whose value is an array never matches
    assert find(tree, "msg.parts.1") == "b"
    assert find(tree, "list.6") == "z"


def test_php_form_names_are_mangled_like_php():
    body = b"a.b=1&c%20d=2&%20%20lead=3&%5Bx%5D=4&e[f=5&g[h][i=6&=7&j[k]tail=8"
    tree = parse_fields(FORM, body, b"")
    assert tree == {
        "a_b": "1",
        "c_d": "2",
        "lead": "3",
        "e_f": "5",
        "g": {"h": "6"},
        "j": {"k": "8"},
    }


def test_php_form_scalar_and_array_replace_each_other():
    assert parse_fields(FORM, b"a=1&a[b]=2", b"") == {"a": {"b": "2"}}
    assert parse_fields(FORM, b"a[b]=2&a=1", b"") == {"a": "1"}


def test_form_nesting_limit():
    name = "a" + "[x]" * 70
    with pytest.raises(FieldError, match="nested deeper"):
        parse_fields(FORM, name.encode() + b"=1", b"")


def test_too_many_form_fields():
    body = "&".join(f"k{i}=v" for i in range(1001)).encode()
    with pytest.raises(FieldError, match="more than 1000 fields"):
        parse_fields(FORM, body, b"")


def test_json_encoded_form_field_is_searched_zadarma_style():
    result = {"caller_id": "+79001234567", "caller_did": "74951234567", "text": "Привет"}
    body = b"event=SMS&result=" + quote(json.dumps(result, ensure_ascii=False)).encode()
    tree = parse_fields(FORM, body, b"")
    assert tree["result"] == result
    assert find(tree, "caller_id") == "+79001234567"
    assert find(tree, "text") == "Привет"
    assert find(tree, "result.caller_did") == "74951234567"


def test_json_strings_expanded_only_when_non_empty_container():
    body = b"&".join(
        [
            b"a=" + quote("{}").encode(),
            b"b=" + quote("[]").encode(),
            b"c=" + quote('"x"').encode(),
            b"d=1e3",
            b"e=" + quote("[1,2").encode(),
            b"f=" + quote(' \n[{"k":"v"}]').encode(),
            b"g=true",
            b"h=" + quote('{"n":{"inner":"{\\"no\\":1}"}}').encode(),
        ]
    )
    tree = parse_fields(FORM, body, b"")
    assert tree["a"] == "{}"
    assert tree["b"] == "[]"
    assert tree["c"] == '"x"'
    assert tree["d"] == "1e3"
    assert tree["e"] == "[1,2"
    assert tree["f"] == [{"k": "v"}]
    assert tree["g"] == "true"
    # One level only: a JSON string inside the decoded value stays text.
    assert tree["h"] == {"n": {"inner": '{"no":1}'}}


def test_json_numbers_keep_their_text():
    body = (
        b'{"To": 15551234567, "n": 1.50, "e": 1e3,'
        b' "big": 123456789012345678901234567890, "t": true, "f": false}'
    )
    tree = parse_fields(JSON, body, b"")
    assert find(tree, "To") == "15551234567"
    assert find(tree, "n") == "1.50"
    assert find(tree, "e") == "1e3"
    assert find(tree, "big") == "123456789012345678901234567890"
    assert find(tree, "t") == "true"
    assert find(tree, "f") == "false"


def test_form_values_are_never_converted():
    tree = parse_fields(FORM, b"To=%2B15551234567&Body=1e3&x=007", b"")
    assert tree == {"To": "+15551234567", "Body": "1e3", "x": "007"}


def test_json_body_any_value():
    tree = parse_fields(JSON, b'[{"To": "1"}, {"x": [1, {"To": "3"}]}]', b"")
    assert find(tree, "To") == "1"  # the shallowest
    # A scalar document has no fields: the query string is used instead.
    assert parse_fields(JSON, b'"just text"', b"To=9") == {"To": "9"}
    assert parse_fields(JSON, b"{}", b"To=9") == {"To": "9"}
    assert parse_fields(JSON, b"null", b"") == {}


def test_json_content_types_and_bom():
    for ctype in ("text/json", "application/vnd.api+json", "Application/JSON; charset=UTF-8"):
        assert parse_fields(ctype, b'{"To":"1"}', b"") == {"To": "1"}
    assert parse_fields(JSON, b'\xef\xbb\xbf{"To":"1"}', b"") == {"To": "1"}


def test_shallowest_match_wins_and_a_tie_is_refused():
    tree = parse_fields(JSON, b'{"To": "1", "x": {"To": "2"}, "y": [{"To": "3"}]}', b"")
    assert find(tree, "To") == "1"
    tree = parse_fields(JSON, b'{"x": {"To": "2"}, "To": "1"}', b"")
    assert find(tree, "To") == "1"
    tree = parse_fields(JSON, b'{"x": {"To": "2"}, "y": {"To": "3"}, "z": {"a": {"To": "4"}}}', b"")
    with pytest.raises(FieldError, match="'To' appears 2 times at the same depth"):
        find(tree, "To")
    assert find(parse_fields(JSON, b'{"x": {"y": {"To": "5"}}}', b""), "To") == "5"


def test_object_valued_key_never_matches_and_null():
    tree = parse_fields(JSON, b'{"To": {"To": "inner"}, "From": null, "Body": true}', b"")
    assert find(tree, "To") == "inner"  # the leaf inside, not the object
    assert find(tree, "From") is None
    assert find(tree, "Body") == "true"
    assert find(parse_fields(JSON, b'{"To": {"a": "1"}}', b""), "To") is None


def test_key_paths():
    doc = {
        "data": {
            "event_type": "message.received",
            "payload": {
                "id": "abc-123",
                "from": {"phone_number": "+15550001111"},
                "to": [{"phone_number": "+15552223333"}, {"phone_number": "+15554445555"}],
                "text": "hello",
            },
        },
        "a.b": "literal",
    }
    tree = parse_fields(JSON, json.dumps(doc).encode(), b"")
    assert find(tree, "data.payload.to.0.phone_number") == "+15552223333"
    assert find(tree, "data.payload.to.1.phone_number") == "+15554445555"
    assert find(tree, "data.payload.from.phone_number") == "+15550001111"
    # The bare-name search finds the shallowest phone_number: from's.
    assert find(tree, "phone_number") == "+15550001111"
    # No such path: the dotted key is looked up as one name.
    assert find(tree, "a.b") == "literal"
    assert find(tree, "data.payload.to.2.phone_number") is None
    assert find(tree, "data.payload.to.-1.phone_number") is None
    assert find(tree, "data.payload.to.x") is None
    # A path to an object is no value.
    assert find(tree, "data.payload.from") is None


def test_not_utf8_is_refused():
    with pytest.raises(FieldError, match="UTF-8"):
        parse_fields(FORM, b"To=1&Body=\xff", b"")
    with pytest.raises(FieldError, match="UTF-8"):
        parse_fields(FORM, b"To=1&Body=%FF%FE", b"")
    with pytest.raises(FieldError, match="UTF-8"):
        parse_fields(JSON, b'{"Body": "\xe9t\xe9"}', b"")
    with pytest.raises(FieldError, match="UTF-8"):
        parse_fields(None, b"", b"To=%C3")
    assert parse_fields(FORM, "Body=été".encode(), b"") == {"Body": "été"}


def test_bad_json_is_refused():
    for body in (b'{"To": ', b"{'To': 1}", b'{"To": NaN}', b"[" * 100000):
        with pytest.raises(FieldError):
            parse_fields(JSON, body, b"")
    try:
        parse_fields(JSON, b'{"To": ', b"")
    except FieldError as e:
        assert str(e).startswith("invalid JSON body")
        assert "\n" not in str(e)


def test_unsupported_types_and_charsets():
    with pytest.raises(UnsupportedMediaType):
        parse_fields("text/plain", b"To=1", b"")
    with pytest.raises(UnsupportedMediaType):
        parse_fields(None, b"To=1", b"")
    with pytest.raises(UnsupportedMediaType, match="charset"):
        parse_fields(FORM + "; charset=ISO-8859-1", b"To=1", b"")
    assert parse_fields(FORM + '; charset="utf-8"', b"To=1", b"") == {"To": "1"}
    # No body: the content type does not matter.
    assert parse_fields("text/plain", b"", b"To=1") == {"To": "1"}


def multipart(boundary, parts, eol=b"\r\n"):
    out = b""
    for headers, content in parts:
        out += b"--" + boundary + eol + eol.join(headers) + eol + eol + content + eol
    return out + b"--" + boundary + b"--" + eol


def test_multipart_text_fields():
    body = b"preamble\r\n" + multipart(
        b"b0und",
        [
            ([b'Content-Disposition: form-data; name="To"'], b"+15551234567"),
            ([b"content-disposition: form-data; name=From"], b"200"),
            (
                [
                    b'Content-Disposition: form-data; name="upload"; filename="x.txt"',
                    b"Content-Type: text/plain",
                ],
                b"To=evil",
            ),
            (
                [
                    b'Content-Disposition: form-data; name="msg[]"',
                    b"Content-Type: text/plain; charset=utf-8",
                ],
                "line 1\r\nстрока 2".encode(),
            ),
            ([b'Content-Disposition: form-data; name="msg[]"'], b""),
            ([b'Content-Disposition: form-data; name="q\\"x"'], b"quoted"),
        ],
    )
    tree = parse_fields('multipart/form-data; boundary="b0und"', body, b"")
    assert tree == {
        "To": "+15551234567",
        "From": "200",
        "msg": {"0": "line 1\r\nстрока 2", "1": ""},
        'q"x': "quoted",
    }


def test_multipart_lf_only_and_json_field():
    body = multipart(
        b"XX",
        [([b'Content-Disposition: form-data; name="result"'], b'{"caller_id": "+7900"}')],
        eol=b"\n",
    )
    tree = parse_fields("multipart/form-data; boundary=XX", body, b"")
    assert find(tree, "caller_id") == "+7900"


def test_multipart_errors():
    good = multipart(b"XX", [([b'Content-Disposition: form-data; name="To"'], b"1")])
    with pytest.raises(FieldError, match="boundary"):
        parse_fields("multipart/form-data", good, b"")
    with pytest.raises(FieldError, match="not terminated"):
        parse_fields("multipart/form-data; boundary=XX", good[: -len(b"--XX--\r\n")], b"")
    with pytest.raises(FieldError, match="does not contain"):
        parse_fields("multipart/form-data; boundary=YY", good, b"")
    bad = multipart(b"XX", [([b'Content-Disposition: form-data; name="To"'], b"\xff")])
    with pytest.raises(FieldError, match="UTF-8"):
        parse_fields("multipart/form-data; boundary=XX", bad, b"")


def test_body_fields_else_query_fields_never_merged():
    assert parse_fields(FORM, b"To=1", b"To=2&From=3") == {"To": "1"}
    assert parse_fields(FORM, b"", b"To=2&From=3") == {"To": "2", "From": "3"}
    assert parse_fields(FORM, b"&", b"To=2") == {"To": "2"}
    assert parse_fields(None, b"", b"a[b]=1") == {"a": {"b": "1"}}


# ---------------------------------------------------------------------------------
# Pure layer: extract and make_message
# ---------------------------------------------------------------------------------


def test_extract_defaults_and_body_zero():
    iface = InboundInterface()
    f = extract(iface, {"To": "100", "From": "+15551234567", "Body": "0"})
    assert f == webhook.Fields("100", "+15551234567", "0", None)
    assert extract(iface, {"To": "100", "From": "200"}).body == ""
    assert extract(iface, {"To": "100", "From": "200", "Body": ""}).body == ""
    assert extract(iface, {"To": "100", "From": "200", "Body": None}).body == ""


def test_extract_missing_names_the_keys():
    iface = InboundInterface(key_to="dst", key_from="src")
    with pytest.raises(MissingField, match="^missing dst and src$"):
        extract(iface, {"To": "1", "From": "2"})
    with pytest.raises(MissingField, match="^missing src$"):
        extract(iface, {"dst": "1"})
    with pytest.raises(MissingField, match="^missing dst$"):
        extract(iface, {"src": "1", "dst": None})


@pytest.mark.parametrize(
    "to, sender",
    [
        ("100", "+1501\nApplication: System"),
        ("100\nApplication: System", "200"),
        ("100;comment", "200"),
        ("100", "200 #x"),
        ("../../etc/x", "200"),
        ("100@evil", "200"),
        ("", "200"),
        ("100", "20\x000"),
        ("100", "a\rb"),
    ],
)
def test_extract_refuses_unsafe_to_from(to, sender):
    with pytest.raises(UnsafeValue):
        extract(InboundInterface(), {"To": to, "From": sender, "Body": "x"})


def test_extract_provider_id_and_message():
    iface = InboundInterface(
        name="telnyx",
        key_to="data.payload.to.0.phone_number",
        key_from="data.payload.from.phone_number",
        key_body="text",
        key_id="data.payload.id",
    )
    tree = {
        "data": {
            "payload": {
                "id": "m-1",
                "to": [{"phone_number": "+15552223333"}],
                "from": {"phone_number": "+15550001111"},
                "text": "hi",
            }
        }
    }
    fields = extract(iface, tree)
    assert fields == webhook.Fields("+15552223333", "+15550001111", "hi", "m-1")
    msg = make_message(iface, fields)
    assert (msg.direction, msg.source) == (IN, "webhook:telnyx")
    assert (msg.recipient, msg.sender, msg.body) == ("+15552223333", "+15550001111", "hi")
    assert msg.provider_id == "m-1"
    assert msg.dedupe_key == "telnyx\x1fm-1"

    iface2 = InboundInterface(key_id="id")
    fields = extract(iface2, {"To": "1", "From": "2", "id": ""})
    assert fields.provider_id is None
    assert make_message(iface2, fields).dedupe_key is None
    with pytest.raises(UnsafeValue, match="provider id"):
        extract(iface2, {"To": "1", "From": "2", "id": "a\nb"})
    with pytest.raises(UnsafeValue, match="provider id"):
        extract(iface2, {"To": "1", "From": "2", "id": "x" * 201})


# ---------------------------------------------------------------------------------
# HTTP layer, driven with raw bytes
# ---------------------------------------------------------------------------------

PEER = IPv4Address("TCP", "203.0.113.5", 40000)


class FakeStore:
    """accept(): records the messages and hands back a Deferred the test fires."""

    def __init__(self):
        self.calls = []

    def __call__(self, messages):
        d = defer.Deferred()
        self.calls.append((messages, d))
        return d

    @property
    def messages(self):
        return [m for ms, _ in self.calls for m in ms]


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(data, head=False):
    """One HTTP/1.1 response from the front of `data`: (Response, rest)."""
    head_end = data.index(b"\r\n\r\n")
    lines = data[:head_end].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower().decode(), []).append(
            value.strip().decode("latin-1")
        )
    rest = data[head_end + 4 :]
    body = b""
    if head or status in (100, 204, 304):
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"][0])
        body, rest = rest[:n], rest[n:]
    elif headers.get("transfer-encoding") == ["chunked"]:
        while True:
            size_end = rest.index(b"\r\n")
            size = int(rest[:size_end], 16)
            chunk = rest[size_end + 2 : size_end + 2 + size]
            rest = rest[size_end + 2 + size + 2 :]
            if size == 0:
                break
            body += chunk
    else:
        body, rest = rest, b""
    return Response(status, headers, body), rest


def http_request(method="POST", path="/", body=b"", ctype=FORM, headers=(), chunked=False):
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: pbx.example"]
    if ctype and body:
        lines.append(b"Content-Type: " + ctype.encode())
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    lines.extend(h.encode() if isinstance(h, str) else h for h in headers)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:
        return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body) + b"0\r\n\r\n"
    return head + body


def record_requests(site):
    """Make `site` list the Request objects it creates (for looking at their buffers)."""
    made = []
    factory = site.requestFactory

    def recording(*args, **kw):
        made.append(factory(*args, **kw))
        return made[-1]

    site.requestFactory = recording
    return made


class Conn:
    def __init__(self, site, peer=PEER):
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 8080), peerAddress=peer
        )
        self.channel = site.buildProtocol(peer)
        self.channel.makeConnection(self.transport)

    def send(self, data):
        self.channel.dataReceived(data)

    def take(self):
        data = self.transport.value()
        self.transport.clear()
        return data

    def response(self, head=False):
        resp, rest = parse_response(self.take(), head=head)
        assert rest == b""
        return resp

    def lose(self):
        self.channel.connectionLost(Failure(ConnectionDone()))


_SERVER = ["twisted"]


@pytest.fixture(autouse=True, params=["twisted", "lean"])
def http_server(request):
    """Every test of this module with each HTTP server of the webhook listener."""
    _SERVER[0] = request.param
    yield request.param
    _SERVER[0] = "twisted"


def twisted_only(test):
    """For a test that looks inside twisted.web's Request or HTTPChannel."""

    def run(http_server, *args, **kw):
        if http_server != "twisted":
            pytest.skip("looks inside twisted.web's objects (tests/test_leanhttp.py has"
                        " the lean server's own)")
        return test(*args, **kw)

    import functools
    import inspect

    wrapped = functools.wraps(test)(run)
    params = list(inspect.signature(test).parameters.values())
    wrapped.__signature__ = inspect.Signature(
        [inspect.Parameter("http_server", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + params)
    return wrapped


class Hook:
    """A WebhookResource behind the listener's server (make_site, or the lean one), with
    a fake store and a fake clock."""

    def __init__(self, settings=None, max_body=1024 * 1024, store=None, **kw):
        self.settings = (
            settings
            if settings is not None
            else InboundSettings(
                interfaces=(InboundInterface(resp_ack="<Response></Response>"),),
                default=InboundInterface(resp_ack="<Response></Response>"),
            )
        )
        self.store = store if store is not None else FakeStore()
        self.resource = WebhookResource(
            self.settings, self.store, max_body=max_body, now=lambda: 1000.0, **kw
        )
        self.clock = Clock()
        if _SERVER[0] == "lean":
            self.site = LeanWebhookFactory(self.resource, reactor=self.clock)
            self.requests = None  # LeanRequests are not kept
        else:
            self.site = make_site(self.resource, reactor=self.clock)
            self.requests = record_requests(self.site)

    def connect(self, peer=PEER):
        return Conn(self.site, peer)

    def roundtrip(self, raw, peer=PEER, commit=True, head=False):
        """Send one request; fire the store with "new" if it was called; the answer."""
        conn = self.connect(peer)
        before = len(self.store.calls)
        conn.send(raw)
        if commit and len(self.store.calls) > before:
            assert conn.transport.value() == b""  # nothing before the commit
            _, d = self.store.calls[-1]
            d.callback([True])
        return conn.response(head=head)


@twisted_only
def test_make_site():
    hook = Hook()
    assert hook.site.displayTracebacks is False
    hook.roundtrip(http_request(body=b"To=1&From=2"))
    assert [type(r) for r in hook.requests] == [WebhookRequest]
    assert hook.requests[0].max_body == 1024 * 1024


def test_post_form_answered_only_after_commit():
    hook = Hook()
    conn = hook.connect()
    conn.send(http_request(body=b"To=100&From=%2B15551234567&Body=Hello%20world"))
    assert len(hook.store.calls) == 1
    assert conn.transport.value() == b""  # not before the commit fired
    messages, d = hook.store.calls[0]
    [msg] = messages
    assert (msg.direction, msg.source) == (IN, "webhook")
    assert (msg.recipient, msg.sender, msg.body) == ("100", "+15551234567", "Hello world")
    assert msg.provider_id is None and msg.dedupe_key is None
    d.callback([True])
    resp = conn.response()
    assert resp.status == 200
    assert resp.body == b"<Response></Response>"
    assert resp.header("content-type") == "text/html; charset=UTF-8"
    assert not conn.transport.disconnecting  # keep-alive
    # A second request on the same connection.
    conn.send(http_request(body=b"To=101&From=202"))
    hook.store.calls[1][1].callback([True])
    assert conn.response().status == 200


def test_pipelined_requests_wait_for_each_commit():
    hook = Hook()
    conn = hook.connect()
    conn.send(http_request(body=b"To=1&From=2") + http_request(body=b"To=3&From=4"))
    assert len(hook.store.calls) == 1
    hook.store.calls[0][1].callback([True])
    assert len(hook.store.calls) == 2
    first, rest = parse_response(conn.take())
    assert first.status == 200 and rest == b""
    hook.store.calls[1][1].callback([True])
    assert conn.response().status == 200
    assert [m.recipient for m in hook.store.messages] == ["1", "3"]


def test_post_json_and_get_query():
    hook = Hook()
    resp = hook.roundtrip(
        http_request(body=b'{"To": 15551234567, "From": "200", "Body": "0"}', ctype=JSON)
    )
    assert resp.status == 200
    msg = hook.store.messages[-1]
    assert (msg.recipient, msg.sender, msg.body) == ("15551234567", "200", "0")

    resp = hook.roundtrip(http_request("GET", "/?To=100&From=200&Body=caf%C3%A9"))
    assert resp.status == 200
    assert hook.store.messages[-1].body == "café"


def test_head_is_get_without_a_body():
    hook = Hook()
    resp = hook.roundtrip(http_request("HEAD", "/?To=100&From=200"), head=True)
    assert resp.status == 200
    assert resp.body == b""
    assert resp.header("content-length") == str(len(b"<Response></Response>"))
    resp = hook.roundtrip(http_request("HEAD", "/"), head=True)
    assert resp.status == 400 and resp.body == b""


def test_duplicate_is_acknowledged():
    settings = InboundSettings(
        default=InboundInterface(name="", key_id="MessageSid", resp_ack="ok")
    )
    hook = Hook(settings)
    conn = hook.connect()
    conn.send(http_request(body=b"To=100&From=200&MessageSid=SM1"))
    [msg] = hook.store.calls[0][0]
    assert msg.provider_id == "SM1" and msg.dedupe_key == "\x1fSM1"
    hook.store.calls[0][1].callback([False])
    resp = conn.response()
    assert (resp.status, resp.body) == (200, b"ok")


def test_store_failure_is_503_with_retry_after(events):
    hook = Hook()
    conn = hook.connect()
    conn.send(http_request(body=b"To=100&From=200&Body=secret%20text"))
    assert conn.transport.value() == b""
    hook.store.calls[0][1].errback(Failure(OSError("disk full")))
    resp = conn.response()
    assert resp.status == 503
    assert resp.header("retry-after") == "30"
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.body.count(b"\n") == 1 and b"retry" in resp.body
    assert hook.resource.refusals["store_failed"] == 1
    assert [e for e in events if e.get("log_failure") is not None]
    assert not any("secret text" in repr(e) for e in events)


def test_store_raising_synchronously_is_503():
    def broken(messages):
        raise RuntimeError("no store")

    hook = Hook(store=FakeStore())
    hook.resource.accept = broken
    resp = hook.roundtrip(http_request(body=b"To=100&From=200"))
    assert resp.status == 503


def test_store_answering_synchronously():
    hook = Hook()
    hook.resource.accept = lambda messages: defer.succeed([True] * len(messages))
    resp = hook.roundtrip(http_request(body=b"To=100&From=200"))
    assert (resp.status, resp.body) == (200, b"<Response></Response>")


@pytest.mark.parametrize("outcome", ["stored", "failed"])
def test_client_gone_before_commit(outcome, events):
    hook = Hook()
    conn = hook.connect()
    conn.send(http_request(body=b"To=100&From=200"))
    conn.lose()
    d = hook.store.calls[0][1]
    if outcome == "stored":
        d.callback([True])
    else:
        d.errback(Failure(OSError("disk full")))
    assert conn.transport.value() == b""
    failures = [e["log_failure"].value for e in events if e.get("log_failure") is not None]
    if outcome == "stored":
        assert failures == []
        assert [e for e in events if "went away" in e.get("log_format", "")]
    else:
        # Only the store's failure is logged: answering the vanished client did not fail.
        assert [type(f) for f in failures] == [OSError]
        assert hook.resource.refusals["store_failed"] == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "FOO"])
def test_other_methods_get_405(method):
    hook = Hook()
    resp = hook.roundtrip(http_request(method, "/", body=b"To=1&From=2"))
    assert resp.status == 405
    assert resp.header("allow") == "GET, HEAD, POST"
    assert resp.body.decode().startswith(f"method {method} is not allowed")
    assert resp.body.count(b"\n") == 1
    assert hook.store.calls == []
    assert hook.resource.refusals["method"] == 1


def test_missing_fields_400_names_keys():
    settings = InboundSettings(default=InboundInterface(key_to="dst", key_from="src"))
    hook = Hook(settings)
    resp = hook.roundtrip(http_request(body=b"To=1&From=2"))
    assert resp.status == 400
    assert resp.body == b"missing dst and src\n"
    resp = hook.roundtrip(http_request("GET", "/"))
    assert resp.status == 400
    assert hook.store.calls == []
    assert hook.resource.refusals["bad_request"] == 2


@pytest.mark.parametrize(
    "body, ctype",
    [
        (b"To=100&From=%2B1501%0AApplication%3A%20System%0AData%3A%20id&Body=x", FORM),
        (b"To=100%0AApplication:%20System&From=200", FORM),
        (json.dumps({"To": "100", "From": "+1501\nApplication: System"}).encode(), JSON),
        (b"To=..%2F..%2Ftmp%2Fx&From=200", FORM),
        (b"To=100;x&From=200", FORM),
        (b"To=100&From=200%20%23x", FORM),
        (b"To=100@evil&From=200", FORM),
        (b"To=100&From=2%000", FORM),
        (b"To=&From=200", FORM),
    ],
)
def test_injection_attempts_refused(body, ctype, events):
    hook = Hook()
    resp = hook.roundtrip(http_request(body=body, ctype=ctype))
    assert resp.status == 400
    assert resp.body.startswith(b"unsafe value: ")
    assert resp.body.count(b"\n") == 1
    assert resp.header("x-content-type-options") == "nosniff"
    assert hook.store.calls == []
    [refusal] = hook.resource.recent_refusals
    assert refusal["source"] == "203.0.113.5" and refusal["path"] == "/"
    assert "\n" not in refusal["reason"]


def test_bad_bodies():
    hook = Hook()
    resp = hook.roundtrip(http_request(body=b'{"To": "1",', ctype=JSON))
    assert resp.status == 400 and resp.body.startswith(b"invalid JSON body")
    resp = hook.roundtrip(http_request(body=b"To=1&From=2&Body=\xe9", ctype=FORM))
    assert resp.status == 400 and b"UTF-8" in resp.body
    resp = hook.roundtrip(http_request(body=b"To=1&From=2", ctype="text/plain"))
    assert resp.status == 415 and b"text/plain" in resp.body
    resp = hook.roundtrip(http_request(body=b"To=1&From=2", ctype=None))
    assert resp.status == 415
    resp = hook.roundtrip(
        http_request(body=b"--x\r\nbroken", ctype="multipart/form-data; boundary=x")
    )
    assert resp.status == 400 and b"multipart" in resp.body
    assert hook.store.calls == []
    assert hook.resource.refusals["bad_request"] == 5


def test_multipart_post():
    hook = Hook()
    body = multipart(
        b"----abc",
        [
            ([b'Content-Disposition: form-data; name="To"'], b"100"),
            ([b'Content-Disposition: form-data; name="From"'], b"200"),
            ([b'Content-Disposition: form-data; name="Body"'], "Привет\r\nмир".encode()),
        ],
    )
    resp = hook.roundtrip(http_request(body=body, ctype="multipart/form-data; boundary=----abc"))
    assert resp.status == 200
    assert hook.store.messages[-1].body == "Привет\r\nмир"


def test_query_used_only_when_body_has_no_fields():
    hook = Hook()
    hook.roundtrip(http_request("POST", "/?To=900&From=901", body=b"To=100&From=200"))
    assert hook.store.messages[-1].recipient == "100"
    hook.roundtrip(http_request("POST", "/?To=900&From=901", body=b""))
    assert hook.store.messages[-1].recipient == "900"


# -- body size limit -----------------------------------------------------------------


@twisted_only
def test_content_length_over_limit_refused_before_the_body(events):
    hook = Hook(max_body=1000)
    conn = hook.connect()
    conn.send(
        b"POST /hook?x=1 HTTP/1.1\r\nHost: pbx\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 20000000\r\nExpect: 100-continue\r\n\r\n"
    )
    data = conn.take()
    assert b"100 Continue" not in data
    resp, rest = parse_response(data)
    assert rest == b""
    assert resp.status == 413
    assert resp.header("connection") == "close"
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.body == b"request body of 20000000 bytes is larger than the limit of 1000\n"
    # Whatever the client still sends is dropped, never buffered or answered; the
    # connection closes after a bounded drain (so that the client reads the answer).
    assert not conn.transport.disconnecting
    for _ in range(10):
        conn.send(b"To=1&From=2&" * 1000)
    [request] = hook.requests
    assert request.content.tell() == 0
    assert conn.transport.value() == b""
    hook.clock.advance(conn.channel.drain_seconds)
    assert conn.transport.disconnecting
    assert hook.store.calls == []
    assert hook.resource.refusals["too_large"] == 1
    [refusal] = hook.resource.recent_refusals
    assert refusal == {
        "time": 1000.0,
        "kind": "too_large",
        "status": 413,
        "source": "203.0.113.5",
        "path": "/hook",
        "reason": "request body of 20000000 bytes is larger than the limit of 1000",
    }
    conn.lose()
    assert [e for e in events if e.get("kind") == "too_large"]


@twisted_only
def test_chunked_body_over_limit_cut_off():
    hook = Hook(max_body=1000)
    conn = hook.connect()
    conn.send(
        b"POST / HTTP/1.1\r\nHost: pbx\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    conn.send(b"200\r\n" + b"a" * 0x200 + b"\r\n")
    assert conn.transport.value() == b""
    conn.send(b"200\r\n" + b"b" * 0x200 + b"\r\n")
    resp = conn.response()
    assert resp.status == 413 and resp.header("connection") == "close"
    [request] = hook.requests
    assert request.content.tell() <= 1000
    conn.send(b"200\r\n" + b"c" * 0x200 + b"\r\n0\r\n\r\n")
    assert conn.transport.value() == b""
    assert hook.store.calls == []
    assert hook.resource.refusals["too_large"] == 1
    assert not conn.transport.disconnecting
    conn.send(b"x" * conn.channel.drain_bytes)
    assert conn.transport.disconnecting


class RecordingSocket(StringTransport, FileDescriptor):
    """A StringTransport that passes for a socket of the reactor's (so the channel
    half-closes it) and records, in order, what was written and how it was closed."""

    def __init__(self, *args, **kw):
        StringTransport.__init__(self, *args, **kw)
        self.events = []

    def write(self, data):
        self.events.append(("write", data))
        StringTransport.write(self, data)

    def loseWriteConnection(self):
        self.events.append(("half-close",))

    def loseConnection(self):
        self.events.append(("close",))
        StringTransport.loseConnection(self)


def socket_conn(hook, **channel_attrs):
    conn = Conn.__new__(Conn)
    conn.transport = RecordingSocket(
        hostAddress=IPv4Address("TCP", "192.0.2.1", 8080), peerAddress=PEER
    )
    conn.channel = hook.site.buildProtocol(PEER)
    for name, value in channel_attrs.items():
        setattr(conn.channel, name, value)
    conn.channel.makeConnection(conn.transport)
    return conn


def unparsed(channel):
    """What the channel holds of the client's bytes, not yet handed to a request."""
    return channel.clearLineBuffer() + b"".join(channel._dataBuffer)


@twisted_only
@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_answer_written_then_drained_then_closed(chunked):
    # Item 6 of issue 12: closing at once, with the client's upload unread in the socket,
    # made the kernel send a reset that could destroy the 413 before curl read it.
    hook = Hook(max_body=1000)
    conn = socket_conn(hook, drain_bytes=200_000)
    head = (
        b"POST / HTTP/1.1\r\nHost: pbx\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    )
    if chunked:
        conn.send(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 0x400)
    else:
        conn.send(head + b"Content-Length: 3000000\r\n\r\n" + b"a" * 1000)
    events = conn.transport.events
    assert [e[0] for e in events] == ["write", "half-close"]
    resp, rest = parse_response(events[0][1])
    assert (resp.status, rest) == (413, b"")
    assert resp.header("connection") == "close"
    # The rest of the upload is read and thrown away: nothing buffered, parsed or
    # answered, and no close while the client is still within the bounds.
    [request] = hook.requests
    for _ in range(19):
        conn.send(b"b" * 10_000)
        assert unparsed(conn.channel) == b""
    assert request.content.tell() == 0 if not chunked else request.content.tell() <= 1000
    assert [e[0] for e in events] == ["write", "half-close"]
    assert conn.transport.producerState == "producing"
    assert hook.store.calls == [] and hook.resource.refusals["too_large"] == 1
    # Past drain_bytes: closed, the timer with it.
    conn.send(b"b" * 10_000)
    assert [e[0] for e in events] == ["write", "half-close", "close"]
    conn.send(b"b" * 10_000)
    assert [e[0] for e in events] == ["write", "half-close", "close"]
    conn.lose()
    assert hook.clock.getDelayedCalls() == []


def test_oversize_drain_is_bounded_in_time_and_ends_with_the_client():
    hook = Hook(max_body=1000)
    conn = socket_conn(hook)
    conn.send(http_request(body=b"x" * 1001)[:-500])
    events = conn.transport.events
    assert [e[0] for e in events] == ["write", "half-close"]
    hook.clock.advance(conn.channel.drain_seconds - 0.1)
    conn.send(b"x" * 500)  # the rest of the body, then the client stalls
    assert [e[0] for e in events] == ["write", "half-close"]
    hook.clock.advance(0.1)
    assert [e[0] for e in events] == ["write", "half-close", "close"]
    # A client that reads the answer and closes ends the drain at once.
    conn = socket_conn(hook)
    conn.send(http_request(body=b"x" * 5000))
    assert hook.clock.getDelayedCalls() != []
    conn.lose()
    assert hook.clock.getDelayedCalls() == []
    assert [e[0] for e in conn.transport.events] == ["write", "half-close"]


@twisted_only
def test_oversize_refusal_with_pipelined_bytes_in_the_same_read():
    # The refusal comes in the middle of one read; the parser goes on with the rest of
    # it (a whole chunked body and 64 kB more): none of it may stay buffered, and the
    # channel must not have paused reading (that would stall the drain).
    hook = Hook(max_body=1000)
    conn = socket_conn(hook)
    conn.send(
        b"POST / HTTP/1.1\r\nHost: pbx\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"800\r\n" + b"a" * 0x800 + b"\r\n0\r\n\r\n" + b"GET / HTTP/1.1\r\n" * 4096
    )
    assert [e[0] for e in conn.transport.events] == ["write", "half-close"]
    assert unparsed(conn.channel) == b""
    assert conn.transport.producerState == "producing"
    assert hook.store.calls == []


def test_oversize_over_a_wrapping_transport_is_not_half_closed():
    # A TLS connection is a wrapper around the socket: half-closing the socket under
    # it would cut TLS off, so the drain there only reads and closes.
    hook = Hook(max_body=1000)
    conn = hook.connect()
    conn.transport.loseWriteConnection = lambda: pytest.fail("half-closed a wrapper")
    conn.send(http_request(body=b"x" * 5000))
    assert conn.response().status == 413
    assert not conn.transport.disconnecting
    conn.send(b"x" * conn.channel.drain_bytes)
    assert conn.transport.disconnecting


def test_chunked_body_under_limit_and_exact_limit():
    hook = Hook(max_body=1000)
    resp = hook.roundtrip(
        http_request(body=[b"To=100&", b"From=200&", b"Body=chunked"], chunked=True)
    )
    assert resp.status == 200
    assert hook.store.messages[-1].body == "chunked"
    body = b"To=100&From=200&Body=" + b"x" * (1000 - len(b"To=100&From=200&Body="))
    assert len(body) == 1000
    resp = hook.roundtrip(http_request(body=body))
    assert resp.status == 200
    resp = hook.roundtrip(http_request(body=body + b"x"))
    assert resp.status == 413


def test_resource_caps_body_behind_a_plain_site():
    hook = Hook(max_body=10)
    site = server.Site(hook.resource, reactor=Clock())
    conn = Conn(site)
    conn.send(http_request(body=b"To=100&From=200"))
    resp = conn.response()
    assert resp.status == 413
    assert hook.store.calls == []


# -- key_echo ------------------------------------------------------------------------


def test_key_echo_plain_text_nosniff():
    settings = InboundSettings(default=InboundInterface(key_echo="zd_echo", resp_ack="ack"))
    hook = Hook(settings)
    resp = hook.roundtrip(http_request("GET", "/?zd_echo=%3Cscript%3Ealert(1)%3C/script%3E"))
    assert resp.status == 200
    assert resp.body == b"<script>alert(1)</script>"
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.header("x-content-type-options") == "nosniff"
    # Any method, and even with SMS fields: echo and stop.
    resp = hook.roundtrip(http_request("POST", "/?zd_echo=abc", body=b"To=1&From=2"))
    assert (resp.status, resp.body) == (200, b"abc")
    resp = hook.roundtrip(http_request("PUT", "/?zd_echo=", body=b"x"))
    assert (resp.status, resp.body) == (200, b"")
    assert hook.store.calls == []
    # Without the echo key: a normal webhook.
    resp = hook.roundtrip(http_request("GET", "/?To=1&From=2"))
    assert (resp.status, resp.body) == (200, b"ack")


# -- interface selection -------------------------------------------------------------


def two_by_source():
    a = InboundInterface(name="a", remt_addr=net("203.0.113.0/24"), resp_ack="A")
    b = InboundInterface(
        name="b", remt_addr=net("198.51.100.0/24", "2001:db8::/32"), key_to="dst", resp_ack="B"
    )
    return InboundSettings(interfaces=(a, b), remt_addr_indexed=True)


def test_indexed_remt_addr_selects_interface():
    hook = Hook(two_by_source())
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2"), peer=IPv4Address("TCP", "203.0.113.9", 1)
    )
    assert (resp.status, resp.body) == (200, b"A")
    assert hook.store.messages[-1].source == "webhook:a"
    resp = hook.roundtrip(
        http_request(body=b"dst=1&From=2"), peer=IPv4Address("TCP", "198.51.100.7", 1)
    )
    assert (resp.status, resp.body) == (200, b"B")
    assert hook.store.messages[-1].source == "webhook:b"


def test_refused_source_is_403_with_reason(events):
    hook = Hook(two_by_source())
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2&Body=private"), peer=IPv4Address("TCP", "192.0.2.66", 1)
    )
    assert resp.status == 403
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.body == b"source 192.0.2.66 is not in any remt_addr\n"
    assert hook.store.calls == []
    assert hook.resource.refusals == {"forbidden": 1}
    [refusal] = hook.resource.recent_refusals
    assert refusal["source"] == "192.0.2.66" and refusal["kind"] == "forbidden"
    [event] = [e for e in events if e.get("kind") == "forbidden"]
    assert event["source"] == "192.0.2.66" and event["path"] == "/" and event["status"] == 403
    assert "private" not in repr(event)


def test_ipv6_peer():
    hook = Hook(two_by_source())
    resp = hook.roundtrip(
        http_request(body=b"dst=1&From=2"), peer=IPv6Address("TCP", "2001:db8::5", 1)
    )
    assert (resp.status, resp.body) == (200, b"B")
    resp = hook.roundtrip(
        http_request(body=b"dst=1&From=2"), peer=IPv6Address("TCP", "2001:db9::5", 1)
    )
    assert resp.status == 403
    # An IPv4-mapped address (dual-stack listener) matches IPv4 lists.
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2"), peer=IPv6Address("TCP", "::ffff:203.0.113.9", 1)
    )
    assert (resp.status, resp.body) == (200, b"A")


def test_indexed_url_path():
    a = InboundInterface(name="a", url_path=("/a", "/alpha"), resp_ack="A")
    b = InboundInterface(name="b", url_path=("/b",), resp_ack="B", key_from="sender")
    hook = Hook(InboundSettings(interfaces=(a, b), url_path_indexed=True))
    resp = hook.roundtrip(http_request(path="/alpha?token=1", body=b"To=1&From=2"))
    assert (resp.status, resp.body) == (200, b"A")
    resp = hook.roundtrip(http_request(path="/b", body=b"To=1&sender=2"))
    assert (resp.status, resp.body) == (200, b"B")
    resp = hook.roundtrip(http_request(path="/c", body=b"To=1&From=2"))
    assert resp.status == 403 and resp.body == b"path /c is not in any url_path\n"
    resp = hook.roundtrip(http_request(path="/a/", body=b"To=1&From=2"))
    assert resp.status == 403


def test_plain_remt_addr_and_path_of_chosen_interface():
    a = InboundInterface(name="a", remt_addr=net("203.0.113.0/24"), url_path=("/a",), resp_ack="A")
    hook = Hook(InboundSettings(interfaces=(a,), remt_addr_indexed=True, url_path_indexed=True))
    assert hook.roundtrip(http_request(path="/a", body=b"To=1&From=2")).status == 200
    resp = hook.roundtrip(http_request(path="/b", body=b"To=1&From=2"))
    assert resp.status == 403 and b"not a url_path of interface 'a'" in resp.body


def test_forwarded_for_trusted_proxy_forged_and_untrusted():
    settings = InboundSettings(
        remt_addr_plain=net("203.0.113.0/24"), default=InboundInterface(resp_ack="ok")
    )
    hook = Hook(settings)
    proxy = IPv4Address("TCP", "192.168.1.10", 1)
    # Our proxy appended the real client: allowed.
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2", headers=["X-Forwarded-For: 203.0.113.9"]), peer=proxy
    )
    assert resp.status == 200
    # The client forged the left-most entry; our proxy appended the real one.
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2", headers=["X-Forwarded-For: 203.0.113.9, 198.51.100.7"]),
        peer=proxy,
    )
    assert resp.status == 403 and b"198.51.100.7" in resp.body
    # Two header lines, and a chain of trusted proxies in front of the client.
    resp = hook.roundtrip(
        http_request(
            body=b"To=1&From=2",
            headers=["X-Forwarded-For: 198.51.100.7", "X-Forwarded-For: 203.0.113.9, 172.16.0.3"],
        ),
        peer=proxy,
    )
    assert resp.status == 200
    # An untrusted peer's header proves nothing.
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2", headers=["X-Forwarded-For: 203.0.113.9"]),
        peer=IPv4Address("TCP", "198.51.100.7", 1),
    )
    assert resp.status == 403 and b"198.51.100.7" in resp.body
    # Garbage in the header: the proxy itself counts as the source.
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2", headers=["X-Forwarded-For: 203.0.113.9, bogus"]),
        peer=proxy,
    )
    assert resp.status == 403 and b"192.168.1.10" in resp.body


def test_proxy_header_disabled():
    settings = InboundSettings(remt_addr_plain=net("203.0.113.0/24"), prox_header=None)
    hook = Hook(settings)
    resp = hook.roundtrip(
        http_request(body=b"To=1&From=2", headers=["X-Forwarded-For: 203.0.113.9"]),
        peer=IPv4Address("TCP", "192.168.1.10", 1),
    )
    assert resp.status == 403


def test_recent_refusals_is_bounded():
    hook = Hook()
    for i in range(60):
        hook.roundtrip(http_request("PUT", f"/{i}", body=b"x"))
    assert hook.resource.refusals["method"] == 60
    assert len(hook.resource.recent_refusals) == 50
    assert hook.resource.recent_refusals[-1]["path"] == "/59"


def test_resource_under_a_parent_and_request_args():
    hook = Hook()
    root = Resource()
    root.putChild(b"sms", hook.resource)
    site = make_site(root, max_body=100, reactor=Clock())
    requests = record_requests(site)
    conn = Conn(site)
    conn.send(http_request("GET", "/sms?To=1&From=2"))
    hook.store.calls[0][1].callback([True])
    assert conn.response().status == 200
    conn.send(http_request(body=b"x" * 101))
    assert conn.response().status == 413
    request = requests[0]
    assert request.max_body == 100
    request.uri = b"/sms?a=1&a=2"
    assert request.args == {b"a": [b"1", b"2"]}


def test_json_text_of_an_expanded_field_is_kept():
    tree = parse_fields(FORM, b"To=1&From=2&Body=" + quote("[1,2]").encode(), b"")
    assert tree["Body"] == ["1", "2"]  # searchable inside...
    assert find(tree, "Body") == "[1,2]"  # ...but the SMS text arrives as sent
    text = '{"caller_id":"+7900"}'
    tree = parse_fields(FORM, b"result=" + quote(text).encode(), b"")
    assert find(tree, "result") == text
    assert find(tree, "result.caller_id") == "+7900"
    # The shallowest match is the field itself (the PHP took the inner one, last).
    tree = parse_fields(FORM, b"Body=" + quote('{"Body":"inner"}').encode(), b"")
    assert find(tree, "Body") == '{"Body":"inner"}'
    # Not for JSON documents themselves: a real object never matches.
    assert find(parse_fields(JSON, b'{"Body": {"x": "1"}}', b""), "Body") is None


@twisted_only
def test_request_args_before_and_after_receipt():
    hook = Hook()
    conn = hook.connect()
    conn.send(b"POST /?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    [request] = hook.requests
    assert request.args == {}  # nothing received yet, and nothing cached
    conn.send(b"To=1&")
    assert request.args == {b"a": [b"1"]}
    assert hook.resource.refusals["bad_request"] == 1


# ---------------------------------------------------------------------------------
# An independent client: curl against a real listening port
# ---------------------------------------------------------------------------------

SERVER = r"""
import sys
from twisted.internet import reactor, defer
from websmsd.http.twsite import make_site  # noqa: F811
from websmsd.itsp.webhook import WebhookResource  # noqa: F811
from websmsd.config import InboundSettings, InboundInterface

out = open(sys.argv[1], "a", buffering=1)

def accept(messages):
    for m in messages:
        out.write(repr((m.recipient, m.sender, m.body)) + "\n")
    return defer.succeed([True] * len(messages))

iface = InboundInterface(resp_ack="<Response></Response>", key_echo="zd_echo")
resource = WebhookResource(InboundSettings(default=iface), accept, max_body=4096)
port = reactor.listenTCP(0, make_site(resource), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import os
    import select
    import shutil
    import subprocess
    import sys

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    stored = tmp_path_factory.mktemp("webhook") / "stored.txt"
    stored.write_text("")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(stored)], stdout=subprocess.PIPE, env=env, cwd=root
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the webhook server did not start"
        port = int(proc.stdout.readline())

        def curl(*args, data=None):
            result = subprocess.run(
                ["curl", "-sS", "-i", "--max-time", "20", *args, f"http://127.0.0.1:{port}/"],
                input=data,
                capture_output=True,
                timeout=30,
            )
            return result.stdout

        yield curl, stored
    finally:
        proc.terminate()
        proc.wait(10)


def test_curl_form_post(live):
    curl, stored = live
    out = curl(
        "--data-urlencode",
        "To=100",
        "--data-urlencode",
        "From=+15551234567",
        "--data-urlencode",
        "Body=héllo wörld",
    )
    resp, _ = parse_response(out)
    assert (resp.status, resp.body) == (200, b"<Response></Response>")
    assert "('100', '+15551234567', 'héllo wörld')" in stored.read_text(encoding="utf-8")


def test_curl_json_and_echo(live):
    curl, stored = live
    out = curl(
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        '{"To": 101, "From": "202", "Body": "0"}',
    )
    assert parse_response(out)[0].status == 200
    assert "('101', '202', '0')" in stored.read_text()
    out = curl("-G", "--data-urlencode", "zd_echo=<b>x</b>")
    resp, _ = parse_response(out)
    assert (resp.status, resp.body) == (200, b"<b>x</b>")
    assert resp.header("content-type") == "text/plain; charset=utf-8"


def test_curl_oversize_bodies(live):
    # 3 MB, as a provider (or a misconfigured one) may send: the client is still
    # uploading when the answer comes, and must read the 413 rather than a broken pipe
    # (the server drains what follows instead of closing on unread data, which would
    # make the kernel answer with a reset).
    curl, stored = live
    big = b"To=1&From=2&Body=" + b"a" * (3 * 1024 * 1024)
    for _ in range(3):
        # curl sends "Expect: 100-continue" for a large body: refused without a 100.
        out = curl("--data-binary", "@-", data=big)
        assert b"100 Continue" not in out
        resp, _ = parse_response(out)
        assert resp.status == 413 and resp.header("connection") == "close"
        # Without Expect the body follows at once; the answer is still a 413.
        out = curl("-H", "Expect:", "--data-binary", "@-", data=big)
        assert parse_response(out)[0].status == 413
        # A chunked body is cut off once it passes the limit.
        out = curl(
            "-H", "Transfer-Encoding: chunked", "-H", "Expect:", "--data-binary", "@-", data=big
        )
        assert parse_response(out)[0].status == 413
    assert "'1', '2'" not in stored.read_text()


def test_curl_put_is_405(live):
    curl, _ = live
    resp, _ = parse_response(curl("-X", "PUT", "--data-binary", "To=1&From=2"))
    assert resp.status == 405 and resp.header("allow") == "GET, HEAD, POST"
