"""The monitor: the only poller. ONE round trip per cycle for every outstanding job.

Each cycle runs :func:`clustrix.monitor.poll_script` (the scheduler's status of all jobs, the
exit files, the result files, and deletion of consumed files) as one command, then hands what
it saw to the :class:`~._collect.Collector`. While the cluster cannot be reached, polls back
off and the futures wait up to ``connection_grace_s``; after that they fail, and the jobs'
submissions stay in the registry for a later ``recover()``.

Over a costly transport, a pause between two cycles of :data:`~clustrix.monitor.
WAIT_THERE_MIN_S` or more is spent on the cluster, not here: the cycle's command waits there
for news (a new exit, claim or result file) and answers as soon as there is some. A
submission or a ``future.logs()`` that comes meanwhile cuts that wait short (the command is
killed and the cycle starts again with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import time
from typing import Any

from .. import _wire
from ..errors import TransportError
from ..lifecycle import JobState
from ..monitor import (
    NEWS_MARK,
    WAIT_THERE_MIN_S,
    PollBudget,
    PollOutput,
    parse_poll_output,
    poll_delay,
    poll_script,
    wait_steps,
)
from ..transports.base import CommandResult
from ._collect import Collector, Ended
from ._core import Core, log
from ._model import Batch, Call, Task, claim_path

__all__ = ["BUNDLE_KIB", "MAX_DELETE", "Monitor"]

#: At most this many consumed files are deleted (or moved) by one poll command.
MAX_DELETE = 1000
#: Result files smaller than this (KiB) come back with the poll over a costly transport.
BUNDLE_KIB = 512


class Monitor:
    """Polls all outstanding jobs, one command per cycle and one cycle at a time: back to
    back for the first seconds after a submission, then with backoff
    (:func:`~clustrix.monitor.poll_delay`); where the scheduler is shared, a cycle asks it
    only as often as the budget allows (:class:`~clustrix.monitor.PollBudget`)."""

    def __init__(self, core: Core, collector: Collector) -> None:
        self.core = core
        self.collector = collector
        self.lost_since: tuple[float, str] | None = None  # polls failing since (mono, wall)
        self.budget = (
            PollBudget(core.config.poll_rate_max_per_s) if core.scheduler.status_is_shared else None
        )
        #: Cycles wait on the cluster for news (see the module): where round trips cost.
        self.waits_there = core.transport.round_trips_are_costly
        self._marker_name = f".poll-{secrets.token_hex(6)}"
        #: A cycle waited there (and touched the marker): it is to be removed at the end.
        self.marked = False

    @property
    def news_marker(self) -> str | None:
        """The file a cycle that waits there touches when it looks (:func:`poll_script`),
        in the jobs root; None where cycles do not wait there."""
        return f"{self.core.jobs_root}/{self._marker_name}" if self.waits_there else None

    async def loop(self) -> None:
        """Poll while anything is outstanding; sleep until woken otherwise."""
        core = self.core
        wait_s = 0.0  # of the next cycle, on the cluster
        while True:
            if not core.batches:
                await core.wake_monitor.wait()
                core.wake_monitor.clear()
                wait_s = 0.0
                continue
            started = time.monotonic()
            # Every cycle lists the job dirs (results come as soon as they are there); the
            # scheduler is asked only as often as the budget allows.
            ask_status = self.budget is None or self.budget.take(started)
            if core.tails:
                wait_s = 0.0  # future.logs() waits for this cycle: no pause before it
            try:
                await self.poll_once(ask_status=ask_status, wait_s=wait_s)
                self.lost_since = None
                for listener in list(core.poll_listeners):
                    try:
                        listener()
                    except Exception:  # a display must never stop the monitor
                        log.exception("clustrix: poll listener failed")
            except (TransportError, OSError) as exc:
                # The connection may come back (the transport reconnects on the next call);
                # futures keep waiting, up to the grace period.
                self._connection_trouble(exc)
            except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
                core.break_(exc)
                return
            newest = max((b.submitted_at for b in core.batches), default=time.monotonic())
            delay = poll_delay(
                time.monotonic() - newest,
                core.config.poll_interval_min_s,
                core.config.poll_interval_max_s,
                last_poll_s=time.monotonic() - started,
            )
            wait_s = 0.0
            if self.lost_since is not None:
                delay = max(delay, self._reconnect_delay())
            elif self.waits_there and delay >= WAIT_THERE_MIN_S:
                # spent on the cluster by the next cycle; its command must not time out
                wait_s, delay = min(delay, core.config.command_timeout_s / 2), 0.0
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):  # woken early by a submission
                    await asyncio.wait_for(core.wake_monitor.wait(), delay)
            else:
                await asyncio.sleep(0)  # let the loop's other work in between two polls
            core.wake_monitor.clear()

    def _reconnect_delay(self) -> float:
        """Back off while the cluster cannot be reached: 1, 2, 4 ... 30 s since the loss,
        but often enough that the grace period ends on time."""
        assert self.lost_since is not None
        lost_for_s = time.monotonic() - self.lost_since[0]
        backoff_s = min(30.0, max(1.0, lost_for_s))  # doubles the wait with each retry
        return min(backoff_s, max(1.0, self.core.config.connection_grace_s / 4))

    def _connection_trouble(self, exc: BaseException) -> None:
        core = self.core
        now = time.monotonic()
        if self.lost_since is None:
            self.lost_since = (now, time.strftime("%Y-%m-%d %H:%M:%S"))
            log.warning("clustrix: lost touch with %s, retrying: %s", core.transport.location, exc)
        started, wall = self.lost_since
        grace_s = core.config.connection_grace_s
        if now - started < grace_s:
            return
        # Only submitted jobs: a submission in flight has its own grace period (Sender).
        submitted = [b for b in core.batches if all(t.job_id for t in b.tasks)]
        job_ids = sorted({t.job_id for b in submitted for t in b.tasks if t.job_id})
        error = TransportError(
            f"connection to {core.transport.location} lost since {wall} "
            f"({now - started:.0f} s, longer than connection_grace_s={grace_s:g}): {exc}. "
            f"The jobs may still run on the cluster: {', '.join(job_ids[:20])}"
            f"{' ...' if len(job_ids) > 20 else ''}"
        )
        for batch in submitted:
            batch.abandoned = True  # a later process can still recover() it
            for task in batch.tasks:
                if task.finished:
                    continue
                for call in task.open_calls():
                    core.resolve(call, None, error)
                task.set_state(JobState.LOST, task.native)
        self.collector.retire_batches()
        self.lost_since = None

    async def poll_once(self, *, ask_status: bool = True, wait_s: float = 0.0) -> bool:
        """One status round trip for every outstanding job; True if anything changed.

        Without ``ask_status`` the cycle does not ask the scheduler: it collects the results
        and claims that are there, finishes the jobs that ended with all their results, and
        decides nothing else (any other ending is left to a cycle that asked: a job is never
        taken for gone for want of asking). With ``wait_s`` its command first waits that
        long on the cluster for news; a wake of the monitor meanwhile cuts it short (then
        nothing was seen: False).
        """
        core = self.core
        scheduler = core.scheduler
        batches = list(core.batches)
        tasks = [t for b in batches for t in b.tasks if not t.finished and t.job_id]
        if not tasks:
            return False
        job_ids = [t.job_id for t in tasks if t.job_id]
        status_argv = scheduler.status_argv(job_ids) if ask_status else None
        consumed, core.consumed = core.consumed[:MAX_DELETE], core.consumed[MAX_DELETE:]
        fetched, core.fetched = core.fetched[:MAX_DELETE], core.fetched[MAX_DELETE:]
        tails, core.tails = core.tails, {}  # future.logs() asked: in this round trip
        script = poll_script(
            status_argv,
            [b.job_dir for b in batches],
            core.jobs_root,
            consumed,
            fetched=fetched,
            # over a slow link the small results come with the listing: no read per result
            bundle_kib=BUNDLE_KIB if core.transport.round_trips_are_costly else 0,
            tails=list(tails),
            wait_steps_s=wait_steps(wait_s),
            news_marker=self.news_marker,
        )
        # stats: commands.<status program> for a cycle that asked, commands.poll otherwise
        counts_as = posixpath.basename(status_argv[0]) if status_argv else "poll"

        async def cycle() -> CommandResult:
            # counted in the command's first step, both at once: stats() sees either none
            # or both, also of a command cut short before it started
            core.stats["poll_cycles"] += 1
            return await core.run(["sh", "-c", script], counts_as=counts_as)

        if wait_s > 0:
            core.wake_monitor.clear()  # what woke it until now is in this script
        self.marked = self.marked or (wait_s > 0 and self.news_marker is not None)
        command = asyncio.ensure_future(cycle())
        try:
            if wait_s > 0 and not await _first_or_woken(command, core.wake_monitor):
                # woken while it waits there: start again with what woke it; what this one
                # was to delete, move or read goes to the next
                core.consumed[:0], core.fetched[:0] = consumed, fetched
                core.tails = {**tails, **core.tails}
                core.stats["poll_waits_cut_short"] += 1
                return False
            result = await command
        except BaseException as exc:
            command.cancel()
            _answer(tails, [], exc)
            raise
        if wait_s > 0 and NEWS_MARK in result.stderr:
            core.stats["poll_waits_news"] += 1  # went on before its pause was over
        seen = parse_poll_output(result.stdout)
        _answer(tails, seen.tails, None)
        changed, new = await self._collect(batches, seen)
        # a result that is there but could not be read yet is not a missing result
        unread = {c.task for c in new if not c.resolved and c.task is not None}
        if not status_argv:
            return self._finish_done(tasks, seen, unread) or changed
        status_ok = seen.status_ok or scheduler.status_ok_anyway(seen.status_text)
        statuses = scheduler.parse_status(seen.status_text) if status_ok else {}
        if not status_ok:
            log.warning("clustrix: scheduler status failed: %s", seen.status_text.strip()[-500:])

        ended: list[Ended] = []
        for task in tasks:
            assert task.batch is not None and task.job_id is not None
            status = statuses.get(task.job_id)
            exit_code = _exit_code(seen, task)
            state = scheduler.lifecycle(status.state) if status is not None else None
            if status is not None and state is not None and status.state != task.native:
                # A final word waits for the outcome to be collected (finalize): until then
                # the job is, to clustrix, where it was; its native word shows at once.
                task.set_state(task.state if state.is_final else state, status.state)
                changed = True
            if state is JobState.RUNNING:
                for call in task.open_calls():
                    assert call.future is not None
                    call.future._mark_running()
            gone = status_ok and (status is None or (state is not None and state.is_final))
            if state in (JobState.QUEUED, JobState.REQUEUED):
                # requeued (preempted, node failure): an exit status is from the run before
                exit_code, task.grace_used = None, False
            if (exit_code is None and not gone) or task in unread:
                continue
            if not task.open_calls():
                self.collector.finalize(task, status, exit_code)
                changed = True
            elif not task.grace_used:
                # Results on a shared filesystem may show up a moment after the job ends.
                task.grace_used = True
            else:
                ended.append((task, status, exit_code))
        if ended:
            changed = True
            await self.collector.fail_ended(ended)
        for batch in batches:
            if batch.pool is not None and not batch.unfinished() and batch.pool.unclaimed():
                self.collector.fail_unclaimed(batch)
                changed = True
        self.collector.retire_batches()
        return changed

    def _finish_done(self, tasks: list[Task], seen: PollOutput, unread: set[Task]) -> bool:
        """In a cycle that did not ask the scheduler: finish the tasks whose exit file is
        there and whose every call has its result (their slots are free for the calls
        held back); any other ending waits for the scheduler's word."""
        changed = False
        for task in tasks:
            exit_code = _exit_code(seen, task)
            if exit_code is not None and task not in unread and not task.open_calls():
                self.collector.finalize(task, None, exit_code)
                changed = True
        if changed:
            self.collector.retire_batches()
        return changed

    async def _collect(self, batches: list[Batch], seen: PollOutput) -> tuple[bool, list[Call]]:
        """Take the claims and fetch the results this cycle saw: (anything changed, the
        calls whose result files were new)."""
        changed = self._see_claims(batches, seen.claims)
        new: list[Call] = [
            call
            for batch in batches
            for path, call in batch.paths.items()
            if not call.resolved and path in seen.result_paths
        ]
        if new:
            changed = True
            await self.collector.fetch_results(new, seen.result_data)
        return changed, new

    def _see_claims(self, batches: list[Batch], claims: dict[str, str]) -> bool:
        """Give each newly claimed call of a self-scheduled submission to the task that
        claimed it: it has started, under that task's job ID."""
        changed = False
        for batch in batches:
            if batch.pool is None:
                continue
            for call in batch.pool.unclaimed():
                owner = claims.get(claim_path(batch, call), "")
                if not owner.isdigit() or int(owner) >= len(batch.tasks):
                    continue  # not claimed yet (or by the client: cancelled)
                batch.assign(call, batch.tasks[int(owner)])
                assert call.future is not None
                call.future._mark_running()
                changed = True
        return changed


