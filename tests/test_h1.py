"""websmsd.http.h1: the sans-IO HTTP/1.1 request parser of the webhook listener (#18)."""

import ast
import os
import random
import subprocess
import sys

import pytest

from websmsd.http import h1
from websmsd.http.h1 import CONTINUE, H1Parser, ParseError, Request

KB = 1024
MB = 1024 * 1024

FORM = (b"POST /sms?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 7\r\n\r\nto=1234")
JSON_BODY = b'{"data": {"text": "h\\u00e9", "to": "+4915100"}}'
JSON = (b"POST /itsp/telnyx HTTP/1.1\r\nHost: sms.example.net\r\nContent-Type: application/json"
        b"\r\nUser-Agent: x/1\r\nContent-Length: %d\r\n\r\n" % len(JSON_BODY) + JSON_BODY)
CHUNKED = (b"POST /chunky HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n1;name=value;flag\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n")
CHUNKED_TRAILERS = (b"POST /t?q=%20 HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nHost: b\r\n\r\n"
                    b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: two\r\n\r\n")
GET10 = b"GET /status?a=1&b=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
GET11 = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
EXPECT = (b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
          b"abc")
EXPECT_CHUNKED = (b"POST /ec HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n2\r\nab\r\n0\r\n\r\n")
VALID = [FORM, JSON, CHUNKED, CHUNKED_TRAILERS, GET10, GET11, EXPECT, EXPECT_CHUNKED,
         b"\r\n" + FORM, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
         b"POST http://a.example:8080/sms?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok",
         b"DELETE /x HTTP/1.1\r\nEmpty:\r\nTabbed:\t v \t\r\nUtf8: \xc3\xa9\r\n\r\n"]


# ---------------------------------------------------------------- helpers

def splits(data, rnd):
    i, out = 0, []
    while i < len(data):
        n = rnd.choice((1, 2, 3, 7, 16, 64, 500, 5000))
        out.append(data[i:i + n])
        i += n
    return out


def feed_all(pieces, **kw):
    p, events = H1Parser(**kw), []
    for piece in pieces:
        events += p.feed(piece)
    return events, p


def no_continue(events):
    return [e for e in events if e is not CONTINUE]


def parse(data, seed=0, **kw):
    """Events for `data` fed whole; the same (CONTINUE aside, which by its meaning
    depends on what has arrived) fed byte by byte and in random splits."""
    whole, _ = feed_all([data], **kw)
    bytewise, _ = feed_all([data[i:i + 1] for i in range(len(data))], **kw)
    assert no_continue(bytewise) == no_continue(whole), data[:200]
    rnd = random.Random(seed)
    for _ in range(5):
        got, _ = feed_all(splits(data, rnd), **kw)
        assert no_continue(got) == no_continue(whole), data[:200]
    return whole


def one(data, **kw):
    events = no_continue(parse(data, **kw))
    assert len(events) == 1, events
    return events[0]


def error(data, **kw):
    e = one(data, **kw)
    assert isinstance(e, ParseError), e
    assert "\r" not in e.reason and "\n" not in e.reason and e.reason.isprintable()
    return e


def status(data, **kw):
    return error(data, **kw).status


def req(head=b"", body=b"", target=b"/w", version=b"HTTP/1.1", method=b"POST"):
    return method + b" " + target + b" " + version + b"\r\n" + head + b"\r\n" + body


def chunked(chunks, trailer=b""):
    return req(b"Transfer-Encoding: chunked\r\n", chunks + trailer)


# ---------------------------------------------------------------- basics

def test_form_post():
    assert one(FORM) == Request(
        b"POST", b"/sms?x=1", b"HTTP/1.1",
        [(b"host", b"a"), (b"content-type", b"application/x-www-form-urlencoded"),
         (b"content-length", b"7")], b"to=1234", True)


def test_header_values_lose_surrounding_white_space_and_keep_order_and_case():
    r = one(b"GET / HTTP/1.1\r\nX-A: \t one two \t\r\nx-a:2\r\nX-B:\r\nX-A: \xff\r\n\r\n")
    assert r.headers == [(b"x-a", b"one two"), (b"x-a", b"2"), (b"x-b", b""),
                         (b"x-a", b"\xff")]


def test_no_framing_means_no_body():
    r = one(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r.body == b""


def test_every_valid_request_alone():
    for data in VALID:
        events = no_continue(parse(data))
        assert len(events) == 1 and isinstance(events[0], Request), data


def test_chunked_decoded():
    r = one(CHUNKED)
    assert r.body == b"hello 0123456789" and r.target == b"/chunky"
    assert (b"transfer-encoding", b"chunked") in r.headers
    r = one(CHUNKED_TRAILERS)
    assert r.body == b"abc" and r.target == b"/t?q=%20"
    # trailers are checked and dropped, never merged into the headers
    assert not any(name.startswith(b"x-") for name, _ in r.headers)


def test_chunk_sizes_in_hex_any_case_with_leading_zeros():
    r = one(chunked(b"a\r\n" + b"x" * 10 + b"\r\nF\r\n" + b"y" * 15 + b"\r\n"
                    b"0000000000000001\r\nz\r\n000\r\n\r\n"))
    assert r.body == b"x" * 10 + b"y" * 15 + b"z"


def test_chunk_extensions_ignored():
    r = one(chunked(b"2;a=b;c=\"q;x\"\r\nok\r\n2 ; a\r\nok\r\n0;last\r\n\r\n"))
    assert r.body == b"okok"


def test_pipelined_mix_of_chunked_and_content_length():
    rnd = random.Random(3)
    for _ in range(30):
        run = [rnd.choice(VALID[:8] + VALID[9:]) for _ in range(rnd.randint(2, 8))]
        events = no_continue(parse(b"".join(run), seed=rnd.randrange(1000)))
        assert len(events) == len(run)
        for data, event in zip(run, events):
            assert isinstance(event, Request)
            assert event == no_continue(parse(data))[0]


def test_pipelined_after_connection_close_still_parsed_in_order():
    # What to do with requests after "Connection: close" is the protocol's choice.
    events = parse(GET11 + FORM)
    assert [e.keep_alive for e in events] == [False, True]


# ---------------------------------------------------------------- Content-Length

@pytest.mark.parametrize("value", [b"-1", b"+5", b"5 5", b"5,5", b"5, 5", b"0x5", b"5.0",
                                   b"five", b"\xd9\xa5", b"1_0"])
def test_content_length_digits_only(value):
    assert status(req(b"Content-Length: " + value + b"\r\n", b"hello")) == 400


def test_content_length_empty():
    assert status(req(b"Content-Length:\r\n")) == 400


def test_content_length_white_space_around_is_not_part_of_it():
    assert one(req(b"Content-Length: \t 5\t \r\n", b"hello")).body == b"hello"


def test_content_length_repeated():
    assert one(req(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")).body == b"hello"
    assert one(req(b"Content-Length: 5\r\nContent-Length: 005\r\n", b"hello")).body == b"hello"
    e = error(req(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"))
    assert e.status == 400 and e.target == b"/w"


def test_content_length_over_limit_right_after_head():
    p = H1Parser(max_body=100)
    e, = p.feed(req(b"Content-Length: 101\r\n"))
    assert e.status == 413 and e.target == b"/w" and p.dead
    assert one(req(b"Content-Length: 100\r\n", b"x" * 100), max_body=100).body == b"x" * 100
    assert status(req(b"Content-Length: " + b"9" * 40 + b"\r\n")) == 413
    assert one(req(b"Content-Length: " + b"0" * 40 + b"3\r\n", b"abc")).body == b"abc"


def test_content_length_zero():
    assert one(req(b"Content-Length: 0\r\n") + FORM[:0]).body == b""


# ---------------------------------------------------------------- Transfer-Encoding

@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"CHUNKED", b" chunked\t"])
def test_transfer_encoding_chunked_any_case(te):
    assert one(req(b"Transfer-Encoding: " + te + b"\r\n", b"1\r\nx\r\n0\r\n\r\n")).body == b"x"


@pytest.mark.parametrize("te", [b"gzip, chunked", b"gzip", b"xchunked", b"chunkedx",
                                b"identity", b"chunked;q=1", b"deflate,chunked"])
def test_other_codings_not_implemented(te):
    e = error(req(b"Transfer-Encoding: " + te + b"\r\n", b"1\r\nx\r\n0\r\n\r\n"))
    assert e.status == 501 and e.target == b"/w"


@pytest.mark.parametrize("head", [
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked,\r\n",
    b"Transfer-Encoding: ,chunked\r\n",
    b"Transfer-Encoding:\r\n",
])
def test_malformed_transfer_encoding(head):
    assert status(req(head, b"1\r\nx\r\n0\r\n\r\n")) == 400


@pytest.mark.parametrize("head", [
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
])
def test_transfer_encoding_with_content_length_is_smuggling(head):
    assert status(req(head, b"1\r\nx\r\n0\r\n\r\n")) == 400


def test_transfer_encoding_on_http10():
    data = req(b"Transfer-Encoding: chunked\r\n", b"1\r\nx\r\n0\r\n\r\n", version=b"HTTP/1.0")
    assert status(data) == 400


# ---------------------------------------------------------------- chunk framing

@pytest.mark.parametrize("size", [b"0x5", b"+5", b"-5", b" 5", b"5 ", b"5\t", b"5_0", b"",
                                  b"g", b"5 5", b"1" * 17, b"\x005"])
def test_malformed_chunk_size(size):
    e = error(chunked(size + b"\r\nhello\r\n0\r\n\r\n"))
    assert e.status == 400 and e.target == b"/w"


def test_sixteen_digit_chunk_size_is_read():
    assert one(chunked(b"0000000000000002\r\nab\r\n0\r\n\r\n")).body == b"ab"


@pytest.mark.parametrize("after", [b"X\r\n0\r\n\r\n", b"\n0\r\n\r\n", b"\rX0\r\n\r\n",
                                   b"0\r\n\r\n", b"\r\r\n0\r\n\r\n"])
def test_chunk_data_must_end_with_crlf(after):
    assert status(chunked(b"5\r\nhello" + after)) == 400


def test_chunk_size_line_must_end_with_crlf():
    assert status(chunked(b"5\nhello\r\n0\r\n\r\n")) == 400
    assert status(chunked(b"5\rhello\r\n0\r\n\r\n")) == 400
    assert status(chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n")) == 400
    assert status(chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n")) == 400


def test_oversize_chunk_size_line():
    ext = b";" + b"a" * (4096 - 4)  # "5" + ext + CRLF is exactly 4096 bytes
    assert one(chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")).body == b"hello"
    assert status(chunked(b"5" + ext + b"a\r\nhello\r\n0\r\n\r\n")) == 400
    # a line that never ends is refused once it is too long, not buffered
    p = H1Parser()
    assert p.feed(chunked(b"5;")) == []
    events = []
    for _ in range(100):
        events += p.feed(b"a" * 100)
    assert [e.status for e in events] == [400] and p.dead


def test_trailers_checked():
    assert status(chunked(b"0\r\n", b"Bad Name: x\r\n\r\n")) == 400
    assert status(chunked(b"0\r\n", b"X: a\r\n folded\r\n\r\n")) == 400
    assert status(chunked(b"0\r\n", b"X: a\x00b\r\n\r\n")) == 400
    assert status(chunked(b"0\r\n", b"X: a\nY: b\r\n\r\n")) == 400
    assert status(chunked(b"0\r\n", b"X: a\r\n\n")) == 400


def test_trailers_count_against_head_limits():
    head = req(b"Transfer-Encoding: chunked\r\n")
    room = 1000 - len(head)
    line = b"X: " + b"t" * (room - 7) + b"\r\n"  # with the final CRLF: the budget exactly
    assert one(head + b"0\r\n" + line + b"\r\n", max_head=1000).body == b""
    big = b"X: " + b"t" * (room - 6) + b"\r\n"
    assert status(head + b"0\r\n" + big + b"\r\n", max_head=1000) == 431
    # two header lines, so eight trailer lines reach max_headers=10 and a ninth is too many
    two = req(b"Transfer-Encoding: chunked\r\nHost: a\r\n")
    assert one(two + b"0\r\n" + b"T: 1\r\n" * 8 + b"\r\n", max_headers=10).body == b""
    assert status(two + b"0\r\n" + b"T: 1\r\n" * 9 + b"\r\n", max_headers=10) == 431
    # a trailer section that never ends is refused, not buffered
    p = H1Parser(max_head=1000)
    events = p.feed(head + b"0\r\n")
    for _ in range(100):
        events += p.feed(b"T: 1\r\n")
        assert len(p._buf) < 1100
    assert [e.status for e in events] == [431]


def test_413_as_soon_as_a_chunk_size_says_so():
    p = H1Parser(max_body=MB)
    events = p.feed(chunked(b"200000\r\n"))  # 2 MB announced, nothing of it sent
    assert [(e.status, e.target) for e in events] == [(413, b"/w")] and p.dead
    assert p.feed(b"x" * 1000) == []
    # the sum of the chunks counts
    p = H1Parser(max_body=10)
    assert p.feed(chunked(b"6\r\nabcdef\r\n")) == []
    assert [e.status for e in p.feed(b"5\r\n")] == [413]
    assert one(chunked(b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n"), max_body=10).body == b"abcdefghij"


def test_slow_drip_of_a_big_chunk_stays_bounded():
    p = H1Parser(max_body=200 * KB, max_head=4 * KB)
    assert p.feed(chunked(b"30000\r\n")) == []  # 192 KiB
    rnd = random.Random(5)
    sent = 0
    while sent < 0x30000:
        n = min(rnd.randint(1, 3000), 0x30000 - sent)
        assert p.feed(bytes([65 + sent % 26]) * n) == []
        sent += n
        assert len(p._buf) <= 2  # the chunk data is moved out of the read buffer
    r, = p.feed(b"\r\n0\r\n\r\n")
    assert len(r.body) == 0x30000


def test_slow_drip_of_a_content_length_body_is_moved_out_of_the_read_buffer():
    p = H1Parser(max_body=100 * KB)
    body = bytes(range(256)) * 400
    assert p.feed(req(b"Content-Length: %d\r\n" % len(body))) == []
    rnd = random.Random(6)
    i = 0
    while i < len(body) - 1:
        n = min(rnd.randint(1, 700), len(body) - 1 - i)
        assert p.feed(body[i:i + n]) == []
        assert p._buf == b""
        i += n
    r, = p.feed(body[-1:] + FORM[:10])
    assert r.body == body and p._buf == FORM[:10]


def test_many_one_byte_chunks():
    data = b"".join(b"1\r\n" + bytes([65 + i % 26]) + b"\r\n" for i in range(3000))
    r = one(chunked(data + b"0\r\n\r\n"))
    assert r.body == bytes(65 + i % 26 for i in range(3000))


# ---------------------------------------------------------------- targets

@pytest.mark.parametrize("target,origin", [
    (b"http://host:8080/sms?x=1", b"/sms?x=1"),
    (b"HTTP://Host/a/b", b"/a/b"),
    (b"https://host", b"/"),
    (b"http://host?x=1", b"/?x=1"),
    (b"http://[::1]:80/p", b"/p"),
    (b"*", b"*"),
    (b"/", b"/"),
    (b"//double", b"//double"),
    (b"/%7euser?q=%20&r", b"/%7euser?q=%20&r"),
])
def test_request_targets(target, origin):
    assert one(req(target=target)).target == origin


@pytest.mark.parametrize("target", [b"ftp://host/x", b"http:///x", b"http://user@host/x",
                                    b"http:/x", b"sms", b"?x=1", b"**", b"mailto:a@b",
                                    b"/a\x01b", b"/a\x7fb", b"/a\tb", b"/a\x00b"])
def test_bad_request_targets(target):
    e = error(req(target=target))
    assert e.status == 400 and e.target == b""


# ---------------------------------------------------------------- head syntax

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    b"GET / HTTP/1.1\n\n",
    b"\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
])
def test_line_ends_are_strict_crlf(data):
    assert status(data) == 400


@pytest.mark.parametrize("line", [
    b" folded",  # obs-fold
    b"\tfolded",
    b"Host : a",  # white space before the colon
    b"Host\t: a",
    b"no colon",
    b": no name",
    b"Ho(st: a",
    b"X: a\x00b",
    b"X: a\x01b",
    b"X: a\x7f",
    b"X\x00: a",
    b"\xc3\xa9: a",
])
def test_bad_header_lines(line):
    e = error(b"GET /p HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n")
    assert e.status == 400 and e.target == b"/p"


@pytest.mark.parametrize("line", [
    b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b" GET / HTTP/1.1", b"GET /\tHTTP/1.1",
    b"GET / HTTP/1.1 x", b"GET /", b"GET", b"G(T / HTTP/1.1", b"GET / http/1.1",
    b"GET / HTTP/1", b"GET / HTTP/1.10", b"GET / HTTP/a.b", b"GET / HTTPS/1.1",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
])
def test_bad_request_lines(line):
    e = error(line + b"\r\nHost: a\r\n\r\n")
    assert e.status == 400 and e.target == b""


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"])
def test_other_http_versions(version):
    assert status(req(version=version)) == 505


def test_versions_spoken():
    assert one(req(version=b"HTTP/1.0")).version == b"HTTP/1.0"
    assert one(req(version=b"HTTP/1.1")).version == b"HTTP/1.1"


def test_empty_lines_before_a_request_are_skipped_up_to_a_bound():
    assert one(b"\r\n" * 16 + FORM).body == b"to=1234"
    assert status(b"\r\n" * 17 + FORM) == 400
    # between pipelined requests, as some clients send after a body
    events = parse(FORM + b"\r\n" + FORM + b"\r\n\r\n" + FORM)
    assert [e.body for e in events] == [b"to=1234"] * 3


def test_head_size_limit_exact():
    # request line, header lines and the final CRLF: max_head bytes are fine, one more is not
    base = b"GET / HTTP/1.1\r\nX: \r\n\r\n"
    pad = 200 - len(base)
    exact = b"GET / HTTP/1.1\r\nX: " + b"v" * pad + b"\r\n\r\n"
    assert len(exact) == 200 and one(exact, max_head=200).method == b"GET"
    over = b"GET / HTTP/1.1\r\nX: " + b"v" * (pad + 1) + b"\r\n\r\n"
    e = error(over, max_head=200)
    assert e.status == 431 and e.target == b"/"
    # many short lines
    assert status(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50 + b"\r\n", max_head=200) == 431


def test_request_line_too_long():
    e = error(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", max_head=200)
    assert e.status == 414 and e.target == b""
    p = H1Parser(max_head=200)  # a request line that never ends
    events = []
    for _ in range(50):
        events += p.feed(b"GET /" + b"a" * 40)
        assert len(p._buf) <= 202
    assert [e.status for e in events] == [414]


def test_header_count_limit():
    assert one(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10 + b"\r\n", max_headers=10)
    assert status(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 11 + b"\r\n", max_headers=10) == 431
    # and refused before the head ends, whatever follows
    p = H1Parser(max_headers=10)
    assert [e.status for e in p.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 11)] == [431]


def test_earliest_fault_wins():
    # a bad line before the limits are reached is what is reported
    assert status(b"GET / HTTP/1.1\r\nBad Line\r\n" + b"X: y\r\n" * 500, max_headers=10) == 400
    assert status(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 11 + b"Bad Line\r\n\r\n",
                  max_headers=10) == 431


# ---------------------------------------------------------------- keep-alive, Expect

@pytest.mark.parametrize("version,connection,keep", [
    (b"HTTP/1.1", None, True),
    (b"HTTP/1.1", [b"close"], False),
    (b"HTTP/1.1", [b"Close"], False),
    (b"HTTP/1.1", [b"keep-alive, CLOSE"], False),
    (b"HTTP/1.1", [b"upgrade", b" close "], False),
    (b"HTTP/1.1", [b"keep-alive"], True),
    (b"HTTP/1.1", [b"closed"], True),
    (b"HTTP/1.0", None, False),
    (b"HTTP/1.0", [b"keep-alive"], True),
    (b"HTTP/1.0", [b"Keep-Alive"], True),
    (b"HTTP/1.0", [b"foo,keep-alive"], True),
    (b"HTTP/1.0", [b"keep-alive", b"close"], True),  # RFC 9112 9.3: 1.0 persists only by keep-alive
    (b"HTTP/1.0", [b"keep-alivex"], False),
])
def test_keep_alive(version, connection, keep):
    head = b"".join(b"Connection: " + c + b"\r\n" for c in connection or ())
    assert one(req(head, version=version)).keep_alive is keep


def test_expect_other_than_100_continue():
    e = error(req(b"Expect: something\r\nContent-Length: 1\r\n", b"x"))
    assert e.status == 417 and e.target == b"/w"
    assert status(req(b"Expect: 100-continue, x\r\n")) == 417


def test_continue_before_the_body_once():
    p = H1Parser()
    head = req(b"Expect: 100-continue\r\nContent-Length: 6\r\n")
    assert p.feed(head) == [CONTINUE]
    assert p.feed(b"abc") == []
    assert p.feed(b"de") == []
    r, = p.feed(b"f")
    assert r.body == b"abcdef"


def test_continue_byte_by_byte_comes_once_right_after_the_head():
    p = H1Parser()
    data = EXPECT + EXPECT_CHUNKED
    seen = []
    for i in range(len(data)):
        for e in p.feed(data[i:i + 1]):
            seen.append((i, e))
    first_end = EXPECT.index(b"\r\n\r\n") + 3
    second_end = len(EXPECT) + EXPECT_CHUNKED.index(b"\r\n\r\n") + 3
    assert [(i, e if e is CONTINUE else e.target) for i, e in seen] == [
        (first_end, CONTINUE), (len(EXPECT) - 1, b"/e"),
        (second_end, CONTINUE), (len(data) - 1, b"/ec")]


def test_no_continue_when_the_body_came_with_the_head():
    assert [e.target for e in H1Parser().feed(EXPECT)] == [b"/e"]
    assert [e.target for e in H1Parser().feed(EXPECT_CHUNKED)] == [b"/ec"]
    assert H1Parser().feed(req(b"Expect: 100-continue\r\nContent-Length: 0\r\n")) == [
        one(req(b"Expect: 100-continue\r\nContent-Length: 0\r\n"))]


def test_continue_when_part_of_a_chunked_body_came():
    p = H1Parser()
    assert p.feed(EXPECT_CHUNKED[:-5]) == [CONTINUE]
    assert [e.body for e in p.feed(EXPECT_CHUNKED[-5:])] == [b"ab"]


def test_no_continue_for_http10_or_a_refused_head():
    assert H1Parser().feed(req(b"Expect: 100-continue\r\nContent-Length: 3\r\n",
                               version=b"HTTP/1.0")) == []
    events = H1Parser(max_body=2).feed(req(b"Expect: 100-continue\r\nContent-Length: 3\r\n"))
    assert [e.status for e in events] == [413]
    events = H1Parser().feed(req(b"Expect: 100-continue\r\nContent-Length: 3\r\n"
                                 b"Transfer-Encoding: chunked\r\n"))
    assert [e.status for e in events] == [400]


def test_continue_for_a_pipelined_second_request():
    events = H1Parser().feed(FORM + req(b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"o"))
    assert events[0].body == b"to=1234" and events[1:] == [CONTINUE]


# ---------------------------------------------------------------- errors as values

def test_dead_after_an_error():
    p = H1Parser()
    events = p.feed(FORM + b"BAD\r\n\r\n" + FORM)
    assert events[0].body == b"to=1234" and events[1].status == 400 and len(events) == 2
    assert p.dead and p.feed(FORM) == [] and p._buf == b""


def test_parse_error_target():
    assert error(b"GET /q?a=1 HTTP/1.1\r\nX : y\r\n\r\n").target == b"/q?a=1"
    assert error(b"GET http://h/q HTTP/1.1\r\nX : y\r\n\r\n").target == b"/q"
    assert error(b"GET /q HTTP/9.9\r\n\r\n").target == b""
    assert error(chunked(b"zz\r\n")).target == b"/w"
    assert ParseError(400, "x") == (400, "x", b"")


def test_reasons_never_carry_peer_bytes():
    mark = b"EVIL<script>"
    cases = [mark + b"\r\n\r\n", b"GET /" + mark + b" HTTP/1.1\r\n" + mark + b"\r\n\r\n",
             b"GET / HTTP/1.1\r\nContent-Length: " + mark + b"\r\n\r\n",
             b"GET / " + mark + b"\r\n\r\n", req(b"Expect: " + mark + b"\r\n"),
             req(b"Transfer-Encoding: " + mark + b"\r\n"), chunked(mark + b"\r\n"),
             chunked(b"1;" + mark + b"\x01\r\n"), chunked(b"0\r\n", mark + b"\r\n\r\n")]
    for data in cases:
        e = error(data)
        assert "EVIL" not in e.reason and len(e.reason) < 100, data


# ---------------------------------------------------------------- never raises, never grows

def mutate(data, rnd):
    data = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        i = rnd.randrange(len(data) + 1)
        if op == 0 and data:
            del data[i:i + rnd.randint(1, 4)]
        elif op == 1:
            data[i:i] = bytes(rnd.choice(b"\r\n :;,\t0aF\x00\x7f\xff") for _ in range(rnd.randint(1, 3)))
        elif op == 2 and i < len(data):
            data[i] = rnd.randrange(256)
        elif op == 3:
            data[i:i] = rnd.choice([b"\r\n", b"Transfer-Encoding: chunked\r\n",
                                    b"Content-Length: 3\r\n", b"Expect: 100-continue\r\n",
                                    b"0\r\n\r\n", b"\r\n\r\n", b"ffffffff\r\n"])
        else:
            j = rnd.randrange(len(data) + 1)
            data[i:i] = data[j:j + rnd.randint(1, 40)]
    return bytes(data)


def test_fuzz_mutations_same_verdict_however_split():
    rnd = random.Random(11)
    for n in range(1500):
        data = mutate(b"".join(rnd.choice(VALID) for _ in range(rnd.randint(1, 3))), rnd)
        kw = rnd.choice([{}, {"max_head": 120, "max_body": 20, "max_headers": 4}])
        whole, _ = feed_all([data], **kw)
        for _ in range(3):
            got, _ = feed_all(splits(data, rnd), **kw)
            assert no_continue(got) == no_continue(whole), data
        assert all(isinstance(e, (Request, ParseError)) or e is CONTINUE for e in whole)
        assert sum(isinstance(e, ParseError) for e in whole) <= 1
        if any(isinstance(e, ParseError) for e in whole):
            assert isinstance(whole[-1], ParseError)


def test_fuzz_random_bytes_bounded():
    rnd = random.Random(1)
    for _ in range(400):
        p = H1Parser(max_head=512, max_body=512)
        for _ in range(30):
            chunk = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 64)))
            if rnd.random() < 0.3:
                chunk = rnd.choice(VALID)[:rnd.randint(0, 200)] + chunk
            events = p.feed(chunk)
            assert all(isinstance(e, (Request, ParseError, type(CONTINUE))) for e in events)
            assert len(p._buf) <= 512 + 512 + 264


def test_bounded_under_a_flood():
    # a peer sending forever, in every framing state, never makes the buffer grow
    starts = [b"GET /" + b"a" * 10, b"GET / HTTP/1.1\r\nX: ", req(b"Content-Length: 500\r\n"),
              chunked(b""), chunked(b"1;"), chunked(b"ffff\r\n"), chunked(b"0\r\n"),
              b"\r\n" * 10]
    for start in starts:
        for filler in (b"a", b"\r\n", b"X: y\r\n", b"f"):
            p = H1Parser(max_head=1000, max_body=1000)
            p.feed(start)
            for _ in range(3000):
                p.feed(filler)
                assert len(p._buf) <= 1000 + 1000 + 10
                if p.dead:
                    break


# ---------------------------------------------------------------- no Twisted

def test_imports_nothing_from_twisted():
    with open(h1.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert names <= {"__future__", "typing"}, names
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", ("import sys, websmsd.http.h1; "
                                "print(sorted(m for m in sys.modules"
                                " if m.split('.')[0] == 'twisted'))")],
        cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- against twisted.web

def twisted_parse(data):
    """What twisted.web's HTTPChannel hands its Request objects for `data`."""
    from twisted.internet.testing import StringTransport
    from twisted.web import http

    seen = []

    class Recorder(http.Request):
        def process(self):
            seen.append((self.method, self.uri, self.clientproto,
                         multimap(self.requestHeaders.getAllRawHeaders()),
                         self.content.read()))
            self.setResponseCode(204)
            self.finish()

    channel = http.HTTPChannel()
    channel.requestFactory = Recorder
    channel.makeConnection(StringTransport())
    channel.dataReceived(data)
    channel.connectionLost(None)
    return seen


def multimap(pairs):
    out = {}
    for name, values in pairs:
        if isinstance(values, bytes):
            values = [values]
        out.setdefault(name.lower(), []).extend(values)
    return out


DIFFERENTIAL = [
    FORM, JSON, CHUNKED, CHUNKED_TRAILERS, GET10, GET11,
    (b"POST /hook?token=a%2Fb&x=&y HTTP/1.1\r\nHost: h\r\nX-Sig: a\r\nX-Sig: b\r\n"
     b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
     b"Content-Length: 29\r\n\r\nFrom=%2B4915100&Text=hi+there"),
    b"POST /10 HTTP/1.0\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\nabc",
    (b"PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1f\r\n" + b"j" * 31 + b"\r\n3;ext=1\r\nabc\r\n0\r\n\r\n"),
    b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: curl/8\r\n\r\n",
]


def ours(data):
    out = []
    for e in no_continue(parse(data)):
        assert isinstance(e, Request), e
        out.append((e.method, e.target, e.version, multimap(e.headers), e.body))
    return out


def test_same_as_twisted_web():
    for data in DIFFERENTIAL:
        assert ours(data) == twisted_parse(data), data
    # twisted.web stops reading after a request that does not keep the connection
    # (HTTP/1.0 ones here, though it keeps to RFC 9112 9.3 in its answers), so the
    # pipelined run is of HTTP/1.1 requests with "Connection: close" last.
    run = b"".join(d for d in DIFFERENTIAL if d != GET11 and b"HTTP/1.0" not in d) + GET11
    assert ours(run) == twisted_parse(run)


def test_differs_from_twisted_web_on_purpose():
    # absolute-form: twisted.web hands the whole URL on as the URI; RFC 9112 3.2.2 has
    # the server take the path from it, and the webhook routes by path.
    data = b"POST http://a.example:8080/sms?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
    (_, uri, *_), = twisted_parse(data)
    assert uri == b"http://a.example:8080/sms?x=1" and ours(data)[0][1] == b"/sms?x=1"
    # obs-fold: twisted.web joins the lines; this parser refuses (RFC 9112 5.2 allows either).
    data = b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"
    assert twisted_parse(data)[0][3] == {b"x": [b"a b"]} and status(data) == 400
    # A bare LF: twisted.web waits for a CRLF that may never come; this parser answers 400.
    data = b"GET / HTTP/1.1\nX: a\n\n"
    assert twisted_parse(data) == [] and status(data) == 400
