"""README's outbound dialplan, as written, with a real Asterisk 22, a real PJSIP phone
(tests/sipua.py) and the real daemon: what a new owner copies must work (issue #12).

The dialplan block is read from README.md; only the FastAGI port is changed to the
daemon's.  Skips without an Asterisk at /opt/asterisk (see ../shared/asterisk-build.md).
"""

import re
import urllib.parse

import pytest

import realasterisk
from blackbox import ROOT, Daemon, FakeITSP
from realasterisk import Phone, RealAsterisk
from sipua import SipUA

pytestmark = pytest.mark.skipif(realasterisk.skip_reason() is not None,
                                reason=realasterisk.skip_reason() or "")


def readme_dialplan() -> str:
    """The block under README's "Outbound: the dialplan", exactly as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Outbound: the dialplan", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    assert "agi://127.0.0.1:4573/websms" in block and block.startswith("[websms-out]\n")
    return block


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    itsp = FakeITSP()
    d = Daemon(tmp_path_factory.mktemp("readme"),
               websms=f"url_host = {itsp.url}\nurl_path = /sms\nauth_method = none\n",
               phones="number [alice] = +15015550100\n")
    d.start()
    dialplan = readme_dialplan().replace("127.0.0.1:4573", f"127.0.0.1:{d.agi_port}")
    # The harness has a [websms-out] of its own: README's is given another name.
    dialplan = dialplan.replace("[websms-out]", "[readme-out]")
    phones = [Phone("alice", context="readme-out"), Phone("bob", context="readme-out")]
    try:
        with RealAsterisk(phones, extra_dialplan=dialplan) as ast:
            yield ast, d, itsp
    finally:
        d.stop()
        itsp.close()


def send(ast, name, to, body, display_name):
    mark = ast.log_mark()
    with SipUA(name, ast.phone(name).secret(), registrar=("127.0.0.1", ast.sip_port),
               display_name=display_name) as ua:
        assert ua.send_message(to, body).status == 202
    return ast.wait_log(r"websms: (\S+) (\S*) ?(.*)", start=mark)


def test_a_pjsip_phone_with_a_number_sends_through_the_readme_dialplan(world):
    ast, d, itsp = world
    # MESSAGE(from) is '"Alice, desk" <sip:alice@127.0.0.1>': a display name with a
    # comma, a SIP URI whose user is the endpoint, not a number.
    line = send(ast, "alice", "+12025550160", "Hello from a real phone", "Alice, desk")
    status, message_id, _ = line.groups()
    assert status == "SENT", line.group(0)
    [request] = itsp.wait(1)
    form = urllib.parse.parse_qs(request["body"].decode())
    assert form["From"] == ["+15015550100"]  # [phones] number of endpoint alice
    assert form["To"] == ["+12025550160"]
    assert form["Body"] == ["Hello from a real phone"]
    assert d.rows("SELECT status, sender, source FROM messages WHERE id = ?", (message_id,)) == [
        ("sent", "+15015550100", "agi:alice")]


def test_an_extension_without_a_number_fails_saying_how_to_fix_it(world):
    ast, d, itsp = world
    before = len(itsp.requests)
    line = send(ast, "bob", "+12025550160", "no number", None)
    status, _, reason = line.groups()
    assert status == "FAILED", line.group(0)
    assert "bob" in reason and "[phones]" in reason
    assert len(itsp.requests) == before
