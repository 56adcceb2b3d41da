"""[web] users of the conversation pages: the config section, password hashes, logins
with throttling, signed session cookies, what each viewer may see, and `websms passwd`."""

import base64
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from websmsd.config import ConfigError, loads, report
from websmsd.config.web import WebSettings, WebUser, parse_password_hash
from websmsd.http import users as users_module
from websmsd.http.users import (COOKIE, OWNER, Users, Viewer, hash_password, verify_password)

ROOT = Path(__file__).resolve().parent.parent
ALICE_PASSWORD = "alice-secret-1"
BOB_PASSWORD = "bob-secret-22"
SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def hashes():
    return {"alice": hash_password(ALICE_PASSWORD), "bob": hash_password(BOB_PASSWORD)}


def example(hashes, extra=""):
    return f"""\
[phones]
number [john.doe] = +12025550160
number [desk]     = +1 202 555 0199, +12025550198
number [other]    = +12025550111

[web]
password [alice] = {hashes['alice']}  ; from websms passwd alice
numbers  [alice] = +12025550160, +12025550183   ; own numbers
phones   [alice] = john.doe, desk
password [bob]   = {hashes['bob']}
all      [bob]   = yes
session = 12h
{extra}"""


def refused(text, line, key, *words):
    with pytest.raises(ConfigError) as info:
        loads(text, "websms.conf")
    error = info.value
    assert (error.line, error.key) == (line, key), str(error)
    for word in words:
        assert word in str(error)
    return str(error)


# -- the [web] section ----------------------------------------------------------------


def test_example_loads(hashes):
    settings = loads(example(hashes), "websms.conf")
    web = settings.web
    assert isinstance(web, WebSettings)
    assert web.session == 12 * 3600
    alice, bob = web.users
    assert alice == WebUser("alice", hashes["alice"], ("+12025550160", "+12025550183"),
                            ("john.doe", "desk"), False)
    assert bob == WebUser("bob", hashes["bob"], (), (), True)
    # Nothing about the users themselves (only that the default listener is loopback's).
    assert not [w for w in settings.warnings if ("[web]" in w or "alice" in w or "bob" in w)
                and "cannot reach /login" not in w]


def test_no_web_section_no_users():
    web = loads("[phones]\nnumber [a] = +1202555\n").web
    assert web.users == () and web.session == 12 * 3600


def test_session_duration_and_plain_only(hashes):
    text = example(hashes).replace("session = 12h", "session = 30m")
    assert loads(text).web.session == 1800
    text = example(hashes).replace("session = 12h", "session [alice] = 1h")
    refused(text, 12, "session[alice]", "cannot be indexed")
    text = example(hashes).replace("session = 12h", "session = soon")
    refused(text, 12, "session", "not a duration")


def test_clear_password_refused_never_repeated(hashes):
    text = example(hashes).replace(hashes["alice"], "hunter2hunter2")
    message = refused(text, 7, "password[alice]", "run websms passwd alice",
                      "never stored in clear")
    assert "hunter2" not in message
    quoted = example(hashes).replace(hashes["alice"], '"scrypt hunter2"')
    assert "hunter2" not in refused(quoted, 7, "password[alice]", "websms passwd alice")


def test_user_without_password_refused(hashes):
    text = example(hashes, "numbers [carol] = +12025550170\n")
    refused(text, 13, "numbers[carol]", "no password", "websms passwd carol")


def test_unknown_phone_refused(hashes):
    text = example(hashes).replace("john.doe, desk", "john.doe, nobody")
    refused(text, 9, "phones[alice]", "'nobody'", "[phones]")
    text = example(hashes).replace("[phones]", "[daemon]").replace("number [", "; number [")
    refused(text, 9, "phones[alice]", "no endpoint named 'john.doe'")


def test_plain_user_keys_refused(hashes):
    text = example(hashes, "numbers = +12025550170\n")
    refused(text, 13, "numbers", "belongs to a user")


@pytest.mark.parametrize("name", ["a b", "x/y", "é", "a" * 65, "owner"])
def test_bad_user_names(hashes, name):
    text = example(hashes, f"password [{name}] = {hashes['bob']}\nall [{name}] = yes\n")
    refused(text, 13, f"password[{name}]")


