"""Recovery: every submission is recorded in the local registry, so that a new process can
reattach to the jobs a crashed one left running (``ClusterExecutor.recover()``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

from .. import _wire
from ..future import ClusterFuture, _JobControl
from ..lifecycle import JobState
from ..registry import SubmissionRecord
from ._core import Core, log
from ._model import Batch, Call, Pool, Task, result_path

__all__ = ["Recovery"]

#: ``sh -c`` script: for each job dir in "$@", results/done/*.pkl back into results/.
_RESULTS_BACK = (
    'for d; do r="$d/' + _wire.RESULTS_DIR + '"; [ -d "$r/' + _wire.DONE_DIR + '" ] && '
    'mv -f "$r/' + _wire.DONE_DIR + '"/*' + _wire.SUFFIX + ' "$r/" 2>/dev/null; done; exit 0'
)


class Recovery:
    """Writes the registry entries and adopts the submissions of dead processes."""

    def __init__(self, core: Core, control: _JobControl) -> None:
        self.core = core
        self.control = control  # what the adopted futures ask to cancel, kill, read logs

    def register(self, batch: Batch, job_ids: list[str]) -> None:
        """Record the submission in the local registry, for :meth:`recover` after a crash."""
        core = self.core
        record = SubmissionRecord(
            job_dir=batch.job_dir,
            location=core.transport.location,
            work_dir=core.work_dir,
            secret_hex=batch.secret.hex(),
            function=batch.tasks[0].job_name,
            job_ids=list(job_ids),
            calls=[[c.index for c in t.calls] for t in batch.tasks],
            call_ids=[[c.call_id for c in t.calls] for t in batch.tasks],
            submitted_at=time.time(),
            pid=os.getpid(),
            hostname=socket.gethostname(),
            pool=[[c.index, c.call_id] for c in batch.pool.calls] if batch.pool else [],
        )
        try:
            core.registry.add(record)
        except OSError as exc:  # the jobs run anyway; only a later recover() would miss them
            log.warning("clustrix: cannot write the job registry: %s", exc)

    async def recover(self) -> list[ClusterFuture[Any]]:
        """Futures for every call of submissions to this cluster and work dir whose
        submitting process has died; nothing is resubmitted."""
        core = self.core
        futures: list[ClusterFuture[Any]] = []
        records = core.registry.pending(core.transport.location, core.work_dir)
        if records:
            # The dead process had read some results (moved to results/done/): this one
            # reads them again, so they go back where the poll lists them.
            await core.run(
                ["sh", "-c", _RESULTS_BACK, "clustrix-recover", *(r.job_dir for r in records)]
            )
        for record in records:
            futures.extend(self._adopt(record))
        return futures

    def _adopt(self, record: SubmissionRecord) -> list[ClusterFuture[Any]]:
        core = self.core
        batch = Batch(record.job_dir, bytes.fromhex(record.secret_hex), [], throttle=None)
        futures: list[ClusterFuture[Any]] = []
        resources = core.config.resources()
        if record.pool:
            # Self-scheduled: the calls wait in the pool until the poll sees their claims.
            batch.pool = Pool([])
            for call_index, call_id in record.pool:
                future = ClusterFuture[Any](self.control, call_id)
                future._job_dir = batch.job_dir
                call = Call(future, None, None, call_index, batch=batch)
                batch.pool.calls.append(call)
                batch.paths[result_path(batch, call)] = call
                core.call_of[future] = call
                futures.append(future)
        for index, (job_id, calls, call_ids) in enumerate(
            zip(record.job_ids, record.calls, record.call_ids, strict=True)
        ):
            # Submitted long ago: it enters the lifecycle as queued (the next poll says more).
            task = Task(
                [],
                resources,
                record.function,
                index=index,
                job_id=job_id,
                batch=batch,
                state=JobState.QUEUED,
                native="PENDING",
                pool=batch.pool,
            )
            for call_index, call_id in zip(calls, call_ids, strict=True):
                future = ClusterFuture[Any](self.control, call_id)
                future._job_id, future._job_dir, future._task_index = job_id, batch.job_dir, index
                call = Call(future, None, task, call_index, batch=batch)
                task.calls.append(call)
                batch.paths[result_path(batch, call)] = call
                core.call_of[future] = call
                futures.append(future)
            task.set_state(JobState.QUEUED, "PENDING")
            batch.tasks.append(task)
        core.batches.append(batch)
        core.registry.add(
            dataclasses.replace(record, pid=os.getpid(), hostname=socket.gethostname())
        )
        core.idle.clear()
        core.wake_monitor.set()
        return futures
