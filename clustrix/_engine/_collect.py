"""Collection: results fetched and verified, jobs that ended without them failed truthfully,
finished submissions retired and cleaned up.

A result record is unpickled only after its HMAC checks out (:func:`clustrix._wire.load_record`).
A job that ended without a result gets its final state from the scheduler's accounting (only
for those jobs, one command) and the tail of its stderr, and fails its calls with a
:class:`~clustrix.errors.JobFailedError`, or is resubmitted if the infrastructure lost it
(:mod:`._retry`).
"""

from __future__ import annotations

import asyncio
import pickle

from .. import _wire
from .._serialize import decode_result
from ..errors import JobFailedError, JobLostError, ResultAuthenticationError, TransportError
from ..lifecycle import JobState
from ..schedulers.base import TaskStatus
from ._core import Core, log
from ._jobdir import IO_CONCURRENCY
from ._model import Batch, Call, Task, result_path
from ._retry import resubmit, resubmit_pool

__all__ = ["FETCH_ROUND", "STDERR_TAIL_BYTES", "Collector", "Ended"]

#: At most this many results are fetched per round (bounds the memory of a huge map).
FETCH_ROUND = 512
#: How much of a failed job's stderr its error carries.
STDERR_TAIL_BYTES = 4000
#: At most this many poll cycles wait for the final state of a job whose exit file is there
#: while the scheduler still lists it as running (COMPLETING); then its calls fail with
#: the state it has.
UNSETTLED_POLLS = 5

#: A job that ended with calls still open: its task, its last status, its exit status.
Ended = tuple[Task, TaskStatus | None, int | None]


