"""The phone in the loop against a REAL Asterisk 22 (issue #16).

websmsd runs as a user would run it (`twistd -n websmsd`, tests/blackbox.Daemon), logged
into the AMI of a scratch Asterisk (tests/realasterisk.RealAsterisk) whose dialplan is
the one the README gives; the phones are tests/sipua.SipUA; the ITSP is the fake of
tests/blackbox.  Skipped, with the reason, when /opt/asterisk/sbin/asterisk is missing.

Covered: phones register; an inbound webhook reaches every phone that has the number over
AMI MessageSend (and, with delivery = callfile, through call files with Archive: yes);
a long text arrives in clean parts, in order; a phone offline gets its waiting messages
in order once it registers; a phone's SMS reaches the ITSP from its number; the delivery
report becomes a notice on that phone, once.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request

import pytest

import realasterisk
from blackbox import ROOT, Daemon, FakeITSP, curl, status_and_body
from realasterisk import Phone, RealAsterisk
from sipua import SipUA

pytestmark = pytest.mark.skipif(realasterisk.skip_reason() is not None,
                                reason=realasterisk.skip_reason() or "")

JOHN, DESK, JANE = "+12025550160", "+12025550160", "+12025550183"
OUTSIDE = "+15551234567"

WEBSMSD = ('msg_filter = "data.event_type=message.received"\n'
           'dlr_filter = "data.event_type=message.finalized"\n'
           "dlr_id = data.payload.id\ndlr_status = data.payload.to.0.status\n"
           "key_to = data.payload.to.0.phone_number\n"
           "key_from = data.payload.from.phone_number\nkey_body = data.payload.text\n")
PHONES = (f"number [john.doe] = {JOHN}\nnumber [desk] = {DESK}\nnumber [jane.doe] = {JANE}\n"
          "notify [john.doe] = all\nnotify [desk] = failed\n")


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def post_json(url: str, payload: dict) -> int:
    code, _ = status_and_body(curl("-H", "Content-Type: application/json",
                                   "--data-binary", json.dumps(payload), url))
    return code


def inbound(d: Daemon, to: str, sender: str, text: str) -> int:
    return post_json(d.webhook_url + "/", {"data": {"event_type": "message.received", "payload": {
        "to": [{"phone_number": to}], "from": {"phone_number": sender}, "text": text}}})


def report(d: Daemon, provider_id: str, status: str) -> int:
    return post_json(d.webhook_url + "/", {"data": {"event_type": "message.finalized", "payload": {
        "id": provider_id, "to": [{"phone_number": OUTSIDE, "status": status}]}}})


def api_status(d: Daemon) -> dict:
    with urllib.request.urlopen(d.api_url + "/api/status", timeout=10) as r:
        return json.load(r)


def phone_rows(d: Daemon) -> dict:
    return {c["name"]: c for c in api_status(d)["channels"] if c["kind"] == "phone"}


def ami_up(d: Daemon) -> bool:
    return any(c["kind"] == "ami" and c["state"] == "up" for c in api_status(d)["channels"])


def start_pair(tmp_path, *, phones, astqueue="", ami_write="message", itsp=None,
               daemon_extra="", phones_conf=PHONES,
               contexts=(RealAsterisk.CHANNEL_CONTEXT, RealAsterisk.INBOUND_CONTEXT),
               extra_dialplan=""):
    """A daemon and an Asterisk pointed at each other: the daemon's AGI port is in the
    dialplan, Asterisk's AMI port in websms.conf, one spool for both."""
    websms = "url_host = http://127.0.0.1:9\nauth_method = none\n"
    if itsp is not None:
        websms = (f"url_host = {itsp.url}\nauth_method = none\nencoding = json\n"
                  "resp_id = data.id\n")
    for attempt in range(3):
        root = tmp_path / f"pair{attempt}"
        d = Daemon(root, websms=websms, websmsd=WEBSMSD,
                   astqueue=(f"channel_context = {contexts[0]}\ncontext = {contexts[1]}\n"
                             + astqueue),
                   daemon="retry_base = 1\nretry_max = 2\n" + daemon_extra, phones=phones_conf)
        ast = RealAsterisk(phones=phones, agi_port=d.agi_port, spool_dir=str(root / "spool"),
                           websmsd_write=ami_write, extra_dialplan=extra_dialplan).start()
        # The daemon's ports were free when picked, not yet bound: Asterisk may have
        # picked one of them since.
        if not {ast.sip_port, ast.ami_port} & {d.webhook_port, d.agi_port, d.status_port}:
            break
        ast.stop()
    u = ast.websmsd_user
    d.config.write_text(d.config.read_text() + f"[ami]\nhost = 127.0.0.1\nport = {ast.ami_port}\n"
                        f"username = {u.name}\nsecret = {u.secret}\nkeepalive = 5\n")
    try:
        d.start()
        wait_until(lambda: ami_up(d), what="websmsd logged into the AMI")
    except BaseException:
        print(d.output()[-3000:])
        d.stop()
        ast.stop()
        raise
    return d, ast


