"""websmsd.smpp.esme: SMPPBind and its protocol, bytes in and bytes out, on a fake clock."""

import gc
import random

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from websmsd.smpp import pdu as P
from websmsd.smpp.esme import (BindLost, DeliverRefused, NotBound, SMPPBind, SubmitResult,
                               SubmitTimeout)
from websmsd.smpp.pdu import PDU


class Transport(StringTransport):
    """Like a reactor's: closing is reported to the protocol on the next turn."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.protocol = None
        self.closed = False
        self.aborted = False

    def loseConnection(self):
        super().loseConnection()
        self._later(ConnectionDone())

    def abortConnection(self):
        super().abortConnection()
        self.aborted = True
        self._later(ConnectionLost("aborted"))

    def _later(self, reason):
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(reason))

    def drop(self, reason=None):
        """The peer closes."""
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class Endpoint:
    def __init__(self, clock):
        self.clock = clock
        self.transports = []
        self.refuse = 0

    def connect(self, factory):
        if self.refuse:
            self.refuse -= 1
            return defer.fail(ConnectionRefusedError("127.0.0.1:7777"))
        proto = factory.buildProtocol(None)
        tr = Transport(self.clock)
        tr.protocol = proto
        proto.makeConnection(tr)
        self.transports.append(tr)
        return defer.succeed(proto)

    @property
    def tr(self):
        return self.transports[-1]


def take(tr):
    data = tr.value()
    tr.clear()
    events = P.PDUReader().feed(data)
    assert all(isinstance(e, PDU) for e in events), events
    return events


def send(tr, *pdus):
    tr.protocol.dataReceived(b"".join(p.encode() if isinstance(p, PDU) else p for p in pdus))


class Harness:
    def __init__(self, **kw):
        self.clock = Clock()
        self.endpoint = Endpoint(self.clock)
        self.states = []
        self.delivered = []
        self.deliver_answers = []
        kw.setdefault("on_deliver", self.on_deliver)
        kw.setdefault("retry_policy", lambda n: 2.0 ** n)
        self.bind = SMPPBind(self.clock, self.endpoint, "goip01", "pw", enquire_link=30,
                             response_timeout=10, window=kw.pop("window", 10),
                             on_state=lambda s, d: self.states.append((s, d)), **kw)

    def on_deliver(self, pdu):
        self.delivered.append(pdu)
        d = defer.Deferred()
        self.deliver_answers.append(d)
        return d

    def start(self, bound=True):
        self.bind.startService()
        if bound:
            self.accept_bind()
        return self

    def accept_bind(self, system_id=b"goipsms04"):
        (req,) = take(self.endpoint.tr)
        assert req.command == "bind_transceiver"
        # answered the GoIP way: system_id without its NUL
        body = system_id
        raw = P.HEADER.pack(16 + len(body), 0x80000009, 0, req.sequence) + body
        send(self.endpoint.tr, raw)
        assert self.bind.state == "bound"
        return req


@pytest.fixture
def h():
    return Harness().start()


@pytest.fixture(autouse=True)
def no_unexpected_failures(request):
    """Every failure logged (or left unhandled in a Deferred) must be one the test
    provoked on purpose (the deliver handler's own errors)."""
    seen = []

    def observer(event):
        if "log_failure" in event:
            seen.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    yield
    gc.collect()
    globalLogPublisher.removeObserver(observer)
    allowed = (RuntimeError, ValueError)
    assert [f for f in seen if not f.check(*allowed)] == []


# -- bind -----------------------------------------------------------------------------------


def test_bind_transceiver_bytes_and_goip_resp():
    h = Harness()
    bound = h.bind.when_bound()
    h.bind.startService()
    data = h.endpoint.tr.value()
    body = b"goip01\x00pw\x00\x00\x34\x00\x00\x00"
    assert data == P.HEADER.pack(16 + len(body), 9, 0, 1) + body
    assert h.bind.state == "binding" and not bound.called
    h.accept_bind()
    assert bound.result is h.bind
    assert h.bind.peer_system_id == "goipsms04"
    assert [s for s, _ in h.states] == ["connecting", "binding", "bound"]
    assert h.bind.when_bound().result is h.bind


def test_bind_modes_and_arguments():
    h = Harness(mode="receiver")
    h.bind.startService()
    assert take(h.endpoint.tr)[0].command == "bind_receiver"
    with pytest.raises(ValueError):
        Harness(mode="sideways")
    with pytest.raises(P.PDUError):
        SMPPBind(Clock(), Endpoint(Clock()), "x", "password-too-long")


@pytest.mark.parametrize("status", [P.ESME_RINVPASWD, P.ESME_RINVSYSID, P.ESME_RBINDFAIL])
def test_bind_refused_waits_long(status):
    h = Harness(bind_failed_delay=300)
    h.bind.startService()
    (req,) = take(h.endpoint.tr)
    send(h.endpoint.tr, PDU("bind_transceiver_resp", req.sequence, status))
    assert h.bind.state == "bind failed"
    assert h.bind.detail.startswith(f"check system_id/password (status 0x{status:08X}")
    assert h.endpoint.tr.disconnecting
    h.clock.advance(0)
    assert h.bind.state == "bind failed"         # not overwritten by the close
    assert h.bind.next_attempt == 300
    h.clock.advance(299)
    assert len(h.endpoint.transports) == 1
    h.clock.advance(1)
    assert len(h.endpoint.transports) == 2
    h.accept_bind()


def test_bind_refused_by_generic_nack():
    h = Harness()
    h.bind.startService()
    (req,) = take(h.endpoint.tr)
    send(h.endpoint.tr, PDU("generic_nack", req.sequence, 0))
    assert h.bind.state == "bind failed" and "ESME_RBINDFAIL" in h.bind.detail


def test_bind_unanswered_reconnects_with_backoff():
    h = Harness()
    h.bind.startService()
    h.clock.advance(10)
    assert h.endpoint.tr.aborted
    h.clock.advance(0)
    assert h.bind.state == "disconnected"
    h.clock.advance(2)                   # retry_policy(1) = 2 s
    assert len(h.endpoint.transports) == 2
    h.clock.advance(10)                  # unanswered again
    h.clock.advance(4)                   # retry_policy(2) = 4 s
    assert len(h.endpoint.transports) == 3
    h.accept_bind()


def test_connect_refused_is_reported_and_retried():
    h = Harness()
    h.endpoint.refuse = 2
    h.bind.startService()
    assert h.bind.state == "disconnected" and "cannot connect" in h.bind.detail
    h.clock.advance(2)
    h.clock.advance(4)
    assert len(h.endpoint.transports) == 1
    h.accept_bind()


def test_deliver_before_bound_is_refused():
    h = Harness()
    h.bind.startService()
    take(h.endpoint.tr)
    send(h.endpoint.tr, PDU("deliver_sm", 5, short_message=b"x"))
    (resp,) = take(h.endpoint.tr)
    assert (resp.command, resp.status) == ("deliver_sm_resp", P.ESME_RINVBNDSTS)
    assert h.delivered == []


# -- submit ---------------------------------------------------------------------------------


def test_submit_not_bound_fails_at_once():
    h = Harness()
    f = h.bind.submit({"destination_addr": "1"})
    assert isinstance(f.result.value, NotBound)
    f.addErrback(lambda _: None)
    h.bind.startService()
    f = h.bind.submit({"destination_addr": "1"})   # binding
    assert isinstance(f.result.value, NotBound)
    f.addErrback(lambda _: None)


def test_submit_bytes_and_results(h):
    (fields,) = P.submits_for("+15551234", "Hi")
    d = h.bind.submit(fields)
    (req,) = take(h.endpoint.tr)
    assert req.command == "submit_sm" and req.encode() == PDU(
        "submit_sm", req.sequence, fields=fields).encode()
    send(h.endpoint.tr, PDU("submit_sm_resp", req.sequence, message_id="0a1b2c"))
    assert d.result == SubmitResult(0, "0a1b2c") and d.result.ok
    d2 = h.bind.submit(fields)
    (req2,) = take(h.endpoint.tr)
    assert req2.sequence == req.sequence + 1
    send(h.endpoint.tr, PDU("submit_sm_resp", req2.sequence, P.ESME_RTHROTTLED))
    assert d2.result == SubmitResult(P.ESME_RTHROTTLED, None)
    assert d2.result.status_name == "ESME_RTHROTTLED" and not d2.result.ok


def test_submit_answered_by_generic_nack_or_bad_resp(h):
    d = h.bind.submit({"destination_addr": "1"})
    (req,) = take(h.endpoint.tr)
    send(h.endpoint.tr, PDU("generic_nack", req.sequence, P.ESME_RMSGQFUL))
    assert d.result == SubmitResult(P.ESME_RMSGQFUL, None)
    d = h.bind.submit({"destination_addr": "1"})
    (req,) = take(h.endpoint.tr)
    # a submit_sm_resp whose TLV stream is broken still answers the request
    send(h.endpoint.tr, P.HEADER.pack(16 + 6, 0x80000004, 0, req.sequence) + b"id\x00\x04\x24\x00")
    assert d.result == SubmitResult(0, None)
    assert h.bind.state == "bound"


def test_window_limits_submits_in_flight():
    h = Harness(window=2).start()
    ds = [h.bind.submit({"destination_addr": str(i)}) for i in range(5)]
    reqs = take(h.endpoint.tr)
    assert [r["destination_addr"] for r in reqs] == ["0", "1"]
    send(h.endpoint.tr, PDU("submit_sm_resp", reqs[1].sequence, message_id="b"))
    assert ds[1].result.message_id == "b" and not ds[0].called
    (r2,) = take(h.endpoint.tr)
    assert r2["destination_addr"] == "2"
    send(h.endpoint.tr, PDU("submit_sm_resp", reqs[0].sequence, message_id="a"),
         PDU("submit_sm_resp", r2.sequence, message_id="c"))
    r3, r4 = take(h.endpoint.tr)
    assert (r3["destination_addr"], r4["destination_addr"]) == ("3", "4")
    assert h.bind.protocol._inflight == 2


def test_submit_timeout_releases_window_and_late_answer_is_harmless():
    h = Harness(window=1).start()
    d1 = h.bind.submit({"destination_addr": "1"})
    d2 = h.bind.submit({"destination_addr": "2"})
    (r1,) = take(h.endpoint.tr)
    h.clock.advance(9)
    assert not d1.called
    h.clock.advance(1)
    assert isinstance(d1.result.value, SubmitTimeout)
    d1.addErrback(lambda _: None)
    (r2,) = take(h.endpoint.tr)
    assert r2["destination_addr"] == "2"
    send(h.endpoint.tr, PDU("submit_sm_resp", r1.sequence, message_id="late"))
    assert not d2.called and h.bind.state == "bound"
    send(h.endpoint.tr, PDU("submit_sm_resp", r2.sequence, message_id="x"))
    assert d2.result.message_id == "x"


def test_connection_loss_fails_pending_at_once_and_nothing_is_resent():
    h = Harness(window=2).start()
    ds = [h.bind.submit({"destination_addr": str(i)}) for i in range(4)]
    errors = []
    for d in ds:
        d.addErrback(lambda f: errors.append(f.value))
    assert len(take(h.endpoint.tr)) == 2
    h.endpoint.tr.drop(ConnectionLost("reset"))
    assert [type(e) for e in errors] == [BindLost, BindLost, NotBound, NotBound]
    assert h.bind.state == "disconnected" and "reset" in h.bind.detail
    late = h.bind.submit({})
    assert isinstance(late.result.value, NotBound)
    late.addErrback(lambda _: None)
    h.clock.advance(2)
    h.accept_bind()
    assert take(h.endpoint.tr) == []        # nothing sent again


def test_submit_from_an_errback_during_loss_is_not_bound():
    h = Harness().start()
    seen = []

    def again(f):
        d = h.bind.submit({"destination_addr": "9"})
        d.addErrback(lambda f2: seen.append(type(f2.value)))

    h.bind.submit({"destination_addr": "1"}).addErrback(again)
    take(h.endpoint.tr)
    h.endpoint.tr.drop()
    assert seen == [NotBound]


def test_cancel_queued_and_in_flight():
    h = Harness(window=1).start()
    d1 = h.bind.submit({"destination_addr": "1"})
    d2 = h.bind.submit({"destination_addr": "2"})
    d3 = h.bind.submit({"destination_addr": "3"})
    (r1,) = take(h.endpoint.tr)
    d2.cancel()
    d2.addErrback(lambda f: f.trap(defer.CancelledError))
    d1.cancel()
    d1.addErrback(lambda f: f.trap(defer.CancelledError))
    assert take(h.endpoint.tr) == []        # d1 still holds the window until answered
    send(h.endpoint.tr, PDU("submit_sm_resp", r1.sequence, message_id="a"))
    (r3,) = take(h.endpoint.tr)
    assert r3["destination_addr"] == "3"    # d2 never went out
    send(h.endpoint.tr, PDU("submit_sm_resp", r3.sequence, message_id="c"))
    assert d3.result.message_id == "c"


def test_submit_with_bad_fields_fails_and_keeps_window():
    h = Harness(window=1).start()
    bad = h.bind.submit({"destination_addr": "1" * 30})
    assert isinstance(bad.result.value, P.PDUError)
    bad.addErrback(lambda _: None)
    h.bind.submit({"destination_addr": "1"})
    assert len(take(h.endpoint.tr)) == 1


def test_sequence_numbers_wrap():
    h = Harness().start()
    h.bind.protocol._seq = 0x7FFFFFFE
    h.bind.submit({})
    h.bind.submit({})
    assert [r.sequence for r in take(h.endpoint.tr)] == [0x7FFFFFFF, 1]


# -- keepalive ------------------------------------------------------------------------------


def test_enquire_link_on_idle_only(h):
    h.clock.advance(29)
    send(h.endpoint.tr, PDU("enquire_link", 77))          # traffic restarts the timer
    assert take(h.endpoint.tr) == [PDU("enquire_link_resp", 77)]
    h.clock.advance(29)
    assert take(h.endpoint.tr) == []
    h.clock.advance(1)
    (req,) = take(h.endpoint.tr)
    assert req.command == "enquire_link"
    send(h.endpoint.tr, req.resp())
    h.clock.advance(29.9)
    assert take(h.endpoint.tr) == [] and h.bind.state == "bound"
    h.clock.advance(0.1)
    assert [r.command for r in take(h.endpoint.tr)] == ["enquire_link"]


def test_unanswered_enquire_link_drops_and_rebinds(h):
    h.clock.advance(30)
    (req,) = take(h.endpoint.tr)
    h.clock.advance(9.9)
    assert h.bind.state == "bound"
    h.clock.advance(0.1)
    assert h.endpoint.tr.aborted
    h.clock.advance(0)
    assert h.bind.state == "disconnected" and "enquire_link" in h.bind.detail
    h.clock.advance(2)
    assert len(h.endpoint.transports) == 2
    h.accept_bind()


# -- deliver_sm -----------------------------------------------------------------------------


def test_deliver_answered_only_after_handler_succeeds(h):
    dlv = PDU("deliver_sm", 40, source_addr="+1555", destination_addr="goip01",
              data_coding=8, short_message="Привет".encode("utf-16-be"))
    send(h.endpoint.tr, dlv)
    assert h.delivered[0]["short_message"] == dlv["short_message"]
    assert take(h.endpoint.tr) == []
    h.deliver_answers[0].callback(None)
    (resp,) = take(h.endpoint.tr)
    assert resp.encode() == P.HEADER.pack(17, 0x80000005, 0, 40) + b"\x00"


def test_deliver_handler_failure_answers_temporary_error(h):
    send(h.endpoint.tr, PDU("deliver_sm", 41), PDU("deliver_sm", 42))
    h.deliver_answers[0].errback(RuntimeError("store is down"))
    h.deliver_answers[1].errback(DeliverRefused(P.ESME_RX_P_APPN, "junk"))
    r1, r2 = take(h.endpoint.tr)
    assert (r1.sequence, r1.status) == (41, P.ESME_RX_T_APPN)
    assert (r2.sequence, r2.status) == (42, P.ESME_RX_P_APPN)
    assert h.bind.state == "bound"


def test_deliver_handler_raising_or_missing():
    def boom(pdu):
        raise ValueError("bad")

    h = Harness(on_deliver=boom).start()
    send(h.endpoint.tr, PDU("deliver_sm", 3))
    assert take(h.endpoint.tr)[0].status == P.ESME_RX_T_APPN
    h = Harness(on_deliver=None).start()
    send(h.endpoint.tr, PDU("deliver_sm", 4))
    assert take(h.endpoint.tr)[0].status == P.ESME_RX_T_APPN


def test_deliver_answer_after_connection_loss_goes_nowhere(h):
    send(h.endpoint.tr, PDU("deliver_sm", 5))
    old = h.endpoint.tr
    old.drop()
    h.deliver_answers[0].callback(None)
    assert old.value() == b""
    h.clock.advance(2)
    h.accept_bind()
    assert take(h.endpoint.tr) == []


# -- other requests and bad input -----------------------------------------------------------


def test_unbind_from_smsc_is_answered_then_rebinds(h):
    send(h.endpoint.tr, PDU("unbind", 9))
    assert take(h.endpoint.tr) == [PDU("unbind_resp", 9)]
    assert h.endpoint.tr.disconnecting
    h.clock.advance(0)
    assert h.bind.state == "disconnected" and "unbound by the SMSC" in h.bind.detail
    h.clock.advance(2)
    h.accept_bind()


def test_unknown_and_unsupported_commands(h):
    send(h.endpoint.tr, P.HEADER.pack(16, 0x00000003, 0, 11))            # query_sm
    send(h.endpoint.tr, PDU("data_sm", 12, message_payload=b"x"))
    send(h.endpoint.tr, PDU("submit_sm", 13))
    send(h.endpoint.tr, PDU("alert_notification", 14))
    out = take(h.endpoint.tr)
    assert [(p.command, p.sequence, p.status) for p in out] == [
        ("generic_nack", 11, P.ESME_RINVCMDID), ("data_sm_resp", 12, P.ESME_RINVCMDID),
        ("submit_sm_resp", 13, P.ESME_RINVCMDID)]
    assert h.bind.state == "bound"


def test_malformed_deliver_is_answered_and_bind_stays(h):
    bad = P.HEADER.pack(16 + 4, 0x00000005, 0, 15) + b"\x00\x01\x01a"
    send(h.endpoint.tr, bad)
    (resp,) = take(h.endpoint.tr)
    assert (resp.command, resp.sequence, resp.status) == ("deliver_sm_resp", 15,
                                                           P.ESME_RINVCMDLEN)
    assert h.bind.state == "bound" and h.delivered == []


def test_framing_error_nacks_and_drops(h):
    send(h.endpoint.tr, P.HEADER.pack(8, 5, 0, 16))
    (nack,) = take(h.endpoint.tr)
    assert (nack.command, nack.status, nack.sequence) == ("generic_nack",
                                                           P.ESME_RINVCMDLEN, 16)
    assert h.endpoint.tr.aborted
    send(h.endpoint.tr, PDU("enquire_link", 17))       # nothing more is read
    assert take(h.endpoint.tr) == []
    h.clock.advance(0)
    assert h.bind.state == "disconnected"


def test_answer_to_unknown_sequence_is_ignored(h):
    send(h.endpoint.tr, PDU("submit_sm_resp", 999, message_id="x"),
         PDU("enquire_link_resp", 1000))
    assert h.bind.state == "bound" and take(h.endpoint.tr) == []


def test_garbage_from_the_smsc_never_raises():
    rnd = random.Random(21)
    for _ in range(60):
        h = Harness().start()
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 120)))
        send(h.endpoint.tr, blob)
        h.clock.advance(0)
        assert h.bind.state in ("bound", "disconnected")