def test_user_name_characters(hashes):
    name = "j.doe_2@example-org"
    text = example(hashes, f"password [{name}] = {hashes['bob']}\nall [{name}] = yes\n")
    assert loads(text).web.user(name).all


def test_user_that_sees_nothing_is_a_warning(hashes):
    text = example(hashes, f"password [carol] = {hashes['bob']}\nall [carol] = no\n")
    settings = loads(text, "websms.conf")
    assert [w for w in settings.warnings if "carol" in w and "see no conversation" in w
            and w.startswith("websms.conf:13:")]
    assert settings.web.user("carol").all is False


def good_hash_parts(hashes):
    return hashes["alice"].split("$")


def with_parts(hashes, **change):
    parts = good_hash_parts(hashes)
    names = ["scheme", "n", "r", "p", "salt", "key"]
    for name, value in change.items():
        parts[names.index(name)] = value
    return "$".join(parts)


BAD_HASHES = [
    (dict(n=str(2 ** 20)), "more than 131072"),
    (dict(n="1000"), "not a power of 2"),
    (dict(n="1024"), "too weak"),
    (dict(n="0"), "whole numbers"),
    (dict(n="016384"), "whole numbers"),
    (dict(n=str(2 ** 17), r="8"), "MiB"),
    (dict(r="33"), "at most"),
    (dict(n=str(2 ** 16), p="8"), "too slow"),
    (dict(p="17"), "at most"),
    (dict(scheme="bcrypt"), "not a password hash"),
    (dict(salt="not*base64"), "salt"),
    (dict(salt="QUJD"), "salt of the hash has 3 bytes"),
    (dict(key="QUJDREVGR0g"), "key of the hash has 8 bytes"),
    (dict(key="A" * 100), "key of the hash has 75 bytes"),
    (dict(key="AAAAA"), "not base64"),
]


@pytest.mark.parametrize("change,words", BAD_HASHES)
def test_bad_hash_parameters_refused(hashes, change, words):
    bad = with_parts(hashes, **change)
    text = example(hashes).replace(hashes["alice"], bad)
    refused(text, 7, "password[alice]", words, "websms passwd alice")


def test_too_few_or_many_hash_parts(hashes):
    for bad in ("scrypt$16384$8$1$abc", hashes["alice"] + "$x", "scrypt"):
        text = example(hashes).replace(hashes["alice"], bad)
        refused(text, 7, "password[alice]", "not a password hash")


def test_padded_base64_is_read(hashes):
    parts = good_hash_parts(hashes)
    padded = "$".join(parts[:4] + [parts[4] + "==", parts[5] + "="])
    text = example(hashes).replace(hashes["alice"], f'"{padded}"')
    assert loads(text).web.users[0].password_hash == padded
    assert verify_password(ALICE_PASSWORD, padded)


def test_check_config_never_shows_the_hash(hashes):
    settings = loads(example(hashes), "websms.conf")
    out = report(settings)
    section = out[out.index("[web]"):]
    assert "user alice" in section and "user bob" in section
    assert "+12025550160, +12025550183" in section
    assert "phone desk: +1 202 555 0199, +12025550198" in section
    assert "every own number" in section
    for h in hashes.values():
        for part in h.split("$")[4:]:
            assert part not in out
    assert "scrypt$" not in out
    assert hashes["alice"] not in repr(settings)


def test_check_config_command_never_shows_the_hash(hashes, tmp_path):
    conf = tmp_path / "websms.conf"
    conf.write_text(example(hashes))
    run = subprocess.run([sys.executable, "-m", "websmsd", "check-config", str(conf)],
                         cwd=ROOT, capture_output=True, text=True)
    assert "user alice" in run.stdout, run.stderr
    assert hashes["alice"].split("$")[5] not in run.stdout + run.stderr


# -- password hashes -------------------------------------------------------------------


