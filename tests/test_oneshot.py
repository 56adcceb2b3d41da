"""websmsd.http.h1response (sans-IO) and websmsd.http.oneshot (the small HTTP client the
SMS Gateway for Android poller runs on): framing, bounds, the request's bytes, and real
sockets (plain and TLS) against twisted.web in a child process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from websmsd.http.h1response import NoAnswer, ResponseError, ResponseReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(data: bytes, method: bytes = b"GET", eof: bool = False, **kw) -> ResponseReader:
    r = ResponseReader(method, **kw)
    r.feed(data)
    if eof:
        r.eof()
    return r


def split_fed(data: bytes, method: bytes = b"GET", eof: bool = False, seed: int = 0, **kw):
    """The same bytes fed whole, byte by byte and in random pieces: the same answer."""
    results = []
    rng = random.Random(seed)
    for pieces in ([data], [data[i:i + 1] for i in range(len(data))], None):
        if pieces is None:
            pieces, i = [], 0
            while i < len(data):
                n = rng.randint(1, 7)
                pieces.append(data[i:i + n])
                i += n
        r = ResponseReader(method, **kw)
        for piece in pieces:
            r.feed(piece)
        if eof:
            r.eof()
        results.append((r.done, r.status, r.headers, r.body, r.truncated))
    assert results[0] == results[1] == results[2]
    return results[0]


def test_content_length_chunked_and_close_delimited_answers():
    done, status, headers, body, truncated = split_fed(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"id":"x"}\nleft over')
    assert (done, status, body, truncated) == (True, 200, b'{"id":"x"}\n', False)
    assert headers == [(b"content-type", b"application/json"), (b"content-length", b"11")]
    done, status, _, body, _ = split_fed(
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\n[{\"a\r\n3\r\n\":1\r\n2\r\n}]\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert (done, status, body) == (True, 201, b'[{"a":1}]')
    done, status, _, body, _ = split_fed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"0\r\n\r\n")
    assert (done, body) == (True, b"")
    r = read(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the close")
    assert not r.done
    r.eof()
    assert (r.done, r.body) == (True, b"until the close")


def test_no_body_for_head_204_304_and_interim_answers_are_skipped():
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"HEAD").done
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    assert read(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").done
    done, status, _, body, _ = split_fed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x"
                                         b"\r\n\r\nHTTP/1.1 401 Unauthorized\r\n"
                                         b"Content-Length: 0\r\n\r\n")
    assert (done, status, body) == (True, 401, b"")


def test_a_body_over_the_limit_is_cut_and_marked():
    for answer in (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 100,
                   b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 100,
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"28\r\n" + b"a" * 40 + b"\r\n" + b"3c\r\n" + b"a" * 60 + b"\r\n0\r\n\r\n"):
        done, _, _, body, truncated = split_fed(answer, max_body=64, eof=False)
        assert (done, body, truncated) == (True, b"a" * 64, True), answer[:40]
    # A chunk announced over the limit is cut without waiting for the rest of it.
    r = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\n" + b"b" * 70,
             max_body=64)
    assert (r.done, r.body, r.truncated) == (True, b"b" * 64, True)


@pytest.mark.parametrize("answer", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    # websmsd.http.h1's grammar for requests holds for answers too:
    b"HTTP/1.1 200 OK\r\nX: a\nb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=\x01\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 17 + b"2\r\nab\r\n",
])
def test_malformed_answers_are_errors(answer):
    with pytest.raises(ResponseError):
        read(answer, eof=True)


def test_what_the_close_leaves_incomplete():
    with pytest.raises(NoAnswer):
        read(b"", eof=True)
    with pytest.raises(ResponseError, match="head broke off"):
        read(b"HTTP/1.1 200 OK\r\nContent-", eof=True)
    with pytest.raises(ResponseError, match="body broke off"):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    with pytest.raises(ResponseError, match="body broke off"):
        read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", eof=True)
    with pytest.raises(ResponseError, match="head"):
        read(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000)


def test_the_request_bytes():
    from twisted.web.http_headers import Headers

    from websmsd.http.oneshot import _request_bytes

    headers = Headers({b"Authorization": [b"Basic c21zOnNlY3JldA=="],
                       b"Content-Type": [b"application/json"]})
    raw = _request_bytes("POST", "/message?skipPhoneValidation=true", "192.168.1.50:8080",
                         headers, b'{"a":1}')
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /message?skipPhoneValidation=true HTTP/1.1"
    assert sorted(lines[1:]) == sorted([
        b"Host: 192.168.1.50:8080", b"Connection: close", b"Content-Length: 7",
        b"Authorization: Basic c21zOnNlY3JldA==", b"Content-Type: application/json"])
    assert body == b'{"a":1}'
    assert b"Content-Length" not in _request_bytes("GET", "/health", "phone", None, None)
    for bad in (("GET", "/x y", "phone"), ("GET", "/x\r\nEvil: 1", "phone"),
                ("GET\r\n", "/", "phone"), ("GET", "/", "phone\r\nX: 1"),
                ("G(T", "/", "phone"), ("GET", "", "phone"), ("GET", "/é", "phone")):
        with pytest.raises(ValueError):
            _request_bytes(*bad, None, None)
    # A header value cannot add a line (Headers turns CR and LF into spaces; the client
    # refuses any control character left).
    head = _request_bytes("GET", "/", "phone", Headers({b"X": [b"a\r\nb"]}), None)
    assert len(head.split(b"\r\n\r\n")[0].split(b"\r\n")) == 4


# ---------------------------------------------------------------------------------------
# Real sockets, real reactor, in a child process
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("oneshot-loopback"))
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--loopback", directory],
                          capture_output=True, timeout=90, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_loopback_plain_http(loopback):
    assert loopback["get"] == [200, "application/json", '{"ok": true}', False]
    # twisted.web answers a resource that writes without a length in chunks.
    assert loopback["chunked"] == [200, "text/html", "part one, part two", False]
    assert loopback["post"][0] == 201
    seen = loopback["post"][2]
    assert seen["method"] == "POST" and seen["body"] == '{"phoneNumbers": ["+1"]}'
    assert seen["connection"] == "close" and seen["authorization"] == "Basic eDp5"
    assert loopback["big"] == [[200, 1000, False], [200, 600, True]]


def test_loopback_failures(loopback):
    assert loopback["refused"] == "ConnectionRefusedError"
    assert loopback["tls_self_signed"].startswith("Error")  # OpenSSL: verify failed
    assert loopback["tls_trusted"] == [200, "application/json", '{"ok": true}', False]
    # service_identity: the certificate is not for that name.
    assert loopback["tls_wrong_name"].startswith("VerificationError")
    assert loopback["cancelled"] == "CancelledError"


def _loopback_main(directory: str) -> None:
    from twisted.internet import defer, reactor, ssl
    from twisted.web import resource, server

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_itsp import make_cert

    from websmsd.http.oneshot import OneShot

    class Page(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            if request.path == b"/chunked":
                request.write(b"part one, ")
                request.write(b"part two")
                request.finish()
                return server.NOT_DONE_YET
            if request.path == b"/big":
                return b"z" * 1000
            if request.path == b"/slow":
                return server.NOT_DONE_YET
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"ok": true}'

        def render_POST(self, request):
            request.setResponseCode(201)
            return json.dumps({
                "method": "POST", "body": request.content.read().decode(),
                "connection": request.getHeader(b"connection").decode(),
                "authorization": request.getHeader(b"authorization").decode()}).encode()

    site = server.Site(Page())
    plain = reactor.listenTCP(0, site, interface="127.0.0.1")
    cert, key = make_cert(directory)
    context = ssl.DefaultOpenSSLContextFactory(key, cert)
    tls = reactor.listenSSL(0, site, context, interface="127.0.0.1")
    base = f"http://127.0.0.1:{plain.getHost().port}"
    tls_base = f"https://127.0.0.1:{tls.getHost().port}"
    out = {}

    def shape(answer):
        content_type = answer.headers.getRawHeaders(b"content-type")
        return [answer.code, content_type[0].decode() if content_type else None,
                answer.content.decode(), answer.truncated]

    def failure_name(f):
        return type(f.value).__name__ + (f" {f.value}" if f.check(Exception) else "")

    async def run():
        from twisted.web.http_headers import Headers

        client = OneShot(reactor, max_body=4096)
        out["get"] = shape(await client.request("GET", base + "/health"))
        out["chunked"] = shape(await client.request("GET", base + "/chunked"))
        posted = await client.request("POST", base + "/message", data=b'{"phoneNumbers": ["+1"]}',
                                      headers=Headers({b"Authorization": [b"Basic eDp5"]}))
        out["post"] = [posted.code, None, json.loads(posted.content)]
        out["big"] = []
        for limit in (1000, 600):
            big = await OneShot(reactor, max_body=limit).request("GET", base + "/big")
            out["big"].append([big.code, len(big.content), big.truncated])
        closed = reactor.listenTCP(0, site, interface="127.0.0.1")
        port = closed.getHost().port
        await closed.stopListening()
        try:
            await client.request("GET", f"http://127.0.0.1:{port}/")
        except Exception as e:
            out["refused"] = type(e).__name__
        for name, url, options in (
                ("tls_self_signed", tls_base + "/health", None),
                ("tls_trusted", tls_base + "/health",
                 ssl.optionsForClientTLS("127.0.0.1", ssl.Certificate.loadPEM(open(cert).read()))),
                ("tls_wrong_name", tls_base.replace("127.0.0.1", "localhost") + "/health",
                 ssl.optionsForClientTLS("other.example",
                                         ssl.Certificate.loadPEM(open(cert).read())))):
            try:
                out[name] = shape(await OneShot(reactor, tls_options=options).request("GET", url))
            except Exception as e:
                out[name] = type(e).__name__ + f" {e}"[:200]
        d = client.request("GET", base + "/slow")
        reactor.callLater(0.2, d.cancel)
        try:
            await d
        except defer.CancelledError:
            out["cancelled"] = "CancelledError"

    def done(result):
        print(json.dumps(out))
        reactor.stop()

    def failed(f):
        print(f.getTraceback(), file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addCallbacks(done, failed))
    reactor.callLater(60, reactor.stop)
    reactor.run()


if __name__ == "__main__" and sys.argv[1:2] == ["--loopback"]:
    _loopback_main(sys.argv[2])
