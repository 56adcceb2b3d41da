"""Dispatcher, retry policy, routes, the sinks and the outbox, on a task.Clock: no sleeps."""

import os

import pytest
from twisted.internet import defer, task

from conftest import fired
from websmsd.asterisk.callfile import CallFileSpool, callfile_name
from websmsd.asterisk.spool import CallFileChannel
from websmsd.channel import Outcome
from websmsd.config import AstQueueSettings, OutboundInterface
from websmsd.config.route import RouteRule, RouteSettings
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.itsp.sink import ITSPSink
from websmsd.message import IN, OUT, Message
from websmsd.outbox import Outbox
from websmsd.routing import Interface, Router
from websmsd.store import Store


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


class StandIn:
    """A second kind of outbound channel (as a GoIP SIM would be): records what it is
    given and answers as told."""

    def __init__(self, route):
        self.route = route
        self.sent = []
        self.outcomes = []

    def send(self, message):
        self.sent.append(message.body)
        return defer.succeed(self.outcomes.pop(0) if self.outcomes else Outcome.sent())


OK = Outcome.sent("200 OK")
DOWN = Outcome.failed("connection refused")
REFUSED = Outcome.failed("400 invalid number", permanent=True)

POLICY = RetryPolicy(base=30, max_delay=300, max_attempts=4, max_age=86400)