def ua(ast: RealAsterisk, name: str) -> SipUA:
    return SipUA(name, ast.phone(name).secret(), registrar=("127.0.0.1", ast.sip_port)).start()


@pytest.fixture
def itsp():
    fake = FakeITSP()
    fake.default = (200, b'{"data": {"id": "prov-1", "status": "queued"}}')
    yield fake
    fake.close()


@pytest.fixture
def ami_loop(tmp_path, itsp):
    """delivery = ami, manager.conf user with the least rights (read = system, write =
    message): websmsd cannot list contacts at login and learns from events."""
    d, ast = start_pair(tmp_path, phones=[Phone("john.doe"), Phone("desk"), Phone("jane.doe")],
                        astqueue="delivery = ami\n", itsp=itsp)
    phones = {}
    try:
        yield d, ast, phones
    finally:
        for p in phones.values():
            with contextlib.suppress(Exception):  # gone already: only tidiness
                p.unregister(timeout=2)
            p.close()
        d.stop()
        ast.stop()


def test_an_sms_to_a_shared_number_reaches_every_phone_that_has_it(ami_loop):
    d, ast, phones = ami_loop
    for name in ("john.doe", "desk"):
        phones[name] = ua(ast, name)
        assert phones[name].register().status == 200
    text = "Hello ✓ 😀\r\n  second line with leading blanks, and a trailing one "
    assert inbound(d, JOHN, OUTSIDE, text) == 200
    for name in ("john.doe", "desk"):
        got = phones[name].wait_message(timeout=10)
        assert got.body == text.encode("utf-8"), name
        assert f"sip:{OUTSIDE}@" in got.header("from")
    rows = wait_until(lambda: [r for r in d.rows(
        "SELECT route, status, recipient, sender FROM messages ORDER BY route")
        if r[1] == "delivered"] if len(d.rows("SELECT 1 FROM messages WHERE status = 'delivered'"))
        == 2 else None, what="both copies delivered")
    assert rows == [("ami:desk", "delivered", JOHN, OUTSIDE),
                    ("ami:john.doe", "delivered", JOHN, OUTSIDE)]
    assert d.callfiles() == []
    # Events told websmsd who registered (no listing allowed for this user).
    assert "ContactStatus NonQualified" in phone_rows(d)["john.doe"]["detail"]


def test_a_long_text_arrives_whole_in_clean_parts_in_order(ami_loop):
    d, ast, phones = ami_loop
    phones["john.doe"] = ua(ast, "john.doe")
    phones["john.doe"].register()
    phones["desk"] = ua(ast, "desk")
    phones["desk"].register()
    text = ("Привет, мир! " * 120 + "👍🏽🇸🇪👨‍👩‍👧 ") * 1 + "конец"  # 1,600+ characters
    assert inbound(d, JOHN, OUTSIDE, text) == 200
    john = phones["john.doe"]
    first = john.wait_message(timeout=10)
    n = int(first.text.split("/")[1].split(")")[0])
    wait_until(lambda: len(john.received) >= n, what=f"{n} parts")
    parts = [m.body for m in john.received[:n]]
    assert all(len(p) <= 756 for p in parts)
    texts = [p.decode("utf-8") for p in parts]  # each part is valid UTF-8 on its own
    assert [t.split(" ", 1)[0] for t in texts] == [f"({i}/{n})" for i in range(1, n + 1)]
    assert "".join(t.split(" ", 1)[1] for t in texts) == text
    for t in texts:  # no emoji or flag cut in two
        assert not t.endswith(("\U0001f44d", "\u200d", "\U0001f1f8"))
    time.sleep(0.5)
    assert len(john.received) == n