def test_hash_format(hashes):
    stored = hashes["alice"]
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", stored)
    parsed = parse_password_hash(stored)
    assert (parsed.n, parsed.r, parsed.p) == (16384, 8, 1)
    assert (len(parsed.salt), len(parsed.key)) == (16, 32)
    salt = base64.b64decode(stored.split("$")[4] + "==")
    expected = hashlib.scrypt(ALICE_PASSWORD.encode(), salt=salt, n=16384, r=8, p=1, dklen=32)
    assert parsed.key == expected


def test_round_trip_and_wrong_password(hashes):
    assert verify_password(ALICE_PASSWORD, hashes["alice"])
    assert not verify_password(BOB_PASSWORD, hashes["alice"])
    assert not verify_password(ALICE_PASSWORD + " ", hashes["alice"])
    assert not verify_password("", hashes["alice"])


def test_same_password_new_salt():
    a, b = hash_password("same password"), hash_password("same password")
    assert a != b and verify_password("same password", a) and verify_password("same password", b)


def test_unicode_password():
    stored = hash_password("pässwörd ✓ 密码")
    assert verify_password("pässwörd ✓ 密码", stored)
    assert not verify_password("passwort ✓ 密码", stored)


def test_hash_password_refuses_what_web_refuses():
    with pytest.raises(ValueError):
        hash_password("x" * 10, n=2 ** 20)
    with pytest.raises(ValueError):
        hash_password("x" * 10, n=3000)
    with pytest.raises(TypeError):
        hash_password(b"bytes")


@pytest.mark.parametrize("stored", [
    None, 42, b"scrypt$16384$8$1$AAAA$BBBB", "", "scrypt", "$$$$$", "scrypt$$$$$",
    "scrypt$16384$8$1$!!$!!", "scrypt$16384$8$1$\n$\n",
    "scrypt$99999999999$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    "plaintext-password", "scrypt$16384$8$1$" + "A" * 10000 + "$AA",
])
def test_malformed_stored_never_raises(stored):
    assert verify_password("anything", stored) is False


@pytest.mark.parametrize("password", [None, b"alice-secret-1", 123, "\ud800", "x" * 5000])
def test_bad_passwords_never_raise(hashes, password):
    assert verify_password(password, hashes["alice"]) is False


def test_crafted_hash_never_reaches_scrypt(hashes, monkeypatch):
    calls = []
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(k) or b"")
    huge = with_parts(hashes, n=str(2 ** 24))
    assert verify_password("x", huge) is False
    assert verify_password("x", with_parts(hashes, r="8", n=str(2 ** 17))) is False
    assert calls == []


# -- viewers ---------------------------------------------------------------------------


class FakeVerify:
    """verify(password, stored) for Users: by table, or Deferreds the test fires."""

    def __init__(self, passwords, hold=False):
        self.passwords = passwords  # stored -> the password
        self.calls = []
        self.hold = hold
        self.deferreds = []

    def __call__(self, password, stored):
        self.calls.append((password, stored))
        if self.hold:
            d = defer.Deferred()
            self.deferreds.append((d, self.passwords.get(stored) == password))
            return d
        return defer.succeed(self.passwords.get(stored) == password)


@pytest.fixture
def settings(hashes):
    return loads(example(hashes), "websms.conf")


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def verify(hashes):
    return FakeVerify({hashes["alice"]: ALICE_PASSWORD, hashes["bob"]: BOB_PASSWORD})


def make_users(settings, clock, verify, secret=SECRET):
    return Users(settings.web, settings.phones, secret=secret, clock=clock, verify=verify)


@pytest.fixture
def users(settings, clock, verify):
    return make_users(settings, clock, verify)


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def request_with(cookie=None, header=None):
    request = Request(DummyChannel())
    if header is not None:
        request.requestHeaders.setRawHeaders(b"cookie", [header])
    elif cookie is not None:
        request.requestHeaders.setRawHeaders(b"cookie", [f"other=1; {COOKIE}={cookie}".encode()])
    request.parseCookies()
    return request


def test_viewer_numbers_from_numbers_and_phones(users):
    alice = users.viewer_of("alice")
    assert alice == Viewer("alice", frozenset(
        {"12025550160", "12025550183", "12025550199", "12025550198"}), False)
    for spelling in ("+12025550160", "0012025550160", "12025550160", "+1 (202) 555-0160",
                     "+12025550199", "+12025550198", "+12025550183"):
        assert alice.may(spelling), spelling
    for other in ("+12025550111", "+12025550100", "2025550160", "", "VODAFONE"):
        assert not alice.may(other), other
    assert not alice.owner and users.enabled


