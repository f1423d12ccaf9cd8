"""How calls and workers of the local pool end other than by a result: a worker that dies,
``kill()``, a call past its time limit, ``cancel()``.

A worker that dies (``os._exit``, a signal, a segfault) fails the call it was running, and
that call only, with a :class:`~clustrix.errors.JobFailedError` carrying its exit status and
the tail of what the call wrote to stderr; a new worker takes its place (one crash does not
break the executor, unlike ``ProcessPoolExecutor``). The calls of its chunk not started yet,
or the rest of its map, run on as a new job. ``kill()`` stops the worker and fails every
call of the job (as on a cluster: with ``chunksize > 1``, the whole chunk); a time limit
fails the call that ran too long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._engine._model import Call, Task
from ..errors import JobFailedError
from ..future import ClusterFuture
from ..lifecycle import JobState
from ._core import PoolCore
from ._process import WorkerProcess, exit_status

__all__ = ["STARTUP_FAILURES", "STDERR_TAIL_BYTES", "Endings"]

#: How much of a dead worker's stderr (from the start of the call it ran) its error carries.
STDERR_TAIL_BYTES = 4000
#: A worker that dies before it is ready this many times in a row breaks the executor.
STARTUP_FAILURES = 3


class Endings:
    """Worker deaths, kills, time limits and cancellations."""

    def __init__(self, core: PoolCore, dispatch: Callable[[], None]) -> None:
        self.core = core
        self.dispatch = dispatch  # start queued jobs on free workers
        self.startup_failures = 0  # workers in a row that died before they were ready

    # ------------------------------------------------------------------ workers that die
    def on_exit(self, worker: WorkerProcess, returncode: int) -> None:
        """A worker process ended: fail the call it ran, move on, start a new worker."""
        try:
            self._on_exit(worker, returncode)
        except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
            self.core.break_(exc)

    def _on_exit(self, worker: WorkerProcess, returncode: int) -> None:
        core = self.core
        core.workers.discard(worker)
        if worker in core.idle:
            core.idle.remove(worker)
        if worker.timer is not None:
            worker.timer.cancel()
        if core.closing:
            return
        if not worker.ready:
            self.startup_failed(worker, f"exit status {exit_status(returncode)}")
            return
        core.stats["pool.worker_exits"] += 1
        task, running = worker.task, list(worker.running)
        worker.task = None
        worker.running.clear()
        if task is not None:
            status = exit_status(returncode)
            if running:
                error = JobFailedError(
                    task.job_id,
                    "FAILED",
                    exit_code=status,
                    stderr_tail=self._stderr_tail(worker),
                    reason="the worker exited before writing this call's result"
                    if status == 0
                    else "",
                )
                core.settle(running[0], JobState.FAILED, "FAILED", error)
            self._continue(task, running[1:])
            core.end_job(task, JobState.FAILED, "FAILED")
        core.spawn()
        self.dispatch()
        core.changed()

    def startup_failed(self, worker: WorkerProcess, what: str) -> None:
        """A worker died before it was ready: try again, a few times."""
        core = self.core
        core.workers.discard(worker)
        self.startup_failures += 1
        if self.startup_failures < STARTUP_FAILURES:
            core.spawn()
            return
        tail = self._stderr_tail(worker).strip()
        core.break_(
            RuntimeError(
                f"the local pool's worker process did not start ({what})"
                + (f":\n{tail}" if tail else "")
            )
        )

    def _stderr_tail(self, worker: WorkerProcess) -> str:
        """The worker's stderr from the start of its current call (the last few KB)."""
        try:
            with open(worker.err_path, "rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(worker.err_pos, size - STDERR_TAIL_BYTES))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _continue(self, task: Task, not_started: list[Call]) -> None:
        """What a job that ended early had left runs as a new job: its chunk's calls not
        started yet, or (a map's job) the map's calls nobody took."""
        core = self.core
        if task.pool is not None:
            if core.peek(task.pool):
                core.queue_job(Task([], task.resources, task.job_name, task.plan, pool=task.pool))
            return
        calls = [c for c in not_started if c.future is not None and c.payload is not None]
        if not calls:
            return
        futures = [c.future for c in calls if c.future is not None]
        payloads = [c.payload for c in calls if c.payload is not None]
        new = Task.of(futures, payloads, task.resources, task.job_name, task.plan)
        for old, call in zip(calls, new.calls, strict=True):
            old.resolved, old.future, old.payload = True, None, None
            assert call.future is not None
            core.call_of[call.future] = call
        core.queue_job(new, front=True)

    # ------------------------------------------------------------------ workers we stop
    def stop(self, worker: WorkerProcess, state: JobState, native: str, why: str) -> None:
        """Kill ``worker`` and end its job in ``state``; the calls it had not started run
        on as a new job. Its exit then only starts a new worker."""
        core = self.core
        task, running = worker.task, list(worker.running)
        worker.task = None
        worker.running.clear()
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None
        worker.kill(why)
        if task is not None:
            self._continue(task, [c for c in running if not c.resolved])
            core.end_job(task, state, native)
        self.dispatch()

    def timed_out(self, worker: WorkerProcess, call: Call) -> None:
        """``call`` has run for its job's ``time_limit_min``."""
        task = worker.task
        if task is None or not worker.running or worker.running[0] is not call:
            return
        limit = task.resources.time_limit_min
        error = JobFailedError(
            task.job_id, "TIMEOUT", reason=f"the call ran longer than time_limit_min={limit}"
        )
        self.core.settle(call, JobState.TIMED_OUT, "TIMEOUT", error)
        self.stop(worker, JobState.TIMED_OUT, "TIMEOUT", "time limit")
        self.core.changed()

    async def kill(self, future: ClusterFuture[Any]) -> bool:
        """Stop the job running ``future``'s call (and the other calls of its chunk)."""
        core = self.core
        call = core.call_of.get(future)
        if call is None:
            return False
        task = call.task
        if task is None:  # a map's call nobody took: it has not started
            return future.cancel()
        if future.cancel():
            return True
        error = JobFailedError(task.job_id, "CANCELLED", reason="stopped by kill()")
        for other in task.open_calls():
            core.settle(other, JobState.CANCELLED, "CANCELLED", error)
        worker = next((w for w in core.workers if w.task is task), None)
        if worker is not None:
            self.stop(worker, JobState.CANCELLED, "CANCELLED", "kill()")
        core.changed()
        return True

    # ------------------------------------------------------------------ calls not started
    def on_cancel(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls: a queued job whose calls are all gone never starts."""
        core = self.core
        for future in futures:
            call = core.call_of.get(future)
            if call is not None and not call.resolved:
                core.forget(call)

    async def cancel_pending(self) -> None:
        """Cancel every call that has not started."""
        pending = [f for f in self.core.call_of if not f.running() and not f.done()]
        self.on_cancel([f for f in pending if f.cancel()])
