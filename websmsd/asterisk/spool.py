"""The call-file channel: inbound messages handed to Asterisk as call files (route
`callfile`), crash-safely.

Per part of a message (long texts are split so that no call-file line exceeds what
Asterisk reads): write it to staging and fsync; claim the message ("sending"); rename the
file into outgoing and fsync the directory; the dispatcher records the progress.  After a
crash, a message left "sending" has its part either still in staging (rename it now) or
not (the rename happened; Asterisk may even have run it already): never lost, never
twice.  Parts go one at a time: Asterisk runs the files of one drop in no particular
order, so part n+1 is handed over only once Asterisk has taken part n from the spool.

With `Archive: yes`, pbx_spool moves each processed file into outgoing_done and appends
`Status: Completed` (or Expired, Failed), and this channel reads it: the next part of a
long text goes only after the one before Completed, and once the last part is archived
its Status is recorded.  Completed goes into the attempt log as what it is (the dialplan
ran; no proof that the phone got the message); a part that Expired (the Local channel's
extension does not exist, or it never answered) or Failed is handed over again by the
retry policy, and the message fails with that reason once the policy gives up.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from websmsd.asterisk import callfile as cf
from websmsd.channel import ChannelState, Outcome
from websmsd.message import SENDING, SENT, Message, UnsafeValue
from websmsd.metrics import Metrics

log = Logger()

ROUTE = "callfile"
COUNTER = "callfiles"  # websmsd_callfiles_total{event="handed_over"}
MAX_POLL = 10.0  # seconds between looks at a call-file part Asterisk has not taken


def _failed(name: str, part: int, parts: int, status: str) -> str:
    """Why a part did not reach the dialplan: Expired (the Local channel's extension does
    not exist, or it never answered within its retries) or Failed (Asterisk could not
    use the file).  Handed over again by the retry policy."""
    shown = status if status in cf.ARCHIVE_STATUSES else repr(status[:40])
    of = f" (part {part + 1} of {parts})" if parts > 1 else ""
    return f"call file {name}{of}: Asterisk says {shown}"


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
        # Archive: yes: a message is sent once Asterisk archived its last part with
        # Status: Completed; Expired or Failed hand the part over again (retry policy).
        self.results = bool(getattr(astqueue, "archives", False))
        self.dispatcher: Any = None  # records what the archive says (set by the wiring)
        self._watch: Dict[str, Tuple[str, int, int]] = {}  # name -> (id, part, parts)
        self._watch_timer: Any = None
        self._watch_wait = poll
        self._watch_running = False
        self.results_read = 0

    @property
    def handed_over(self) -> int:
        """Call files renamed into the spool since start."""
        return self.metrics.counter(COUNTER)["handed_over"]

    @handed_over.setter
    def handed_over(self, n: int) -> None:
        self.metrics.counter(COUNTER)["handed_over"] = n

    def _parts(self, m: Message) -> List[str]:
        return cf.split_body(self.astqueue, m.recipient, m.sender, m.body)

    def _prepare(self, messages: Sequence[Message]) -> Tuple[list, list, list, list, list, list]:
        """Sort messages by what to do with them and render the call files to write.

        Runs in a worker thread: rendering and the spool's stat calls stay off the
        reactor, which has webhooks to answer.
        """
        ready, waiting, restage, already, broken, judged = [], [], [], [], [], []
        for m in messages:
            try:
                parts = self._parts(m)
                name = cf.callfile_name(m.id, m.progress)
                if self.results and m.status != SENDING and m.progress:
                    verdict = self._result(m, len(parts))
                    if verdict is not None:
                        judged.append((m, verdict))
                        continue
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
        if self.results and ready:
            # A part handed over again: its earlier try's archive is no result of this one.
            self.spool.forget_archived([name for _, name, _, _ in ready])
        return ready, waiting, restage, already, broken, judged

    def _result(self, m: Message, parts: int) -> Optional[Outcome]:
        """With Archive: yes, what Asterisk made of the part handed over last (part
        m.progress - 1) before the next one goes: None to go on (Completed, or no
        archive to read), else the Outcome to record now."""
        part = m.progress - 1
        name = cf.callfile_name(m.id, part)
        last_wait = max(m.next_attempt - m.updated, self.poll)
        if self.spool.is_pending(name):
            return Outcome.later(min(2 * last_wait, MAX_POLL))
        status = self.spool.archived(name)
        if status == "":  # moved, its Status line about to be appended
            return Outcome.later(self.poll)
        if status is None or status == "Completed":
            return None
        return Outcome.failed(_failed(name, part, parts, status), progress=part)

    def send_batch(self, messages: List[Message], claim: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._send_batch(messages, claim))

    async def _send_batch(self, messages: List[Message], claim: Any) -> List[Outcome]:
        outcomes = {}
        claimed: set = set()
        try:
            ready, waiting, restage, already, broken, judged = await self._thread(
                self._prepare, messages)
            for m, outcome in judged:
                if not outcome.ok and outcome.retry_in is None:
                    log.warn("inbound {id}: {reason}", id=m.id, reason=outcome.reason)
                outcomes[m.id] = outcome
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
                if self.results and self.dispatcher is not None:
                    self._watch[name] = (m.id, m.progress, parts)
            else:
                outcomes[m.id] = Outcome.later(self.poll, progress=progress)
        if self.results and self._watch:
            self._look_soon()
        self.metrics.count(COUNTER, "handed_over", len(publish))
        # What was neither ready nor anything else was cancelled before its claim.
        return [outcomes.get(m.id) or Outcome.later(0.0) for m in messages]

    # -- Archive: yes: what Asterisk made of the last parts ------------------------------

    def _look_soon(self, reset: bool = True) -> None:
        if reset:
            self._watch_wait = self.poll
        if self._watch_timer is not None and self._watch_timer.active():
            if not reset:
                return
            self._watch_timer.cancel()
        self._watch_timer = self.reactor.callLater(self._watch_wait, self._look_at_archive)

    def _look_at_archive(self) -> None:
        self._watch_timer = None
        if self._watch_running or not self._watch:
            return
        self._watch_running = True
        d = self._thread(self._read_archive, dict(self._watch))
        d.addCallback(lambda found: defer.ensureDeferred(self._judge(found)))
        d.addErrback(lambda f: log.failure("call files: reading outgoing_done failed", f))

        def again(_: Any) -> None:
            self._watch_running = False
            if self._watch:
                self._watch_wait = min(self._watch_wait * 2, MAX_POLL)
                self._look_soon(reset=False)

        d.addBoth(again)

    def _read_archive(self, watched: Dict[str, Tuple[str, int, int]]) -> list:
        """(name, status) of each watched file Asterisk has finished with; status None
        when it is not archived (taken, result not known).  In a worker thread."""
        found = []
        for name in watched:
            if self.spool.is_pending(name):
                continue
            status = self.spool.archived(name)
            if status != "":
                found.append((name, status))
        return found

    async def _judge(self, found: list) -> None:
        for name, status in found:
            message_id, part, parts = self._watch.pop(name)
            self.results_read += 1
            if status is None:
                continue
            m = await self.dispatcher.store.get(message_id)
            if m is None or m.status != SENT:
                continue  # cancelled, requeued by the owner...
            await self._record_result(m, name, part, parts, status)

    async def _record_result(self, m: Message, name: str, part: int, parts: int,
                             status: str) -> None:
        of = f" (part {part + 1} of {parts})" if parts > 1 else ""
        if status == "Completed":
            # pbx_spool's Completed means the Local channel answered and the dialplan
            # ran, not that MessageSend reached a phone: recorded as that, still "sent".
            detail = (f"call file {name}{of}: Asterisk says Completed (its dialplan ran;"
                      " no proof that the phone got it)")
            await self.dispatcher.store.update([(m.id, {"reason": None})], [(m.id, True, detail)])
            return
        reason = _failed(name, part, parts, status)
        log.warn("inbound {id}: {reason}", id=m.id, reason=reason)
        # The hand-over was counted as an attempt when it was recorded sent; this is
        # how that same attempt ended.
        m.attempts = max(0, m.attempts - 1)
        await self.dispatcher.record(m, Outcome.failed(reason, progress=part))
        self.dispatcher.wake(ROUTE)

    def watch_recent(self, since: float) -> defer.Deferred:
        """After a restart: watch again the last parts of the messages sent since `since`
        whose result is not recorded yet (still in outgoing, or archived after their
        hand-over)."""
        return defer.ensureDeferred(self._watch_recent(since))

    async def _watch_recent(self, since: float) -> None:
        recent = await self.dispatcher.store.reader.recent(since, 10000)
        sent = [m for m in recent if m.route == ROUTE and m.status == SENT and m.progress]
        names = {cf.callfile_name(m.id, m.progress - 1): m for m in sent}

        def look() -> Dict[str, Tuple[str, int, int]]:
            out = {}
            for name, m in names.items():
                if self.spool.is_pending(name):
                    out[name] = (m.id, m.progress - 1, m.progress)
                    continue
                try:
                    mtime = os.stat(os.path.join(self.spool.donedir, name)).st_mtime
                except OSError:
                    continue
                if mtime >= m.updated:  # archived after its hand-over was recorded
                    out[name] = (m.id, m.progress - 1, m.progress)
            return out

        if names:
            self._watch.update(await self._thread(look))
        if self._watch:
            self._look_soon()

    def stop_watching(self) -> None:
        if self._watch_timer is not None and self._watch_timer.active():
            self._watch_timer.cancel()
        self._watch_timer = None

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


class ResultWatch(Service):
    """Archive: yes: reads what Asterisk made of the call files (a child of the daemon's
    service, after the store and the dispatcher).  At start it watches again the last
    parts handed over in the day before, whose result may not be recorded yet."""

    name = "call-file results"
    HORIZON = 86400.0

    def __init__(self, channel: CallFileChannel):
        self.channel = channel

    def startService(self) -> None:
        super().startService()
        since = self.channel.reactor.seconds() - self.HORIZON
        d = self.channel.watch_recent(since)
        d.addErrback(lambda f: log.failure("call files: finding results to read failed", f))

    def stopService(self) -> Any:
        super().stopService()
        self.channel.stop_watching()