def test_numbers_as_written(users):
    assert users.numbers_of("alice") == ("+12025550160", "+12025550183", "+1 202 555 0199",
                                         "+12025550198")
    assert users.numbers_of("bob") == () and users.numbers_of("carol") == ()


def test_all_and_owner_see_everything(users):
    bob = users.viewer_of("bob")
    assert bob.numbers is None and bob.may("+4670123") and not bob.owner
    assert OWNER == Viewer("owner", None, True) and OWNER.may("+12025550111")
    assert users.viewer_of("carol") is None and users.viewer_of("owner") is None


def test_no_users_not_enabled(clock, verify):
    users = Users(WebSettings(), loads("").phones, secret=SECRET, clock=clock, verify=verify)
    assert not users.enabled and users.viewer_of("alice") is None


def test_short_secret_refused(settings):
    with pytest.raises(ValueError):
        Users(settings.web, settings.phones, secret=b"short")


# -- logging in ------------------------------------------------------------------------


def test_login_success_gives_a_session(users, verify, hashes, logged):
    value = result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.7"))
    assert isinstance(value, str) and value.startswith("alice:")
    assert verify.calls == [(ALICE_PASSWORD, hashes["alice"])]
    assert users.session(request_with(value)) == users.viewer_of("alice")
    text = " ".join(formatEvent(e) for e in logged)
    assert "alice" in text and "192.0.2.7" in text and ALICE_PASSWORD not in text


def test_login_wrong_password(users, logged):
    assert result_of(users.login("alice", BOB_PASSWORD, "192.0.2.7")) is None
    text = " ".join(formatEvent(e) for e in logged)
    assert "failed" in text and "alice" in text and "192.0.2.7" in text
    assert BOB_PASSWORD not in text


def test_unknown_user_does_the_same_work(users, verify):
    assert result_of(users.login("mallory", ALICE_PASSWORD, "192.0.2.7")) is None
    assert result_of(users.login("owner", ALICE_PASSWORD, "192.0.2.8")) is None
    assert [stored for _, stored in verify.calls] == [users_module._DUMMY_HASH] * 2
    parse_password_hash(users_module._DUMMY_HASH)  # as costly as a real one


def test_dummy_hash_has_default_cost():
    parsed = parse_password_hash(users_module._DUMMY_HASH)
    assert (parsed.n, parsed.r, parsed.p, len(parsed.key)) == (2 ** 14, 8, 1, 32)


@pytest.mark.parametrize("name,password,source", [
    (None, ALICE_PASSWORD, "192.0.2.7"), ("alice", None, "192.0.2.7"),
    (b"alice", ALICE_PASSWORD, "192.0.2.7"), ("alice", "x" * 100000, "not an address"),
    ("a" * 10000, "x", None),
])
def test_odd_login_input_fails_quietly(settings, clock, name, password, source):
    users = Users(settings.web, settings.phones, secret=SECRET, clock=clock,
                  verify=lambda p, s: verify_password(p, s))
    assert result_of(users.login(name, password, source)) is None


def test_login_names_are_escaped_in_the_log(users, logged):
    result_of(users.login("eve\nFORGED line", "x", "192.0.2.7"))
    text = "".join(formatEvent(e) for e in logged)
    assert "\n" not in text and "eve\\nFORGED" in text


def test_verify_failure_is_a_failed_login(settings, clock, logged):
    def broken(password, stored):
        return defer.fail(RuntimeError("pool gone"))

    users = make_users(settings, clock, broken)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.7")) is None
    assert any("checking a web password failed" in formatEvent(e) for e in logged)


def fail_times(users, name, source, n):
    for _ in range(n):
        assert result_of(users.login(name, "wrong password", source)) is None


