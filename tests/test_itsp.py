"""websmsd.http.itsp: the outbound ITSP request (PHP-exact) and the treq client.

Expected PHP outputs below were produced with PHP 8.2's own http_build_query, ksort,
hash_hmac and md5 (the PHP websms service runs on PHP 8.4, whose rules are the same
here).  When a `php` binary is installed, test_php_differential re-checks them live.

The loopback tests run a real reactor in a child process (bounded by a timeout), so
that no global reactor is started inside pytest: a raw TCP server records the exact
bytes on the wire, and a TLS server with a certificate generated here checks that
certificates are verified.  Nothing touches the internet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import fired
from websmsd import __version__
from websmsd.channel import Outcome
from websmsd.itsp import client as itsp_client
from websmsd.itsp import request as itsp_request
from websmsd.itsp import response as itsp_response
from websmsd.itsp.phpcompat import http_build_query, php_ksort
from websmsd.itsp.request import (RequestError, build_fields, build_request, safe_url,
                                  zadarma_signature)
from websmsd.itsp.response import check_response
from websmsd.config import OutboundInterface

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---------------------------------------------------------------------------------------
# http_build_query
# ---------------------------------------------------------------------------------------

PHP_QUERIES = [
    (
        [("To", "+46 70 123 45 67"), ("From", "a~b"), ("Body", "1+1=2 & 3")],
        "To=%2B46+70+123+45+67&From=a%7Eb&Body=1%2B1%3D2+%26+3",
    ),
    (
        [("k", "Ünïcödé ÅÄÖ åäö"), ("e", "😀 emoji"), ("c", "Привет")],
        "k=%C3%9Cn%C3%AFc%C3%B6d%C3%A9+%C3%85%C3%84%C3%96+%C3%A5%C3%A4%C3%B6"
        "&e=%F0%9F%98%80+emoji&c=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82",
    ),
    (
        [("sym", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), ("ws", "\t\r\n x")],
        "sym=%21%22%23%24%25%26%27%28%29%2A%2B%2C-.%2F%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E_%60"
        "%7B%7C%7D%7E&ws=%09%0D%0A+x",
    ),
    (
        [("key with space", "v"), ("k~", "="), ("&", "&")],
        "key+with+space=v&k%7E=%3D&%26=%26",
    ),
    (
        # null is left out, true/false are 1/0, nested arrays get encoded brackets
        [("a b", "x y"), ("n", None), ("z", ""), ("", "empty"),
         ("nest", {"x": "1", "y": ["2", "3"]}), ("b", True), ("f", False), ("i", 5)],
        "a+b=x+y&z=&=empty&nest%5Bx%5D=1&nest%5By%5D%5B0%5D=2&nest%5By%5D%5B1%5D=3&b=1&f=0&i=5",
    ),
]

PHP_ALL_BYTES = (
    "all=%00%01%02%03%04%05%06%07%08%09%0A%0B%0C%0D%0E%0F%10%11%12%13%14%15%16%17%18%19"
    "%1A%1B%1C%1D%1E%1F+%21%22%23%24%25%26%27%28%29%2A%2B%2C-.%2F0123456789%3A%3B%3C%3D"
    "%3E%3F%40ABCDEFGHIJKLMNOPQRSTUVWXYZ%5B%5C%5D%5E_%60abcdefghijklmnopqrstuvwxyz%7B%7C"
    "%7D%7E%7F%80%81%82%83%84%85%86%87%88%89%8A%8B%8C%8D%8E%8F%90%91%92%93%94%95%96%97"
    "%98%99%9A%9B%9C%9D%9E%9F%A0%A1%A2%A3%A4%A5%A6%A7%A8%A9%AA%AB%AC%AD%AE%AF%B0%B1%B2"
    "%B3%B4%B5%B6%B7%B8%B9%BA%BB%BC%BD%BE%BF%C0%C1%C2%C3%C4%C5%C6%C7%C8%C9%CA%CB%CC%CD"
    "%CE%CF%D0%D1%D2%D3%D4%D5%D6%D7%D8%D9%DA%DB%DC%DD%DE%DF%E0%E1%E2%E3%E4%E5%E6%E7%E8"
    "%E9%EA%EB%EC%ED%EE%EF%F0%F1%F2%F3%F4%F5%F6%F7%F8%F9%FA%FB%FC%FD%FE%FF"
)


@pytest.mark.parametrize("pairs, expected", PHP_QUERIES)
def test_http_build_query_matches_php(pairs, expected):
    assert http_build_query(pairs) == expected
    assert http_build_query(dict(pairs)) == expected


def test_http_build_query_every_byte_as_php():
    assert http_build_query([("all", bytes(range(256)))]) == PHP_ALL_BYTES


def test_http_build_query_surrogateescaped_bytes_pass_through():
    # A value decoded with surrogateescape (invalid UTF-8 from AGI) is sent as its bytes.
    value = b"\xff\xfeok".decode("utf-8", "surrogateescape")
    assert http_build_query([("b", value)]) == "b=%FF%FEok"


def test_http_build_query_empty():
    assert http_build_query([]) == ""
    assert http_build_query({"a": None}) == ""


# ---------------------------------------------------------------------------------------
# ksort
# ---------------------------------------------------------------------------------------

PHP_KSORTS = [
    (
        ["b", "B", "a", "_", "10", "9", "01", "1.5", " 2", "-3", "Z", "ä", "From", "To", "Body", "api_key"],
        ["-3", "01", "1.5", " 2", "9", "10", "B", "Body", "From", "To", "Z", "_", "a", "api_key", "b", "ä"],
    ),
    (
        ["To", "From", "Body", "to", "from", "body", "API_KEY", "api_key", "Api-Key", "_x", "-x", ".x", "~x", "x1", "x10", "x2"],
        ["-x", ".x", "API_KEY", "Api-Key", "Body", "From", "To", "_x", "api_key", "body", "from", "to", "x1", "x10", "x2", "~x"],
    ),
    (
        # integer keys numerically; "0" == "-0", "1.0" == "1", "1e2" == "100" keep
        # their input order (PHP 8 sorts stably)
        ["100", "20", "3", "-1", "0", "-0", "007", "1e2", "1.0", "1", "abc", "ABC"],
        ["-1", "0", "-0", "1.0", "1", "3", "007", "20", "100", "1e2", "ABC", "abc"],
    ),
    (
        ["9223372036854775807", "9223372036854775808", "9223372036854775809", "1e400", "2e400", "x"],
        ["9223372036854775807", "9223372036854775808", "9223372036854775809", "1e400", "2e400", "x"],
    ),
    (
        ["a", "aa", "a a", "a_a", "a-a", "a.a", "aA", "a0", "A"],
        ["A", "a", "a a", "a-a", "a.a", "a0", "aA", "a_a", "aa"],
    ),
    (
        # PHP 8 numeric strings: leading and trailing whitespace, ".5", "1.", "+3", no hex
        ["2 ", "10", "1 ", "x", "0x1A", ".5", "1.", "+3", "-.5e1"],
        ["-.5e1", ".5", "0x1A", "1 ", "1.", "2 ", "+3", "10", "x"],
    ),
]


@pytest.mark.parametrize("keys, expected", PHP_KSORTS)
def test_php_ksort_matches_php(keys, expected):
    pairs = [(k, f"v{i}") for i, k in enumerate(keys)]
    result = php_ksort(pairs)
    assert [k for k, _ in result] == expected
    # values travel with their keys
    assert sorted(result) == sorted(pairs)
    assert php_ksort(dict(pairs)) == result


def test_php_ksort_sms_fields():
    fields = {"To": "1", "From": "2", "Body": "3", "api_key": "k", "Sender": "s", "_t": "x"}
    assert [k for k, _ in php_ksort(fields)] == ["Body", "From", "Sender", "To", "_t", "api_key"]


# ---------------------------------------------------------------------------------------
# build_request
# ---------------------------------------------------------------------------------------

UA = f"websmsd/{__version__}".encode()


def iface(**kw):
    kw.setdefault("url_host", "https://api.example.com")
    kw.setdefault("url_path", "/v1/sms/send/")
    return OutboundInterface(**kw)


def body_pairs(request):
    from urllib.parse import parse_qsl

    return parse_qsl(request.body.decode("ascii"), keep_blank_values=True)


def test_request_shape_without_auth():
    req = build_request(iface(auth_method="none"), "+46701234567", "+46700000000", "Hej då! ~ 😀")
    assert req.method == "POST"
    assert req.url == "https://api.example.com/v1/sms/send/"
    assert req.body == (
        b"Body=Hej+d%C3%A5%21+%7E+%F0%9F%98%80&From=%2B46700000000&To=%2B46701234567"
    )
    assert list(req.headers) == [
        (b"Accept", b"*/*"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"User-Agent", UA),
    ]
    assert req.warnings == ()
    assert req.fields == (("Body", "Hej då! ~ 😀"), ("From", "+46700000000"), ("To", "+46701234567"))


def test_default_interface_is_basic_without_credentials():
    req = build_request(OutboundInterface(), "1", "2", "hi")
    assert req.url == "http://localhost/"
    assert req.header("Authorization") is None
    assert len(req.warnings) == 1 and "basic" in req.warnings[0]


def test_custom_keys():
    req = build_request(iface(auth_method="none", key_to="number", key_from="caller_id", key_body="message"), "1", "2", "x")
    assert req.body == b"caller_id=2&message=x&number=1"


def test_plain_auth_adds_fields_after_val_static():
    i = iface(
        auth_method="plain", key_user="api_user", key_secret="api_key",
        auth_user="me", auth_secret="s3cret", val_static="api_key=fromstatic,route=2",
    )
    req = build_request(i, "1", "2", "x")
    assert req.body == b"Body=x&From=2&To=1&api_key=s3cret&api_user=me&route=2"
    assert req.header("Authorization") is None
    assert req.warnings == ()


@pytest.mark.parametrize("missing", ["key_user", "auth_user", "key_secret", "auth_secret"])
@pytest.mark.parametrize("empty", [None, "", "0"])
def test_plain_auth_incomplete(missing, empty):
    settings = dict(key_user="u", key_secret="p", auth_user="me", auth_secret="s3cret")
    settings[missing] = empty
    req = build_request(iface(auth_method="plain", **settings), "1", "2", "x")
    assert req.body == b"Body=x&From=2&To=1"
    assert req.header("Authorization") is None
    assert len(req.warnings) == 1 and "plain" in req.warnings[0]


def test_basic_auth():
    req = build_request(iface(auth_user="AC123", auth_secret="tok:en"), "1", "2", "x")
    assert req.header("authorization") == b"Basic " + base64.b64encode(b"AC123:tok:en")
    assert req.header("Authorization") == b"Basic QUMxMjM6dG9rOmVu"
    assert req.body == b"Body=x&From=2&To=1"
    assert list(req.headers)[-1] == (b"User-Agent", UA)


@pytest.mark.parametrize("method", ["basic", "zadarma"])
@pytest.mark.parametrize("settings", [{}, {"auth_user": "u"}, {"auth_secret": "s"}, {"auth_user": "", "auth_secret": "s"}, {"auth_user": "u", "auth_secret": "0"}])
def test_header_auth_incomplete(method, settings):
    req = build_request(iface(auth_method=method, **settings), "1", "2", "x")
    assert req.header("Authorization") is None
    assert len(req.warnings) == 1 and method in req.warnings[0]


@pytest.mark.parametrize("method", ["", "Basic", "Bearer", "oauth", "NONE"])
def test_unknown_auth_method_sends_without_auth(method):
    req = build_request(iface(auth_method=method, auth_user="u", auth_secret="s"), "1", "2", "x")
    assert req.header("Authorization") is None
    assert req.body == b"Body=x&From=2&To=1"
    assert len(req.warnings) == 1 and "unknown auth_method" in req.warnings[0]


def independent_zadarma(url_path: bytes, query: bytes, secret: bytes) -> bytes:
    """The documented formula, written out again."""
    md5_hex = hashlib.md5(query).hexdigest().encode()
    mac_hex = hmac.new(secret, url_path + query + md5_hex, hashlib.sha1).hexdigest().encode()
    return base64.b64encode(mac_hex)


def test_zadarma_auth_signature():
    i = iface(auth_method="zadarma", auth_user="1a2b3c", auth_secret="s3cr3t~key", val_static="sender=Acme")
    req = build_request(i, "+46701234567", "+46700000000", "Hej då! ~ 😀")
    assert req.body == (
        b"Body=Hej+d%C3%A5%21+%7E+%F0%9F%98%80&From=%2B46700000000&To=%2B46701234567&sender=Acme"
    )
    sign = independent_zadarma(b"/v1/sms/send/", req.body, b"s3cr3t~key")
    assert req.header("Authorization") == b"1a2b3c:" + sign
    # computed by PHP: base64_encode(hash_hmac('sha1', $path.$q.md5($q), $secret))
    assert sign == b"ZGRkNjJiODMzMjJjZmNkMDVkMjk2MTJmNGZlN2ZjNTcyYjQ0YmZmYw=="
    assert req.warnings == ()


def test_zadarma_signature_function_vectors():
    # PHP-computed: an SMS body and the empty query of a GET /v1/info/balance/.
    q = "caller_id=%2B46700000000&message=Hello+world+%7E+%F0%9F%98%80&number=46701234567"
    assert zadarma_signature("/v1/sms/send/", q, "SECRETsecret123") == (
        "YzNkYzllZWVlNDE0MTdkMjMwYWQ0ZjYyYzFjMThlMDdiNzA0YzI5ZA=="
    )
    assert zadarma_signature("/v1/info/balance/", "", "s3cr3t~key") == (
        "NjZlNTBlNmNmOTM4YjE1YzNmMGEwMjI2YzdjNDY3MmJhNTE0NTQ3YQ=="
    )
    # A published vector with a computed value could not be found: Zadarma's
    # documentation and official libraries show the algorithm, never a result.


def test_zadarma_signs_the_final_body_with_the_configured_path():
    i = iface(auth_method="zadarma", auth_user="k", auth_secret="s", url_path="/v1/sms/send/",
              val_numform="E164", val_unicode="coding=2", val_static="caller_id=Acme")
    req = build_request(i, "+46701234567", "0046700000000", "smile 😀")
    assert req.body == b"Body=smile+%F0%9F%98%80&From=46700000000&To=46701234567&caller_id=Acme&coding=2"
    assert req.header("Authorization") == b"k:" + independent_zadarma(b"/v1/sms/send/", req.body, b"s")


def test_val_unicode_ucs2_any_case():
    for setting in ("UCS-2", "ucs-2", "Ucs-2"):
        fields = build_fields(iface(val_unicode=setting), "1", "2", "a😀b\U0010FFFFc€")
        assert fields["Body"] == "a\ufffdb\ufffdc€"


def test_val_unicode_key_value():
    i = iface(val_unicode="unicode=1")
    assert build_fields(i, "1", "2", "plain €") == {"To": "1", "From": "2", "Body": "plain €"}
    assert build_fields(i, "1", "2", "smile 😀") == {"To": "1", "From": "2", "Body": "smile 😀", "unicode": "1"}
    # a=b=c gives a=b, like val_static
    assert build_fields(iface(val_unicode="a=b=c"), "1", "2", "😀")["a"] == "b"
    # UTF-8 and anything else change nothing
    for setting in ("UTF-8", "utf-8", "bogus", "", None):
        assert build_fields(iface(val_unicode=setting), "1", "2", "😀")["Body"] == "😀"


@pytest.mark.parametrize(
    "setting, strips",
    [("E164", True), ("e164", True), ("E.164", True), ("e.164", True), ("no+", True), ("NO+", True),
     ("omit+", True), ("Omit+", True), ("E.123", False), ("e.123", False), ("bogus", False), ("", False), (None, False)],
)
def test_val_numform(setting, strips):
    i = iface(val_numform=setting)
    cases = [("+46701234567", "46701234567"), ("0046701234567", "46701234567"),
             ("+0046701234567", "46701234567"), ("46701234567", "46701234567"),
             ("070123", "070123"), ("+", ""), ("1+00", "1+00"), ("++46", "+46")]
    for number, stripped in cases:
        fields = build_fields(i, number, number, "+00 body")
        want = stripped if strips else number
        assert fields == {"To": want, "From": want, "Body": "+00 body"}, (setting, number)


def test_val_static_edge_cases():
    i = iface(val_static="a=b=c,noequals,To=override, spaced = v ,=empty,x=,dup=1,dup=2")
    fields = build_fields(i, "+461", "+462", "x")
    assert fields == {
        "To": "override", "From": "+462", "Body": "x",
        "a": "b", " spaced ": " v ", "": "empty", "x": "", "dup": "2",
    }
    # overridden keys keep their place (irrelevant after ksort, but PHP-like)
    assert list(fields)[:3] == ["To", "From", "Body"]
    req = build_request(replace(i, auth_method="none"), "+461", "+462", "x")
    assert req.body == b"=empty&+spaced+=+v+&Body=x&From=%2B462&To=override&a=b&dup=2&x="


def test_val_static_runs_after_numform_and_empty_values():
    i = iface(val_numform="E164", val_static="From=+4600")
    assert build_fields(i, "+461", "+462", "x")["From"] == "+4600"
    for setting in ("", "0", None, ",,,"):
        assert build_fields(iface(val_static=setting), "1", "2", "x") == {"To": "1", "From": "2", "Body": "x"}


def test_request_refuses_unsafe_settings():
    with pytest.raises(RequestError):
        build_request(iface(url_host="ftp://example.com"), "1", "2", "x")
    with pytest.raises(RequestError):
        build_request(iface(url_host="api.example.com"), "1", "2", "x")
    with pytest.raises(RequestError):
        build_request(iface(auth_method="zadarma", auth_user="u\r\nX-Evil: 1", auth_secret="s"), "1", "2", "x")


def test_request_repr_shows_no_secret_or_text():
    i = iface(auth_method="plain", key_user="u", key_secret="p", auth_user="me", auth_secret="TOPSECRET")
    req = build_request(replace(i, url_path="/send?token=QUERYSECRET"), "1", "2", "private text")
    text = repr(req)
    assert "TOPSECRET" not in text and "private" not in text and "QUERYSECRET" not in text
    assert "api.example.com" in text


def test_safe_url():
    assert safe_url("https://user:pw@api.example.com:8443/v1/send?key=s#f") == "https://api.example.com:8443/v1/send"
    assert safe_url("http://[::1]/x") == "http://[::1]/x"
    assert safe_url("http://h:99999999/") == "<unparsable URL>"


# ---------------------------------------------------------------------------------------
# check_response
# ---------------------------------------------------------------------------------------

def judge(status, body, check=None, **kw):
    return check_response(iface(resp_check=check, **kw), status, body)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("body", [b"", b"not json", b'{"status":"error"}', b"\xff\xfe"])
def test_2xx_without_check_is_sent(status, body):
    out = judge(status, body)
    assert out == Outcome(True, out.reason, code=status)
    assert out.reason.startswith(f"HTTP {status}")


NESTED = json.dumps({
    "status": "queued",
    "data": {"messages": [{"status": "sent", "id": "m1"}, {"status": "delivered", "id": 2}]},
    "count": 1, "price": 1.0, "big": 1e3, "ok": True, "none": None, "obj": {"x": 1}, "list": ["a", "b"],
}).encode()


@pytest.mark.parametrize(
    "check, passes",
    [
        ("status=delivered", True),        # nested, in an array, the last one wins
        ("status=queued", False),
        ("status=sent", False),
        ("id=2", True),                     # a number matches by its JSON text
        ("id=m1", False),                  # the last "id" is 2
        ("count=1", True),
        ("price=1.0", True),
        ("price=1", False),                 # 1.0 is not 1
        ("big=1000.0", True),               # json.dumps wrote 1000.0
        ("ok=true", False),                 # booleans and null never match
        ("ok=1", False),
        ("none=", False),
        ("none=null", False),
        ("obj={\"x\": 1}", False),          # not a leaf
        ("x=1", True),
        ("0=a", False),                     # array positions are not keys
        ("missing=x", False),
        ("status=delivered=extra", True),   # only the first two parts
    ],
)
def test_resp_check_key_value(check, passes):
    out = judge(200, NESTED, check)
    assert out.ok is passes
    assert out.permanent is (not passes)
    assert out.code == 200


def test_resp_check_key_value_reasons():
    assert "no 'missing' in the response" in judge(200, NESTED, "missing=x").reason
    assert 'status is "delivered"' in judge(200, NESTED, "status=sent").reason
    out = judge(200, b"<html>OK</html>", "status=success")
    assert (out.ok, out.permanent) == (False, True)
    assert "not JSON" in out.reason
    for body in (b"", b"NaN", b'{"status": Infinity}', b"[" * 100000, b'"success"', b"1"):
        out = judge(200, body, "status=success")
        assert (out.ok, out.permanent) == (False, True), body[:20]


def test_resp_check_key_value_duplicates_and_empty_value():
    assert judge(200, b'{"s":"a","s":"b"}', "s=b").ok
    assert not judge(200, b'{"s":"a","s":"b"}', "s=a").ok
    assert judge(200, b'{"s":""}', "s=").ok
    assert judge(200, b'{"":"v"}', "=v").ok
    assert judge(200, '{"msg":"skickat ✓"}'.encode(), "msg=skickat ✓").ok
    assert judge(200, b'\xef\xbb\xbf{"s":"ok"}', "s=ok").ok  # a UTF-8 BOM is tolerated
    assert judge(200, b'{"5":"x"}', "5=x").ok  # a numeric member name is a key


@pytest.mark.parametrize(
    "check, body, passes",
    [
        ("/success/", b'{"status":"success"}', True),
        ("/SUCCESS/", b'{"status":"success"}', False),
        ("/SUCCESS/i", b'{"status":"success"}', True),
        ("/^ok$/", b"line\nok\n", False),
        ("/^ok$/m", b"line\nok\nmore", True),
        ("/a.b/", b"a\nb", False),
        ("/a.b/s", b"a\nb", True),
        ("/ a b # comment\n/x", b"ab", True),
        ("#\"id\":\\s*\\d+#", b'{"id": 42}', True),
        ("{o{1,2}k}", b"ook", True),
        ("(ok)", b"ok", True),
        ("/status=ok/", b"status=ok", True),       # a whole /regex/ wins over key=value
        ("/a\\/b/", b"a/b", True),
        ("  /ok/", b"ok", True),                   # PCRE skips leading whitespace
        ("/ok/ ", b"ok", True),
        ("/é/u", "café".encode(), True),
        ("/ok/", b"not json at all: ok", True),
        ("/^$/", b"", True),
    ],
)
def test_resp_check_regex(check, body, passes):
    out = judge(200, body, check)
    assert out.ok is passes, out.reason
    assert out.permanent is (not passes)


@pytest.mark.parametrize("check", ["/(unclosed/", "/ok/Q", "/ok/e", "/\\e/", "status", "/no-end"])
def test_resp_check_bad_config_never_crashes(check):
    out = judge(200, b"ok status", check)
    assert (out.ok, out.permanent) == (False, True)
    assert out.reason.startswith("HTTP 200 but resp_check")


def test_resp_check_unset_values():
    for check in (None, "", "0"):
        assert judge(200, b"", check).ok


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429, 600, 99])
def test_transient_statuses(status):
    out = judge(status, b'{"status":"success"}', "status=success")
    assert (out.ok, out.permanent, out.code) == (False, False, status)
    assert str(status) in out.reason


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422, 451, 499])
def test_permanent_4xx(status):
    out = judge(status, b'{"error":"bad number"}')
    assert (out.ok, out.permanent) == (False, True)
    assert out.reason == f'HTTP {status}: {{"error":"bad number"}}'


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_redirects_are_permanent_and_say_where(status):
    out = check_response(iface(), status, b"moved", location="https://u:pw@new.example.com/api?key=SECRET")
    assert (out.ok, out.permanent) == (False, True)
    assert "https://new.example.com/api" in out.reason
    assert "SECRET" not in out.reason and "pw" not in out.reason
    assert "not followed" in out.reason
    assert "redirect" in check_response(iface(), status, b"").reason


def test_reason_is_one_short_escaped_line_without_secrets():
    i = iface(auth_user="me", auth_secret="p@ss word", resp_check="status=ok")
    body = b'{"status":"error","echo":"api_key=p%40ss+word p@ss word cGFzcw==","t":"a\r\nb\x00\x1b\x7f"}' + b"x" * 500
    out = check_response(i, 200, body)
    assert "\n" not in out.reason and "\r" not in out.reason and "\x00" not in out.reason
    assert "p@ss word" not in out.reason and "p%40ss+word" not in out.reason
    assert "\\r\\n" in out.reason
    assert len(out.reason) < 300
    basic = base64.b64encode(b"me:p@ss word").decode()
    out = check_response(i, 401, f"bad {basic}".encode())
    assert basic not in out.reason


# ---------------------------------------------------------------------------------------
# Today's ITSPs: JSON bodies, methods, token auth, num_country, resp_id
# (provider by provider, from websms.conf text: tests/test_outbound_shapes.py)
# ---------------------------------------------------------------------------------------


def jiface(**kw):
    kw.setdefault("auth_method", "none")
    kw.setdefault("encoding", "json")
    return iface(**kw)


def test_json_body_keys_in_order_utf8_unescaped():
    req = build_request(jiface(val_static="z=1,a=2"), "+461", "+462", "Hej då 😀 \"\n")
    assert req.body == '{"To":"+461","From":"+462","Body":"Hej då 😀 \\"\\n","z":"1","a":"2"}'.encode()
    assert req.header("Content-Type") == b"application/json"
    assert req.fields == (("To", "+461"), ("From", "+462"), ("Body", "Hej då 😀 \"\n"), ("z", "1"), ("a", "2"))
    json.loads(req.body.decode("utf-8"))


def test_json_paths_lists_and_raw_values():
    i = jiface(key_to="sms.to[]", key_from="sms.from", key_body="sms.parts.0.text",
               val_static="sms.to[]=+463,sms.flash:=true,sms.ttl:=60,meta:={\"a\": [1]},sms.parts.1.text=tail,n:=null")
    assert json.loads(build_request(i, "+461", "+462", "x").body) == {
        # val_static with key_to's very key replaces the value (one key, one field, as in PHP)
        "sms": {"to": ["+463"], "from": "+462", "parts": [{"text": "x"}, {"text": "tail"}],
                "flash": True, "ttl": 60},
        "meta": {"a": [1]}, "n": None,
    }


def test_json_static_overrides_in_place_and_plain_auth_is_members():
    i = jiface(auth_method="plain", key_user="auth.user", key_secret="auth.key", auth_user="me",
               auth_secret="s3", val_static="To=fixed")
    assert build_request(i, "1", "2", "x").body == (
        b'{"To":"fixed","From":"2","Body":"x","auth":{"user":"me","key":"s3"}}'
    )


@pytest.mark.parametrize("static, words", [
    ("To.x=1", "already holds a value"),
    ("list.0=a,list.x=b", "already an array"),
    ("obj.x=a,obj.0=b", "already an object"),
    ("obj.x=a,obj[]=b", "already an object"),
    ("list.1=a", "skips position 0"),
    ("a..b=1", "empty part"),
    ("v:=tru", "val_static v:= is not a JSON value"),
    ("v:=NaN", "val_static v:= is not a JSON value"),
])
def test_json_conflicts_are_request_errors(static, words):
    with pytest.raises(RequestError, match=words.replace("[", "\\[")):
        build_request(jiface(val_static=static), "1", "2", "x")


def test_json_conflict_is_an_outcome_not_a_crash():
    client = ITSPClient(task.Clock(), treq_client=FailingTreq(AssertionError("no request expected")))
    out = fired(client.send(jiface(url_host="http://itsp.test", val_static="To.x=1"), "1", "2", "x"))
    assert (out.ok, out.permanent) == (False, False) and out.reason.startswith("cannot send: key path")


def test_form_keeps_json_syntax_literal_as_php_did():
    req = build_request(iface(auth_method="none", key_to="to[]", val_static="flash:=false,a.b=1"), "1", "2", "x")
    assert req.body == b"Body=x&From=2&a.b=1&flash%3A=false&to%5B%5D=1"


def test_json_body_with_undecodable_bytes_is_still_utf8():
    body = b"caf\xe9 ok".decode("utf-8", "surrogateescape")
    req = build_request(jiface(), "1", "2", body)
    assert json.loads(req.body.decode("utf-8"))["Body"] == "caf\ufffd ok"
    # the form body keeps the raw byte, as the PHP did
    assert build_request(iface(auth_method="none"), "1", "2", body).body.startswith(b"Body=caf%E9+ok")


def test_val_unicode_and_numform_apply_to_json_too():
    i = jiface(val_unicode="coding=8", val_numform="no+")
    assert build_request(i, "+461", "00462", "😀").body == '{"To":"461","From":"462","Body":"😀","coding":"8"}'.encode()


@pytest.mark.parametrize("method", ["GET", "get"])
def test_get_sends_the_form_fields_as_query(method):
    i = iface(auth_method="basic", auth_user="u", auth_secret="p", url_path="/send?route=1#frag",
              method=method, val_static="flag=")
    req = build_request(i, "+461", "+462", "a b&c")
    assert req.method == "GET"
    assert req.url == "https://api.example.com/send?route=1&Body=a+b%26c&From=%2B462&To=%2B461&flag=#frag"
    assert req.body == b"" and req.header("Content-Type") is None
    assert req.header("Authorization") == b"Basic dTpw"


def test_get_with_json_encoding_warns_and_uses_the_query():
    req = build_request(jiface(method="GET", val_static="n:=1"), "1", "2", "x")
    assert req.url == "https://api.example.com/v1/sms/send/?Body=x&From=2&To=1&n%3A=1"
    assert len(req.warnings) == 1 and "GET" in req.warnings[0]


def test_put_is_like_post():
    req = build_request(jiface(method="PUT"), "1", "2", "x")
    assert (req.method, req.body) == ("PUT", b'{"To":"1","From":"2","Body":"x"}')


def test_unknown_method_or_encoding_is_refused():
    with pytest.raises(RequestError):
        build_request(iface(method="DELETE"), "1", "2", "x")
    with pytest.raises(RequestError):
        build_request(iface(encoding="xml"), "1", "2", "x")


def test_bearer_and_header_auth():
    req = build_request(iface(auth_method="bearer", auth_secret="tök3n"), "1", "2", "x")
    assert req.header("Authorization") == "Bearer tök3n".encode()
    req = build_request(iface(auth_method="header", auth_scheme="AccessKey", auth_secret="k"), "1", "2", "x")
    assert req.header("Authorization") == b"AccessKey k"
    req = build_request(iface(auth_method="header", auth_header="X-Auth-Token", auth_secret="k"), "1", "2", "x")
    assert req.header("X-Auth-Token") == b"k" and req.header("Authorization") is None
    assert [k for k, _ in req.headers] == [b"Accept", b"Content-Type", b"X-Auth-Token", b"User-Agent"]


@pytest.mark.parametrize("method", ["bearer", "header", "query"])
@pytest.mark.parametrize("secret", [None, "", "0"])
def test_token_auth_incomplete_sends_without(method, secret):
    req = build_request(iface(auth_method=method, key_secret="key", auth_secret=secret), "1", "2", "x")
    assert req.header("Authorization") is None and "?" not in req.url
    assert len(req.warnings) == 1 and method in req.warnings[0]


def test_token_auth_refuses_header_injection_without_showing_the_secret():
    for settings in (dict(auth_method="bearer", auth_secret="a\r\nX-Evil: SECRET"),
                     dict(auth_method="header", auth_scheme="App\n", auth_secret="SECRET")):
        with pytest.raises(RequestError) as e:
            build_request(iface(**settings), "1", "2", "x")
        assert "SECRET" not in str(e.value)
    with pytest.raises(RequestError, match="not an HTTP header name"):
        build_request(iface(auth_method="header", auth_header="Bad Header", auth_secret="s"), "1", "2", "x")


def test_query_auth():
    i = iface(auth_method="query", key_secret="api_key", auth_secret="s e/c~", url_path="/send?v=2")
    req = build_request(i, "1", "2", "x")
    assert req.url == "https://api.example.com/send?v=2&api_key=s+e%2Fc%7E"
    assert req.body == b"Body=x&From=2&To=1" and req.header("Authorization") is None
    req = build_request(replace(i, key_user="user", auth_user="me@x"), "1", "2", "x")
    assert req.url == "https://api.example.com/send?v=2&user=me%40x&api_key=s+e%2Fc%7E"
    assert "s+e" not in repr(req) and safe_url(req.url) == "https://api.example.com/send"


def test_num_country_before_numform():
    i = iface(auth_method="none", num_country="SE", val_numform="no+")
    assert build_fields(i, "070-123 45 67", "+46 8 123 456 78", "x") == {
        "To": "46701234567", "From": "46812345678", "Body": "x"}
    # alphanumeric senders (any script), an empty sender and short codes are left alone
    for sender in ("Acme", "Ångström", "Тест1", "", "72345"):
        assert build_fields(i, "0701234567", sender, "x")["From"] == sender
    # ...but a number is a number first: 8 digits are a whole national number in Denmark
    dk = iface(auth_method="none", num_country="DK")
    assert build_fields(dk, "20123456", "32123456", "x") == {"To": "+4520123456", "From": "+4532123456", "Body": "x"}
    with pytest.raises(itsp_request.InvalidNumber, match="^To "):
        build_fields(i, "12", "Acme", "x")
    with pytest.raises(itsp_request.InvalidNumber, match="^From "):
        build_fields(i, "0701234567", "+46 12", "x")
    # without num_country nothing is checked, as in the PHP
    assert build_fields(iface(), "12", "x y", "b")["To"] == "12"


def test_204_is_sent_even_with_resp_check():
    out = judge(204, b"", "status=ok")
    assert (out.ok, out.permanent, out.code) == (True, False, 204)


@pytest.mark.parametrize("path, body, expected", [
    ("data.id", b'{"data":{"id":"abc"}}', "abc"),
    ("id", b'{"id":12345678901234567890}', "12345678901234567890"),
    ("id", b'{"id":1.50}', "1.50"),
    ("message_uuid.0", b'{"message_uuid":["u1"]}', "u1"),
    ("message_uuid[]", b'{"message_uuid":["u1"]}', "u1"),
    ("a.0.b", b'{"a":{"0":{"b":"keyed"}}}', "keyed"),
    ("a.1", b'{"a":["x"]}', None),
    ("id", b'{"id":true}', None),
    ("id", b'{"id":null}', None),
    ("id", b'{"id":{"x":1}}', None),
    ("id", b'{"id":""}', None),
    ("id", b'{"id":"a\\nb"}', None),
    ("id", b'{"id":"' + b"x" * 201 + b'"}', None),
    ("id", b"not json", None),
    ("id", b"", None),
    (None, b'{"id":"x"}', None),
])
def test_response_id(path, body, expected):
    assert itsp_response.response_id(path, body) == expected


def test_provider_id_only_on_success():
    assert judge(201, b'{"sid":"SM1"}', resp_id="sid").provider_id == "SM1"
    assert judge(200, b'{"sid":"SM1","status":"ok"}', "status=ok", resp_id="sid").provider_id == "SM1"
    assert judge(200, b'{"sid":"SM1","status":"no"}', "status=ok", resp_id="sid").provider_id is None
    assert judge(400, b'{"sid":"SM1"}', resp_id="sid").provider_id is None
    assert judge(200, b'{"sid":"SM1"}').provider_id is None


@pytest.mark.parametrize("secret", ['to"k/en', 'tö"k'])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_secrets_redacted_in_json_escaped_form(secret, ascii_only):
    i = iface(auth_method="bearer", auth_secret=secret)
    echo = json.dumps({"echo": secret}, ensure_ascii=ascii_only).encode()
    out = check_response(i, 401, echo)
    assert "k" not in out.reason.replace("***", "") and "***" in out.reason


def test_client_network_error_text_is_redacted():
    client = ITSPClient(task.Clock(), treq_client=FailingTreq(ValueError("bad url ?api_key=QS3CRET")))
    i = iface(url_host="http://itsp.test", auth_method="query", key_secret="api_key", auth_secret="QS3CRET")
    out = fired(client.send(i, "1", "2", "x"))
    assert (out.ok, out.permanent) == (False, False) and "QS3CRET" not in out.reason


# ---------------------------------------------------------------------------------------
# PHP itself, when it is installed
# ---------------------------------------------------------------------------------------

PHP = shutil.which("php")

PHP_SCRIPT = r"""
$in = json_decode(file_get_contents('php://stdin'), true);
$out = [];
foreach ($in['queries'] as $pairs) {
    $a = [];
    foreach ($pairs as $p) { $a[$p[0]] = $p[1]; }
    $plain = http_build_query($a);
    ksort($a);
    $out[] = [$plain, http_build_query($a), array_map('strval', array_keys($a)),
              base64_encode(hash_hmac('sha1', $in['path'] . http_build_query($a) . md5(http_build_query($a)), $in['secret']))];
}
echo json_encode($out);
"""


@pytest.mark.skipif(PHP is None, reason="php is not installed")
def test_php_differential():
    texts = ["", " ", "~", "a b", "+46 (0)70-123 45", "å", "😀", "\t\n", "%41", "a&b=c", "€", "x" * 50,
             "ÅÄÖ", "\x7f", "k.e-y_1", "Привет", "中文", "a+b", "'\"<>", "\\"]
    keys = ["To", "From", "Body", "to", "api_key", "API_KEY", "_x", "-x", "~x", "a b", "é", "10", "2", "02", "1.5", "x1"]
    queries = []
    for shift in range(6):
        pairs = [[k, texts[(i + shift) % len(texts)]] for i, k in enumerate(keys)]
        queries.append(pairs[shift:] + pairs[:shift])
    request = {"queries": queries, "path": "/v1/sms/send/", "secret": "sécret~1"}
    php = subprocess.run([PHP, "-r", PHP_SCRIPT], input=json.dumps(request).encode(),
                         capture_output=True, timeout=60, check=True)
    results = json.loads(php.stdout)
    for pairs, (plain, sorted_query, sorted_keys, sign) in zip(queries, results):
        tuples = [tuple(p) for p in pairs]
        assert http_build_query(tuples) == plain
        ordered = php_ksort(tuples)
        assert [k for k, _ in ordered] == sorted_keys
        assert http_build_query(ordered) == sorted_query
        assert zadarma_signature("/v1/sms/send/", sorted_query, "sécret~1") == sign


# ---------------------------------------------------------------------------------------
# ITSPClient with treq.testing.StubTreq
# ---------------------------------------------------------------------------------------

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.error import ConnectionRefusedError, DNSLookupError  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web import server  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from treq.testing import StubTreq  # noqa: E402

from websmsd.itsp.client import ITSPClient  # noqa: E402


class RecordingITSP(Resource):
    """An ITSP that records each request exactly and answers as told."""

    isLeaf = True

    def __init__(self, status=200, body=b'{"status":"success"}', headers=(), hold=False):
        super().__init__()
        self.status, self.body, self.headers, self.hold = status, body, headers, hold
        self.requests = []
        self.pending = []

    def render(self, request):
        self.requests.append({
            "method": request.method,
            "uri": request.uri,
            "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        if self.hold:
            self.pending.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        for name, value in self.headers:
            request.setHeader(name, value)
        return self.body


def stub_client(resource, **kw):
    stub = StubTreq(resource)
    clock = task.Clock()
    return ITSPClient(clock, treq_client=stub, **kw), stub, clock


def test_client_sends_exact_request_and_reports_success(events):
    itsp_ = RecordingITSP()
    client, stub, clock = stub_client(itsp_)
    i = iface(url_host="http://itsp.test", url_path="/v1/sms/send/", auth_method="zadarma",
              auth_user="KEY", auth_secret="SECRET", resp_check="status=success")
    out = fired(client.send(i, "+46701234567", "+46700000000", "Hej då 😀"))
    assert out.ok and not out.permanent and out.code == 200
    [seen] = itsp_.requests
    expected = build_request(i, "+46701234567", "+46700000000", "Hej då 😀")
    assert seen["method"] == b"POST"
    assert seen["uri"] == b"/v1/sms/send/"
    assert seen["body"] == expected.body
    h = seen["headers"]
    assert h[b"accept"] == [b"*/*"]
    assert h[b"content-type"] == [b"application/x-www-form-urlencoded"]
    assert h[b"authorization"] == [b"KEY:" + independent_zadarma(b"/v1/sms/send/", expected.body, b"SECRET")]
    assert h[b"user-agent"] == [UA]
    assert h[b"content-length"] == [str(len(expected.body)).encode()]
    assert h[b"host"] == [b"itsp.test"]
    # Nothing else, except treq's gzip offer and connection management.
    assert set(h) - {b"accept", b"content-type", b"authorization", b"user-agent",
                     b"content-length", b"host", b"accept-encoding", b"connection"} == set()
    # logged: url, status, elapsed; never the secret, the signature or the text
    mine = [e for e in events if e.get("log_namespace") == "websmsd.itsp"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["elapsed_ms"] == 0
    assert mine[-1]["url"] == "http://itsp.test/v1/sms/send/"
    dump = repr(mine)
    assert "SECRET" not in dump and "Hej" not in dump and h[b"authorization"][0].decode() not in dump


def test_client_plain_auth_secret_never_logged(events):
    itsp_ = RecordingITSP(status=401, body=b'{"error":"bad key TOPSECRET"}')
    client, stub, clock = stub_client(itsp_)
    i = iface(url_host="http://itsp.test", url_path="/send?key=QUERYKEY", auth_method="plain",
              key_user="user", key_secret="key", auth_user="me", auth_secret="TOPSECRET")
    out = fired(client.send(i, "1", "2", "private words"))
    assert (out.ok, out.permanent, out.code) == (False, True, 401)
    assert "TOPSECRET" not in out.reason
    assert itsp_.requests[0]["uri"] == b"/send?key=QUERYKEY"
    assert itsp_.requests[0]["body"] == b"Body=private+words&From=2&To=1&key=TOPSECRET&user=me"
    dump = repr([e for e in events if e.get("log_namespace") == "websmsd.itsp"])
    assert "TOPSECRET" not in dump and "QUERYKEY" not in dump and "private" not in dump


def test_client_basic_auth_header():
    itsp_ = RecordingITSP(body=b"")
    client, stub, clock = stub_client(itsp_)
    out = fired(client.send(iface(url_host="http://itsp.test", auth_user="u", auth_secret="p"), "1", "2", "x"))
    assert out.ok
    assert itsp_.requests[0]["headers"][b"authorization"] == [b"Basic dTpw"]


def test_client_does_not_follow_redirects():
    itsp_ = RecordingITSP(status=302, body=b"", headers=[(b"Location", b"http://elsewhere.test/x?k=1")])
    client, stub, clock = stub_client(itsp_)
    out = fired(client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "x"))
    assert (out.ok, out.permanent, out.code) == (False, True, 302)
    assert "http://elsewhere.test/x" in out.reason
    assert len(itsp_.requests) == 1


@pytest.mark.parametrize("status, permanent", [(503, False), (429, False), (404, True), (200, True)])
def test_client_failures(status, permanent):
    itsp_ = RecordingITSP(status=status, body=b'{"status":"error"}')
    client, stub, clock = stub_client(itsp_)
    out = fired(client.send(iface(url_host="http://itsp.test", auth_method="none", resp_check="status=success"), "1", "2", "x"))
    assert (out.ok, out.permanent, out.code) == (False, permanent, status)


def test_client_timeout_is_transient():
    itsp_ = RecordingITSP(hold=True)
    client, stub, clock = stub_client(itsp_, timeout=5.0)
    d = client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "x")
    results = []
    d.addBoth(results.append)
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    [out] = results
    assert isinstance(out, Outcome)
    assert (out.ok, out.permanent, out.code) == (False, False, None)
    assert "timeout" in out.reason and "5 s" in out.reason
    assert not clock.getDelayedCalls()


class SlowBodyITSP(Resource):
    """Answers the headers and a first byte, then nothing more."""

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-length", b"100")
        request.write(b"{")
        return server.NOT_DONE_YET


def test_client_timeout_while_reading_the_body():
    client, stub, clock = stub_client(SlowBodyITSP(), timeout=3.0)
    d = client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "x")
    results = []
    d.addBoth(results.append)
    stub.flush()
    assert results == []
    clock.advance(3.0)
    [out] = results
    assert (out.ok, out.permanent, out.code) == (False, False, None)
    assert "timeout" in out.reason
    assert not clock.getDelayedCalls()


def test_client_internal_error_is_an_outcome(monkeypatch, events):
    def broken(*args):
        raise TypeError("bug")

    monkeypatch.setattr(itsp_client, "build_request", broken)
    client, stub, clock = stub_client(RecordingITSP())
    out = fired(client.send(iface(url_host="http://itsp.test"), "1", "2", "x"))
    assert (out.ok, out.permanent) == (False, False) and "internal error" in out.reason
    assert any(e.get("log_failure") is not None for e in events)


def test_client_log_events_format_and_hide_the_answer(events):
    from twisted.logger import formatEvent

    itsp_ = RecordingITSP(body=b'{"status":"success","text":"secret words"}')
    client, stub, clock = stub_client(itsp_)
    assert fired(client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "secret words")).ok
    itsp_.status = 500
    assert not fired(client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "x")).ok
    texts = [formatEvent(e) for e in events if e.get("log_namespace") == "websmsd.itsp"]
    assert texts[0] == "interface '' http://itsp.test/v1/sms/send/: sent, HTTP 200 in 0 ms"
    assert texts[1].startswith(
        "interface '' http://itsp.test/v1/sms/send/: not sent, to be retried: HTTP 500"
    )
    assert texts[1].endswith(" (the request took 0 ms)")
    assert "Unable to format" not in "".join(texts)


def test_pure_layer_imports_no_twisted():
    code = ("import sys, websmsd.itsp.request as m, websmsd.itsp.response as r;"
            "from websmsd.config.websms import OutboundInterface as O;"
            "m.build_request(O(), '1', '2', 'x');"
            "r.check_response(O(resp_check='/x/'), 200, b'x');"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('twisted', 'treq'));"
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_client_caps_the_response_body():
    itsp_ = RecordingITSP(body=b'{"status":"success"}' + b" " * 5000)
    client, stub, clock = stub_client(itsp_, max_response=100)
    out = fired(client.send(iface(url_host="http://itsp.test", auth_method="none", resp_check="/success/"), "1", "2", "x"))
    assert out.ok and "truncated" in out.reason


class FailingTreq:
    """A treq client whose requests fail the way a network does."""

    def __init__(self, error, synchronous=False):
        self.error, self.synchronous = error, synchronous

    def request(self, *args, **kwargs):
        if self.synchronous:
            raise self.error
        return defer.fail(self.error)


@pytest.mark.parametrize(
    "error, words",
    [
        (ConnectionRefusedError("refused"), "connection refused by itsp.test"),
        (DNSLookupError("nxdomain"), "DNS lookup failed for itsp.test"),
        (ValueError("odd"), "ValueError"),
    ],
)
@pytest.mark.parametrize("synchronous", [False, True])
def test_client_network_errors_become_transient_outcomes(error, words, synchronous):
    client = ITSPClient(task.Clock(), treq_client=FailingTreq(error, synchronous))
    out = fired(client.send(iface(url_host="http://itsp.test", auth_method="none"), "1", "2", "x"))
    assert (out.ok, out.permanent, out.code) == (False, False, None)
    assert words in out.reason


def test_client_wrapped_errors_are_named():
    from twisted.web.client import ResponseNeverReceived

    wrapped = ResponseNeverReceived([Failure(ConnectionRefusedError("x"))])
    client = ITSPClient(task.Clock(), treq_client=FailingTreq(wrapped))
    out = fired(client.send(iface(url_host="https://itsp.test:8443", auth_method="none"), "1", "2", "x"))
    assert "connection refused by itsp.test:8443" in out.reason


def test_client_configuration_errors_are_outcomes(tmp_path):
    client = ITSPClient(task.Clock())
    out = fired(client.send(iface(url_host="ftp://x", auth_method="none"), "1", "2", "x"))
    assert (out.ok, out.permanent) == (False, False) and "http://" in out.reason
    out = fired(client.send(iface(tls_ca=str(tmp_path / "missing.pem")), "1", "2", "x"))
    assert (out.ok, out.permanent) == (False, False) and "tls_ca" in out.reason
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    out = fired(client.send(iface(tls_ca=str(empty)), "1", "2", "x"))
    assert "no PEM certificate" in out.reason


# ---------------------------------------------------------------------------------------
# TLS policy
# ---------------------------------------------------------------------------------------

def make_cert(directory, names=("127.0.0.1", "localhost"), stem="server"):
    """A self-signed certificate for `names` (IP addresses and DNS names); PEM paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"websmsd test {names[0]}")])
    sans = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, f"{stem}.crt")
    key_path = os.path.join(directory, f"{stem}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def test_policy_verifies_and_tls_ca_builds_a_trust_root(tmp_path):
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.web.client import BrowserLikePolicyForHTTPS

    client = ITSPClient(task.Clock())
    policy = client.policy_for(iface())
    assert isinstance(policy, BrowserLikePolicyForHTTPS)
    assert IOpenSSLClientConnectionCreator.providedBy(policy.creatorForNetloc(b"api.example.com", 443))

    cert, _ = make_cert(str(tmp_path))
    other, _ = make_cert(str(tmp_path), ("localhost",), "other")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(open(cert, "rb").read() + b"\n# comment\n" + open(other, "rb").read())
    root = itsp_client.load_ca_bundle(str(bundle))
    assert IOpenSSLTrustRoot.providedBy(root)
    policy = client.policy_for(iface(tls_ca=str(bundle)))
    assert isinstance(policy, BrowserLikePolicyForHTTPS)
    assert IOpenSSLClientConnectionCreator.providedBy(policy.creatorForNetloc(b"127.0.0.1", 443))


def test_one_pool_per_trust_configuration(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    cert, _ = make_cert(str(tmp_path))
    client = ITSPClient(MemoryReactorClock())
    plain = client.client_for(iface())
    assert client.client_for(iface(url_host="https://other.example")) is plain
    private = client.client_for(iface(tls_ca=cert))
    assert private is not plain
    assert client.client_for(iface(tls_ca=cert, name="b")) is private
    fired(client.close())


def test_pool_connections_log_no_factory_lines():
    # Item 8 of issue 12: every send logged "Starting factory" and "Stopping factory".
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import formatEvent, globalLogPublisher
    from twisted.web.client import HTTPConnectionPool

    client = ITSPClient(MemoryReactorClock())
    client.client_for(iface())
    [(_, pool)] = client._clients.values()
    assert issubclass(pool._factory, HTTPConnectionPool._factory)
    assert pool._factory.noisy is False
    assert HTTPConnectionPool._factory.noisy is True  # the class itself is untouched
    texts = []
    observer = lambda event: texts.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        # What the pool does for each new connection.
        factory = pool._factory(lambda protocol: None, "itsp.test:443")
        factory.doStart()
        factory.doStop()
        loud = HTTPConnectionPool._factory(lambda protocol: None, "itsp.test:443")
        loud.doStart()
        loud.doStop()
    finally:
        globalLogPublisher.removeObserver(observer)
    # The unquieted factory logs, and only it: the capture works and the quiet one is quiet.
    assert [t.split(" ")[0] for t in texts if "factory" in t] == ["Starting", "Stopping"]
    fired(client.close())


# ---------------------------------------------------------------------------------------
# Real sockets, real reactor, in a child process
# ---------------------------------------------------------------------------------------

LOOPBACK_TIMEOUT = 90


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("itsp-loopback"))
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--loopback", directory],
        capture_output=True, timeout=LOOPBACK_TIMEOUT, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_loopback_bytes_on_the_wire(loopback):
    wire = loopback["wire"]
    raw = base64.b64decode(wire["raw"][0])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/sms/send/?route=1 HTTP/1.1"
    headers = sorted(lines[1:])
    expected_body = base64.b64decode(wire["expected_body"])
    assert body == expected_body
    assert headers == sorted([
        b"Accept: */*",
        b"Accept-Encoding: gzip",
        b"Authorization: " + base64.b64decode(wire["expected_auth"]),
        b"Content-Length: " + str(len(expected_body)).encode(),
        b"Content-Type: application/x-www-form-urlencoded",
        b"Host: 127.0.0.1:" + str(wire["port"]).encode(),
        b"User-Agent: " + UA,
    ])
    # both sends succeeded, over one kept-alive connection
    assert wire["outcomes"] == [[True, False, 200], [True, False, 200]]
    assert wire["connections"] == 1
    assert len(wire["raw"]) == 2


def test_loopback_tls_self_signed_refused_without_tls_ca(loopback):
    ok, permanent, status, reason = loopback["tls_system_store"]
    assert (ok, permanent, status) == (False, False, None)
    assert "TLS certificate verification failed" in reason


def test_loopback_tls_accepted_with_tls_ca(loopback):
    ok, permanent, status, reason = loopback["tls_private_ca"]
    assert (ok, permanent, status) == (True, False, 200), reason


def test_loopback_tls_wrong_host_refused_even_with_tls_ca(loopback):
    ok, permanent, status, reason = loopback["tls_wrong_host"]
    assert (ok, permanent, status) == (False, False, None)
    assert "TLS certificate verification failed" in reason
    assert "not valid for that name" in reason


def test_loopback_sends_log_no_factory_lines(loopback):
    # Sends over plain HTTP and TLS, new connections and kept-alive ones, and the pools
    # closed at the end: not one "Starting factory" / "Stopping factory".
    assert loopback["factory_lines"]["client"] == []
    assert loopback["factory_lines"]["other"] > 0


def test_loopback_connection_refused(loopback):
    ok, permanent, status, reason = loopback["refused"]
    assert (ok, permanent, status) == (False, False, None)
    assert "connection refused by 127.0.0.1:" in reason


def test_loopback_timeout(loopback):
    ok, permanent, status, reason = loopback["timeout"]
    assert (ok, permanent, status) == (False, False, None)
    assert "timeout" in reason


def _loopback_main(directory):  # pragma: no cover - runs in the child process
    from twisted.internet import defer, protocol, reactor, ssl
    from twisted.internet.task import react  # noqa: F401
    from twisted.web import server as web_server

    class RawITSP(protocol.Protocol):
        def connectionMade(self):
            self.factory.connections += 1
            self.buffer = b""

        def dataReceived(self, data):
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, rest = self.buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(rest) < length:
                    return
                self.factory.raw.append(head + b"\r\n\r\n" + rest[:length])
                self.buffer = rest[length:]
                answer = b'{"status":"success"}'
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(answer)).encode() + b"\r\n\r\n" + answer
                )

    class Silent(protocol.Protocol):
        def dataReceived(self, data):
            pass

    class Hello(Resource):
        isLeaf = True

        def render(self, request):
            return b'{"status":"success"}'

    def tuple_of(outcome):
        return [outcome.ok, outcome.permanent, outcome.code, outcome.reason]

    from twisted.logger import formatEvent, globalLogPublisher
    from twisted.web.client import HTTPConnectionPool

    factory_lines = {"client": [], "other": 0}

    def observe_factories(event):
        text = formatEvent(event)
        if "Starting factory" in text or "Stopping factory" in text:
            # The listening test servers' factories log too (they show the capture works).
            if isinstance(event.get("factory"), HTTPConnectionPool._factory):
                factory_lines["client"].append(text)
            else:
                factory_lines["other"] += 1

    globalLogPublisher.addObserver(observe_factories)

    async def main():
        results = {"factory_lines": factory_lines}
        client = ITSPClient(reactor, timeout=10.0)

        raw_factory = protocol.Factory.forProtocol(RawITSP)
        raw_factory.connections = 0
        raw_factory.raw = []
        port = reactor.listenTCP(0, raw_factory, interface="127.0.0.1")
        number = port.getHost().port
        i = OutboundInterface(
            url_host=f"http://127.0.0.1:{number}", url_path="/v1/sms/send/?route=1",
            auth_method="zadarma", auth_user="KEY", auth_secret="SECRET",
            val_static="sender=Acme", resp_check="status=success",
        )
        outcomes = []
        for _ in range(2):
            out = await client.send(i, "+46701234567", "+46700000000", "Hej då ~ 😀")
            outcomes.append([out.ok, out.permanent, out.code])
        expected = build_request(i, "+46701234567", "+46700000000", "Hej då ~ 😀")
        results["wire"] = {
            "port": number,
            "raw": [base64.b64encode(r).decode() for r in raw_factory.raw],
            "connections": raw_factory.connections,
            "outcomes": outcomes,
            "expected_body": base64.b64encode(expected.body).decode(),
            "expected_auth": base64.b64encode(expected.header("Authorization")).decode(),
        }
        await port.stopListening()

        cert, key = make_cert(directory)
        other_cert, other_key = make_cert(directory, ("other.invalid",), "other")
        with open(cert, "rb") as c, open(key, "rb") as k:
            good = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
        with open(other_cert, "rb") as c, open(other_key, "rb") as k:
            wrong = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
        site = web_server.Site(Hello())
        tls_port = reactor.listenSSL(0, site, good, interface="127.0.0.1")
        wrong_port = reactor.listenSSL(0, site, wrong, interface="127.0.0.1")
        tls_url = f"https://127.0.0.1:{tls_port.getHost().port}"
        wrong_url = f"https://127.0.0.1:{wrong_port.getHost().port}"
        base = OutboundInterface(url_path="/send", auth_method="none", resp_check="status=success")
        results["tls_system_store"] = tuple_of(await client.send(replace(base, url_host=tls_url), "1", "2", "x"))
        results["tls_private_ca"] = tuple_of(await client.send(replace(base, url_host=tls_url, tls_ca=cert), "1", "2", "x"))
        results["tls_wrong_host"] = tuple_of(await client.send(replace(base, url_host=wrong_url, tls_ca=other_cert), "1", "2", "x"))
        await tls_port.stopListening()
        await wrong_port.stopListening()

        closed = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        closed_number = closed.getHost().port
        await closed.stopListening()
        results["refused"] = tuple_of(await client.send(
            replace(base, url_host=f"http://127.0.0.1:{closed_number}"), "1", "2", "x"))

        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        quick = ITSPClient(reactor, timeout=0.5)
        results["timeout"] = tuple_of(await quick.send(
            replace(base, url_host=f"http://127.0.0.1:{silent.getHost().port}"), "1", "2", "x"))
        await quick.close()
        await silent.stopListening()
        await client.close()
        return results

    outcome = {}

    def start():
        d = defer.ensureDeferred(main())

        def done(result):
            outcome["result"] = result
            reactor.stop()

        def failed(f):
            outcome["error"] = f.getTraceback()
            reactor.stop()

        d.addCallbacks(done, failed)

    reactor.callWhenRunning(start)
    reactor.callLater(LOOPBACK_TIMEOUT - 10, reactor.stop)
    reactor.run()
    if "result" not in outcome:
        sys.stderr.write(outcome.get("error", "loopback run timed out\n"))
        sys.exit(1)
    print(json.dumps(outcome["result"]))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--loopback":
    _loopback_main(sys.argv[2])
