"""Retries: a job the infrastructure lost (node failure, preemption) runs its calls again.

Only calls with no outcome are retried, and only while their task has ``max_retries`` left:
a call that raised has a result, and a call never runs twice once it has one. A requeue by
the scheduler itself (checkpoint, ``scontrol requeue``) is not a retry: the same job runs
again and skips the calls whose result exists (see the worker).
"""

from __future__ import annotations

from ._core import Core, log
from ._model import Batch, Call, Task

__all__ = ["resubmit", "resubmit_pool"]


def resubmit(core: Core, task: Task, native: str) -> bool:
    """Queue ``task``'s open calls again as a new task, if ``max_retries`` allows; True if
    it did. ``native`` is the scheduler's word for how the job ended (for the log)."""
    calls = task.open_calls()
    if task.attempt >= task.resources.max_retries or any(c.payload is None for c in calls):
        return False
    futures = [c.future for c in calls if c.future is not None]
    retry = Task.of(
        futures,
        [c.payload for c in calls if c.payload is not None],
        task.resources,
        task.job_name,
        task.plan,
    )
    retry.attempt = task.attempt + 1
    for old, new in zip(calls, retry.calls, strict=True):
        old.resolved, old.future, old.payload = True, None, None
        assert new.future is not None
        core.call_of[new.future] = new
        new.future._job_id = None
    retry.set_state(retry.state)  # the futures show HELD again
    log.warning(
        "clustrix: job %s ended with %s; resubmitting its %d call(s) (retry %d of %d)",
        task.job_id,
        native,
        len(calls),
        retry.attempt,
        task.resources.max_retries,
    )
    core.stats["retries"] += 1
    core.held.appendleft(retry)
    core.wake_submitter.set()
    return True


def resubmit_pool(core: Core, batch: Batch, calls: list[Call]) -> bool:
    """Send the calls nobody took from a self-scheduled submission whose tasks the
    infrastructure lost again, as a new pool with as many workers, if ``max_retries``
    allows; True if it did."""
    first = batch.tasks[0]
    attempt = max(t.attempt for t in batch.tasks)
    if attempt >= first.resources.max_retries or any(c.payload is None for c in calls):
        return False
    futures = [c.future for c in calls if c.future is not None]
    payloads = [c.payload for c in calls if c.payload is not None]
    workers = min(len(calls), len(batch.tasks))
    retry = Task.pooled(futures, payloads, first.resources, first.job_name, first.plan, workers)
    assert retry[0].pool is not None
    for old, new in zip(calls, retry[0].pool.calls, strict=True):
        old.resolved, old.future, old.payload = True, None, None
        assert new.future is not None
        core.call_of[new.future] = new
        new.future._job_id = None
    for task in retry:
        task.attempt = attempt + 1
    log.warning(
        "clustrix: the tasks of job %s were lost; resubmitting %d call(s) not started "
        "(retry %d of %d)",
        first.job_id,
        len(calls),
        attempt + 1,
        first.resources.max_retries,
    )
    core.stats["retries"] += 1
    core.held.extendleft(reversed(retry))
    core.wake_submitter.set()
    return True
