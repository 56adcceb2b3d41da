"""Black-box: Android phones against the real daemon (`twistd -n websmsd`).

The phones are tests/phonepeers.py: SMSsyncPhone and MedicPhone put exactly the apps'
requests on a real socket (headers, body encodings, the double-encoded task=result, the
percent-encoded Basic password) and judge the answers as the apps do, retries included;
FakeSMSGate is SMS Gateway for Android's local server on a real port.  The daemon is
killed with SIGKILL between a phone's request and its answer (stopped with SIGSTOP while
the request waits in the socket, or after it answered but before the phone took the
answer in): the phone repeats the request and the store decides.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict

import pytest

from blackbox import ROOT, api_json
from phonepeers import FakeSMSGate, MedicPhone, SMSsyncPhone, send

SMSSYNC = """\
url_path [phone1] = /smssync/phone1
secret   [phone1] = s3cr3t
number   [phone1] = +254700000001
"""
GATEWAY = """\
url_path [phone2] = /smsgateway/phone2
user     [phone2] = gw
password [phone2] = pa$s
number   [phone2] = +254700000002
"""


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def callfile_vars(path) -> Dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("setvar: MESSAGE("):
            name, _, value = line[len("setvar: MESSAGE("):].partition(")=")
            out[name] = urllib.parse.unquote(value) if name == "body" else value
    return out


def status(d) -> dict:
    with urllib.request.urlopen(d.api_url + "/api/status", timeout=30) as r:
        return json.load(r)


def route_row(d, route: str) -> dict:
    return next(r for r in status(d)["routes"] if r["route"] == route)


def channel_row(d, route: str) -> dict:
    return next(c for c in status(d)["channels"] if c["info"].get("route") == route)


def message(d, message_id: str) -> tuple:
    return d.rows("SELECT status, reason, attempts FROM messages WHERE id = ?", (message_id,))[0]


def submit(d, to: str, body: str, interface: str, sender: str = "+254700000099") -> str:
    r = api_json(d.api_url + "/api/send", {"to": to, "from": sender, "body": body,
                                           "interface": interface, "wait": 0})
    assert r["status"] == "QUEUED", r
    return r["id"]


def restart(d) -> None:
    d.start()


# --------------------------------------------------------------------------------------
# SMSsync
# --------------------------------------------------------------------------------------


def test_smssync_sms_becomes_one_call_file_and_the_test_button_none(make_daemon):
    d = make_daemon(smssync=SMSSYNC)
    url = d.webhook_url + "/smssync/phone1"
    assert SMSsyncPhone(url, "s3cr3t").test_integration()
    phone = SMSsyncPhone(url, "s3cr3t", device_id="d1")
    text = "Habari 100% & ✓; #not a comment\nApplication: System"
    assert phone.receive_sms("+254722000111", text, message_id="11111111-2222-4333-8444-555555555555")
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f) == {"to": "+254700000001", "from": "+254722000111", "body": text}
    # JSON and XML bodies (the app labels both application/json).
    for fmt in ("json", "xml"):
        assert SMSsyncPhone(url, "s3cr3t", fmt=fmt).receive_sms("M-PESA", f"as {fmt}")
    files = d.wait_callfiles(3)
    assert sorted(callfile_vars(f)["body"] for f in files[1:]) == ["as json", "as xml"]
    # The same SMS again (an answer the phone never got): still three call files.
    assert phone.receive_sms("+254722000111", text, message_id="11111111-2222-4333-8444-555555555555")
    time.sleep(0.3)
    assert len(d.callfiles()) == 3
    assert not SMSsyncPhone(url, "wrong").receive_sms("+1", "x")


def test_smssync_outbound_through_websms_and_the_api(make_daemon):
    d = make_daemon(smssync=SMSSYNC + "results_api [phone1] = yes\n")
    url = d.webhook_url + "/smssync/phone1"
    cli = [sys.executable, "-c", "import sys; from websmsd.cli import websms_main; sys.exit(websms_main())"]
    done = subprocess.run(cli + ["+254711000001", "+254700000099", "from the dialplan", "phone1",
                                 "--config", str(d.config), "--wait", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"PYTHONPATH": str(ROOT)})
    # Queued (exit 75, EX_TEMPFAIL): the phone takes it when it polls.
    assert done.returncode == 75 and done.stdout.startswith("QUEUED "), (done.stdout, done.stderr)
    second = submit(d, "+254711000002", "from the API", "phone1")
    phone = SMSsyncPhone(url, "s3cr3t", results_api=True)
    sent = phone.check_tasks()
    assert [(m["to"], m["message"]) for m in sent] == [
        ("+254711000001", "from the dialplan"), ("+254711000002", "from the API")]
    # Recorded once the confirming answer left (the phone may already be sending).
    wait_for(lambda: message(d, second)[0] == "sent", what="sent")
    assert phone.check_tasks() == []
    # Results: the double-encoded body; a delivery report moves it to delivered.
    query, posted = phone.report_results({second: {"sent_result_code": 0, "delivered_result_code": -1}})
    assert query.status == 200 and second in query.json()["message_uuids"] and posted.status == 200
    assert message(d, second)[0] == "delivered"


def test_smssync_killed_between_request_and_answer(make_daemon):
    d = make_daemon(smssync=SMSSYNC)
    url = d.webhook_url + "/smssync/phone1"
    phone = SMSsyncPhone(url, "s3cr3t", timeout=1.0)
    queued = submit(d, "+254711000001", "outbound", "phone1")
    # 1. The request waits in the socket of a stopped daemon, which is then killed.
    d.proc.send_signal(signal.SIGSTOP)
    assert not phone.receive_sms("+254722000111", "first", message_id="aaaaaaaa-0000-4000-8000-000000000001")
    assert phone.check_tasks() == []
    d.kill()
    restart(d)
    assert phone.sync_pending() == 1
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f)["body"] == "first"
    sent = phone.check_tasks()
    assert [m["uuid"] for m in sent] == [queued]
    # 2. The daemon answered (committed), but the phone never took the answer in.
    request = phone.incoming_request("+254722000111", "second", message_id="aaaaaaaa-0000-4000-8000-000000000002")
    assert send(request).status == 200
    d.kill()
    restart(d)
    assert phone.receive_sms("+254722000111", "second", message_id="aaaaaaaa-0000-4000-8000-000000000002")
    files = d.wait_callfiles(2)
    time.sleep(0.3)
    assert [callfile_vars(f)["body"] for f in d.callfiles()].count("second") == 1 and len(files) == 2
    # What was handed over before the kill is not offered again.
    assert phone.check_tasks() == []
    wait_for(lambda: message(d, queued)[0] == "sent", what="sent")


def test_smssync_killed_between_a_confirmation_and_its_answer(make_daemon):
    d = make_daemon(smssync=SMSSYNC)  # results_api = auto: learned from the phone
    url = d.webhook_url + "/smssync/phone1"
    phone = SMSsyncPhone(url, "s3cr3t", results_api=True, timeout=1.0)
    first = submit(d, "+254711000001", "first", "phone1")
    assert [m["uuid"] for m in phone.check_tasks()] == [first]  # it confirms: learned
    wait_for(lambda: message(d, first)[0] == "sent", what="sent")
    second = submit(d, "+254711000002", "second", "phone1")
    offer = send(phone.send_poll_request())
    assert [m["uuid"] for m in offer.json()["payload"]["messages"]] == [second]
    # The phone's task=sent waits in the socket of a stopped daemon, which is killed:
    # the phone got no confirmation, so it sends nothing.
    d.proc.send_signal(signal.SIGSTOP)
    with pytest.raises(OSError):
        send(phone.sent_ack_request([second]), timeout=1.0)
    d.kill()
    restart(d)
    assert message(d, second)[0] in ("queued", "sending")
    sent = wait_for(lambda: phone.check_tasks(), what="offered again")
    assert [m["uuid"] for m in sent] == [second]
    wait_for(lambda: message(d, second)[0] == "sent", what="sent")
    assert [m["uuid"] for m in phone.outbox] == [first, second]  # each sent once
    assert phone.check_tasks() == []


def test_smssync_a_silent_phone_is_a_route_down_until_it_polls(make_daemon):
    d = make_daemon(smssync=SMSSYNC + "poll [phone1] = 0.5\n")
    phone = SMSsyncPhone(d.webhook_url + "/smssync/phone1", "s3cr3t")
    phone.check_tasks()
    row = wait_for(lambda: (r := route_row(d, "smssync:phone1"))["down"] and r, what="silent")
    assert row["down"].startswith("phone silent since")
    channel = channel_row(d, "smssync:phone1")
    assert channel["state"] == "silent" and channel["info"]["app"] == "SMSSync-Android"
    queued = submit(d, "+254711000001", "waits", "phone1")
    time.sleep(0.3)
    # Waiting, with no attempt spent, and saying why.
    status, reason, attempts = message(d, queued)
    assert (status, attempts) == ("queued", 0)
    assert reason.startswith("waiting: route smssync:phone1 is down: phone silent since")
    assert [m["uuid"] for m in phone.check_tasks()] == [queued]
    assert route_row(d, "smssync:phone1")["down"] is None
    metrics = urllib.request.urlopen(d.api_url + "/metrics", timeout=30).read().decode()
    assert 'websmsd_route_up{route="smssync:phone1"} 1' in metrics
    assert 'websmsd_android_requests_total{event="smssync:phone1"}' in metrics


# --------------------------------------------------------------------------------------
# The SMS Gateway app
# --------------------------------------------------------------------------------------


def test_gateway_app_in_and_out_with_the_apps_own_requests(make_daemon):
    d = make_daemon(smsgateway=GATEWAY)
    url = f"http://gw:pa$s@127.0.0.1:{d.webhook_port}/smsgateway/phone2"
    phone = MedicPhone(url)
    assert phone.settings_check() == (True, "ok")
    assert MedicPhone(url.replace("pa$s", "nope")).settings_check() == (False, "unauthorised")
    phone.receive_sms("+254733000111", "Jambo ✓")
    reply, _ = phone.poll()
    assert reply.status == 200
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f) == {"to": "+254700000002", "from": "+254733000111", "body": "Jambo ✓"}
    out = submit(d, "+254711000001", "Hello phone", "phone2")
    reply, _ = phone.poll()
    assert reply.json()["messages"] == [{"id": out, "to": "+254711000001", "content": "Hello phone"}]
    phone.poll()  # UNSENT
    assert message(d, out)[0] == "sending"
    phone.set_status(out, "PENDING")
    phone.set_status(out, "SENT")
    phone.set_status(out, "DELIVERED")
    phone.poll()
    wait_for(lambda: message(d, out)[0] == "delivered", what="delivered")
    row = channel_row(d, "smsgateway:phone2")
    assert row["state"] == "up" and row["info"]["version"] == "1.8.0"
    assert row["info"]["last_result"].startswith(out)


def test_gateway_app_killed_between_request_and_answer(make_daemon):
    d = make_daemon(smsgateway=GATEWAY)
    url = f"http://gw:pa$s@127.0.0.1:{d.webhook_port}/smsgateway/phone2"
    phone = MedicPhone(url, timeout=1.0)
    out = submit(d, "+254711000001", "to send", "phone2")
    phone.receive_sms("+254733000111", "received")
    # The poll waits in the socket of a stopped daemon, which is killed.
    d.proc.send_signal(signal.SIGSTOP)
    reply, _ = phone.poll()
    assert reply is None and len(phone.waiting) == 1
    d.kill()
    restart(d)
    reply, _ = phone.poll()  # the same data again
    assert [m["id"] for m in reply.json()["messages"]] == [out]
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f)["body"] == "received"
    # Killed after answering with the offer, before the phone could report UNSENT.
    d.kill()
    restart(d)
    reply, _ = phone.poll()  # carries UNSENT; websmsd, not knowing, may offer it again
    phone.poll()
    assert list(phone.store) == [out]  # the phone holds (and sends) it once
    phone.set_status(out, "SENT")
    reply, _ = phone.poll()
    assert reply.json() == {"messages": []}
    assert message(d, out)[0] == "sent"
    time.sleep(0.3)
    assert len(d.callfiles()) == 1


# --------------------------------------------------------------------------------------
# SMS Gateway for Android (local server)
# --------------------------------------------------------------------------------------


@pytest.fixture
def gate_phone():
    fake = FakeSMSGate(now_ms=int((time.time() + 86400) * 1000)).serve()
    yield fake
    fake.close()


def gate_conf(fake: FakeSMSGate, extra: str = "") -> str:
    return (f"url [phone3] = {fake.url}\nuser [phone3] = {fake.user}\n"
            f'password [phone3] = "{fake.password}"\nnumber [phone3] = +254700000003\n'
            f"poll [phone3] = 0.2\n{extra}")


def now_ms() -> int:
    return int(time.time() * 1000)


def test_smsgate_sends_follows_and_reads_the_inbox_across_a_kill(make_daemon, gate_phone):
    fake = gate_phone
    d = make_daemon(smsgate=gate_conf(fake))
    out = submit(d, "+254711000001", "Hello SMSGate", "phone3")
    wait_for(lambda: out in fake.messages, what="the phone got the SMS")
    msg = fake.messages[out]
    assert (msg.phone_numbers, msg.text, msg.with_delivery_report) == (["+254711000001"], "Hello SMSGate", True)
    wait_for(lambda: message(d, out)[0] == "sent", what="sent")
    fake.set_state(out, "Delivered")
    wait_for(lambda: message(d, out)[0] == "delivered", what="delivered")
    fake.receive("+254722000111", "inbox one", now_ms())
    [f] = d.wait_callfiles(1)
    assert callfile_vars(f) == {"to": "+254700000003", "from": "+254722000111", "body": "inbox one"}
    d.kill()
    fake.receive("M-PESA", "while down", now_ms())
    restart(d)
    files = d.wait_callfiles(2)
    time.sleep(1.0)  # several polls
    assert sorted(callfile_vars(f)["body"] for f in d.callfiles()) == ["inbox one", "while down"]
    assert len(files) == 2
    row = channel_row(d, "smsgate:phone3")
    assert row["state"] == "up" and row["info"]["version"] == "1.68.0"


def test_smsgate_a_phone_that_stops_answering_is_a_route_that_is_down(make_daemon, gate_phone):
    fake = gate_phone
    d = make_daemon(smsgate=gate_conf(fake, "timeout [phone3] = 0.5\n"), daemon="retry_base = 1\n")
    wait_for(lambda: channel_row(d, "smsgate:phone3")["state"] == "up", what="up")
    fake.silent = True
    row = wait_for(lambda: (r := route_row(d, "smsgate:phone3"))["down"] and r, what="down")
    assert row["down"].startswith("phone unreachable since")
    out = submit(d, "+254711000001", "waits for the phone", "phone3")
    time.sleep(2.5)
    state, _, attempts = message(d, out)
    assert state in ("queued", "sending") and attempts == 0
    channel = channel_row(d, "smsgate:phone3")
    assert channel["state"] == "down" and "no answer since" in channel["detail"]
    fake.silent = False
    wait_for(lambda: message(d, out)[0] == "sent", what="sent after the phone came back")
    assert list(fake.messages) == [out] and route_row(d, "smsgate:phone3")["down"] is None