def test_throttled_after_five_failures_per_name(users, verify, clock):
    for i in range(5):
        fail_times(users, "alice", f"192.0.2.{i + 1}", 1)
    calls = len(verify.calls)
    # From a sixth address, with the right password: refused at once, no hash.
    assert result_of(users.login("alice", ALICE_PASSWORD, "198.51.100.1")) is None
    assert len(verify.calls) == calls
    # bob is not affected.
    assert result_of(users.login("bob", BOB_PASSWORD, "198.51.100.1")) is not None
    clock.advance(59)
    assert result_of(users.login("alice", ALICE_PASSWORD, "198.51.100.1")) is None
    clock.advance(2)
    assert result_of(users.login("alice", ALICE_PASSWORD, "198.51.100.1")) is not None


def test_throttled_per_source(users, verify, clock):
    for i in range(5):
        fail_times(users, f"guess{i}", "203.0.113.9", 1)
    calls = len(verify.calls)
    assert result_of(users.login("alice", ALICE_PASSWORD, "203.0.113.9")) is None
    assert len(verify.calls) == calls
    assert result_of(users.login("alice", ALICE_PASSWORD, "203.0.113.10")) is not None


def test_ipv6_source_counts_by_64(users):
    for i in range(5):
        fail_times(users, f"guess{i}", f"2001:db8::{i + 1}", 1)
    assert result_of(users.login("alice", ALICE_PASSWORD, "2001:db8::99")) is None
    assert result_of(users.login("alice", ALICE_PASSWORD, "2001:db8:0:1::1")) is not None
    for i in range(5):
        fail_times(users, f"other{i}", "::ffff:192.0.2.50", 1)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.50")) is None


def test_throttled_attempts_are_logged_once_per_block(users, clock, logged):
    fail_times(users, "alice", "192.0.2.1", 5)
    del logged[:]
    for _ in range(20):
        assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is None
    assert sum("too many failed" in formatEvent(e) for e in logged) == 1
    clock.advance(61)
    fail_times(users, "alice", "192.0.2.1", 1)  # the next block
    for _ in range(5):
        result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1"))
    assert sum("too many failed" in formatEvent(e) for e in logged) == 2


def test_block_grows(users, clock, verify):
    fail_times(users, "alice", "192.0.2.1", 5)
    clock.advance(61)  # the first block (60 s) is over: one more try
    fail_times(users, "alice", "192.0.2.1", 1)
    clock.advance(119)
    calls = len(verify.calls)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is None
    assert len(verify.calls) == calls
    clock.advance(2)  # 120 s after the second block began
    fail_times(users, "alice", "192.0.2.1", 1)  # a third: 240 s
    clock.advance(239)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is None
    clock.advance(2)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is not None


def test_failures_age_out(users, clock):
    fail_times(users, "alice", "192.0.2.1", 4)
    clock.advance(15 * 60 + 1)
    fail_times(users, "alice", "192.0.2.1", 4)  # 4 within the window: no block
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is not None


def test_success_clears_failures(users):
    fail_times(users, "alice", "192.0.2.1", 4)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is not None
    fail_times(users, "alice", "192.0.2.1", 4)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is not None


def test_throttled_while_attempts_are_pending(settings, clock, hashes):
    verify = FakeVerify({hashes["alice"]: ALICE_PASSWORD}, hold=True)
    users = make_users(settings, clock, verify)
    pending = [users.login("alice", "guess", "192.0.2.1") for _ in range(5)]
    sixth = users.login("alice", ALICE_PASSWORD, "192.0.2.1")
    assert result_of(sixth) is None and len(verify.calls) == 5
    for d, ok in verify.deferreds:
        d.callback(ok)
    assert [result_of(d) for d in pending] == [None] * 5


def test_too_many_logins_at_once(settings, clock, hashes):
    verify = FakeVerify({hashes["alice"]: ALICE_PASSWORD}, hold=True)
    users = make_users(settings, clock, verify)
    waiting = [users.login(f"user{i}", "guess", f"192.0.2.{i}")
               for i in range(users_module.MAX_PENDING)]
    assert result_of(users.login("alice", ALICE_PASSWORD, "198.51.100.1")) is None
    assert len(verify.calls) == users_module.MAX_PENDING
    for d, ok in verify.deferreds:
        d.callback(ok)
    assert all(result_of(d) is None for d in waiting)
    later = users.login("alice", ALICE_PASSWORD, "198.51.100.1")  # room again: verified
    assert len(verify.calls) == users_module.MAX_PENDING + 1
    verify.deferreds[-1][0].callback(True)
    assert result_of(later) is not None


