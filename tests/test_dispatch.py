"""Dispatcher, retry policy, both sinks and the outbox, on a task.Clock: no sleeps."""

import os

import pytest
from twisted.internet import defer, task

from websmsd.asterisk.callfile import CallFileSpool, callfile_name
from websmsd.delivery import CallFileSink, ITSPSink
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.http.itsp import Outcome
from websmsd.message import IN, OUT, Message
from websmsd.outbox import Outbox
from websmsd.settings import AstQueueSettings, OutboundInterface, OutboundSettings
from websmsd.store import Store


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FakeITSP:
    """Answers each send with the next queued outcome, or holds it for the test to fire."""

    def __init__(self):
        self.sent = []
        self.outcomes = []
        self.held = []

    def send(self, iface, to, sender, body):
        self.sent.append((iface.name, to, sender, body))
        if self.outcomes:
            return defer.succeed(self.outcomes.pop(0))
        d = defer.Deferred()
        self.held.append(d)
        return d


OK = Outcome(True, False, "200 OK")
DOWN = Outcome(False, False, "connection refused")
REFUSED = Outcome(False, True, "400 invalid number")

POLICY = RetryPolicy(base=30, max_delay=300, max_attempts=4, max_age=86400)


@pytest.fixture
def world(tmp_path):
    clock = task.Clock()
    clock.advance(1_000_000)
    store = Store(str(tmp_path / "s.sqlite3"), clock, run_inline=True)
    store.open()
    dispatcher = Dispatcher(store, clock)
    itsp = FakeITSP()
    outbound = OutboundSettings((OutboundInterface(name="api-1"), OutboundInterface(name="api-2")))
    sink = ITSPSink(store, dispatcher, itsp, outbound, POLICY, clock, concurrency=2)
    dispatcher.add_sink(OUT, sink)
    q = AstQueueSettings(outgoingdir=str(tmp_path / "out"), stagingdir=str(tmp_path / "stage"))
    spool = CallFileSpool(q)
    spool.ensure_dirs()
    calls = CallFileSink(store, dispatcher, spool, q, POLICY, clock, poll=0.5,
                         run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    dispatcher.add_sink(IN, calls)
    dispatcher.startService()
    outbox = Outbox(store, dispatcher, outbound, clock, wait=5)

    class World:
        pass

    w = World()
    w.__dict__.update(clock=clock, store=store, dispatcher=dispatcher, itsp=itsp, outbox=outbox,
                      spool=spool, q=q, tmp=tmp_path, calls=calls)
    yield w
    dispatcher.stopService()
    store.close()


def row(w, message_id):
    return result(w.store.get(message_id))


def test_sent_on_first_attempt(world):
    world.itsp.outcomes = [OK]
    d = world.outbox.submit("+1555", "+1666", "hello", "api-2")
    world.clock.advance(0)
    r = result(d)
    assert (r.status, r.reason) == ("SENT", None)
    assert world.itsp.sent == [("api-2", "+1555", "+1666", "hello")]
    m = row(world, r.message_id)
    assert (m.status, m.attempts, m.interface) == ("sent", 1, "api-2")
    assert [a[1] for a in result(world.store.attempts(m.id))] == [1]


def test_transient_failures_back_off_then_give_up(world):
    world.itsp.outcomes = [DOWN]
    d = world.outbox.submit("+1555", "+1666", "hello", "")
    world.clock.advance(0)
    r = result(d)
    assert r.status == "QUEUED" and "refused" in r.reason
    m = row(world, r.message_id)
    assert (m.status, m.attempts, m.next_attempt) == ("queued", 1, world.clock.seconds() + 30)
    delays = []
    for _ in range(3):
        world.itsp.outcomes = [DOWN]
        before = len(world.itsp.sent)
        m = row(world, r.message_id)
        delay = m.next_attempt - world.clock.seconds()
        world.clock.advance(delay - 0.1)
        assert len(world.itsp.sent) == before, "retried too early"
        world.clock.advance(0.1)
        assert len(world.itsp.sent) == before + 1
        delays.append(delay)
    assert delays == [30, 60, 120]
    m = row(world, r.message_id)
    assert m.status == "failed" and m.reason.startswith("gave up after 4 attempts")
    for _ in range(10):
        world.clock.advance(300)
    assert len(world.itsp.sent) == 4


def test_permanent_failure_is_not_retried(world):
    world.itsp.outcomes = [REFUSED]
    d = world.outbox.submit("+1555", "+1666", "hello")
    world.clock.advance(0)
    r = result(d)
    assert (r.status, r.reason) == ("FAILED", "400 invalid number")
    for _ in range(10):
        world.clock.advance(300)
    assert len(world.itsp.sent) == 1


def test_slow_first_attempt_answers_queued_then_completes(world):
    d = world.outbox.submit("+1555", "+1666", "hello")
    world.clock.advance(0)
    assert not d.called
    world.clock.advance(5)
    r = result(d)
    assert r.status == "QUEUED"
    world.itsp.held[0].callback(OK)
    assert row(world, r.message_id).status == "sent"


def test_unknown_index_and_unsafe_numbers_fail_without_storing(world):
    assert result(world.outbox.submit("+1555", "+1666", "x", "nope")).status == "FAILED"
    assert result(world.outbox.submit("+1555\nX: y", "+1666", "x")).status == "FAILED"
    assert result(world.outbox.submit("+1555", "+1666", "")).status == "FAILED"
    assert result(world.store.recent()) == []
    assert world.itsp.sent == []


def test_a_message_is_never_sent_twice_at_once(world):
    d = world.outbox.submit("+1555", "+1666", "hello")
    world.clock.advance(0)
    for _ in range(5):  # wake-ups while the first try is still out
        world.dispatcher.wake(OUT)
        world.clock.advance(0)
    assert len(world.itsp.sent) == 1
    world.itsp.held[0].callback(OK)
    world.clock.advance(5)
    assert result(d).status == "SENT"


# -- the call-file sink ------------------------------------------------------------------

def inbound(w, body="hello", **kw):
    m = Message(IN, "", "+1555", "+1666", body, channel="webhook", **kw)
    result(w.store.add([m]))
    w.clock.advance(0)
    return m


def test_inbound_message_becomes_one_call_file(world):
    m = inbound(world)
    files = os.listdir(world.q.outgoingdir)
    assert files == [callfile_name(m.id, 0)]
    assert os.listdir(world.q.stagingdir) == []
    got = row(world, m.id)
    assert (got.status, got.progress, got.attempts) == ("sent", 1, 1)


def test_unwritable_spool_keeps_the_message_queued_and_retries(world):
    os.rmdir(world.q.stagingdir)
    open(world.q.stagingdir, "w").close()  # a file where the directory should be
    m = inbound(world)
    got = row(world, m.id)
    assert (got.status, got.attempts) == ("queued", 1)
    assert "spool" in got.reason
    for _ in range(10):  # well past max_attempts worth of tries
        world.clock.advance(300)
    got = row(world, m.id)
    assert got.attempts >= 8
    assert got.status == "queued", "an inbound message must never be given up for a local fault"
    os.unlink(world.q.stagingdir)
    os.mkdir(world.q.stagingdir)
    world.clock.advance(300)
    assert row(world, m.id).status == "sent"
    assert len(os.listdir(world.q.outgoingdir)) == 1


def test_crash_after_staging_publishes_the_staged_file(world):
    m = Message(IN, "", "+1555", "+1666", "hello", status="sending")
    name = callfile_name(m.id, 0)
    world.spool.stage([(name, b"Channel: Local/+1555@default\n")])
    result(world.store.add([m]))
    world.clock.advance(0)
    assert os.listdir(world.q.outgoingdir) == [name]
    assert row(world, m.id).status == "sent"


def test_crash_after_rename_does_not_write_again(world):
    m = Message(IN, "", "+1555", "+1666", "hello", status="sending")
    result(world.store.add([m]))  # "sending", nothing staged: the rename had happened
    world.clock.advance(0)
    assert os.listdir(world.q.outgoingdir) == []  # Asterisk had taken it already
    assert row(world, m.id).status == "sent"


def test_long_text_parts_wait_for_asterisk_to_take_the_previous_one(world):
    m = inbound(world, "слово " * 400)
    first = callfile_name(m.id, 0)
    assert os.listdir(world.q.outgoingdir) == [first]
    world.clock.advance(5)
    assert os.listdir(world.q.outgoingdir) == [first], "part 2 before Asterisk took part 1"
    os.unlink(os.path.join(world.q.outgoingdir, first))  # Asterisk runs it
    # Polls back off (0.5 s, 1 s, 2 s... up to 10 s) while Asterisk keeps a part.
    for _ in range(20):
        world.clock.advance(0.5)
        if os.listdir(world.q.outgoingdir):
            break
    assert os.listdir(world.q.outgoingdir) == [callfile_name(m.id, 1)]
    parts = row(world, m.id)
    assert parts.status == "queued" and parts.progress == 2


def test_a_message_cancelled_after_it_was_found_due_is_not_sent(world):
    m = Message(OUT, "api-1", "+1555", "+1666", "hello", channel="api")
    result(world.store.add([m]))
    # The owner cancels between the dispatcher's query and the send.
    real_claim = world.store.claim

    def cancel_first(message_id, attempts):
        result(world.store.cancel(message_id))
        return real_claim(message_id, attempts)

    world.store.claim = cancel_first
    world.clock.advance(0)
    assert world.itsp.sent == []
    assert row(world, m.id).status == "cancelled"


def test_written_numbers_are_compacted_when_the_interface_knows_its_country(world):
    us = OutboundSettings((OutboundInterface(name="us", num_country="US"),))
    world.outbox.outbound = world.dispatcher._sinks[OUT].outbound = us
    world.itsp.outcomes = [OK]
    d = world.outbox.submit("(206) 555-0100", "+1666", "hello")
    world.clock.advance(0)
    assert result(d).status == "SENT"
    assert world.itsp.sent == [("us", "2065550100", "+1666", "hello")]
    world.outbox.outbound = OutboundSettings((OutboundInterface(name="plain"),))
    assert result(world.outbox.submit("(206) 555-0100", "+1666", "x")).status == "FAILED"


def test_a_slow_itsp_does_not_hold_up_messages_that_arrive_later(world):
    first = world.outbox.submit("+1555", "+1666", "slow")
    world.clock.advance(0)
    assert len(world.itsp.held) == 1  # the ITSP has not answered the first one
    world.itsp.outcomes = [OK]
    second = world.outbox.submit("+1555", "+1666", "fast")
    world.clock.advance(0)
    assert result(second).status == "SENT"
    assert not first.called
    world.itsp.held[0].callback(OK)
    world.clock.advance(5)
    assert result(first).status == "SENT"
    assert [s[3] for s in world.itsp.sent] == ["slow", "fast"]


def test_concurrency_is_bounded(world):
    for i in range(5):
        world.outbox.submit("+1555", "+1666", f"m{i}")
    world.clock.advance(0)
    assert len(world.itsp.sent) == 2  # the sink's two slots
    world.itsp.held[0].callback(OK)
    world.clock.advance(0)
    assert len(world.itsp.sent) == 3


def test_a_part_asterisk_does_not_take_is_looked_at_less_and_less_often(world):
    m = inbound(world, "слово " * 400)
    writes = []
    real_update = world.store.update

    def counting(changes, attempts=None):
        writes.append(world.clock.seconds())
        return real_update(changes, attempts)

    world.store.update = counting
    for _ in range(120):  # ten minutes of an Asterisk that does not run
        world.clock.advance(5)
    world.store.update = real_update
    assert 55 <= len(writes) <= 70, len(writes)  # about one write per 10 s, not per 0.5 s


def test_publish_failing_halfway_writes_no_call_file_twice(world):
    real_publish = world.spool.publish
    taken = []  # what "Asterisk" ran, in order

    def asterisk_runs_the_spool():
        for name in sorted(os.listdir(world.q.outgoingdir)):
            taken.append(name)
            os.unlink(os.path.join(world.q.outgoingdir, name))

    def publish_first_only(names):
        real_publish(names[:1])
        raise OSError(28, "No space left on device")

    world.spool.publish = publish_first_only
    a = Message(IN, "", "+1555", "+1666", "a", channel="webhook")
    b = Message(IN, "", "+1555", "+1666", "b", channel="webhook")
    result(world.store.add([a, b]))
    world.clock.advance(0.02)
    asterisk_runs_the_spool()
    assert len(taken) == 1
    world.spool.publish = real_publish
    for _ in range(5):
        world.clock.advance(60)
        asterisk_runs_the_spool()
    assert sorted(taken) == sorted([callfile_name(a.id, 0), callfile_name(b.id, 0)])
    assert row(world, a.id).status == row(world, b.id).status == "sent"
    assert os.listdir(world.q.stagingdir) == []