def test_a_phone_offline_gets_its_waiting_messages_in_order_once_it_registers(ami_loop):
    d, ast, phones = ami_loop
    for i in range(3):
        assert inbound(d, JANE, OUTSIDE, f"waiting {i}") == 200
    # The first MessageSend finds no contact: the route pauses, nothing is spent.
    wait_until(lambda: d.rows("SELECT COUNT(*) FROM messages WHERE route = 'ami:jane.doe'"
                              " AND reason LIKE 'waiting:%not registered%'")[0][0] == 3,
               what="three messages waiting for the phone")
    assert d.rows("SELECT DISTINCT status, attempts FROM messages") == [("queued", 0)]
    row = phone_rows(d)["jane.doe"]
    assert row["state"] == "not registered" and row["info"]["waiting"] == 3
    jane = phones["jane.doe"] = ua(ast, "jane.doe")
    registered = time.monotonic()
    assert jane.register().status == 200
    wait_until(lambda: len(jane.received) >= 3, what="the three messages")
    assert time.monotonic() - registered < 5
    assert [m.text for m in jane.received] == ["waiting 0", "waiting 1", "waiting 2"]
    time.sleep(1.0)
    assert len(jane.received) == 3  # once each
    assert d.rows("SELECT DISTINCT status FROM messages") == [("delivered",)]
    row = wait_until(lambda: phone_rows(d)["jane.doe"]["info"]["waiting"] == 0
                     and phone_rows(d)["jane.doe"], what="nothing waiting")
    assert row["state"] == "registered" and row["info"]["last_delivery"]
    # Going offline again: the un-REGISTER's events take the route down at once.
    jane.unregister()
    wait_until(lambda: phone_rows(d)["jane.doe"]["state"] == "not registered",
               what="ContactStatus Removed seen")
    assert inbound(d, JANE, OUTSIDE, "later") == 200
    wait_until(lambda: d.rows("SELECT reason FROM messages WHERE body = 'later'")[0][0]
               == "waiting: route ami:jane.doe is down: phone jane.doe is not registered",
               what="the message waiting")
    assert len(jane.received) == 3


def test_a_phone_writes_an_sms_and_the_delivery_report_becomes_a_notice(ami_loop, itsp):
    d, ast, phones = ami_loop
    john = phones["john.doe"] = ua(ast, "john.doe")
    john.register()
    mark = ast.log_mark()
    assert john.send_message("+15559876543", "Hi from the desk phone").status == 202
    ast.wait_log(r"HARNESS-AGI-RESULT agistatus=SUCCESS status=SENT", start=mark)
    [request] = itsp.wait(1)
    sent = json.loads(request["body"])
    assert sent["From"] == JOHN and sent["To"] == "+15559876543", sent
    assert sent["Body"] == "Hi from the desk phone"
    [(message_id, source)] = d.rows("SELECT id, source FROM messages WHERE direction = 'out'")
    assert source == "agi:john.doe"
    before = len(john.received)
    assert report(d, "prov-1", "delivered") == 200
    notice = john.wait_message(lambda m: m.text.startswith("✓"), timeout=10)
    assert notice.text.startswith("✓ delivered ") and len(notice.text) == len("✓ delivered 12:03")
    assert "sip:+15559876543@" in notice.header("from")
    assert report(d, "prov-1", "delivered") == 200  # the ITSP repeats itself
    time.sleep(1.0)
    assert len(john.received) == before + 1
    assert d.rows("SELECT status FROM messages WHERE id = ?", (message_id,)) == [("delivered",)]


def test_a_failed_sms_gives_a_notice_to_a_phone_that_asked_for_failures(ami_loop, itsp):
    d, ast, phones = ami_loop
    desk = phones["desk"] = ua(ast, "desk")
    desk.register()
    itsp.answers = [(400, b'{"errors": [{"detail": "number blocked"}]}')]
    assert desk.send_message("+15550000001", "will fail").status == 202
    notice = desk.wait_message(lambda m: m.text.startswith("✗"), timeout=10)
    assert notice.text.startswith("✗ not sent: ") and "400" in notice.text
    assert "sip:+15550000001@" in notice.header("from")


@pytest.fixture
def listing_loop(tmp_path):
    """write = system,message: PJSIPShowContacts at login tells who is registered."""
    d, ast = start_pair(tmp_path, phones=[Phone("john.doe"), Phone("desk"), Phone("jane.doe")],
                        astqueue="delivery = ami\n", ami_write="system,message")
    yield d, ast
    d.stop()
    ast.stop()


def test_with_write_system_the_contacts_are_listed_at_login(listing_loop, tmp_path):
    d, ast = listing_loop
    rows = phone_rows(d)
    assert {r["state"] for r in rows.values()} == {"not registered"}
    assert "PJSIPShowContacts" in rows["john.doe"]["detail"]
    with ua(ast, "john.doe") as john:
        john.register()
        wait_until(lambda: phone_rows(d)["john.doe"]["state"] == "registered", what="event")
        d.stop()  # a restart: the listing at login knows john.doe is there
        d.start()
        wait_until(lambda: ami_up(d), what="logged in again")
        row = wait_until(lambda: phone_rows(d)["john.doe"]["state"] == "registered"
                         and phone_rows(d)["john.doe"], what="listed as registered")
        assert "PJSIPShowContacts: NonQualified" in row["detail"]
        assert inbound(d, JOHN, OUTSIDE, "after the restart") == 200
        assert john.wait_message(timeout=10).text == "after the restart"
        john.unregister()