def test_tracking_is_bounded(users, monkeypatch):
    monkeypatch.setattr(users_module, "MAX_TRACKED", 20)
    for i in range(100):
        fail_times(users, f"name{i}", f"10.0.{i // 250}.{i % 250}", 1)
    assert len(users._failures) <= 21


def test_password_changed_during_login_refused(settings, clock, hashes):
    verify = FakeVerify({hashes["alice"]: ALICE_PASSWORD}, hold=True)
    users = make_users(settings, clock, verify)
    d = users.login("alice", ALICE_PASSWORD, "192.0.2.1")
    changed = loads(example({"alice": hash_password("new password!"), "bob": hashes["bob"]}))
    users.update(changed.web, changed.phones)
    verify.deferreds[0][0].callback(True)
    assert result_of(d) is None


def test_default_verify_runs_in_the_pool(settings, clock):
    class SyncPool:
        def __init__(self):
            self.jobs = []

        def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
            self.jobs.append(f)
            on_result(True, f(*args, **kwargs))

    class Reactor:
        def callFromThread(self, f, *args, **kwargs):
            f(*args, **kwargs)

    pool = SyncPool()
    users = Users(settings.web, settings.phones, secret=SECRET, clock=clock, reactor=Reactor(),
                  pool=pool)
    assert result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.1")) is not None
    assert result_of(users.login("alice", BOB_PASSWORD, "192.0.2.1")) is None
    assert pool.jobs == [verify_password, verify_password]
    users.close()  # not its pool: left alone
    assert users._pool is pool


# -- sessions --------------------------------------------------------------------------


@pytest.fixture
def cookie(users):
    return result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.7"))


def tamper(value, index, replace):
    parts = value.split(":")
    parts[index] = replace(parts[index])
    return ":".join(parts)


def flip(text):
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize("index,replace", [
    (0, lambda name: "bob"),
    (0, lambda name: "alicf"),
    (1, lambda issued: str(int(issued) + 1)),
    (1, lambda issued: str(int(issued) - 1)),
    (1, lambda issued: "0" + issued),
    (2, flip),
    (2, lambda nonce: nonce[:-1]),
    (3, flip),
    (3, lambda mac: mac + "A"),
    (3, lambda mac: ""),
])
def test_tampered_cookie_refused(users, cookie, index, replace):
    assert users.session(request_with(cookie)) is not None
    assert users.session(request_with(tamper(cookie, index, replace))) is None


@pytest.mark.parametrize("value", [
    "", "alice", "alice:1:2", "a:b:c:d:e", "x" * 300,
    "alice:1700000000:" + "A" * 22 + ":" + "A" * 43,
])
def test_garbage_cookie_refused(users, value):
    assert users.session(request_with(value)) is None


def test_no_cookie_and_odd_headers(users, cookie):
    assert users.session(request_with()) is None
    assert users.session(request_with(header=b"\xff\xfe=\x00; websmsd_session=\xc3\xa9")) is None
    assert users.session(request_with(header=f"{COOKIE}={cookie}".encode())) is not None

    class Broken:
        def getCookie(self, name):
            raise ValueError("bad header")

    assert users.session(Broken()) is None


def test_cookie_signed_with_another_secret_refused(settings, clock, verify, cookie):
    other = make_users(settings, clock, verify, secret=b"another secret, 32 bytes long!!!")
    assert other.session(request_with(cookie)) is None


def test_sessions_survive_a_restart(settings, clock, verify, cookie):
    again = make_users(settings, clock, verify)
    assert again.session(request_with(cookie)) == again.viewer_of("alice")


def test_session_expires(users, clock, cookie):
    clock.advance(12 * 3600 - 1)
    assert users.session(request_with(cookie)) is not None
    clock.advance(1)
    assert users.session(request_with(cookie)) is None


def test_cookie_from_the_future_refused(settings, verify, cookie):
    earlier = task.Clock()
    earlier.advance(1_700_000_000 - 3600)
    users = make_users(settings, earlier, verify)
    assert users.session(request_with(cookie)) is None


