"""Black-box: the real daemon (`twistd -n websmsd`) with [yeastar] against tests/tgpeer.py's
FakeTG, which answers byte for byte like the captures of real TG units (AMI on one port,
WebCGI with its malformed headers on another) and shares no code with websmsd."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from blackbox import ROOT, api_json
from tgpeer import FakeTG

SECRET = "tg-secret"


@pytest.fixture
def tg():
    fake = FakeTG(username="websmsd", secret=SECRET, ports=4, empty_ports=(3,))
    yield fake
    fake.close()


def yeastar(tg, extra: str = "", secret: str = SECRET) -> str:
    return (f"host = 127.0.0.1\nami_port = {tg.ami_port}\nhttp_port = {tg.http_port}\n"
            f"username = websmsd\nsecret = {secret}\ntransport = ami\n"
            "port [tg1] = 1\nnumber [tg1] = +79991234567\n"
            "port [tg2] = 2\nnumber [tg2] = +79991234568\n"
            # Short timers for the test; Yeastar's own 10 s per SMS would only slow it.
            "min_interval = 0.2\nsend_timeout = 3\nlogin_retry = 1\nstatus_interval = 1\n"
            + extra)


def start(make_daemon, tg, **kw):
    d = make_daemon(yeastar=yeastar(tg, **kw), daemon="retry_base = 1\nretry_max = 2\n")
    return d


def status(d) -> dict:
    with urllib.request.urlopen(d.api_url + "/api/status", timeout=10) as r:
        return json.load(r)


def port_rows(d) -> dict:
    return {c["name"]: c for c in status(d)["channels"] if c["kind"] == "yeastar"}


def route_rows(d) -> dict:
    return {r["route"]: r for r in status(d)["routes"] if r["route"].startswith("yeastar")}


def wait(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def logged_in(d) -> bool:
    rows = port_rows(d)
    return bool(rows) and all(r["info"]["logged_in"] for r in rows.values())


def callfile_values(path) -> dict:
    out = {}
    for line in path.read_bytes().decode().splitlines():
        name, _, value = line.partition(": ")
        if name == "setvar":
            key, _, val = value.partition("=")
            out[key] = val
        else:
            out[name] = value
    return out


def test_an_sms_to_a_port_becomes_one_call_file(make_daemon, tg):
    d = start(make_daemon, tg)
    assert tg.wait_for(lambda: tg.logins >= 1)
    wait(lambda: logged_in(d), what="login")
    tg.push_sms(2, "+79161112233", "Привет мир; 100% \"ok\"")
    [f] = d.wait_callfiles(1)
    v = callfile_values(f)
    assert v["MESSAGE(to)"] == "+79991234567" and v["MESSAGE(from)"] == "+79161112233"
    assert urllib.parse.unquote(v["MESSAGE(body)"]) == "Привет мир; 100% \"ok\""
    assert v["Channel"].startswith("Local/+79991234567@")
    # A long one on port 2, its parts out of order: one message, in Index order.
    parts = ["Это длинное сообщение, ", "разрезанное посреди сло", "ва на три части."]
    tg.push_sms(3, "+79161112233", parts=parts, order=[3, 1, 2], ident="17")
    files = d.wait_callfiles(2)
    [v2] = [callfile_values(p) for p in files if p != f]
    assert v2["MESSAGE(to)"] == "+79991234568"
    assert urllib.parse.unquote(v2["MESSAGE(body)"]) == "".join(parts)
    time.sleep(0.5)
    assert len(d.callfiles()) == 2  # one per message, not per part
    rows = port_rows(d)
    assert rows["tg1"]["info"]["received"] == 1 and rows["tg2"]["info"]["received"] == 1
    # One AMI session with events on: only one copy reached the store.
    assert d.rows("SELECT COUNT(*) FROM messages WHERE direction = 'in'") == [(2,)]
    assert len([a for _, a in tg.actions if ("Action", "Login") in a]) == 1


def test_outbound_via_the_api_is_sent_once_the_tg_reports_it(make_daemon, tg):
    d = start(make_daemon, tg)
    wait(lambda: logged_in(d), what="login")
    body = 'Quotes " and \\ and +plus+ and\nnew line, 100%'
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "+79991234567",
                                            "body": body, "wait": 10})
    assert r["status"] == "SENT", r
    [sms] = tg.sms
    assert (sms.span, sms.number, sms.text, sms.via) == (2, "+79161234567", body, "ami")
    assert sms.ident.startswith(r["id"] + "-1-1-1")
    [(status_, route)] = d.rows("SELECT status, route FROM messages WHERE id = ?", (r["id"],))
    assert (status_, route) == ("sent", "yeastar:tg1")
    [(ok, detail)] = d.rows("SELECT ok, detail FROM attempts WHERE message_id = ?", (r["id"],))
    assert ok == 1 and detail == f"accepted by the SMS centre {tg.smsc}"
    # Status 0 from the TG: failed, with the reason.
    tg.send_status = 0
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "+79991234567",
                                            "body": "refused", "interface": "tg1", "wait": 10})
    assert r["status"] == "FAILED" and "Status 0" in r["reason"]


def test_a_port_without_sim_is_down_and_its_messages_wait(make_daemon, tg):
    d = start(make_daemon, tg, extra="port [tg3] = 3\nnumber [tg3] = +79991234569\n")
    wait(lambda: "Undetected SIM Card" in (route_rows(d).get("yeastar:tg3", {}).get("down") or ""),
         what="tg3 down for its SIM")
    wait(lambda: port_rows(d)["tg1"]["info"]["signal"] is not None, what="signal read")
    rows = port_rows(d)
    assert rows["tg3"]["state"] == "down" and "Undetected SIM Card" in rows["tg3"]["detail"]
    assert rows["tg1"]["state"] == "up" and rows["tg1"]["info"]["signal"] == 19
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "x",
                                            "body": "waits", "interface": "tg3", "wait": 1})
    assert r["status"] == "QUEUED"
    time.sleep(1)
    [(status_, attempts)] = d.rows("SELECT status, attempts FROM messages WHERE id = ?", (r["id"],))
    assert (status_, attempts) == ("queued", 0) and tg.sms == []
    # /metrics: the route is down, and its message is waiting.
    with urllib.request.urlopen(d.api_url + "/metrics", timeout=10) as m:
        text = m.read().decode()
    assert 'websmsd_route_up{route="yeastar:tg3"} 0' in text
    assert 'websmsd_queue_depth{route="yeastar:tg3"} 1' in text
    assert 'websmsd_route_up{route="yeastar:tg1"} 1' in text


def test_ussd_through_websms_and_the_api(make_daemon, tg):
    d = start(make_daemon, tg)
    wait(lambda: logged_in(d), what="login")
    out = subprocess.run([sys.executable, "-m", "websmsd", "websms", "ussd", "tg1", "*100#",
                          "--config", str(d.config)], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Баланс: 36.3 руб.\n"
    r = api_json(d.api_url + "/api/ussd", {"interface": "tg2", "code": "*101#"})
    assert r == {"interface": "tg2", "code": "*101#",
                 "reply": "Solde Principal: 170 FCFA. Tapez *101*1#."}
    assert tg.ussd == [(2, "*100#"), (3, "*101#")]
    req = urllib.request.Request(d.api_url + "/api/ussd", method="POST",
                                 data=json.dumps({"interface": "tg1", "code": "*000#"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 502
    assert json.load(e.value)["error"] == "port 1: Send USSD failed on span 2"
    out = subprocess.run([sys.executable, "-m", "websmsd", "websms", "ussd", "tg1", "*999#",
                          "--config", str(d.config)], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 1 and "Send USSD timeout on span 2" in out.stderr


def test_login_failure_backs_off_then_a_drop_pauses_and_resumes(make_daemon, tg):
    d = start(make_daemon, tg, secret="wrong-secret")
    wait(lambda: "login failed" in port_rows(d).get("tg1", {}).get("detail", ""),
         what="login failure shown")
    rows = port_rows(d)
    assert rows["tg1"]["state"] == "down"
    assert "login failed: Authentication failed" in rows["tg1"]["info"]["ami"]
    assert route_rows(d)["yeastar:tg1"]["down"]
    time.sleep(2.5)
    tries = len([a for _, a in tg.actions if ("Action", "Login") in a])
    assert tries <= 3  # 1 s, then 2 s: no reconnect storm
    assert "wrong-secret" not in d.output()
    # The owner fixes the TG's side: the next retry logs in and the routes come up.
    tg.secret = "wrong-secret"
    wait(lambda: logged_in(d), timeout=20, what="login after the fix")
    wait(lambda: not route_rows(d)["yeastar:tg1"]["down"], what="route up")
    # The link drops: routes pause, a message waits without spending an attempt, and
    # goes once the session is back.  (Named interface: no fallback to move on to.)
    tg.glue_end = True
    tg.send_delay = None  # hold results while we look
    tg.drop()
    wait(lambda: route_rows(d)["yeastar:tg1"]["down"], what="route down after the drop")
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "+79991234567",
                                            "body": "after the drop", "interface": "tg1",
                                            "wait": 0})
    wait(lambda: logged_in(d), timeout=20, what="login after the drop")
    assert tg.wait_for(lambda: len(tg.sms) == 1), d.output()[-5000:]
    assert tg.sms[0].text == "after the drop"
    [(attempts,)] = d.rows("SELECT attempts FROM messages WHERE id = ?", (r["id"],))
    assert attempts == 0  # still waiting for its result: no attempt spent while down
    tg.send_delay = 0.05
    tg.push_raw(("Event: UpdateSMSSend\r\nPrivilege: all,smscommand\r\n"
                 f"ID: {tg.sms[0].ident}\r\nSmsc: {tg.smsc}\r\nStatus: 1\r\n"
                 "--END SMS EVENT--\r\n\r\n").encode())
    wait(lambda: d.rows("SELECT status FROM messages WHERE id = ?", (r["id"],)) == [("sent",)],
         what="sent")
    assert tg.logins == 2


def test_sigkill_while_waiting_for_the_result_loses_nothing(make_daemon, tg):
    d = start(make_daemon, tg)
    wait(lambda: logged_in(d), what="login")
    tg.push_sms(2, "+79161112233", "before the kill")
    d.wait_callfiles(1)
    # Half of a two-part SMS arrives before the kill, the other half after the restart.
    halves = ["Первая половина, ", "вторая половина."]
    tg.push_sms(2, "+79161112233", parts=halves, order=[1], ident="33")
    wait(lambda: any('["ID", "33"]' in v for (v,) in d.rows("SELECT value FROM channel_state")),
         what="the first half kept in the store")
    tg.send_delay = None  # the TG never reports: the daemon waits
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "+79991234567",
                                            "body": "survives", "interface": "tg1", "wait": 0})
    assert tg.wait_for(lambda: len(tg.sms) == 1)
    d.kill()
    tg.send_delay = 0.05
    d.start()
    wait(lambda: d.rows("SELECT status FROM messages WHERE id = ?", (r["id"],)) == [("sent",)],
         timeout=20, what="sent after the restart")
    assert [s.text for s in tg.sms] == ["survives", "survives"]  # may have gone twice: said so
    wait(lambda: logged_in(d), what="login after the restart")
    tg.push_sms(2, "+79161112233", parts=halves, order=[2], ident="33")
    files = d.wait_callfiles(2)
    bodies = sorted(urllib.parse.unquote(callfile_values(f)["MESSAGE(body)"]) for f in files)
    assert bodies == ["before the kill", "".join(halves)]  # nothing lost, nothing twice
    assert d.rows("SELECT COUNT(*) FROM messages WHERE direction = 'in'") == [(2,)]


@pytest.mark.parametrize("quirk", ["boa", "stray"])
def test_http_transport_despite_broken_headers(make_daemon, tg, quirk):
    tg.http_quirk = quirk
    d = make_daemon(yeastar=yeastar(tg).replace("transport = ami", "transport = http"))
    r = api_json(d.api_url + "/api/send", {"to": "+79161234567", "from": "+79991234568",
                                            "body": "over http + ok", "wait": 10})
    assert r["status"] == "SENT", r
    [sms] = tg.sms
    assert (sms.via, sms.span, sms.number, sms.text) == ("http", 3, "+79161234567", "over http + ok")
    [(detail,)] = d.rows("SELECT detail FROM attempts WHERE message_id = ?", (r["id"],))
    assert detail == "queued by the TG (HTTP sends get no later result)"
    assert api_json(d.api_url + "/api/ussd", {"interface": "tg1", "code": "*101#"})["reply"] == (
        "Solde Principal: 170 FCFA. Tapez *101*1#.")