async def _first_or_woken(command: asyncio.Future[Any], woken: asyncio.Event) -> bool:
    """Wait for ``command`` or ``woken``, whichever first: True if the command ended; else it
    is cancelled (and waited for: its channel is given back before the next cycle)."""
    wake = asyncio.ensure_future(woken.wait())
    try:
        await asyncio.wait({command, wake}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wake.cancel()
    if command.done():
        return True
    command.cancel()
    with contextlib.suppress(asyncio.CancelledError, TransportError, OSError):
        await command
    return False


def _exit_code(seen: PollOutput, task: Task) -> int | None:
    """The exit status ``task``'s job script wrote, if this cycle saw it."""
    assert task.batch is not None
    return seen.exit_codes.get(f"{task.batch.job_dir}/{_wire.EXIT_DIR}/{task.index}")


def _answer(
    tails: dict[tuple[str, int], asyncio.Future[bytes]],
    data: list[bytes],
    error: BaseException | None,
) -> None:
    """Give each waiting ``future.logs()`` the tail this poll read (or its error)."""
    for i, waiter in enumerate(tails.values()):
        if waiter.done():  # its caller gave up waiting
            continue
        if isinstance(error, asyncio.CancelledError):
            waiter.cancel()
        elif error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(data[i] if i < len(data) else b"")
