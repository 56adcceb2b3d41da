"""The call-file channel: inbound messages handed to Asterisk as call files (route
`callfile`), crash-safely.

Per part of a message (long texts are split so that no call-file line exceeds what
Asterisk reads): write it to staging and fsync; claim the message ("sending"); rename the
file into outgoing and fsync the directory; the dispatcher records the progress.  After a
crash, a message left "sending" has its part either still in staging (rename it now) or
not (the rename happened; Asterisk may even have run it already): never lost, never
twice.  Parts go one at a time: Asterisk runs the files of one drop in no particular
order, so part n+1 is handed over only once Asterisk has taken part n from the spool.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from websmsd.asterisk import callfile as cf
from websmsd.channel import ChannelState, Outcome
from websmsd.message import SENDING, Message, UnsafeValue
from websmsd.metrics import Metrics

log = Logger()

ROUTE = "callfile"
COUNTER = "callfiles"  # websmsd_callfiles_total{event="handed_over"}
MAX_POLL = 10.0  # seconds between looks at a call-file part Asterisk has not taken


def _in_thread(reactor: Any) -> Callable[..., defer.Deferred]:
    from twisted.internet.threads import deferToThreadPool

    def run(fn: Callable, *args: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    return run


class CallFileChannel:
    """A BatchSink (websmsd.channel) writing call files into Asterisk's spool."""

    def __init__(self, spool: Any, astqueue: Any, reactor: Any, poll: float = 0.5,
                 run_in_thread: Optional[Callable[..., defer.Deferred]] = None,
                 since: Optional[float] = None, metrics: Optional[Metrics] = None):
        self.spool = spool
        self.astqueue = astqueue
        self.reactor = reactor
        self.poll = poll
        self._thread = run_in_thread or _in_thread(reactor)
        self.metrics = metrics if metrics is not None else Metrics()
        self.last_error: Optional[str] = None
        self.problems: List[str] = []  # what the last look found (missing dirs...)
        self._state: Tuple[Optional[str], Optional[float]] = (None, since)

    @property
    def handed_over(self) -> int:
        """Call files renamed into the spool since start."""
        return self.metrics.counter(COUNTER)["handed_over"]

    @handed_over.setter
    def handed_over(self, n: int) -> None:
        self.metrics.counter(COUNTER)["handed_over"] = n

    def _parts(self, m: Message) -> List[str]:
        return cf.split_body(self.astqueue, m.recipient, m.sender, m.body)

    def _prepare(self, messages: Sequence[Message]) -> Tuple[list, list, list, list, list]:
        """Sort messages by what to do with them and render the call files to write.

        Runs in a worker thread: rendering and the spool's stat calls stay off the
        reactor, which has webhooks to answer.
        """
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

    def send_batch(self, messages: List[Message], claim: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._send_batch(messages, claim))

    async def _send_batch(self, messages: List[Message], claim: Any) -> List[Outcome]:
        outcomes = {}
        claimed: set = set()
        try:
            ready, waiting, restage, already, broken = await self._thread(self._prepare, messages)
            for m, reason in broken:
                log.error("call file for {id} refused: {reason}", id=m.id, reason=reason)
                outcomes[m.id] = Outcome.failed(reason, permanent=True)
            for m in waiting:
                # Look again soon, then less and less often (twice the last wait, up to
                # MAX_POLL): an Asterisk that is down must not cost a write every poll.
                last_wait = max(m.next_attempt - m.updated, self.poll)
                outcomes[m.id] = Outcome.later(min(2 * last_wait, MAX_POLL))
            if ready:
                await self._thread(self.spool.stage, [(n, c) for _, n, c, _ in ready])
                claimed = set(await claim([m for m, _, _, _ in ready]))
                dropped = [n for m, n, _, _ in ready if m.id not in claimed]
                if dropped:  # cancelled meanwhile: never hand them over
                    await self._thread(self.spool.discard, dropped)
            publish = [(m, n, parts) for m, n, _, parts in ready if m.id in claimed] + restage
            if publish:
                await self._thread(self.spool.publish, [n for _, n, _ in publish])
        except Exception as e:
            # The spool could not be written (permissions, disk full...): keep every
            # message and try again later; never give up on an inbound message for a
            # local fault.  A message claimed (or left "sending") stays "sending": the
            # next round publishes what is still staged and counts the rest as handed
            # over, instead of writing it again.
            reason = f"spool: {e}"
            self.last_error = reason
            log.error("call files not written, will retry: {reason}", reason=reason)
            sending = claimed | {m.id for m in messages if m.status == SENDING}
            return [outcomes.get(m.id) or Outcome.failed(reason, give_up=False,
                                                          resume=m.id in sending)
                    for m in messages]
        self.last_error = None
        for m, name, parts in list(publish) + list(already):
            progress = m.progress + 1
            if progress >= parts:
                outcomes[m.id] = Outcome.sent(progress=parts)
            else:
                outcomes[m.id] = Outcome.later(self.poll, progress=progress)
        self.metrics.count(COUNTER, "handed_over", len(publish))
        # What was neither ready nor anything else was cancelled before its claim.
        return [outcomes.get(m.id) or Outcome.later(0.0) for m in messages]

    # -- the status page -----------------------------------------------------------------

    def _look(self) -> Tuple[List[str], Optional[int]]:
        # As the first call file would, create missing spool directories: what remains
        # is a real problem.
        problems = self.spool.check(create=True)
        try:
            waiting: Optional[int] = len(self.spool.pending())
        except OSError:
            waiting = None
        return problems, waiting

    def status(self) -> defer.Deferred:
        d = self._thread(self._look)
        return d.addCallback(self._noted).addCallback(self._row)

    def check(self) -> defer.Deferred:
        """Look at the spool now (at start: not when the first message arrives), and log
        what is wrong, each with its fix; the status page shows the same."""
        d = self._thread(self._look).addCallback(self._noted)
        return d.addErrback(lambda f: log.failure("call-file spool: the check failed", f))

    def _noted(self, result: Tuple[List[str], Optional[int]]) -> Tuple[List[str], Optional[int]]:
        problems = result[0]
        for problem in problems:
            if problem not in self.problems:
                log.warn("call-file spool: {problem}; inbound messages wait in the store"
                         " until this is fixed", problem=problem)
        if self.problems and not problems:
            log.info("call-file spool: fixed ({outgoingdir})", outgoingdir=self.spool.outgoingdir)
        self.problems = list(problems)
        return result

    def _row(self, result: Tuple[List[str], Optional[int]]) -> ChannelState:
        problems, waiting = result
        state = "error" if (problems or self.last_error) else "ok"
        old, since = self._state
        if state != old:
            if old is not None:
                since = self.reactor.seconds()
            self._state = (state, since)
        n = self.handed_over
        bits = [f"{n} call file{'' if n == 1 else 's'} handed over since start"]
        if waiting:
            bits.append(f"{waiting} not yet taken by Asterisk")
        if self.last_error:
            bits.append(f"last error: {self.last_error}")
        bits.extend(problems)
        return ChannelState(
            self.spool.outgoingdir, state, self._state[1], "; ".join(bits), "spool",
            {"route": ROUTE, "handed_over": self.handed_over, "last_error": self.last_error,
             "problems": problems, "waiting": waiting,
             "outgoingdir": self.spool.outgoingdir, "stagingdir": self.spool.stagingdir})