@pytest.fixture
def world(tmp_path):
    clock = task.Clock()
    clock.advance(1_000_000)
    store = Store(str(tmp_path / "s.sqlite3"), clock, run_inline=True)
    store.open()
    dispatcher = Dispatcher(store, clock, POLICY)
    itsp = FakeITSP()
    sinks = {}
    for name in ("api-1", "api-2"):
        sink = sinks[name] = ITSPSink(OutboundInterface(name=name), itsp, dispatcher.metrics)
        dispatcher.add_route(sink.route, sink, concurrency=2)
    sim = StandIn("goip:sim1")
    dispatcher.add_route(sim.route, sim, concurrency=1, min_interval=5)
    q = AstQueueSettings(outgoingdir=str(tmp_path / "out"), stagingdir=str(tmp_path / "stage"))
    spool = CallFileSpool(q)
    spool.ensure_dirs()
    calls = CallFileChannel(spool, q, clock, poll=0.5,
                            run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    dispatcher.add_batch_route("callfile", calls)
    dispatcher.startService()
    interfaces = [Interface("api-1", "itsp"), Interface("api-2", "itsp"),
                  Interface("sim1", "goip", ("+46701234567",))]
    outbox = Outbox(store, dispatcher, Router(interfaces), clock, wait=5)

    class World:
        pass

    w = World()
    w.__dict__.update(clock=clock, store=store, dispatcher=dispatcher, itsp=itsp, outbox=outbox,
                      spool=spool, q=q, tmp=tmp_path, calls=calls, sim=sim, sinks=sinks,
                      interfaces=interfaces)
    yield w
    dispatcher.stopService()
    store.close()


def row(w, message_id):
    return fired(w.store.get(message_id))


def test_sent_on_first_attempt(world):
    world.itsp.outcomes = [OK]
    d = world.outbox.submit("+1555", "+1666", "hello", "api-2")
    world.clock.advance(0)
    r = fired(d)
    assert (r.status, r.reason) == ("SENT", None)
    assert world.itsp.sent == [("api-2", "+1555", "+1666", "hello")]
    m = row(world, r.message_id)
    assert (m.status, m.attempts, m.route, m.source) == ("sent", 1, "itsp:api-2", "agi")
    assert [a[1] for a in fired(world.store.reader.attempts(m.id))] == [1]


def test_transient_failures_back_off_then_give_up(world):
    world.itsp.outcomes = [DOWN]
    d = world.outbox.submit("+1555", "+1666", "hello", "")
    world.clock.advance(0)
    r = fired(d)
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
    r = fired(d)
    assert (r.status, r.reason) == ("FAILED", "400 invalid number")
    for _ in range(10):
        world.clock.advance(300)
    assert len(world.itsp.sent) == 1


def test_slow_first_attempt_answers_queued_then_completes(world):
    d = world.outbox.submit("+1555", "+1666", "hello")
    world.clock.advance(0)
    assert not d.called
    world.clock.advance(5)
    r = fired(d)
    assert r.status == "QUEUED"
    world.itsp.held[0].callback(OK)
    assert row(world, r.message_id).status == "sent"


def test_unknown_index_and_unsafe_numbers_fail_without_storing(world):
    assert fired(world.outbox.submit("+1555", "+1666", "x", "nope")).status == "FAILED"
    assert fired(world.outbox.submit("+1555\nX: y", "+1666", "x")).status == "FAILED"
    assert fired(world.outbox.submit("+1555", "+1666", "")).status == "FAILED"
    assert fired(world.store.reader.recent()) == []
    assert world.itsp.sent == []


def test_a_message_is_never_sent_twice_at_once(world):
    d = world.outbox.submit("+1555", "+1666", "hello")
    world.clock.advance(0)
    for _ in range(5):  # wake-ups while the first try is still out
        world.dispatcher.wake("itsp:api-1")
        world.clock.advance(0)
    assert len(world.itsp.sent) == 1
    world.itsp.held[0].callback(OK)
    world.clock.advance(5)
    assert fired(d).status == "SENT"


# -- the call-file sink ------------------------------------------------------------------

def inbound(w, body="hello", **kw):
    m = Message(IN, "callfile", "+1555", "+1666", body, source="webhook", **kw)
    fired(w.store.add([m]))
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
    m = Message(IN, "callfile", "+1555", "+1666", "hello", status="sending")
    name = callfile_name(m.id, 0)
    world.spool.stage([(name, b"Channel: Local/+1555@default\n")])
    fired(world.store.add([m]))
    world.clock.advance(0)
    assert os.listdir(world.q.outgoingdir) == [name]
    assert row(world, m.id).status == "sent"


def test_crash_after_rename_does_not_write_again(world):
    m = Message(IN, "callfile", "+1555", "+1666", "hello", status="sending")
    fired(world.store.add([m]))  # "sending", nothing staged: the rename had happened
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
    m = Message(OUT, "itsp:api-1", "+1555", "+1666", "hello", source="api")
    fired(world.store.add([m]))
    # The owner cancels between the dispatcher's query and the send.
    real_claim = world.store.claim

    def cancel_first(message_ids):
        for message_id in message_ids:
            fired(world.store.cancel(message_id))
        return real_claim(message_ids)

    world.store.claim = cancel_first
    world.clock.advance(0)
    assert world.itsp.sent == []
    assert row(world, m.id).status == "cancelled"


def test_written_numbers_are_compacted_when_the_interface_knows_its_country(world):
    us = ITSPSink(OutboundInterface(name="us", num_country="US"), world.itsp,
                  world.dispatcher.metrics)
    world.dispatcher.add_route(us.route, us)
    world.outbox.router = Router([Interface("us", "itsp", compact=True)])
    world.itsp.outcomes = [OK]
    d = world.outbox.submit("(206) 555-0100", "+1666", "hello")
    world.clock.advance(0)
    assert fired(d).status == "SENT"
    assert world.itsp.sent == [("us", "2065550100", "+1666", "hello")]
    world.outbox.router = Router([Interface("plain", "itsp")])
    assert fired(world.outbox.submit("(206) 555-0100", "+1666", "x")).status == "FAILED"


def test_a_slow_itsp_does_not_hold_up_messages_that_arrive_later(world):
    first = world.outbox.submit("+1555", "+1666", "slow")
    world.clock.advance(0)
    assert len(world.itsp.held) == 1  # the ITSP has not answered the first one
    world.itsp.outcomes = [OK]
    second = world.outbox.submit("+1555", "+1666", "fast")
    world.clock.advance(0)
    assert fired(second).status == "SENT"
    assert not first.called
    world.itsp.held[0].callback(OK)
    world.clock.advance(5)
    assert fired(first).status == "SENT"
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
    inbound(world, "слово " * 400)
    writes = []
    real_update = world.store.update

    def counting(changes, attempts=None, wake=()):
        writes.append(world.clock.seconds())
        return real_update(changes, attempts, wake)

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
    a = Message(IN, "callfile", "+1555", "+1666", "a", source="webhook")
    b = Message(IN, "callfile", "+1555", "+1666", "b", source="webhook")
    fired(world.store.add([a, b]))
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


# -- routes: several interfaces, fallbacks, down routes, limits ------------------------------


def submitted(world, *args, **kw):
    d = world.outbox.submit(*args, **kw)
    world.clock.advance(0)
    return d


def test_each_message_reaches_the_interface_its_route_names(world):
    world.itsp.outcomes = [OK, OK]
    a = fired(submitted(world, "+1555", "+1666", "to api-1", "api-1"))
    b = fired(submitted(world, "+1555", "+1666", "to api-2", "api-2"))
    c = fired(submitted(world, "+4670", "+1666", "to the sim", "sim1"))
    assert [s[0] for s in world.itsp.sent] == ["api-1", "api-2"]
    assert world.sim.sent == ["to the sim"]
    assert (a.status, b.status, c.status) == ("SENT", "SENT", "SENT")
    assert [row(world, r.message_id).route for r in (a, b, c)] == [
        "itsp:api-1", "itsp:api-2", "goip:sim1"]


def test_a_reply_leaves_through_the_interface_that_owns_the_sender_number(world):
    # +46701234567 is the SIM's own number (configured): a message from it goes there.
    fired(submitted(world, "+4670", "+46701234567", "reply"))
    assert world.sim.sent == ["reply"]
    # A number the store saw messages come in on (a DID of api-2): learned.
    fired(world.store.add([Message(IN, "callfile", "+15550009999", "+1777", "hi",
                                    source="webhook:api-2")]))
    world.itsp.outcomes = [OK]
    r = fired(submitted(world, "+1777", "+15550009999", "answer"))
    assert world.itsp.sent[-1][0] == "api-2"
    m = row(world, r.message_id)
    assert (m.route, m.fallback) == ("itsp:api-2", ("itsp:api-1",))


def test_a_permanent_failure_moves_on_to_the_fallback_route(world):
    world.outbox.router = Router(world.interfaces, RouteSettings(
        rules=(RouteRule("nordic", ("+46",), ("sim1", "api-2")),)))
    world.sim.outcomes = [Outcome.failed("SIM refused: barred destination", permanent=True)]
    world.itsp.outcomes = [OK]
    d = submitted(world, "+46709999999", "+1666", "hej")
    world.clock.advance(5)
    r = fired(d)
    assert r.status == "SENT", r
    m = row(world, r.message_id)
    assert world.sim.sent == ["hej"]
    assert world.itsp.sent == [("api-2", "+46709999999", "+1666", "hej")]
    assert (m.status, m.route, m.fallback, m.attempts) == ("sent", "itsp:api-2", (), 1)
    tries = fired(world.store.reader.attempts(m.id))
    assert [(ok, detail) for _, ok, detail in tries] == [
        (0, "SIM refused: barred destination"), (1, "200 OK")]


def test_a_down_route_pauses_without_spending_attempts_and_resumes(world):
    world.dispatcher.set_down("goip:sim1", "bind lost")
    d = submitted(world, "+4670", "+1666", "wait for me", "sim1")
    world.clock.advance(5)
    r = fired(d)
    assert r.status == "QUEUED"
    for _ in range(12):  # an hour while the SIM is down
        world.clock.advance(300)
    assert world.sim.sent == []
    m = row(world, r.message_id)
    assert (m.status, m.attempts) == ("queued", 0)
    world.dispatcher.set_down("goip:sim1", None)
    world.clock.advance(0)
    assert world.sim.sent == ["wait for me"]
    m = row(world, r.message_id)
    assert (m.status, m.attempts) == ("sent", 1)


def test_a_down_route_hands_messages_with_a_fallback_to_it(world):
    world.dispatcher.set_down("goip:sim1", "bind lost")
    world.outbox.router = Router(world.interfaces, RouteSettings(
        rules=(RouteRule("nordic", ("+46",), ("sim1", "api-1")),)))
    world.itsp.outcomes = [OK]
    r = fired(submitted(world, "+46709999999", "+1666", "via the fallback"))
    world.clock.advance(0)
    m = row(world, r.message_id)
    assert (m.status, m.route, m.attempts) == ("sent", "itsp:api-1", 1)
    # No attempt was spent on the route that was down.
    assert [(ok, d) for _, ok, d in fired(world.store.reader.attempts(m.id))] == [(1, "200 OK")]
    assert world.sim.sent == []


def test_a_down_route_fails_what_waited_longer_than_max_age(world):
    world.dispatcher.set_down("goip:sim1", "phone silent")
    r = fired(world.outbox.submit("+4670", "+1666", "too late", "sim1", wait=0))
    world.clock.advance(POLICY.max_age + 3600)
    m = row(world, r.message_id)
    assert m.status == "failed" and "down since" in m.reason and "phone silent" in m.reason
    assert world.sim.sent == []


def test_an_outcome_saying_down_pauses_the_route_and_a_probe_retries(world):
    world.sim.outcomes = [Outcome.route_down("not bound")]
    r = fired(world.outbox.submit("+4670", "+1666", "first", "sim1", wait=0))
    world.clock.advance(0)
    assert world.dispatcher.is_down("goip:sim1") == "not bound"
    m = row(world, r.message_id)
    assert (m.status, m.attempts) == ("queued", 0) and "down" in m.reason
    world.clock.advance(POLICY.base)  # the probe: one try again
    world.clock.advance(5)
    assert world.sim.sent == ["first", "first"]
    assert row(world, r.message_id).status == "sent"
    assert world.dispatcher.is_down("goip:sim1") is None


def test_minimum_interval_between_sends_of_a_route(world):
    for i in range(3):
        world.outbox.submit("+4670", "+1666", f"m{i}", "sim1", wait=0)
    world.clock.advance(0)
    assert world.sim.sent == ["m0"]
    world.clock.advance(4.9)
    assert world.sim.sent == ["m0"]
    world.clock.advance(0.1)
    assert world.sim.sent == ["m0", "m1"]
    world.clock.advance(5)
    assert world.sim.sent == ["m0", "m1", "m2"]


def test_a_polled_route_takes_and_records(world):
    world.dispatcher.add_polled_route("smssync:phone1")
    m = Message(OUT, "smssync:phone1", "+4670", "+1666", "for the phone", source="api")
    fired(world.store.add([m]))
    world.clock.advance(10)
    assert row(world, m.id).status == "queued"  # nobody pushes it
    taken = fired(world.dispatcher.take("smssync:phone1"))
    assert [t.id for t in taken] == [m.id]
    assert row(world, m.id).status == "sending"
    assert fired(world.dispatcher.take("smssync:phone1")) == []  # offered once
    fired(world.dispatcher.record(taken[0], Outcome.sent("the phone took it")))
    assert (row(world, m.id).status, row(world, m.id).attempts) == ("sent", 1)


def test_sends_are_measured_per_route(world):
    world.itsp.outcomes = [OK, DOWN]
    fired(submitted(world, "+1555", "+1666", "a", "api-1"))
    fired(submitted(world, "+1555", "+1666", "b", "api-2"))
    routes = world.dispatcher.metrics.routes
    assert routes["itsp:api-1"].state == "ok" and routes["itsp:api-2"].state == "failing"
    assert routes["itsp:api-2"].last_reason == "connection refused"
    assert world.dispatcher.metrics.send_seconds.count("itsp:api-1") == 1


# -- senders as Asterisk gives them: SIP addresses ------------------------------------------


@pytest.mark.parametrize("sender, number, source", [
    ('"John" <sip:john.doe@192.0.2.10>', "+12025550160", "agi:john.doe"),
    ("Smith, Alice <sip:alice@127.0.0.1>", "+12025550183", "agi:alice"),
    ("<sip:+15551230000@192.0.2.10:5060;transport=udp>", "+15551230000", "agi"),
    ('"Desk" <sip:12025550199@pbx>', "12025550199", "agi:12025550199"),
    ("+15557654321", "+15557654321", "agi"),
])
def test_sip_senders_are_sent_from_their_number(world, sender, number, source):
    world.outbox.phone_numbers = {"john.doe": "+12025550160", "alice": "+12025550183"}
    world.itsp.outcomes = [OK]
    r = fired(submitted(world, "+1555", sender, "hi", "api-1"))
    assert r.status == "SENT", r
    assert world.itsp.sent == [("api-1", "+1555", number, "hi")]
    assert row(world, r.message_id).source == source


@pytest.mark.parametrize("sender", ['"Alice" <sip:alice@127.0.0.1>', "<sip:201@pbx>"])
def test_a_phone_without_a_number_fails_with_how_to_fix_it(world, sender):
    r = fired(submitted(world, "+1555", sender, "hi"))
    assert r.status == "FAILED" and r.message_id is None
    assert "is a phone of the PBX, not a number" in r.reason
    assert "[phones]" in r.reason and "Set(MESSAGE(from)" in r.reason
    assert world.itsp.sent == []