class Collector:
    """Turns what the monitor saw into outcomes of futures."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def final_status(self, status: TaskStatus | None) -> TaskStatus | None:
        """``status`` if it says the job has ended, else None."""
        if status is not None and self.core.scheduler.lifecycle(status.state).is_final:
            return status
        return None

    async def fetch_results(self, calls: list[Call], came_along: dict[str, bytes]) -> None:
        """Verify and deliver the results of ``calls``: those in ``came_along`` (sent with
        the poll) as they are, the others read from the cluster."""
        # In rounds: 10,000 results that show up at once must not mean 10,000 reads (and
        # their data) in flight together.
        for start in range(0, len(calls), FETCH_ROUND):
            await self._fetch_round(calls[start : start + FETCH_ROUND], came_along)

    async def _fetch_round(self, calls: list[Call], came_along: dict[str, bytes]) -> None:
        core = self.core
        limit = asyncio.Semaphore(IO_CONCURRENCY)

        async def fetch(call: Call) -> bytes:
            assert call.batch is not None
            path = result_path(call.batch, call)
            data = came_along.get(path)
            if data is not None:
                return data
            async with limit:
                return await core.transport.read_bytes(path)

        datas = await asyncio.gather(*(fetch(c) for c in calls), return_exceptions=True)
        for call, data in zip(calls, datas, strict=True):
            if call.resolved:
                continue  # cancelled or killed meanwhile
            if isinstance(data, BaseException):
                log.warning("clustrix: cannot read a result yet, will retry: %s", data)
                continue
            assert call.batch is not None
            try:
                record = _wire.load_record(call.batch.secret, data)
            except (ValueError, pickle.UnpicklingError) as exc:
                job_id = call.task.job_id if call.task is not None else call.batch.job_dir
                error = ResultAuthenticationError(
                    f"result of job {job_id} rejected ({exc}); it was not written "
                    "by this executor's worker, so it was not unpickled"
                )
                core.resolve(call, None, error)
                continue
            owner = record.get("task")
            batch = call.batch
            if call.task is None and isinstance(owner, int) and 0 <= owner < len(batch.tasks):
                batch.assign(call, batch.tasks[owner])  # it ran before its claim was seen
            value, exception = decode_result(record)
            core.fetched.append(result_path(batch, call))  # read: no longer listed
            core.resolve(call, value, exception)

    async def fail_ended(self, ended: list[Ended]) -> None:
        """Fail (or retry) the calls of jobs that ended without writing their results."""
        core = self.core
        unknown = [t.job_id for t, s, _ in ended if t.job_id and self.final_status(s) is None]
        details: dict[str, TaskStatus] = {}
        argv = core.scheduler.detail_argv(unknown) if unknown else None
        if argv:
            try:
                result = await core.run(argv)
                details = core.scheduler.parse_detail(result.stdout)
            except TransportError as exc:
                log.warning("clustrix: cannot read final job states: %s", exc)

        settled: list[tuple[Task, TaskStatus | None, int | None]] = []
        for task, status, exit_code in ended:
            final = self.final_status(status) or details.get(task.job_id or "")
            if (
                final is not None
                and not core.scheduler.lifecycle(final.state).is_final
                and task.unsettled_polls < UNSETTLED_POLLS
            ):
                # Its exit file is there but the scheduler is still ending it (SLURM's
                # COMPLETING after a scancel): its final word comes on a later cycle.
                task.unsettled_polls += 1
                continue
            settled.append((task, final, exit_code))
        tails = await asyncio.gather(*(self._stderr_tail(t) for t, _, _ in settled))
        for (task, final, exit_code), stderr_tail in zip(settled, tails, strict=True):
            if exit_code is None and final is not None:
                exit_code = final.exit_code
            error = self._error(task, final, exit_code, stderr_tail)
            lost = bool(error.state) and core.scheduler.lifecycle(error.state) is JobState.LOST
            if lost and resubmit(core, task, error.state):
                self.finalize(task, final, exit_code)
                continue
            for call in task.open_calls():
                core.resolve(call, None, error)
            self.finalize(task, final, exit_code)

    def fail_unclaimed(self, batch: Batch) -> None:
        """Every task of a self-scheduled submission has ended with calls nobody took
        (the tasks were cancelled or died first): fail those calls, or send them again
        when the infrastructure lost the tasks and ``max_retries`` allows."""
        assert batch.pool is not None
        left = batch.pool.unclaimed()
        last = batch.tasks[-1]
        lost = [t for t in batch.tasks if t.state is JobState.LOST]
        if lost and resubmit_pool(self.core, batch, left):
            return
        error = JobFailedError(
            last.job_id,
            last.native,
            reason=f"every task of the job ended before this call was started "
            f"({len(left)} call(s) not started)",
        )
        for call in left:
            self.core.resolve(call, None, error)

    def _error(
        self, task: Task, final: TaskStatus | None, exit_code: int | None, stderr_tail: str
    ) -> JobFailedError:
        """What the calls of a job that ended without their results fail with."""
        if final is not None:
            state = final.state
        elif exit_code is not None:
            state = "FAILED" if exit_code else "COMPLETED"
        else:
            return JobLostError(
                task.job_id,
                "UNKNOWN",
                stderr_tail=stderr_tail,
                reason="the job left the scheduler without a result or an exit status",
            )
        if exit_code == 0:
            reason = "the worker exited before writing this call's result"
        elif exit_code == _wire.EXIT_REQUEUE:
            reason = (
                "the call checkpointed but the job could not be requeued ("
                f"{self.core.scheduler.requeue_refused_hint})"
            )
        else:
            reason = final.reason if final is not None else ""
        return JobFailedError(
            task.job_id, state, exit_code=exit_code, stderr_tail=stderr_tail, reason=reason
        )

    async def _stderr_tail(self, task: Task) -> str:
        assert task.batch is not None
        path = f"{task.batch.job_dir}/{_wire.LOGS_DIR}/{task.index}.err"
        try:
            data = await self.core.transport.read_tail(path, STDERR_TAIL_BYTES)
        except (OSError, TransportError):
            return ""
        return data.decode(errors="replace")

    def consume(self, path: str) -> None:
        """A file read for the last time: the next poll deletes it (unless kept for good)."""
        if self.core.config.cleanup != "never":
            self.core.consumed.append(path)

    def finalize(self, task: Task, status: TaskStatus | None, exit_code: int | None) -> None:
        """The engine is done with ``task``: move it to its final state, free its slot."""
        if exit_code == 0 and task.batch is not None:
            # Results stay until the whole submission is collected (a process that
            # reattaches after a crash reads them again); a clean exit file is not needed.
            self.consume(f"{task.batch.job_dir}/{_wire.EXIT_DIR}/{task.index}")
        final = self.final_status(status)
        if final is not None:
            task.set_state(self.core.scheduler.lifecycle(final.state), final.state)
        elif exit_code is not None:
            task.set_state(
                JobState.COMPLETED if exit_code == 0 else JobState.FAILED,
                "COMPLETED" if exit_code == 0 else "FAILED",
            )
        else:  # gone from the scheduler with no word on how it ended
            task.set_state(JobState.LOST if task.open_calls() else JobState.COMPLETED)
        self.core.wake_submitter.set()  # a slot is free

    def retire_batches(self) -> None:
        """Forget submissions whose tasks are all finished; clean up as configured."""
        core = self.core
        for batch in [b for b in core.batches if not b.unfinished()]:
            core.batches.remove(batch)
            if batch.abandoned:
                continue  # its jobs may still run: keep the files and the registry entry
            core.registry.remove(batch.job_dir)
            policy = core.config.cleanup
            if policy == "always" or (policy == "on_success" and not batch.had_failure):
                # Arguments and results go now; the logs stay readable (future.stdout())
                # until the executor shuts down.
                core.spawn(
                    core.remove_quietly(
                        [
                            f"{batch.job_dir}/{_wire.TASKS_DIR}",
                            f"{batch.job_dir}/{_wire.RESULTS_DIR}",
                            f"{batch.job_dir}/{_wire.CLAIMS_DIR}",
                        ]
                    )
                )
                core.finished_dirs.append(batch.job_dir)
        core.update_idle()