@pytest.fixture
def callfile_loop(tmp_path):
    """delivery = callfile (the dialplan decides), Archive: yes."""
    d, ast = start_pair(tmp_path, phones=[Phone("john.doe", numbers=(JOHN,))],
                        astqueue='archive = "yes"\n',
                        daemon_extra="max_attempts = 2\n",
                        phones_conf=f"number [john.doe] = {JOHN}\n")
    yield d, ast
    d.stop()
    ast.stop()


def test_call_files_reach_the_phone_and_record_what_asterisk_says(callfile_loop):
    d, ast = callfile_loop
    with ua(ast, "john.doe") as john:
        john.register()
        text = "through a call file; 100% ;# ✓"
        assert inbound(d, JOHN, OUTSIDE, text) == 200
        assert john.wait_message(timeout=15).text == text
        [(message_id, route)] = d.rows("SELECT id, route FROM messages")
        assert route == "callfile"
        detail = wait_until(lambda: d.rows("SELECT detail FROM attempts WHERE message_id = ?",
                                           (message_id,)), timeout=20, what="the Status read")
        assert "Asterisk says Completed (its dialplan ran; no proof that the phone got it)" \
            in detail[0][0]
        assert d.rows("SELECT status FROM messages") == [("sent",)]


def test_a_call_file_that_expires_is_retried_then_fails_with_that_reason(callfile_loop):
    d, ast = callfile_loop
    # No extension for this number in the channel context: pbx_spool archives Expired.
    assert inbound(d, "+19995550000", OUTSIDE, "nobody here") == 200
    [(status, reason)] = wait_until(
        lambda: [r for r in d.rows("SELECT status, reason FROM messages") if r[0] == "failed"],
        timeout=30, what="the message failed")
    assert "Asterisk says Expired" in reason and "gave up after 2 attempts" in reason
    tries = d.rows("SELECT ok, detail FROM attempts ORDER BY at")
    assert [ok for ok, _ in tries].count(0) == 2


def test_a_long_text_through_call_files_arrives_in_order(callfile_loop):
    d, ast = callfile_loop
    with ua(ast, "john.doe") as john:
        john.register()
        text = "Длинное сообщение " * 40  # 720 characters: 3 call files
        assert inbound(d, JOHN, OUTSIDE, text) == 200
        first = john.wait_message(timeout=15)
        n = int(first.text.split("/")[1].split(")")[0])
        wait_until(lambda: len(john.received) >= n, timeout=30, what=f"{n} parts")
        texts = [m.text for m in john.received[:n]]
        assert [t.split(" ", 1)[0] for t in texts] == [f"({i}/{n})" for i in range(1, n + 1)]
        assert "".join(t.split(" ", 1)[1] for t in texts) == text


def readme_dialplan() -> str:
    """The inbound dialplan for call files as README.md gives it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("dialplan for call files, one extension per number")
    block = text.index("```\n", start) + 4
    return text[block:text.index("```", block)]


def test_the_readme_inbound_dialplan_gives_a_number_to_both_phones(tmp_path):
    dialplan = readme_dialplan()
    assert "[websms-answer]" in dialplan and "MessageSend(pjsip:desk" in dialplan
    # Under names of its own, beside the harness's contexts.
    dialplan = dialplan.replace("[websms-answer]", "[readme-answer]").replace(
        "[websms-in]", "[readme-in]")
    d, ast = start_pair(tmp_path, phones=[Phone("john.doe"), Phone("desk")],
                        astqueue='archive = "yes"\n', contexts=("readme-answer", "readme-in"),
                        extra_dialplan=dialplan, phones_conf=PHONES.replace("jane", "x"))
    try:
        with ua(ast, "john.doe") as john, ua(ast, "desk") as desk:
            john.register()
            desk.register()
            text = "to the desk and John: 100% ✓"
            assert inbound(d, JOHN, OUTSIDE, text) == 200
            assert john.wait_message(timeout=15).text == text
            assert desk.wait_message(timeout=15).text == text
            wait_until(lambda: d.rows("SELECT detail FROM attempts WHERE detail LIKE"
                                      " '%Completed%'"), timeout=20, what="Completed read")
            john.unregister()
            desk.unregister()
    finally:
        d.stop()
        ast.stop()
