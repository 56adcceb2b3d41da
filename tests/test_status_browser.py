"""The status page in a real browser: Debian's headless Chromium against the real daemon
(tests/chromium.py drives it; the tests skip without /usr/bin/chromium)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from blackbox import ROOT
from chromium import needs_chromium, open_browser

ARTIFACTS = ROOT / "tests" / "_artifacts"
XSS = "<script>alert(1)</script>"

pytestmark = needs_chromium


@pytest.fixture
def browser():
    yield from open_browser()


def _websms(d, *args: str) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-c",
           "import sys; from websmsd.cli import websms_main; sys.exit(websms_main())"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cli + [*args, "--config", str(d.config)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_status_page_in_chromium_shows_the_message_and_resends_it(make_daemon, fake_itsp,
                                                                   browser):
    fake_itsp.default = (500, b'{"error":"upstream down"}')
    d = make_daemon(websms=f"url_host = {fake_itsp.url}\nurl_path = /sms\nauth_method = none",
                    daemon="max_attempts = 1")
    sent = _websms(d, "+12025550188", "+15017122661", XSS)
    assert sent.returncode == 1, sent.stdout + sent.stderr
    m = re.match(r"FAILED ([0-9a-f]{20}) ", sent.stdout)
    assert m, sent.stdout
    message_id = m.group(1)
    row = f"#m-{message_id}"

    browser.load(d.api_url + "/")
    assert browser.js("document.title").startswith("websmsd")
    cell = lambda name: browser.js(  # noqa: E731
        f"document.querySelector('{row} td.{name}').textContent.trim()")
    assert cell("to") == "+12025550188"
    assert cell("from") == "+15017122661"
    assert cell("status") == "failed"
    assert "HTTP 500" in cell("reason") and "upstream down" in cell("reason")
    assert cell("attempts") == "1"
    # The text is shown as text: no script ran, no element was made from it.
    assert cell("body") == XSS
    assert browser.js(f"document.querySelectorAll('{row} td.body *').length") == 0
    # The stylesheet came through the CSP (same origin): the failed badge is red.
    assert browser.js(f"getComputedStyle(document.querySelector('{row} .state'))"
                      ".color") == "rgb(166, 27, 27)"
    # The channel table shows the ITSP interface failing.
    assert "upstream down" in browser.js(
        "document.querySelector('tr.kind-itsp td.detail').textContent")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.screenshot(ARTIFACTS / "status.png")
    png = (ARTIFACTS / "status.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    # The ITSP is back; the owner clicks Resend.
    fake_itsp.default = (200, b'{"status":"success"}')
    mark = len(browser.events)
    browser.click(f"{row} button.resend")
    browser.wait_event("Page.loadEventFired", mark)  # POST, 303, the page again
    assert browser.js("location.pathname") == "/"
    fake_itsp.wait(2)
    assert len(fake_itsp.requests) == 2
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if d.rows("SELECT status FROM messages WHERE id = ?", (message_id,)) == [("sent",)]:
            break
        time.sleep(0.05)
    assert d.rows("SELECT status, attempts, reason FROM messages WHERE id = ?",
                  (message_id,)) == [("sent", 1, None)]
    browser.load(d.api_url + "/")
    assert cell("status") == "sent"
    assert browser.js(f"document.querySelectorAll('{row} button').length") == 0
    browser.screenshot(ARTIFACTS / "status-after-resend.png")

    # Nothing was blocked by the page's own policy, and no dialog ever opened.
    assert browser.dialogs() == []
    assert browser.policy_errors() == []


# -- reads at a glance: messages first, phone width ------------------------------------------

LONG_WORD = "https://example.com/track/" + "x7" * 60  # one word wider than a phone
PHONE = {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
ZONE = r"(UTC|[+-]\d{4})"


def _wait_rows(d, sql: str, want: list, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.rows(sql) == want:
            return
        time.sleep(0.05)
    assert d.rows(sql) == want, d.output()[-3000:]


def test_status_page_reads_at_a_glance_on_desktop_and_phone(make_daemon, fake_itsp, browser):
    from blackbox import api_json, curl, status_and_body

    d = make_daemon(websms=f"url_host = {fake_itsp.url}\nurl_path = /sms\nauth_method = none",
                    daemon="max_attempts = 5\nretry_base = 1h\nretry_max = 1h")
    # A burst of bad webhook requests first: they must not push the messages away.
    bad = curl("-d", "To=%2B12025550160", *[d.webhook_url + "/"] * 30)
    assert bad.stdout.count("400") >= 30, bad.stdout
    inbound = curl("-d", "To=%2B12025550160", "-d", "From=%2B15017122661",
                   "--data-urlencode", f"Body=Your parcel is on its way: {LONG_WORD} " * 2,
                   d.webhook_url + "/")
    assert status_and_body(inbound)[0] == 200
    # One outbound message the ITSP refuses for good, one it asks to try again later.
    fake_itsp.default = (400, ('{"error":"' + "invalid destination " + LONG_WORD + '"}').encode())
    failed = api_json(d.api_url + "/api/send", {"to": "+12025550188", "from": "+15017122661",
                                                "body": "Refused " + LONG_WORD, "wait": 10})
    assert failed["status"] == "FAILED", failed
    fake_itsp.default = (503, b'{"error":"' + b"temporarily overloaded, " * 8 + b'"}')
    queued = api_json(d.api_url + "/api/send", {"to": "+12025550199", "from": "+15017122661",
                                                "body": "Later " + "very long text " * 20})
    _wait_rows(d, "SELECT status, attempts FROM messages WHERE id = '%s'" % queued["id"],
               [("queued", 1)])
    _wait_rows(d, "SELECT direction, status FROM messages WHERE direction = 'in'",
               [("in", "sent")])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.page("Emulation.setDeviceMetricsOverride", DESKTOP)
    browser.load(d.api_url + "/")
    assert browser.js("document.querySelectorAll('tr.msg').length") == 3
    # Messages first: the newest one is on the first screen, refusals or not.
    top = browser.js("document.querySelector('tr.msg').getBoundingClientRect().top")
    assert 0 < top < 900, top
    assert "30 requests refused since start" in browser.js("document.body.textContent")
    assert browser.js("Math.max(...[...document.querySelectorAll('table, .scroll')]"
                      ".map(e => e.scrollWidth - e.clientWidth))") <= 0
    browser.screenshot(ARTIFACTS / "status-1280.png")

    row = lambda mid: f"#m-{mid}"  # noqa: E731
    text = lambda sel: browser.js(  # noqa: E731
        f"document.querySelector({json.dumps(sel)}).textContent.replace(/\\s+/g, ' ').trim()")
    # Inbound "sent" says what happened; machines still read the status.
    [in_id] = [r[0] for r in d.rows("SELECT id FROM messages WHERE direction = 'in'")]
    assert text(f"{row(in_id)} td.status") == "handed to Asterisk"
    assert browser.js(f"document.querySelector('{row(in_id)}').dataset.status") == "sent"
    # The queued message says when it is tried next, and why the last try failed.
    detail = text(f"{row(queued['id'])} td.reason")
    assert re.search(r"next try \d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + ZONE, detail), detail
    assert "HTTP 503" in detail and "overloaded" in detail
    # Every time shown has its zone, the header's too.
    times = browser.js("[...document.querySelectorAll('time')].map(t => t.textContent)")
    assert len(times) >= 5 and all(re.fullmatch(r"[\d-]+ [\d:]+ " + ZONE, t) for t in times)
    assert re.search(r"up since .* " + ZONE + r" .*now .* " + ZONE, text("header .meta"))

    # A phone: no sideways scrolling, of the page or of a table; rows stay short.
    browser.page("Emulation.setDeviceMetricsOverride", PHONE)
    browser.load(d.api_url + "/")
    assert browser.js("innerWidth") == 420
    assert browser.js("document.documentElement.scrollWidth") <= 420
    assert browser.js("Math.max(...[...document.querySelectorAll('table, .scroll')]"
                      ".map(e => e.scrollWidth - e.clientWidth))") <= 0
    assert browser.js("Math.max(...[...document.querySelectorAll('td')]"
                      ".map(e => e.getBoundingClientRect().right))") <= 420
    heights = browser.js("[...document.querySelectorAll('tr.channel, tr.route')]"
                         ".map(e => e.getBoundingClientRect().height)")
    assert len(heights) >= 5 and max(heights) < 200, heights
    # Each cell says what it is (its column is not on screen).
    assert browser.js("getComputedStyle(document.querySelector('table.messages thead'))"
                      ".display") == "none"
    assert browser.js(f"getComputedStyle(document.querySelector('{row(queued['id'])} td.to'),"
                      " '::before').content") == '"To"'
    browser.screenshot(ARTIFACTS / "status-420.png")
    browser.screenshot(ARTIFACTS / "status-420-first-screen.png", first_screen=True)
    # The refusals, unfolded, are cards too.
    browser.js("document.querySelector('details.refusals').open = true")
    assert browser.js("document.querySelectorAll('table.refusals tbody tr').length") == 20
    assert browser.js("document.documentElement.scrollWidth") <= 420
    browser.load(f"{d.api_url}/messages/{failed['id']}")
    browser.screenshot(ARTIFACTS / "message-420.png")
    assert browser.js("document.documentElement.scrollWidth") <= 420
