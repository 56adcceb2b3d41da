"""The conversation pages on the status listener's real Site, with an inline store, the
real conversation index (websmsd.threads) and [web] users (websmsd.http.users) whose
password check is injected (no scrypt in unit tests)."""

from __future__ import annotations

import re
from typing import Optional

import pytest
from twisted.internet import defer

from test_status import REMOTE, Harness, Response, XSS

from websmsd.config.phones import Phone, PhonesSettings
from websmsd.config.web import WebSettings, WebUser
from websmsd.http import status
from websmsd.http.convpages import parts_note
from websmsd.http.twsite import make_site
from websmsd.http.users import Users
from websmsd.message import DELIVERED, FAILED, IN, OUT, QUEUED, SENT
from websmsd.outbox import Submitted
from websmsd.threads import Threads

ALICE = "+12025550160"
BOB = "+12025550170"
PEER = "+15017122661"
LAN = "pbx.example:8480"  # a Host that is not loopback's: not the owner


class Conversations(Harness):
    """Harness with the conversations wired as service.py wires them."""

    def __init__(self, tmp_path, users=(), configured=(ALICE,)):
        super().__init__(tmp_path)
        self.threads = Threads(self.store, clock=self.clock)
        phones = PhonesSettings((Phone("desk", (BOB,)),))
        self.users = Users(WebSettings(tuple(users)), phones, secret=b"s" * 32,
                           clock=self.clock, verify=lambda pw, stored: pw == stored)
        self.answer = Submitted("QUEUED", "0123456789abcdef0123", None)
        harness = self

        class Outbox:
            def submit(self, to, sender, body, index=None, channel="agi", wait=None):
                harness.sent.append((to, sender, body, index, channel, wait))
                return defer.succeed(harness.answer)

        self.resource = status.make_status_resource(
            self.model, Outbox(), self.access, self.csrf, threads=self.threads,
            users=self.users, configured=configured)
        self.site = make_site(self.resource, status.MAX_REQUEST_BODY)

    def inbound(self, to=ALICE, sender=PEER, body="hello", status_=SENT, **kw):
        return self.add(direction=IN, status_=status_, to=to, sender=sender, body=body, **kw)

    def out(self, to=PEER, sender=ALICE, body="answer", status_=QUEUED, **kw):
        return self.add(direction=OUT, status_=status_, to=to, sender=sender, body=body, **kw)

    def login(self, name: str, password: str) -> str:
        page = self.get("/login", host=LAN, peer=REMOTE).text
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        r = self.post_form("/login", {"csrf": token, "user": name, "password": password,
                                      "next": "conversations"}, host=LAN, peer=REMOTE)
        assert r.status == 303, r.text
        return r.header("set-cookie").split(";", 1)[0]

    def as_user(self, cookie: str, method: str, path: str, fields: Optional[dict] = None,
                **headers) -> Response:
        h = {"Cookie": cookie, **headers}
        if fields is not None:
            return self.post_form(path, fields, h, host=LAN, peer=REMOTE)
        return self.request(method, path, h, host=LAN, peer=REMOTE)


@pytest.fixture
def c(tmp_path):
    harness = Conversations(tmp_path, users=[
        WebUser("alice", "alice-pw", numbers=(ALICE,)),
        WebUser("bob", "bob-pw", phones=("desk",))])
    yield harness
    harness.close()


def _send_token(page: str) -> str:
    m = re.search(r'<form method="post" action="[^"]*/send" class="reply">.*?'
                  r'name="csrf" value="([^"]+)"', page, re.S)
    assert m, page
    return m.group(1)


def test_the_owner_sees_every_number_and_each_sms_as_text_with_its_ticks(c):
    c.inbound(body=XSS, created=c.now - 300)
    c.inbound(to=BOB, body="for bob", created=c.now - 250)
    sent = c.out(body="sent one", status_=SENT, created=c.now - 200)
    done = c.out(body="delivered one", status_=DELIVERED, created=c.now - 150)
    failed = c.out(body="failed one", status_=FAILED, reason="HTTP 400: invalid <dest>",
                        created=c.now - 100)
    later = c.out(body="later", status_=QUEUED, reason="HTTP 503", created=c.now - 50,
                       next_attempt=c.now + 600)
    home = c.get("/conversations")
    assert home.status == 200
    assert ALICE in home.text and BOB in home.text
    page = c.get("/conversations/12025550160/15017122661").text
    # Oldest first; every SMS's text escaped, once.
    assert page.index("&lt;script&gt;") < page.index("sent one") < page.index("later")
    assert XSS not in page
    item = lambda m: re.search(r'<li id="m-%s".*?</li>' % m.id, page, re.S).group(0)  # noqa: E731
    assert "\u2713</span>" in item(sent) and ">sent<" in item(sent)
    assert "\u2713\u2713" in item(done) and ">delivered<" in item(done)
    assert "\u2717" in item(failed) and "HTTP 400: invalid &lt;dest&gt;" in item(failed)
    assert "next try" in item(later) and "HTTP 503" in item(later)
    assert re.search(r"<time [^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (UTC|[+-]\d{4})</time>", page)
    assert "handed to Asterisk" in page
    # The owner's page links each SMS to its details.
    assert f'messages/{sent.id}"' in page