def test_mutated_deliver_pdus_never_raise():
    rnd = random.Random(23)
    good = PDU("deliver_sm", 50, esm_class=0x40, data_coding=8,
               short_message=b"\x05\x00\x03\x01\x02\x01" + "Я".encode("utf-16-be")).encode()
    for _ in range(100):
        h = Harness().start()
        blob = bytearray(good)
        for _ in range(rnd.randrange(1, 4)):
            blob[rnd.randrange(4, len(blob))] = rnd.randrange(256)
        send(h.endpoint.tr, bytes(blob))
        for d in h.deliver_answers:
            d.callback(None)
        h.clock.advance(0)


# -- stop -----------------------------------------------------------------------------------


def test_stop_unbinds_politely(h):
    pending = h.bind.submit({"destination_addr": "1"})
    take(h.endpoint.tr)
    stopped = h.bind.stopService()
    (req,) = take(h.endpoint.tr)
    assert req.command == "unbind" and h.bind.state == "unbinding"
    late = h.bind.submit({})
    assert isinstance(late.result.value, NotBound)
    late.addErrback(lambda _: None)
    send(h.endpoint.tr, req.resp())
    assert h.endpoint.tr.disconnecting
    h.clock.advance(0)
    assert stopped.called and h.bind.state == "stopped"
    assert isinstance(pending.result.value, BindLost)
    pending.addErrback(lambda _: None)
    h.clock.advance(3600)
    assert len(h.endpoint.transports) == 1


