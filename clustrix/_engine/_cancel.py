"""Cancellation: calls forgotten at once, their jobs cancelled in few scheduler commands.

A cancelled future is final for the user immediately (``Future.cancel``); the job behind it
is cancelled in the scheduler once none of its calls is wanted any more, with one command
for every job collected in the same burst. ``kill()`` stops a running job.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any

from .. import _wire
from ..errors import JobFailedError, TransportError
from ..future import ClusterFuture
from ._core import Core, log
from ._model import Batch, claim_path

__all__ = ["Canceller"]


#: ``sh -c`` script: claim each path read from stdin for nobody (O_EXCL through ``set -C``:
#: a call a task claimed first keeps running), then run the cancel command in "$@", if any.
_CLAIM_THEN_CANCEL = (
    "set -C; while IFS= read -r p; do "
    f'(echo {_wire.CANCELLED_CLAIM} > "$p") 2>/dev/null; done; '
    '[ "$#" -gt 0 ] && exec "$@"; exit 0'
)


class Canceller:
    """Cancels and kills calls and their jobs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.claims: list[str] = []  # claim files the next flush creates (cancelled calls)

    def on_cancel(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls; queue their jobs' cancellation (on the loop thread)."""
        core = self.core
        pools: set[Batch] = set()
        for future in futures:
            call = core.call_of.get(future)
            if call is None or call.resolved:
                continue
            batch = call.batch
            if call.task is None and batch is not None and batch.pool is not None:
                # Not claimed yet: claim it for nobody, so that no task ever starts it.
                self.claims.append(claim_path(batch, call))
                pools.add(batch)
            core.forget(call)
            task = call.task
            if task is None or task.job_id is None or task.finished:
                continue  # held or still being submitted: the submitter skips it
            if not task.open():
                core.to_cancel.add(task.job_id)
        for batch in pools:
            if batch.pool is not None and not batch.pool.unclaimed():
                # Nothing left to take: the tasks that run no call of their own can go,
                # queued ones included (nothing stays in the scheduler's queue).
                for task in batch.tasks:
                    if task.job_id and not task.finished and not task.open_calls():
                        core.to_cancel.add(task.job_id)
        if core.to_cancel or self.claims:
            core.spawn(self.flush())
        core.update_idle()

    def claim_cancelled(self, batch: Batch) -> None:
        """After a pool's submission: claim the calls cancelled while it was being written
        (the task file may hold them), so that no task starts them."""
        if batch.pool is not None:
            self.claims += [claim_path(batch, c) for c in batch.pool.calls if c.resolved]

    async def flush(self) -> None:
        """One command claims the cancelled calls of pools (so that no task starts them)
        and cancels every job collected so far."""
        core = self.core
        await asyncio.sleep(0)  # let cancellations of the same burst join in
        if not core.to_cancel and not self.claims:
            return
        job_ids = sorted(core.to_cancel)
        core.to_cancel.clear()
        claims, self.claims = self.claims, []
        argv = core.scheduler.cancel_argv(job_ids) if job_ids else []
        counts_as = posixpath.basename(argv[0]) if argv else None
        stdin = None
        if claims:
            # claim paths on stdin (there may be thousands), then the cancel command
            argv = ["sh", "-c", _CLAIM_THEN_CANCEL, "clustrix-cancel", *argv]
            stdin = "".join(f"{path}\n" for path in claims).encode()
        try:
            result = await core.run(argv, counts_as=counts_as, stdin=stdin)
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
        """Stop the job running ``future``'s call (and the other calls of that job); False
        if the scheduler's cancel command failed (the call then ends as it ends)."""
        core = self.core
        call = core.call_of.get(future)
        if call is None:
            return False
        task = call.task
        if task is None:  # waiting in a pool: it has not started
            return future.cancel()
        if task.job_id is None:
            return future.cancel()
        argv = core.scheduler.cancel_argv([task.job_id])
        result = await core.run(argv)
        if not result.ok:
            # The job may have ended meanwhile (its result is on its way) or the scheduler
            # refused: either way it was not stopped, so nothing is failed here.
            log.warning(
                "clustrix: kill() of job %s: %s exited %d: %s",
                task.job_id,
                argv[0],
                result.returncode,
                result.stderr.strip() or result.stdout.strip(),
            )
            return False
        error = JobFailedError(task.job_id, "CANCELLED", reason="stopped by kill()")
        for other in task.open_calls():
            core.resolve(other, None, error)
        core.update_idle()
        return True