def test_logout_ends_that_session_only(users, clock, cookie):
    clock.advance(10)
    other = result_of(users.login("alice", ALICE_PASSWORD, "192.0.2.8"))
    users.logout(request_with(cookie))
    assert users.session(request_with(cookie)) is None
    assert users.session(request_with(other)) is not None
    users.logout(request_with("garbage"))  # harmless
    users.logout(request_with())
    clock.advance(13 * 3600)
    users.login("bob", "wrong", "192.0.2.9")  # forgets what has expired
    assert users._revoked == {}


def test_password_changed_ends_sessions(users, hashes, cookie, settings):
    bob = result_of(users.login("bob", BOB_PASSWORD, "192.0.2.8"))
    changed = loads(example({"alice": hash_password("a new password"), "bob": hashes["bob"]}))
    users.update(changed.web, changed.phones)
    assert users.session(request_with(cookie)) is None
    assert users.session(request_with(bob)) is not None
    users.update(settings.web, settings.phones)  # the old hash back: valid again
    assert users.session(request_with(cookie)) is not None


def test_user_removed_ends_sessions(users, cookie, hashes, clock, verify):
    text = example(hashes).replace("password [alice]", "; password [alice]").replace(
        "numbers  [alice]", "; n").replace("phones   [alice]", "; p")
    changed = loads(text)
    assert [u.name for u in changed.web.users] == ["bob"]
    fresh = Users(changed.web, changed.phones, secret=SECRET, clock=clock, verify=verify)
    assert fresh.session(request_with(cookie)) is None


def test_numbers_changed_take_effect(users, cookie, hashes):
    changed = loads(example(hashes).replace("john.doe, desk", "john.doe"))
    users.update(changed.web, changed.phones)
    viewer = users.session(request_with(cookie))
    assert viewer.may("+12025550160") and not viewer.may("+12025550199")


def parse_set_cookie(header):
    assert isinstance(header, bytes)
    first, *attributes = header.decode("ascii").split("; ")
    name, _, value = first.partition("=")
    return name, value, attributes


def test_cookie_header_attributes(users, cookie):
    name, value, attributes = parse_set_cookie(users.cookie_header(cookie, secure=False))
    assert (name, value) == (COOKIE, cookie)
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"}
    name, value, attributes = parse_set_cookie(users.cookie_header(cookie, secure=True))
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200", "Secure"}


def test_clear_cookie_header(users):
    name, value, attributes = parse_set_cookie(users.clear_cookie_header(secure=False))
    assert (name, value) == (COOKIE, "")
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=0"}
    assert "Secure" in parse_set_cookie(users.clear_cookie_header(secure=True))[2]


def test_cookie_header_refuses_odd_values(users):
    with pytest.raises(ValueError):
        users.cookie_header("x; Domain=evil.example", secure=False)


