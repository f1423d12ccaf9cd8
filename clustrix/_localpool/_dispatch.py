"""The local pool's scheduler: queued jobs go to free workers, results come back to futures.

A job gets its ID when it starts, ``local:<worker pid>:<job number>``: it says which process
ran it. A chunk goes to its worker in one message; every other job sends one call at a time
(a map's job, the next of the map's calls once the one before is done), so that a slow call
holds up only its own worker. A call's function bytes go to a worker once: the calls after
it that share them (a map) send only their arguments. What happens when a worker ends early
is in :mod:`._endings`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._engine._model import Call, Task
from .._serialize import decode_result
from ..lifecycle import JobState
from . import _worker
from ._core import LOG_SPAN, PoolCore
from ._endings import Endings
from ._process import WorkerProcess

__all__ = ["SECONDS_PER_MINUTE", "Dispatcher"]

#: Seconds per minute of ``time_limit_min`` (the tests shorten it).
SECONDS_PER_MINUTE = 60.0


class Dispatcher:
    """Starts jobs on idle workers and turns results into outcomes; the workers' events
    (:class:`~._process.WorkerEvents`) come here."""

    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self.endings = Endings(core, self.dispatch)

    # ------------------------------------------------------------------ jobs in
    def on_enqueue(self, tasks: list[Task]) -> None:
        """Queue the executor's new jobs and start what free workers can take."""
        core = self.core
        pools = {t.pool for t in tasks if t.pool is not None}
        calls = [c for t in tasks for c in t.calls] + [c for p in pools for c in p.calls]
        if core.broken is not None:
            for call in calls:
                core.resolve(call, None, core.broken_error())
            return
        for call in calls:
            assert call.future is not None
            core.call_of[call.future] = call
        for task in tasks:
            core.queue_job(task)
        for pool in pools:
            for call in pool.calls:
                assert call.future is not None
                call.future._set_job_state(JobState.QUEUED, "PENDING")
        core.stats["pool.submissions"] += 1
        core.idle_event.clear()
        self.dispatch()

    def dispatch(self) -> None:
        """Give queued jobs to idle workers, in order."""
        core = self.core
        while core.queue and core.idle:
            task = core.queue.popleft()
            has_work = core.peek(task.pool) if task.pool is not None else task.open_calls()
            if not has_work:  # every call was cancelled while it waited
                core.end_job(task, JobState.CANCELLED, "CANCELLED")
                continue
            self._start(task, core.idle.pop())

    def _start(self, task: Task, worker: WorkerProcess) -> None:
        task.job_id = f"local:{worker.pid}:{task.index}"
        task.set_state(JobState.RUNNING, "RUNNING")
        worker.task = task
        if task.pool is not None:
            self._send_next_of_pool(worker)
            return
        calls = [c for c in task.open_calls() if self._claim(c)]
        if calls:
            self._send(worker, calls)
        else:
            self._finish(worker)

    def _claim(self, call: Call) -> bool:
        """Mark the call's future running; False (and the call forgotten) if the user
        cancelled it meanwhile."""
        future = call.future
        if future is None:
            return False
        if future._mark_running():
            return True
        self.core.forget(call)
        return False

    def _send_next_of_pool(self, worker: WorkerProcess) -> None:
        task = worker.task
        assert task is not None and task.pool is not None
        core = self.core
        while core.peek(task.pool):
            call = task.pool.calls[core.cursor[task.pool]]
            call.task = task
            task.calls.append(call)
            assert call.future is not None
            call.future._set_job_state(task.state, task.native)
            if self._claim(call):
                self._send(worker, [call])
                return
        self._finish(worker)

    # ------------------------------------------------------------------ calls out and back
    def _send(self, worker: WorkerProcess, calls: list[Call]) -> None:
        task = worker.task
        assert task is not None
        was_idle = not worker.running
        items: list[tuple[int, bytes | None, bytes]] = []
        for call in calls:
            assert call.future is not None and call.payload is not None
            future = call.future
            future._job_id = task.job_id
            future._job_dir, future._task_index = self.core.pool_dir, worker.serial  # its logs
            function, arguments = call.payload
            same = function is worker.function or function == worker.function
            items.append((call.call_id, None if same else function, arguments))
            worker.function = function
            worker.running.append(call)
        if was_idle:
            self._head_started(worker)
        worker.send(items)
        self.core.stats["pool.calls"] += len(items)

    def _head_started(self, worker: WorkerProcess) -> None:
        """The first call of ``worker.running`` runs now: its log span starts, and its
        time limit (if any) counts from now."""
        call = worker.running[0]
        if call.future is not None:
            setattr(call.future, LOG_SPAN, [worker.out_pos, None, worker.err_pos, None])
        task = worker.task
        assert task is not None
        limit = task.resources.time_limit_min
        if limit is not None:
            worker.timer = asyncio.get_running_loop().call_later(
                limit * SECONDS_PER_MINUTE, self.endings.timed_out, worker, call
            )

    def on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        """A worker said it is ready, or sent a call's result."""
        core = self.core
        try:
            if message[0] == _worker.READY:
                _, _pid, worker.out_pos, worker.err_pos = message
                worker.ready = True
                self.endings.startup_failures = 0
                if not core.closing:
                    core.idle.append(worker)
                    self.dispatch()
            elif message[0] == _worker.DONE:
                self._done(worker, *message[1:])
        except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
            core.break_(exc)

    def on_exit(self, worker: WorkerProcess, returncode: int) -> None:
        """A worker process ended (see :meth:`Endings.on_exit`)."""
        self.endings.on_exit(worker, returncode)

    def _done(
        self, worker: WorkerProcess, call_id: int, record: Any, out_end: int, err_end: int
    ) -> None:
        if not worker.running or worker.running[0].call_id != call_id:
            if worker.stopped_for is not None:
                return  # it ran on after kill() or its time limit: that result has no taker
            raise RuntimeError(f"worker {worker.pid} answered call {call_id} out of order")
        call = worker.running.popleft()
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None
        span = getattr(call.future, LOG_SPAN, None)
        if span is not None:
            span[1], span[3] = out_end, err_end
        if out_end >= 0 and err_end >= 0:
            worker.out_pos, worker.err_pos = out_end, err_end
        value, exception = decode_result(record)
        task = worker.task
        if call.future is not None and not worker.running and task and task.pool is None:
            call.future._set_job_state(JobState.COMPLETED, "COMPLETED")  # its job's last call
        self.core.deliver(call, value, exception)
        if worker.running:
            self._head_started(worker)
        elif task is not None and task.pool is not None:
            self._send_next_of_pool(worker)
        else:
            self._finish(worker)
        self.core.changed()

    def _finish(self, worker: WorkerProcess) -> None:
        """The worker's job has no call left: it is done, and the worker is free."""
        core = self.core
        task, worker.task = worker.task, None
        assert task is not None
        core.end_job(task, JobState.COMPLETED, "COMPLETED")
        if not core.closing and worker.stopped_for is None:
            core.idle.append(worker)
        self.dispatch()