def test_updates_cost_no_read_while_nothing_was_committed(c):
    c.inbound()
    page = c.get("/conversations/12025550160/15017122661").text
    version = re.search(r'data-v="(\d+)"', page).group(1)
    path = "/conversations/12025550160/15017122661/updates?v="
    # The page's own writes (its index catch-up, its read mark) make one or two answers
    # with content; then the version stands.
    for _ in range(4):
        r = c.get(path + version)
        if r.status == 204:
            break
        version = str(r.json()["v"])
    assert r.status == 204
    reads = []
    run = c.store.reader.run
    c.store.reader.run = lambda fn: reads.append(fn) or run(fn)
    assert c.get(path + version).status == 204 and reads == []
    c.inbound(body="new <one>")
    r = c.get(path + version)
    assert r.status == 200 and reads
    payload = r.json()
    assert "new &lt;one&gt;" in payload["html"] and payload["v"] != int(version)


def test_a_reply_goes_from_the_conversations_own_number_to_the_peer(c):
    c.inbound(to="12025550160", sender="15017122661")  # an ITSP that writes no "+"
    page = c.get("/conversations/12025550160/15017122661").text
    token = _send_token(page)
    r = c.post_form("/conversations/12025550160/15017122661/send",
                    {"csrf": token, "body": "on my way\r\nsoon"})
    assert r.status == 303
    assert r.header("location") == ("../../../conversations/12025550160/15017122661"
                                    "#m-0123456789abcdef0123")
    # From the number as configured (routing knows it so), to the peer as it wrote.
    assert c.sent == [("15017122661", ALICE, "on my way\nsoon", None, "web:owner", 0)]


def test_a_refused_or_empty_reply_keeps_the_text_and_says_why(c):
    c.inbound()
    token = _send_token(c.get("/conversations/12025550160/15017122661").text)
    r = c.post_form("/conversations/12025550160/15017122661/send", {"csrf": token, "body": "  "})
    assert r.status == 400 and "the text is empty" in r.text and c.sent == []
    c.answer = Submitted("FAILED", None, "no interface owns +12025550160")
    r = c.post_form("/conversations/12025550160/15017122661/send",
                    {"csrf": token, "body": "keep <me>"})
    assert r.status == 409
    assert "not sent: no interface owns +12025550160" in r.text
    assert ">keep &lt;me&gt;</textarea>" in r.text


def test_sends_need_the_pages_token_and_this_site(c):
    c.inbound()
    token = _send_token(c.get("/conversations/12025550160/15017122661").text)
    path = "/conversations/12025550160/15017122661/send"
    assert c.post_form(path, {"body": "x"}).status == 403
    assert c.post_form(path, {"csrf": token + "0", "body": "x"}).status == 403
    assert c.post_form(path, {"csrf": token, "body": "x"},
                       {"Origin": "http://evil.example"}).status == 403
    # A token is bound to its conversation.
    c.inbound(sender="+15550000009")
    assert c.post_form("/conversations/12025550160/15550000009/send",
                       {"csrf": token, "body": "x"}).status == 403
    assert c.get(path).status == 405
    assert c.sent == []


def test_a_new_sms_to_a_number_typed_as_people_write_it(c):
    page = c.get("/conversations/12025550160").text
    token = _send_token(page)
    r = c.post_form("/conversations/12025550160/send",
                    {"csrf": token, "to": "not a number", "body": "hi"})
    assert r.status == 400 and "give the number to send to" in r.text
    r = c.post_form("/conversations/12025550160/send",
                    {"csrf": token, "to": "+1 (415) 555-0199", "body": "hi"})
    assert r.status == 303
    assert r.header("location").startswith("../../conversations/12025550160/14155550199#m-")
    assert c.sent[-1][:3] == ("+14155550199", ALICE, "hi")


