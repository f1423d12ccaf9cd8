"""Cancellation: calls forgotten at once, their jobs cancelled in few scheduler commands.

A cancelled future is final for the user immediately (``Future.cancel``); the job behind it
is cancelled in the scheduler once none of its calls is wanted any more, with one command
for every job collected in the same burst. ``kill()`` stops a running job.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import JobFailedError, TransportError
from ..future import ClusterFuture
from ._core import Core, log

__all__ = ["Canceller"]


class Canceller:
    """Cancels and kills calls and their jobs."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def on_cancel(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls; queue their jobs' cancellation (on the loop thread)."""
        core = self.core
        for future in futures:
            call = core.call_of.get(future)
            if call is None or call.resolved:
                continue
            core.forget(call)
            task = call.task
            if task is None or task.job_id is None or task.finished:
                continue  # held or still being submitted: the submitter skips it
            if not task.open_calls():
                core.to_cancel.add(task.job_id)
        if core.to_cancel:
            core.spawn(self.flush())
        core.update_idle()

    async def flush(self) -> None:
        """One scheduler command cancels every job collected so far."""
        core = self.core
        await asyncio.sleep(0)  # let cancellations of the same burst join in
        if not core.to_cancel:
            return
        job_ids = sorted(core.to_cancel)
        core.to_cancel.clear()
        argv = core.scheduler.cancel_argv(job_ids)
        try:
            result = await core.run(argv)
        except TransportError as exc:
            log.warning("clustrix: could not cancel jobs %s: %s", job_ids, exc)
            return
        if not result.ok:  # usually: some jobs had finished already
            log.info("clustrix: %s: %s", argv[0], result.stderr.strip())

    async def cancel_pending(self) -> None:
        """Cancel every call that has not started; one scheduler command for all."""
        pending = [f for f in self.core.call_of if not f.running() and not f.done()]
        cancelled = [f for f in pending if f.cancel()]
        self.on_cancel(cancelled)
        await self.flush()

    async def kill(self, future: ClusterFuture[Any]) -> bool:
        """Stop the job running ``future``'s call (and the other calls of that job)."""
        core = self.core
        call = core.call_of.get(future)
        if call is None or call.task is None:
            return False
        task = call.task
        if task.job_id is None:
            return future.cancel()
        argv = core.scheduler.cancel_argv([task.job_id])
        await core.run(argv)
        error = JobFailedError(task.job_id, "CANCELLED", reason="stopped by kill()")
        for other in task.open_calls():
            core.resolve(other, None, error)
        core.update_idle()
        return True
