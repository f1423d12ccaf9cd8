"""What the parts of the local pool share: the queue of jobs, the workers, the unresolved
calls, and the one place a call's future gets its outcome. Everything here runs on the
executor's loop thread and is touched without locks (as :mod:`clustrix._engine._core`).

A job is a :class:`~clustrix._engine._model.Task` as the executor makes it: one ``submit``,
one ``chunksize`` chunk, or one of a ``map``'s self-scheduled tasks (``Task.pooled``), which
takes the map's next call nobody has taken until none is left. Its life, through
``Task.set_state``::

    HELD ─► SUBMITTING ─► QUEUED (waiting for a free worker) ─► RUNNING (on a worker) ─►
        COMPLETED | FAILED (its worker died) | CANCELLED (kill()) | TIMED_OUT (time_limit_min)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .._engine._model import Call, Pool, Task
from ..errors import BrokenClusterExecutor
from ..future import ClusterFuture
from ..lifecycle import JobState
from ._process import WorkerProcess

__all__ = ["LOG_SPAN", "PoolCore", "log"]

log = logging.getLogger("clustrix")

#: The attribute of a future that says where its call's output is in its worker's logs:
#: ``[stdout start, end, stderr start, end]`` (an end is None while the call runs). On the
#: future itself: it lives as long as the user keeps the future, and costs nothing more.
LOG_SPAN = "_pool_log_span"


class PoolCore:
    """The shared state of the local pool, and resolution of calls."""

    def __init__(self, pool_dir: str, stats: Counter[str]) -> None:
        self.pool_dir = pool_dir  # the futures' job_dir: logs/<worker>.out|err
        self.stats = stats
        self.spawn: Callable[[], None] = lambda: None  # start one more worker (the engine)
        self.changed: Callable[[], None] = lambda: None  # calls started or ended (listeners)
        self.queue: deque[Task] = deque()  # QUEUED jobs, in order
        self.idle: list[WorkerProcess] = []  # ready workers without a job
        self.workers: set[WorkerProcess] = set()  # every live (or starting) worker
        self.call_of: dict[ClusterFuture[Any], Call] = {}  # every unresolved call
        self.cursor: dict[Pool, int] = {}  # a pool's first call that may still be free
        self.pool_jobs: Counter[Pool] = Counter()  # unfinished jobs taking from each pool
        self.numbers = itertools.count()  # job numbers (the last part of a job ID)
        self.had_failure = False
        self.broken: BaseException | None = None
        self.closing = False
        self.idle_event = asyncio.Event()
        self.idle_event.set()

    # ------------------------------------------------------------------ jobs
    def queue_job(self, task: Task, *, front: bool = False) -> None:
        """Number the job and queue it (at the front: it continues a job that ended)."""
        task.index = next(self.numbers)
        task.set_state(JobState.SUBMITTING)
        task.set_state(JobState.QUEUED, "PENDING")
        if task.pool is not None:
            self.pool_jobs[task.pool] += 1
        if front:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)

    def end_job(self, task: Task, state: JobState, native: str) -> None:
        """Move a job to its final state."""
        task.set_state(state, native)
        pool = task.pool
        if pool is not None:
            self.pool_jobs[pool] -= 1
            if self.pool_jobs[pool] <= 0:  # nothing takes from it any more
                del self.pool_jobs[pool]
                self.cursor.pop(pool, None)

    def peek(self, pool: Pool) -> bool:
        """True if the pool has a call nobody took; its cursor moves to that call."""
        calls, i = pool.calls, self.cursor.get(pool, 0)
        while i < len(calls) and (calls[i].resolved or calls[i].task is not None):
            i += 1
        self.cursor[pool] = i
        return i < len(calls)

    # ------------------------------------------------------------------ outcomes
    def forget(self, call: Call) -> ClusterFuture[Any] | None:
        """Mark ``call`` resolved and drop every reference to its future and arguments."""
        future = call.future
        if future is not None:
            self.call_of.pop(future, None)
        call.resolved = True
        call.future = call.payload = None
        if not self.call_of:
            self.idle_event.set()
        return future

    def resolve(self, call: Call, value: Any, exception: BaseException | None) -> None:
        """Give ``call``'s future its outcome (unless the user cancelled it) and forget it."""
        future = self.forget(call)
        if future is None:
            return
        if exception is not None:
            self.had_failure = True
        if not future._mark_running():
            return  # cancelled by the user: the outcome has no taker
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)

    def deliver(self, call: Call, value: Any, exception: BaseException | None) -> None:
        """:meth:`resolve` for a call that was sent to a worker: its future is running (it
        was marked so, and a running future cannot be cancelled), so no lock is taken
        for that."""
        future = self.forget(call)
        if future is None:
            return
        if exception is not None:
            self.had_failure = True
            future.set_exception(exception)
        else:
            future.set_result(value)

    def settle(self, call: Call, state: JobState, native: str, error: BaseException) -> None:
        """Fail ``call`` with ``error``; its future shows the state its job ended in."""
        if call.future is not None:
            call.future._set_job_state(state, native)
        self.resolve(call, None, error)

    def broken_error(self) -> BrokenClusterExecutor:
        """The error every call gets once the pool has stopped working."""
        error = BrokenClusterExecutor(f"the executor stopped working: {self.broken!r}")
        error.__cause__ = self.broken
        return error

    def break_(self, exc: BaseException) -> None:
        """The pool cannot go on (a bug, or workers that cannot start): fail every
        outstanding call rather than let it hang."""
        log.error("clustrix: the local pool failed", exc_info=exc)
        self.broken = exc
        self.closing = True
        error = self.broken_error()
        for call in list(self.call_of.values()):
            self.resolve(call, None, error)
        self.queue.clear()
        for worker in list(self.workers):
            worker.kill("broken")