def test_the_reply_box_counts_parts_as_websmsd_sends_them(c):
    assert parts_note("") == "GSM 7-bit \u00b7 160 characters per SMS"
    assert parts_note("x" * 160) == "1 SMS \u00b7 GSM 7-bit \u00b7 0 left"
    assert parts_note("x" * 161) == "2 SMS \u00b7 GSM 7-bit \u00b7 145 left"
    assert parts_note("\u20ac" * 80) == "1 SMS \u00b7 GSM 7-bit \u00b7 0 left"
    assert parts_note("\U0001F600") == "1 SMS \u00b7 UCS-2 (Unicode) \u00b7 68 left"
    c.inbound()
    page = c.get("/conversations/12025550160/15017122661").text
    # The script gets the alphabet it counts with from the page, not a copy of its own.
    gsm = re.search(r'data-gsm="([^"]*)"', page).group(1)
    assert "\u00e9" in gsm and "&lt;" in gsm and "\u20ac" in re.search(
        r'data-gsm-ext="([^"]*)"', page).group(1)


def test_a_sender_name_cannot_be_answered(c):
    c.inbound(sender="VODAFONE")
    page = c.get("/conversations/12025550160/vodafone").text
    assert "is a sender name, not a number" in page
    assert "<textarea" not in page


def test_sign_in_then_only_your_numbers(c):
    c.inbound(body="alice's")
    c.inbound(to=BOB, body="bob's")
    r = c.get("/conversations/12025550160", host=LAN, peer=REMOTE)
    assert r.status == 303 and r.header("location") == (
        "../login?next=conversations%2F12025550160")
    assert c.get("/conversations/12025550160/updates", host=LAN, peer=REMOTE).status == 401
    bob = c.login("bob", "bob-pw")
    home = c.as_user(bob, "GET", "/conversations")
    assert home.status == 200 and BOB in home.text and ALICE not in home.text
    assert 'class="who">bob<' in home.text
    # bob's number comes from his [phones] endpoint.
    assert "bob&#x27;s" in c.as_user(bob, "GET", "/conversations/12025550170/15017122661").text
    for path in ("/conversations/12025550160", "/conversations/12025550160/15017122661",
                 "/conversations/%2B12025550160/updates"):
        r = c.as_user(bob, "GET", path)
        assert r.status == 404 and "alice" not in r.text, path
    assert "alice&#x27;s" not in c.as_user(bob, "GET", "/conversations/search?q=alice").text
    # The owner's pages are not his.
    assert c.as_user(bob, "GET", "/").status == 303
    assert c.as_user(bob, "GET", "/api/status").status == 403
    assert c.as_user(bob, "GET", "/metrics").status == 403
    # Nor a send from alice's number, with his own valid token.
    token = _send_token(c.as_user(bob, "GET", "/conversations").text)
    r = c.as_user(bob, "POST", "/conversations/send",
                  {"csrf": token, "own": ALICE, "to": PEER, "body": "x"})
    assert r.status == 404 and c.sent == []
    r = c.as_user(bob, "POST", "/conversations/send",
                  {"csrf": token, "own": BOB, "to": PEER, "body": "mine"})
    assert r.status == 303 and c.sent[-1][1:3] == (BOB, "mine") and c.sent[-1][4] == "web:bob"