def test_cookie_value_is_a_valid_cookie(cookie):
    # RFC 6265 cookie-octet: no spaces, quotes, commas, semicolons or backslashes.
    assert re.fullmatch(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+", cookie)


# -- websms passwd ---------------------------------------------------------------------


def passwd(args, stdin, command=("-m", "websmsd", "passwd")):
    return subprocess.run([sys.executable, *command, *args], input=stdin, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_passwd_stdin_prints_the_line():
    run = passwd(["alice", "--stdin"], "correct horse battery\n")
    assert run.returncode == 0, run.stderr
    match = re.fullmatch(r"password \[alice\] = (scrypt\$\S+)\n", run.stdout)
    assert match, run.stdout
    assert verify_password("correct horse battery", match[1])
    assert "correct horse" not in run.stdout + run.stderr
    text = f"[web]\n{run.stdout}all [alice] = yes\n"
    assert loads(text).web.users[0].password_hash == match[1]


def test_passwd_reads_stdin_when_not_a_terminal():
    run = passwd(["bob"], "another password\r\n")
    assert run.returncode == 0, run.stderr
    assert verify_password("another password", run.stdout.split(" = ")[1].strip())


def test_websms_passwd():
    code = "import sys; from websmsd.cli import websms_main; sys.exit(websms_main())"
    run = passwd(["passwd", "j.doe@example", "--stdin"], "long enough\n", ("-c", code))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("password [j.doe@example] = scrypt$16384$8$1$")


@pytest.mark.parametrize("stdin", ["", "\n", "short\n", "1234567\n", "x" * 2000 + "\n"])
def test_passwd_refuses_short_passwords(stdin):
    run = passwd(["alice", "--stdin"], stdin)
    assert run.returncode == 1 and run.stdout == ""
    assert "characters" in run.stderr


@pytest.mark.parametrize("name", ["a b", "owner", "x;y", ""])
def test_passwd_refuses_bad_names(name):
    run = passwd([name, "--stdin"], "long enough\n")
    assert run.returncode == 2 and run.stdout == ""


def test_a_new_secret_ends_the_sessions_signed_with_the_old_one():
    from twisted.internet.task import Clock

    from websmsd.config.phones import PhonesSettings
    from websmsd.config.web import WebSettings, WebUser
    from websmsd.http.users import COOKIE, Users

    clock = Clock()
    clock.advance(1_800_000_000)
    users = Users(WebSettings((WebUser("alice", "pw", numbers=("+12025550160",)),)),
                  PhonesSettings(), secret=b"a" * 32, clock=clock,
                  verify=lambda password, stored: password == stored)
    cookies = []
    users.login("alice", "pw", "192.0.2.1").addCallback(cookies.append)

    class Request:
        def getCookie(self, name):
            return cookies[0].encode() if name == COOKIE.encode() else None

        def getHeader(self, name):
            return (COOKIE + "=" + cookies[0]).encode() if name.lower() == b"cookie" else None

    assert users.session(Request()).name == "alice"
    with pytest.raises(ValueError):
        users.use_secret(b"short")
    users.use_secret(b"b" * 32)
    assert users.session(Request()) is None


@pytest.mark.parametrize("listen, warned", [
    ("", True), ('status_listen = "tcp:8480:interface=127.0.0.1"', True),
    ('status_listen = "unix:/run/websmsd/status.sock"', True),
    ('status_listen = "tcp6:8480:interface=\\:\\:1"', True),
    ('status_listen = "tcp:8480"', False),
    ('status_listen = "ssl:8443:interface=192.0.2.1:privateKey=/etc/ssl/k.pem"', False)])
def test_users_on_a_loopback_only_listener_are_warned_about(listen, warned):
    from websmsd.http.users import hash_password

    text = (f"[websms]\nurl_host = http://127.0.0.1:9\n[daemon]\n{listen}\n"
            f"status_user = admin\nstatus_password = secret-enough\n"
            f"[web]\npassword [alice] = {hash_password('alice-pw-1', n=2 ** 12)}\n"
            "numbers [alice] = +12025550160\n")
    settings = loads(text, "websms.conf", environ={})
    said = [w for w in settings.warnings if "cannot reach /login" in w]
    assert bool(said) == warned, settings.warnings


def test_sessions_signed_out_before_a_restart_stay_ended():
    from twisted.internet.task import Clock

    from websmsd.config.phones import PhonesSettings
    from websmsd.config.web import WebSettings, WebUser
    from websmsd.http.users import COOKIE, Users

    clock = Clock()
    clock.advance(1_800_000_000)
    web = WebSettings((WebUser("alice", "pw", numbers=("+12025550160",)),))

    def make():
        return Users(web, PhonesSettings(), secret=b"a" * 32, clock=clock,
                     verify=lambda password, stored: password == stored)

    users = make()
    cookies = []
    users.login("alice", "pw", "192.0.2.1").addCallback(cookies.append)

    class Request:
        def getCookie(self, name):
            return cookies[0].encode() if name == COOKIE.encode() else None

    ended = users.logout(Request())
    assert ended is not None and ended[1] == clock.seconds() + web.session
    assert users.logout(Request()) is None  # already ended
    again = make()  # a restart: the same secret from the store
    assert again.session(Request()).name == "alice"
    again.revoked([ended, ("not a nonce!", ended[1]), ("x" * 22, clock.seconds() - 1)])
    assert again.session(Request()) is None
