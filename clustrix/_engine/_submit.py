"""Submission: the held queue, batching into job arrays, and the ``max_workers`` slots.

Calls beyond the free slots wait in the held queue as PENDING futures. A burst of
``submit()`` calls (or a ``map``) goes out as one submission: a job array where the
scheduler has them, split at its size limit (and in halves after a job-count refusal).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable

from ..errors import ClusterError, TransportError
from ..lifecycle import JobState
from ._cancel import Canceller
from ._core import Core
from ._model import Batch, Task, result_path
from ._send import NothingToSubmit, Sender, TooManyTasks

__all__ = ["BATCH_MAX_WAIT_S", "BATCH_WINDOW_S", "Submitter"]

#: Submissions arriving less than this apart go out together (one job array) ...
BATCH_WINDOW_S = 0.005
#: ... unless the burst goes on for longer than this.
BATCH_MAX_WAIT_S = 0.1


class Submitter:
    """The submission loop: takes held tasks while slots are free and submits them."""

    def __init__(
        self,
        core: Core,
        sender: Sender,
        *,
        register: Callable[[Batch, list[str]], None],
        canceller: Canceller,
    ) -> None:
        self.core = core
        self.sender = sender
        self.register = register
        self.canceller = canceller
        self.enqueued = 0  # enqueue() calls so far: tells when a burst of them is over
        #: Most tasks per submission once the scheduler refused a bigger one for a job count
        #: limit (MaxSubmitJobs): an array that can never fit goes out in smaller pieces.
        self.tasks_cap: int | None = None

    def on_enqueue(self, tasks: list[Task]) -> None:
        """Queue ``tasks`` (on the loop thread)."""
        core = self.core
        pools = {id(t.pool): t.pool for t in tasks if t.pool is not None}
        calls = [c for t in tasks for c in t.calls] + [c for p in pools.values() for c in p.calls]
        if core.broken is not None:
            for call in calls:
                core.resolve(call, None, core.broken_error())
            return
        for call in calls:
            assert call.future is not None
            core.call_of[call.future] = call
        core.held.extend(tasks)
        self.enqueued += 1
        core.idle.clear()
        core.wake_submitter.set()

    def free_slots(self) -> int:
        """How many more jobs may be in flight now."""
        core = self.core
        if core.max_workers is None:
            return core.scheduler.max_array_size
        return core.max_workers - sum(b.slots_in_use() for b in core.batches)

    def take_batch(self, free: int) -> tuple[list[Task], int | None]:
        """The next tasks that can go out together, and the array throttle to use."""
        core = self.core
        limit = core.scheduler.max_array_size
        if self.tasks_cap is not None:
            limit = min(limit, self.tasks_cap)
        if not core.scheduler.supports_array_throttle:
            limit = min(limit, free)
        first = core.held[0]
        taken: list[Task] = []
        others: deque[Task] = deque()
        if first.pool is not None:
            # A pool goes out whole, as one array of (at most ``limit``) workers; workers
            # beyond the limit are dropped (the calls are the pool's, not theirs).
            while core.held:
                task = core.held.popleft()
                if task.pool is not first.pool:
                    others.append(task)
                elif len(taken) < limit:
                    taken.append(task)
            if not first.pool.unclaimed():
                taken = []  # every call was cancelled while held
        else:
            key = first.group_key
            while core.held and len(taken) < limit:
                task = core.held.popleft()
                if task.pool is not None:
                    others.append(task)  # a pool goes out alone
                elif task.open_calls():  # else every call was cancelled while held
                    (taken if task.group_key == key else others).append(task)
        others.extend(core.held)
        core.held = others
        throttle = free if core.max_workers is not None and len(taken) > free else None
        return taken, throttle

    async def loop(self) -> None:
        """Submit what is held whenever woken and slots are free."""
        core = self.core
        while True:
            await core.wake_submitter.wait()
            await self._let_the_burst_gather()
            core.wake_submitter.clear()
            try:
                while core.held and self.free_slots() > 0:
                    while core.held and not core.held[0].open():
                        core.held.popleft()
                    if not core.held:
                        break
                    tasks, throttle = self.take_batch(self.free_slots())
                    if tasks:
                        await self.submit_batch(tasks, throttle)
            except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
                core.break_(exc)
                return
            core.update_idle()

    async def _let_the_burst_gather(self) -> None:
        """Wait while submit() calls keep coming (a loop of them on a busy machine can be
        milliseconds apart, more while each pickles a big argument), so that they go out
        as one submission."""
        core = self.core
        deadline = time.monotonic() + BATCH_MAX_WAIT_S
        while True:
            seen = self.enqueued
            await asyncio.sleep(BATCH_WINDOW_S)
            quiet = self.enqueued == seen and not core.arriving
            if quiet or time.monotonic() > deadline:
                return

    async def submit_batch(self, tasks: list[Task], throttle: int | None) -> None:
        """Submit ``tasks`` as one job directory and one submit command."""
        core = self.core
        job_dir = f"{core.jobs_root}/{uuid.uuid4().hex}"
        batch = Batch(job_dir, secrets.token_bytes(32), tasks, throttle, pool=tasks[0].pool)
        for task_index, task in enumerate(tasks):
            task.index, task.batch = task_index, batch
            task.set_state(JobState.SUBMITTING)
        for call_index, call in enumerate(batch.calls()):
            call.index, call.batch = call_index, batch
            if call.future is not None:
                batch.paths[result_path(batch, call)] = call
                call.future._job_dir = job_dir
                call.future._task_index = call.task.index if call.task is not None else None
        core.batches.append(batch)
        try:
            job_ids = await self.sender.submit(batch, throttle)
        except TooManyTasks:
            self._split(batch)
            return
        except NothingToSubmit:
            for task in tasks:
                task.set_state(JobState.CANCELLED)
            core.batches.remove(batch)
            core.spawn(core.remove_quietly([job_dir]))
            core.update_idle()
            return
        except (ClusterError, OSError) as exc:
            error = exc if isinstance(exc, ClusterError) else TransportError(str(exc))
            for task in tasks:
                task.set_state(JobState.FAILED)
                for call in task.open_calls():
                    core.resolve(call, None, error)
            core.batches.remove(batch)
            if not batch.may_exist:  # else the job may run: keep what it needs
                core.spawn(core.remove_quietly([job_dir]))
            core.wake_submitter.set()
            return
        if not tasks[0].resources.max_retries:
            for call in batch.calls():
                call.payload = None  # submitted: do not keep the arguments alive
        self.register(batch, job_ids)
        for task, job_id in zip(tasks, job_ids, strict=True):
            task.job_id = job_id
            for call in task.open_calls():
                assert call.future is not None
                call.future._job_id = job_id
            task.set_state(JobState.QUEUED, "PENDING")
            if not task.open():  # cancelled while we were uploading
                core.to_cancel.add(job_id)
        if batch.pool is not None:
            for call in batch.pool.unclaimed():
                assert call.future is not None
                call.future._set_job_state(JobState.QUEUED, "PENDING")
            self.canceller.claim_cancelled(batch)
        if core.to_cancel or self.canceller.claims:
            await self.canceller.flush()
        core.wake_monitor.set()

    def _split(self, batch: Batch) -> None:
        """Put the tasks of a submission refused for its size back in front of the queue,
        and send at most half as many per submission from now on."""
        core = self.core
        tasks = batch.tasks
        self.tasks_cap = max(1, len(tasks) // 2)
        core.stats["submit_splits"] += 1
        for task in tasks:
            task.index, task.batch = -1, None
            task.set_state(JobState.HELD)
        for call in batch.calls():
            call.index, call.batch = -1, None
            if call.future is not None:
                call.future._job_dir = call.future._task_index = None
        core.batches.remove(batch)
        core.spawn(core.remove_quietly([batch.job_dir]))
        core.held.extendleft(reversed(tasks))
        core.wake_submitter.set()
