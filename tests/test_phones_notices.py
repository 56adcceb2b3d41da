"""websmsd.phones.notices: which final status earns which notice, to whom, from whom."""

from __future__ import annotations

import time

import pytest

from websmsd.config import loads
from websmsd.message import DELIVERED, FAILED, IN, OUT, SENT, Message
from websmsd.phones.notices import endpoint_of, notice_for, notice_text

CONF = ("[ami]\nusername = websmsd\nsecret = amisecret\n"
        "[phones]\nnumber [john.doe] = +12025550160\nnumber [desk] = +12025550160\n"
        "number [jane.doe] = +12025550183\nnumber [nonum] = \n"
        "notify [john.doe] = all\nnotify [desk] = failed\nnotify [nonum] = all\n[astqueue]\n")
PHONES = loads(CONF, "websms.conf").phones
NOON = time.mktime((2026, 12, 1, 12, 3, 0, 0, 0, -1))


def out(source="agi:john.doe", status=DELIVERED, to="+15559876543", reason=None):
    m = Message(OUT, "itsp", to, "+12025550160", "hello", source=source, status=status,
                reason=reason)
    return m


def test_a_delivered_sms_gives_its_phone_a_notice_from_the_number_it_wrote_to():
    m = out()
    n = notice_for(m, PHONES, NOON)
    assert (n.direction, n.route, n.recipient, n.sender) == (
        IN, "ami:john.doe", "+12025550160", "+15559876543")
    assert n.body == "\u2713 delivered 12:03"
    assert n.source == "notice" and n.dedupe_key == f"notice:{m.id}:delivered"
    assert n.created == NOON


def test_a_failed_sms_says_why_in_one_short_line():
    m = out(status=FAILED, reason="gave up after 10 attempts: HTTP 503\nService Unavailable "
                                  + "x" * 300)
    n = notice_for(m, PHONES, NOON)
    assert n.body.startswith("\u2717 not sent: gave up after 10 attempts: HTTP 503 Service")
    assert "\n" not in n.body and len(n.body) <= len("\u2717 not sent: ") + 120
    assert n.dedupe_key == f"notice:{m.id}:failed"
    assert notice_text(FAILED, None, NOON) == "\u2717 not sent: no reason given"


@pytest.mark.parametrize("source, status, wanted", [
    ("agi:john.doe", DELIVERED, True),
    ("agi:john.doe", FAILED, True),
    ("agi:desk", DELIVERED, False),  # notify = failed
    ("agi:desk", FAILED, True),
    ("agi:jane.doe", FAILED, False),  # notify = none (the default)
    ("agi:nonum", FAILED, False),  # no number to send the notice to
    ("agi:stranger", FAILED, False),  # not a [phones] endpoint
    ("api", FAILED, False),  # not written on a phone
    ("cli", DELIVERED, False),
    ("webhook:tw", DELIVERED, False),
    ("agi", DELIVERED, False),
    ("agi:john.doe", SENT, False),  # not final
])
def test_who_gets_a_notice(source, status, wanted):
    assert (notice_for(out(source, status), PHONES, NOON) is not None) is wanted


def test_never_a_notice_for_a_notice_nor_for_an_inbound_message():
    n = notice_for(out(), PHONES, NOON)
    n.status = DELIVERED
    assert notice_for(n, PHONES, NOON) is None
    inbound = Message(IN, "ami:john.doe", "+12025550160", "+15559876543", "hi",
                      source="agi:john.doe", status=DELIVERED)
    assert notice_for(inbound, PHONES, NOON) is None


def test_no_notice_from_a_number_that_could_not_be_a_sender():
    assert notice_for(out(to="+1555\nApplication: System"), PHONES, NOON) is None


def test_endpoint_of():
    assert endpoint_of("agi:john.doe") == "john.doe"
    assert endpoint_of("agi:") is None and endpoint_of("api:john.doe") is None
