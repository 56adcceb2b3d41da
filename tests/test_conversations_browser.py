"""Conversations in the browser, end to end: the real daemon, a fake ITSP, headless
Chromium at desk and phone width (tests/chromium.py), and a user who tries to read and
send from a number that is not theirs.

The browser reaches the status listener as http://websmsd.test:<port>/ (Chromium maps
the name to 127.0.0.1): a loopback client that does not name the daemon by address is
not the owner, so the pages are seen as a [web] user sees them.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Dict, Optional, Tuple
from urllib.parse import urlencode

import pytest

from blackbox import ROOT, curl, status_and_body
from chromium import needs_chromium, open_browser

ARTIFACTS = ROOT / "tests" / "_artifacts"
HOST = "websmsd.test"
ALICE_NUMBER = "+12025550160"
BOB_NUMBER = "+12025550170"
PEER = "+15017122661"
XSS = '<img src=x onerror="alert(1)"> & <b>bold</b>'
PHONE = {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
ZONE = r"(UTC|[+-]\d{4})"


def _daemon(make_daemon, fake_itsp):
    from websmsd.http.users import hash_password

    fake_itsp.default = (200, b'{"data": {"id": "prov-1", "status": "queued"}}')
    web = (f"password [alice] = {hash_password('alice-secret-1')}\n"
           f"numbers [alice] = {ALICE_NUMBER}\n"
           f"password [bob] = {hash_password('bob-secret-22')}\n"
           f"numbers [bob] = {BOB_NUMBER}\n")
    return make_daemon(
        websms=f"url_host = {fake_itsp.url}\nauth_method = none\nencoding = json\n"
               "resp_id = data.id",
        websmsd='msg_filter = "data.event_type=message.received"\n'
                'dlr_filter = "data.event_type=message.finalized"\n'
                "dlr_id = data.payload.id\ndlr_status = data.payload.to.0.status\n"
                "key_to = data.payload.to.0.phone_number\n"
                "key_from = data.payload.from.phone_number\nkey_body = data.payload.text",
        web=web)


def _inbound(d, to: str, sender: str, text: str) -> None:
    event = {"data": {"event_type": "message.received", "payload": {
        "to": [{"phone_number": to}], "from": {"phone_number": sender}, "text": text}}}
    code, body = status_and_body(curl("-H", "Content-Type: application/json",
                                      "--data-binary", json.dumps(event), d.webhook_url + "/"))
    assert code == 200, body


def _report(d, provider_id: str, status: str) -> None:
    event = {"data": {"event_type": "message.finalized", "payload": {
        "id": provider_id, "to": [{"phone_number": PEER, "status": status}]}}}
    code, body = status_and_body(curl("-H", "Content-Type: application/json",
                                      "--data-binary", json.dumps(event), d.webhook_url + "/"))
    assert code == 200, body


def _until(what: str, check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- in the browser ---------------------------------------------------------------------


@pytest.fixture
def browser():
    yield from open_browser([f"--host-resolver-rules=MAP {HOST} 127.0.0.1"])


@needs_chromium
def test_a_user_reads_and_answers_live_with_ticks_on_desk_and_phone(make_daemon, fake_itsp,
                                                                     browser):
    from websmsd.http.convpages import parts_note

    d = _daemon(make_daemon, fake_itsp)
    port = d.api_url.rsplit(":", 1)[1]
    base = f"http://{HOST}:{port}"
    _inbound(d, BOB_NUMBER, "+15550000001", "for bob only")
    browser.page("Emulation.setDeviceMetricsOverride", DESKTOP)
    text = lambda sel: browser.js(  # noqa: E731
        f"(document.querySelector({json.dumps(sel)}) || {{textContent: ''}})"
        ".textContent.replace(/\\s+/g, ' ').trim()")
    loads = lambda: sum(1 for e in list(browser.events)  # noqa: E731
                        if e.get("method") == "Page.loadEventFired")

    # Not signed in: the sign-in page, then back to the conversations.
    browser.load(base + "/conversations")
    assert browser.js("location.pathname") == "/login"
    browser.js("document.querySelector('input[name=user]').value = 'alice';"
               "document.querySelector('input[name=password]').value = 'alice-secret-1'")
    mark = len(browser.events)
    browser.click("form.login button")
    browser.wait_event("Page.loadEventFired", mark)
    assert browser.js("location.pathname") == "/conversations"
    assert "alice" in text("header")
    # Alice's numbers only: bob's SMS is not hers.
    assert "for bob only" not in browser.js("document.body.textContent")
    assert BOB_NUMBER not in browser.js("document.body.textContent")

    # An SMS comes in: it shows up without a reload, unread.
    before = loads()
    _inbound(d, ALICE_NUMBER, PEER, XSS)
    _until("the number's row on the live page",
           lambda: ALICE_NUMBER in text("ul.owns") and text("ul.owns span.unread") == "1")
    assert loads() == before
    browser.screenshot(ARTIFACTS / "conversations-1280.png")

    mark = len(browser.events)
    browser.click("ul.owns li a")
    browser.wait_event("Page.loadEventFired", mark)
    assert text("ul.convs .peer") == PEER
    assert text("ul.convs span.unread") == "1"
    mark = len(browser.events)
    browser.click("ul.convs li a")
    browser.wait_event("Page.loadEventFired", mark)
    # The text is text: nothing of it became an element.
    assert browser.js("document.querySelector('ol.thread li.in .text').textContent") == XSS
    assert browser.js("document.querySelectorAll('ol.thread li.in .text *').length") == 0
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + ZONE, text("ol.thread li.in time"))
    assert "handed to Asterisk" in text("ol.thread li.in .meta")

    # The counter says what websmsd will send, as it counts.
    for sample in ["Hello", "x" * 160, "x" * 161, "{[€]}" * 40, "Grüße 😀", "я" * 71, ""]:
        browser.js("(() => { const a = document.querySelector('form.reply textarea');"
                   f" a.value = {json.dumps(sample)};"
                   " a.dispatchEvent(new Event('input')); })()")
        assert text("#parts") == parts_note(sample), sample
    browser.js("document.querySelector('form.reply textarea').focus()")
    browser.page("Input.insertText", {"text": "Thanks, see you at 3 \U0001F600"})
    assert text("#parts") == "1 SMS \u00b7 UCS-2 (Unicode) \u00b7 47 left"

    # The reply goes out from alice's number to the peer, through the ITSP.
    mark = len(browser.events)
    browser.click("form.reply button.send")
    browser.wait_event("Page.loadEventFired", mark)
    [request] = fake_itsp.wait(1)
    sent = json.loads(request["body"])
    assert PEER in json.dumps(sent) and ALICE_NUMBER.lstrip("+") in json.dumps(sent)
    assert "Thanks, see you at 3 \U0001F600" in json.dumps(sent, ensure_ascii=False)
    [(out_id, source)] = d.rows("SELECT id, source FROM messages WHERE direction = 'out'")
    assert source == "web:alice"
    out = f"ol.thread li#m-{out_id}"
    _until("sent", lambda: browser.js(f"document.querySelector('{out}').dataset.status")
           == "sent")
    assert text(f"{out} .tick") == "\u2713"

    # The delivery report turns the tick, live.
    before = loads()
    _report(d, "prov-1", "delivered")
    _until("delivered, live", lambda: browser.js(
        f"document.querySelector('{out}').dataset.status") == "delivered")
    assert text(f"{out} .tick") == "\u2713\u2713"
    assert "delivered" in text(f"{out} .meta")
    assert loads() == before
    browser.screenshot(ARTIFACTS / "conversation-1280.png")

    # A phone: nothing scrolls sideways; the bubbles fit.
    browser.page("Emulation.setDeviceMetricsOverride", PHONE)
    browser.load(browser.js("location.href.split('#')[0]"))
    assert browser.js("innerWidth") == 420
    assert browser.js("document.documentElement.scrollWidth") <= 420
    assert browser.js("Math.max(...[...document.querySelectorAll('ol.thread li, textarea')]"
                      ".map(e => e.getBoundingClientRect().right))") <= 420
    browser.screenshot(ARTIFACTS / "conversation-420.png")
    browser.load(base + "/conversations/12025550160")
    assert browser.js("document.documentElement.scrollWidth") <= 420
    browser.screenshot(ARTIFACTS / "conversations-420.png")

    # A new SMS to another number, from the number's page, at phone width.
    browser.js("document.querySelector('form.reply input[name=to]').value = '+1 (415) 555-0199';"
               "document.querySelector('form.reply textarea').value = 'New one'")
    fake_itsp.default = (200, b'{"data": {"id": "prov-2", "status": "queued"}}')
    mark = len(browser.events)
    browser.click("form.reply button.send")
    browser.wait_event("Page.loadEventFired", mark)
    assert browser.js("location.pathname") == "/conversations/12025550160/14155550199", text("main")
    _until("the new SMS", lambda: "New one" in text("ol.thread"))
    fake_itsp.wait(2)
    assert len(fake_itsp.requests) == 2

    # Nothing was blocked by the page's own policy, and no dialog ever opened.
    assert browser.dialogs() == []
    assert browser.policy_errors() == []


# -- a user who tries what is not theirs ------------------------------------------------------


class Client:
    """HTTP to the status listener as a browser on the LAN would send it (Host names the
    daemon, not loopback), with its session cookie; redirects are not followed."""

    def __init__(self, port: int):
        self.port = port
        self.cookie: Optional[str] = None

    def request(self, method: str, path: str, form: Optional[Dict[str, str]] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Host": f"{HOST}:{self.port}", **(headers or {})}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookie:
            sent["Cookie"] = self.cookie
        conn.request(method, path, body=body, headers=sent)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        answer = {k.lower(): v for k, v in r.getheaders()}
        conn.close()
        return r.status, answer, data

    def token(self, path: str, form_action: str = "") -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, (path, status, page[:300])
        forms = re.findall(r'<form method="post" action="([^"]*)"[^>]*>\s*'
                           r'(?:<label[^>]*>.*?</label>)?<input type="hidden" name="csrf" '
                           r'value="([^"]+)"', page, re.S)
        for action, token in forms:
            if action.endswith(form_action):
                return token
        raise AssertionError(f"no form for {form_action} on {path}: {forms}")

    def login(self, user: str, password: str) -> int:
        token = self.token("/login", "login")
        status, headers, _ = self.request("POST", "/login", {
            "csrf": token, "user": user, "password": password, "next": "conversations"})
        if status == 303:
            self.cookie = headers["set-cookie"].split(";", 1)[0]
        return status


def test_a_user_never_sees_nor_sends_from_a_number_not_theirs(make_daemon, fake_itsp):
    d = _daemon(make_daemon, fake_itsp)
    port = int(d.api_url.rsplit(":", 1)[1])
    _inbound(d, ALICE_NUMBER, PEER, "alice's secret plans")
    _inbound(d, BOB_NUMBER, PEER, "bob's note")
    _until("indexed", lambda: len(d.rows("SELECT id FROM messages WHERE status = 'sent'")) == 2)
    bob = Client(port)
    # Not signed in: sign in first; the API and the status page are the owner's.
    assert bob.request("GET", "/conversations")[0] == 303
    assert bob.request("GET", "/api/status")[0] in (401, 403)
    assert bob.login("bob", "wrong password") == 403
    assert bob.cookie is None
    assert bob.login("bob", "bob-secret-22") == 303
    status, _, page = bob.request("GET", "/conversations")
    assert status == 200 and BOB_NUMBER in page and ALICE_NUMBER not in page
    assert "alice" not in page
    # Alice's number, by every path: "no such number", as for a number nobody has.
    for path in ("/conversations/12025550160", "/conversations/0012025550160",
                 "/conversations/%2B12025550160", "/conversations/12025550160/15017122661",
                 "/conversations/12025550160/15017122661/updates?v=0",
                 "/conversations/12025550160/updates", "/conversations/19995550000"):
        status, _, page = bob.request("GET", path)
        assert status == 404, (path, status)
        assert "secret plans" not in page
    status, _, page = bob.request("GET", "/conversations/search?q=secret")
    assert status == 200 and "secret plans" not in page and "nothing found" in page
    status, _, page = bob.request("GET", "/conversations/search?q=bob%27s")
    assert status == 200 and "bob&#x27;s note" in page
    # The owner's pages stay the owner's.
    assert bob.request("GET", "/")[0] == 303
    [alice_id] = [r[0] for r in d.rows("SELECT id FROM messages WHERE recipient = ?",
                                       (ALICE_NUMBER,))]
    assert bob.request("GET", f"/messages/{alice_id}")[0] == 403
    assert bob.request("GET", "/api/messages")[0] == 403
    # Sending from alice's number: with a valid token of bob's own "new SMS" form...
    token = bob.token("/conversations", "conversations/send")
    status, _, _ = bob.request("POST", "/conversations/send", {
        "csrf": token, "own": ALICE_NUMBER, "to": PEER, "body": "spoofed"})
    assert status == 404
    # ...with a token of bob's own conversation, posted to alice's...
    token = bob.token("/conversations/12025550170/15017122661", "/send")
    status, _, _ = bob.request("POST", "/conversations/12025550160/15017122661/send", {
        "csrf": token, "body": "spoofed"})
    assert status in (403, 404)
    # ...or with no token at all: nothing is stored, nothing reaches the ITSP.
    status, _, _ = bob.request("POST", "/conversations/12025550170/15017122661/send",
                               {"body": "no token"})
    assert status == 403
    status, _, _ = bob.request("POST", "/conversations/12025550170/15017122661/send", {
        "csrf": token, "body": "from another site"}, {"Origin": "http://evil.example"})
    assert status == 403
    assert d.rows("SELECT count(*) FROM messages WHERE direction = 'out'") == [(0,)]
    assert fake_itsp.requests == []
    # His own number works, with his token.
    status, headers, _ = bob.request("POST", "/conversations/12025550170/15017122661/send", {
        "csrf": token, "body": "bob's answer"})
    assert status == 303, headers
    assert d.rows("SELECT sender, recipient, body, source FROM messages "
                  "WHERE direction = 'out'") == [(BOB_NUMBER, PEER, "bob's answer", "web:bob")]
    # A restart keeps the session (its secret is in the store)...
    d.stop()
    d.start()
    bob.port = d.status_port
    status, _, page = bob.request("GET", "/conversations/12025550170/15017122661")
    assert status == 200 and "bob&#x27;s answer" in page
    # ...signing out ends it on the server too.
    cookie = bob.cookie
    token = bob.token("/conversations", "logout")
    status, headers, _ = bob.request("POST", "/logout", {"csrf": token})
    assert status == 303 and "max-age=0" in headers["set-cookie"].lower()
    bob.cookie = cookie
    assert bob.request("GET", "/conversations")[0] == 303
    # ...and after a restart as well.
    d.stop()
    d.start()
    bob.port = d.status_port
    assert bob.request("GET", "/conversations")[0] == 303