def test_stop_wait_is_bounded(h):
    stopped = h.bind.stopService()
    assert not stopped.called
    h.clock.advance(5)
    h.clock.advance(0)
    assert stopped.called and h.bind.state == "stopped"
    assert len(h.endpoint.transports) == 1


def test_stop_while_disconnected_and_when_bound_waiter():
    h = Harness()
    h.endpoint.refuse = 1
    h.bind.startService()
    waiter = h.bind.when_bound()
    d = h.bind.stopService()
    assert d.called and h.bind.state == "stopped"
    assert isinstance(waiter.result.value, NotBound)
    waiter.addErrback(lambda _: None)
    h.clock.advance(100)
    assert h.endpoint.transports == []



def test_peer_strings_reach_the_log_on_one_line():
    from twisted.logger import formatEvent

    lines = []

    def observer(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        h = Harness()
        h.bind.startService()
        h.accept_bind(system_id=b"evil\nInjected: line\r")
    finally:
        globalLogPublisher.removeObserver(observer)
    bound = [line for line in lines if "bound as goip01" in line]
    assert bound and all("\n" not in line and "\r" not in line for line in bound)
    assert "evil?Injected: line?" in bound[0]
    assert h.bind.peer_system_id == "evil\nInjected: line\r"   # kept as sent, for callers
