"""The two sinks of the core: messages to Asterisk (call files) and to an ITSP (HTTP).

Each sink takes the messages the dispatcher found due, hands them on, and records the
outcome in the store: what was tried, what came of it, when to try again.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.dispatch import Dispatcher, RetryPolicy
from websmsd.message import FAILED, QUEUED, SENDING, SENT, Message, UnsafeValue

log = Logger()


def _in_thread(reactor: Any) -> Callable[..., defer.Deferred]:
    from twisted.internet.threads import deferToThreadPool

    def run(fn: Callable, *args: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    return run


MAX_POLL = 10.0  # seconds between looks at a call-file part Asterisk has not taken


class CallFileSink:
    """Hands inbound messages to Asterisk as call files, crash-safely.

    Per part of a message (long texts are split so that no call-file line exceeds what
    Asterisk reads): write it to staging and fsync; commit status "sending"; rename it
    into outgoing and fsync the directory; commit the progress.  After a crash, a message
    left "sending" has its part either still in staging (rename it now) or not (the
    rename happened; Asterisk may even have run it already): never lost, never twice.
    Parts go one at a time: Asterisk runs the files of one drop in no particular order,
    so part n+1 is handed over only once Asterisk has taken part n from the spool.
    """

    def __init__(self, store: Any, dispatcher: Dispatcher, spool: Any, astqueue: Any,
                 policy: RetryPolicy, reactor: Any, poll: float = 0.5,
                 run_in_thread: Optional[Callable[..., defer.Deferred]] = None):
        from websmsd.asterisk import callfile

        self._callfile = callfile
        self.store = store
        self.dispatcher = dispatcher
        self.spool = spool
        self.astqueue = astqueue
        self.policy = policy
        self.reactor = reactor
        self.poll = poll
        self._thread = run_in_thread or _in_thread(reactor)
        self.handed_over = 0  # call files published, for metrics
        self.last_error: Optional[str] = None

    def _parts(self, m: Message) -> List[str]:
        return self._callfile.split_body(self.astqueue, m.recipient, m.sender, m.body)

    def _prepare(self, messages: List[Message]) -> Tuple[list, list, list, list, list]:
        """Sort messages by what to do with them and render the call files to write.

        Runs in a worker thread: rendering and the spool's stat calls stay off the
        reactor, which has webhooks to answer.
        """
        cf = self._callfile
        ready, waiting, restage, already, broken = [], [], [], [], []
        for m in messages:
            try:
                parts = self._parts(m)
                name = cf.callfile_name(m.id, m.progress)
                if m.status == SENDING or m.progress >= len(parts):
                    # Left "sending" by a crash (or the config changed under a message
                    # that was done): its part is either still staged, or handed over.
                    item = (m, name, len(parts))
                    (restage if self.spool.is_staged(name) else already).append(item)
                    continue
                if m.progress and self.spool.is_pending(cf.callfile_name(m.id, m.progress - 1)):
                    waiting.append(m)  # Asterisk has not taken the previous part yet
                    continue
                content = cf.render(self.astqueue, m.recipient, m.sender, parts[m.progress])
            except (UnsafeValue, ValueError) as e:
                broken.append((m, str(e)))
                continue
            ready.append((m, name, content, len(parts)))
        return ready, waiting, restage, already, broken

    @defer.inlineCallbacks
    def __call__(self, messages: List[Message]) -> Any:
        now = self.reactor.seconds()
        ready: list = []
        handing_over = False  # "sending" committed: their files must not be staged again
        try:
            ready, waiting, restage, already, broken = yield self._thread(self._prepare, messages)
            changes: List[tuple] = []
            attempts: List[tuple] = []
            for m, reason in broken:
                changes.append((m.id, {"status": FAILED, "reason": reason}))
                attempts.append((m.id, False, reason))
                log.error("call file for {id} refused: {reason}", id=m.id, reason=reason)
            for m in waiting:
                # Look again soon, then less and less often (twice the last wait, up to
                # MAX_POLL): an Asterisk that is down must not cost a write every poll.
                last_wait = max(m.next_attempt - m.updated, self.poll)
                changes.append((m.id, {"next_attempt": now + min(2 * last_wait, MAX_POLL)}))
            if ready:
                yield self._thread(self.spool.stage, [(n, c) for _, n, c, _ in ready])
                for m, name, _, _ in ready:
                    changes.append((m.id, {"status": SENDING}))
            if changes:
                yield self.store.update(changes, attempts)
                handing_over = bool(ready)
            publish = [(m, n, parts) for m, n, _, parts in ready] + restage
            if publish:
                yield self._thread(self.spool.publish, [n for _, n, _ in publish])
        except Exception as e:
            # The spool could not be written (permissions, disk full...): keep every
            # message queued and try again later; never give up on an inbound message
            # for a local fault.
            reason = f"spool: {e}"
            self.last_error = reason
            log.error("call files not written, will retry: {reason}", reason=reason)
            now = self.reactor.seconds()
            failed = [item[0] for item in ready] if ready else messages
            retry = []
            for m in failed:
                fields = self.policy.after_failure(m, m.attempts + 1, reason, False, now,
                                                   may_give_up=False)
                if handing_over:
                    # Some files may be in outgoing already: leave the message "sending",
                    # so that the next round publishes what is still staged and counts
                    # the rest as handed over, instead of writing it again.
                    del fields["status"]
                retry.append((m.id, fields))
            if retry:
                yield self.store.update(retry, [(i, False, reason) for i, _ in retry])
            return
        self.last_error = None
        done_changes = []
        for m, name, parts in list(publish) + list(already):
            progress = m.progress + 1
            if progress >= parts:
                fields = {"status": SENT, "progress": parts, "reason": None,
                          "attempts": m.attempts + 1}
            else:
                fields = {"status": QUEUED, "progress": progress,
                          "next_attempt": now + self.poll}
            done_changes.append((m.id, fields))
        if done_changes:
            yield self.store.update(done_changes)
            self.handed_over += len(publish)
            for m_id, fields in done_changes:
                self.dispatcher.attempted(m_id, fields["status"], None)


class ITSPSink:
    """Sends outbound messages through an ITSP's HTTP API, with retries."""

    def __init__(self, store: Any, dispatcher: Dispatcher, client: Any, outbound: Any,
                 policy: RetryPolicy, reactor: Any, concurrency: int = 8):
        self.store = store
        self.dispatcher = dispatcher
        self.client = client
        self.outbound = outbound
        self.policy = policy
        self.reactor = reactor
        self.concurrency = concurrency
        self._slots = defer.DeferredSemaphore(concurrency)

    def deliver_one(self, m: Message) -> defer.Deferred:
        """Send one message when one of `concurrency` slots is free."""
        return self._slots.run(self._send, m)

    def __call__(self, messages: List[Message]) -> defer.Deferred:
        return defer.DeferredList([self.deliver_one(m) for m in messages])

    @defer.inlineCallbacks
    def _send(self, m: Message) -> Any:
        iface = self.outbound.select(m.interface) if m.interface else self.outbound.select("")
        attempts = m.attempts + 1
        if iface is None or (m.interface and iface.name != m.interface):
            reason = f"no [websms] interface named {m.interface!r}"
            yield self._record(m, {"status": FAILED, "reason": reason, "attempts": attempts},
                               False, reason)
            return
        claimed = yield self.store.claim(m.id, attempts)
        if not claimed:  # cancelled by the owner since it was found due
            return
        outcome = yield self.client.send(iface, m.recipient, m.sender, m.body)
        now = self.reactor.seconds()
        if outcome.ok:
            fields = {"status": SENT, "reason": None, "attempts": attempts}
            if outcome.provider_id:
                fields["provider_id"] = outcome.provider_id
        else:
            fields = self.policy.after_failure(m, attempts, outcome.reason,
                                               outcome.permanent, now)
            log.warn("send {id} via {iface!r} failed ({status}): {reason}", id=m.id,
                     iface=iface.name, status=fields["status"], reason=outcome.reason)
        yield self._record(m, fields, outcome.ok, outcome.reason)

    def _record(self, m: Message, fields: dict, ok: bool, detail: str) -> defer.Deferred:
        d = self.store.update([(m.id, fields)], [(m.id, ok, detail)])
        d.addCallback(lambda _: self.dispatcher.attempted(m.id, fields["status"],
                                                          fields.get("reason")))
        return d