def test_sign_in_refuses_bad_passwords_stale_forms_and_foreign_redirects(c):
    page = c.get("/login", host=LAN, peer=REMOTE).text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = c.post_form("/login", {"csrf": token, "user": "alice", "password": "nope"},
                    host=LAN, peer=REMOTE)
    assert r.status == 403 and "wrong user name or password" in r.text
    assert r.header("set-cookie") is None
    r = c.post_form("/login", {"user": "alice", "password": "alice-pw"}, host=LAN, peer=REMOTE)
    assert r.status == 403 and r.header("set-cookie") is None
    for target in ("//evil.example/", "https://evil.example/", "../etc", "conversations/../x",
                   "conversations/%2e%2e/%2E%2E/x", "conversations/./x"):
        r = c.post_form("/login", {"csrf": token, "user": "alice", "password": "alice-pw",
                                   "next": target}, host=LAN, peer=REMOTE)
        assert r.status == 303 and r.header("location") == "./conversations", target
    cookie = r.header("set-cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie


def test_static_files_serve_the_sign_in_page_and_the_page_keeps_its_policy(c):
    r = c.get("/static/conversations.js", host=LAN, peer=REMOTE)
    assert r.status == 200 and r.header("content-type").startswith("text/javascript")
    page = c.get("/conversations")
    assert page.header("content-security-policy").startswith("default-src 'self'")
    assert '<script src="./static/conversations.js" defer></script>' in page.text
    assert "<script>" not in page.text


def test_without_users_the_owner_rule_alone(tmp_path):
    c = Conversations(tmp_path)
    try:
        r = c.get("/conversations", host=LAN, peer=REMOTE)
        assert r.status == 403 and "loopback clients only" in r.text
        assert c.get("/login", host=LAN, peer=REMOTE).status == 404
        assert c.get("/conversations").status == 200
    finally:
        c.close()


def test_search_uses_the_index_and_reads_off_the_writer(c):
    c.inbound(body="the parcel is at the door")
    c.inbound(sender="+15550001234", body="other")
    page = c.get("/conversations/search?q=parcel").text
    assert "the parcel is at the door" in page and "other" not in page
    page = c.get("/conversations/search?q=0001234").text
    assert "+15550001234" in page and "parcel" not in page
    page = c.get("/conversations/search?q=15").text
    assert "from 3 characters on" in page and "+15550001234" in page
    page = c.get("/conversations/search?q=%22NEAR(*)%3A-").text
    assert "nothing found" in page


def test_unread_counts_per_viewer_clear_when_the_conversation_is_read(c):
    c.inbound(body="one", created=c.now - 30)
    c.inbound(body="two", created=c.now - 20)
    unread = lambda page: re.findall(r'<span class="unread"[^>]*>(\d+)</span>', page)  # noqa: E731
    assert unread(c.get("/conversations").text) == ["2"]
    alice = c.login("alice", "alice-pw")
    assert unread(c.as_user(alice, "GET", "/conversations").text) == ["2"]
    c.get("/conversations/12025550160/15017122661")  # the owner reads it
    assert unread(c.get("/conversations").text) == []
    assert unread(c.get("/conversations/12025550160").text) == []
    # ...alice has not.
    assert unread(c.as_user(alice, "GET", "/conversations/12025550160").text) == ["2"]
    c.inbound(body="three", created=c.now - 5)
    assert unread(c.get("/conversations").text) == ["1"]


def test_an_sms_to_a_number_two_phones_share_is_one_bubble_saying_where_it_went(c):
    from websmsd.message import Message
    from websmsd.routing import fan_out

    first = Message(IN, "", ALICE, PEER, "to both", status=SENT, source="webhook")
    first.created = c.now - 10
    copies = fan_out(first, ["ami:desk", "ami:alice"])
    copies[1].status = QUEUED
    c.store.add(copies)
    page = c.get("/conversations/12025550160/15017122661").text
    assert page.count("to both") == 1
    assert "handed to desk<" in page
    c.store.update([(copies[1].id, {"status": SENT})])
    page = c.get("/conversations/12025550160/15017122661").text
    assert "handed to desk, alice<" in page


def test_sms_to_a_phone_without_a_configured_number_is_under_its_channel(c):
    from websmsd.message import Message

    m = Message(IN, "callfile", "", PEER, "from the android phone", status=SENT,
                source="smssync:phone1")
    m.created = c.now - 5
    c.store.add([m])
    home = c.get("/conversations").text
    assert 'href="./conversations/smssync%3Aphone1"' in home
    assert ">smssync:phone1<" in home
    page = c.get("/conversations/smssync%3Aphone1/15017122661")
    assert page.status == 200 and "from the android phone" in page.text
    assert "smssync:phone1 has no number in websms.conf" in page.text
    assert "<textarea" not in page.text


def test_a_long_conversation_pages_back_from_its_end(c, monkeypatch):
    from websmsd.http import conversations

    monkeypatch.setattr(conversations, "THREAD_LIMIT", 3)
    for i in range(7):
        c.inbound(body=f"sms number {i}", created=c.now - 100 + i)
    page = c.get("/conversations/12025550160/15017122661").text
    assert re.findall(r"sms number (\d)", page) == ["4", "5", "6"]
    older = re.search(r'<p class="more"><a href="\?([^"]+)">older SMS</a>', page).group(1)
    assert 'data-updates="../../conversations/12025550160/15017122661/updates"' in page
    page = c.get("/conversations/12025550160/15017122661?" + older.replace("&amp;", "&")).text
    assert re.findall(r"sms number (\d)", page) == ["1", "2", "3"]
    # A page of older SMS is not live: its updates would be the newest.
    assert 'data-updates=""' in page


def test_a_store_that_cannot_answer_gives_a_page_that_says_so(c):
    def broken(*args, **kw):
        return defer.fail(RuntimeError("disk I/O error"))

    c.threads.own_numbers = broken
    r = c.get("/conversations")
    assert r.status == 503 and "the store could not answer" in r.text
    c.users.login = broken
    page = c.get("/login", host=LAN, peer=REMOTE).text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = c.post_form("/login", {"csrf": token, "user": "alice", "password": "x"},
                    host=LAN, peer=REMOTE)
    assert r.status == 503 and r.header("set-cookie") is None
