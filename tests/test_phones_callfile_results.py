"""Call files with Archive: yes (issue #16, 5): the Status pbx_spool appends in
outgoing_done is read and recorded.  The test plays pbx_spool as Asterisk 22.10.1 does it
(remove_from_queue: rename into outgoing_done, then append `Status: ...`)."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, task

from conftest import fired
from websmsd.asterisk.callfile import CallFileSpool, archived_status, callfile_name
from websmsd.asterisk.spool import CallFileChannel
from websmsd.config import AstQueueSettings
from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.message import FAILED, IN, SENT, Message
from websmsd.store import Store

POLICY = RetryPolicy(base=30, max_delay=300, max_attempts=2, max_age=86400)


class World:
    def __init__(self, tmp_path, archive="yes"):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.store = Store(str(tmp_path / "s.sqlite3"), self.clock, run_inline=True)
        self.store.open()
        self.dispatcher = Dispatcher(self.store, self.clock, POLICY)
        spool = tmp_path / "spool"
        self.q = AstQueueSettings(outgoingdir=str(spool / "outgoing"),
                                  stagingdir=str(spool / "staging"), archive=archive)
        self.spool = CallFileSpool(self.q)
        self.spool.ensure_dirs()
        self.done = spool / "outgoing_done"
        self.done.mkdir()
        self.calls = CallFileChannel(self.spool, self.q, self.clock, poll=0.5,
                                     run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        self.calls.dispatcher = self.dispatcher
        self.dispatcher.add_batch_route("callfile", self.calls)
        self.dispatcher.startService()

    def inbound(self, body="hello", to="+12025550160"):
        m = Message(IN, "callfile", to, "+15551234567", body, source="webhook:tw")
        m.created = self.clock.seconds()
        fired(self.store.add([m]))
        self.run()
        return m

    def run(self, seconds=0.0):
        self.clock.advance(0)
        self.clock.advance(seconds)
        self.clock.advance(0)

    def pending(self):
        return sorted(os.listdir(self.q.outgoingdir))

    def asterisk(self, name, status, append=True):
        """pbx_spool archives a call file: moved first, Status appended after."""
        os.rename(os.path.join(self.q.outgoingdir, name), self.done / name)
        if append:
            self.append(name, status)

    def append(self, name, status):
        with open(self.done / name, "a") as f:
            f.write(f"StartRetry: 4242 1 (1800000000)\nStatus: {status}\n")

    def get(self, m):
        return fired(self.store.get(m.id))

    def attempts(self, m):
        return [(ok, detail) for _, ok, detail in fired(self.store.reader.attempts(m.id))]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.dispatcher.stopService()


def test_archived_status_parser():
    assert archived_status(b"Channel: Local/x@y\nStatus: Completed\n") == "Completed"
    assert archived_status(b"Channel: x\n") is None
    assert archived_status(b"Status: Expired\nStatus: \n") == "Expired"
    assert archived_status(b"x\nStatus: Fa\xffiled") == "Fa\ufffdiled"
    assert archived_status(b"\xff\xfeStatus: Completed") is None  # not at a line start
    assert archived_status(b"") is None


def test_completed_is_recorded_as_what_it_is(world):
    m = world.inbound()
    name = callfile_name(m.id, 0)
    assert world.pending() == [name]
    assert world.get(m).status == SENT  # handed over
    world.run(2)
    assert world.attempts(m) == []  # Asterisk has not taken it yet
    world.asterisk(name, "Completed")
    world.run(2)
    assert world.get(m).status == SENT
    assert world.attempts(m) == [(1, f"call file {name}: Asterisk says Completed (its dialplan"
                                     " ran; no proof that the phone got it)")]
    world.run(60)
    assert len(world.attempts(m)) == 1  # read once


def test_expired_is_handed_over_again_then_fails_with_that_reason(world):
    m = world.inbound()
    name = callfile_name(m.id, 0)
    world.asterisk(name, "Expired")
    world.run(1)
    got = world.get(m)
    reason = f"call file {name}: Asterisk says Expired"
    assert (got.status, got.attempts, got.reason, got.progress) == ("queued", 1, reason, 0)
    assert world.pending() == []
    world.run(30)  # the retry policy's delay
    assert world.pending() == [name]  # the same part again
    assert not (world.done / name).exists()  # the old result is no result of this try
    world.asterisk(name, "Expired")
    world.run(1)
    got = world.get(m)
    assert (got.status, got.attempts) == (FAILED, 2)
    assert got.reason == f"gave up after 2 attempts: {reason}"
    assert [ok for ok, _ in world.attempts(m)] == [0, 0]


def test_the_status_line_is_awaited_after_the_move(world):
    m = world.inbound()
    name = callfile_name(m.id, 0)
    world.asterisk(name, None, append=False)  # moved, Status not appended yet
    world.run(5)
    assert world.attempts(m) == [] and world.get(m).status == SENT
    world.append(name, "Failed")
    world.run(10)
    assert world.get(m).reason == f"call file {name}: Asterisk says Failed"


def test_a_file_gone_without_archive_is_left_as_sent(world):
    m = world.inbound()
    os.unlink(os.path.join(world.q.outgoingdir, callfile_name(m.id, 0)))
    world.run(5)
    assert world.get(m).status == SENT and world.attempts(m) == []
    assert world.calls._watch == {}


def test_the_next_part_of_a_long_text_waits_for_the_previous_ones_status(world):
    m = world.inbound("Длинное сообщение " * 40)  # five call files (percent-encoded)
    first = callfile_name(m.id, 0)
    assert world.pending() == [first]
    world.asterisk(first, "Expired")
    world.run(1)
    got = world.get(m)
    assert (got.status, got.progress, got.attempts) == ("queued", 0, 1)
    assert got.reason == f"call file {first} (part 1 of 5): Asterisk says Expired"
    world.run(30)
    assert world.pending() == [first]  # part 1 again, not part 2
    world.asterisk(first, "Completed")
    world.run(2)
    assert world.pending() == [callfile_name(m.id, 1)]


def test_without_archive_nothing_is_watched(tmp_path):
    w = World(tmp_path, archive="no")
    m = w.inbound()
    assert w.calls.results is False
    w.asterisk(callfile_name(m.id, 0), "Expired")
    w.run(30)
    assert w.get(m).status == SENT and w.attempts(m) == []
    w.dispatcher.stopService()


def test_after_a_restart_results_archived_meanwhile_are_read(tmp_path):
    w = World(tmp_path)
    m = w.inbound()
    w.dispatcher.stopService()
    w.calls.stop_watching()
    w.clock.advance(10)
    w.asterisk(callfile_name(m.id, 0), "Expired")  # while websmsd was down
    os.utime(w.done / callfile_name(m.id, 0), (w.clock.seconds(), w.clock.seconds()))
    again = CallFileChannel(w.spool, w.q, w.clock, poll=0.5,
                            run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    again.dispatcher = w.dispatcher
    fired(again.watch_recent(w.clock.seconds() - 3600))
    w.run(1)
    assert w.get(m).reason == f"call file {callfile_name(m.id, 0)}: Asterisk says Expired"
