"""What the engine keeps about calls, jobs and submissions: plain data, no I/O.

A :class:`Call` is one ``fn(*args)`` and its future; a :class:`Task` is one job (or one array
task) running one or more calls; a :class:`Batch` is one submission (a job directory, one
submit command) of one or more tasks. A task's life is a :class:`~clustrix.lifecycle.JobState`
moved only by :meth:`Task.set_state`, through :func:`~clustrix.lifecycle.advance`.

A self-scheduled submission (a ``map`` without ``chunksize``) has a :class:`Pool`: its calls
belong to no task until a task claims one on the node; the monitor then moves the call to
that task (:meth:`Batch.assign`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _wire
from .._serialize import Payload
from ..config import Resources
from ..future import ClusterFuture
from ..lifecycle import JobState, advance
from ..packaging import EnvironmentPlan

__all__ = ["Batch", "Call", "Pool", "Task", "claim_path", "describe_request", "result_path"]


@dataclass(eq=False)
class Call:
    """One call: the future it resolves and its pickled function and arguments."""

    # Both dropped once the call is resolved: the engine keeps neither arguments nor results.
    future: ClusterFuture[Any] | None
    payload: Payload | None
    task: Task | None = None  # None while it waits in a pool, unclaimed
    index: int = -1  # index within its submission: names its result file
    resolved: bool = False
    batch: Batch | None = None  # its submission, once submitted

    def __post_init__(self) -> None:
        # the executor-wide index the user sees as ClusterFuture.call_index
        self.call_id = self.future.call_index if self.future is not None else -1


@dataclass(eq=False)
class Pool:
    """The calls of a self-scheduled submission, shared by its tasks (the workers)."""

    calls: list[Call]

    def unclaimed(self) -> list[Call]:
        """Calls no task has claimed and that have no outcome yet."""
        return [c for c in self.calls if c.task is None and not c.resolved]


@dataclass(eq=False)
class Task:
    """One job (or one array task): one or more calls (``chunksize``) sharing resources."""

    calls: list[Call]
    resources: Resources
    job_name: str
    plan: EnvironmentPlan | None = None
    index: int = -1
    job_id: str | None = None
    batch: Batch | None = None
    state: JobState = JobState.HELD
    #: The scheduler's own word for the state (``PENDING``, ``qw``...), for display.
    native: str = "HELD"
    #: A job that ended with results missing gets one more poll cycle (shared filesystems
    #: lag) before its calls fail.
    grace_used: bool = False
    #: Poll cycles this ended job waited for the scheduler to settle its final state (an
    #: exit file is there, the scheduler still says COMPLETING).
    unsettled_polls: int = 0
    attempt: int = 0  # how many times it was resubmitted after an infrastructure failure
    #: The pool this task takes calls from (self-scheduled); its ``calls`` are those claimed.
    pool: Pool | None = None

    @classmethod
    def of(
        cls,
        futures: Sequence[ClusterFuture[Any]],
        payloads: Sequence[Payload],
        resources: Resources,
        job_name: str,
        plan: EnvironmentPlan | None = None,
    ) -> Task:
        """A task running ``payloads`` and resolving ``futures`` (same order)."""
        calls = [Call(f, p) for f, p in zip(futures, payloads, strict=True)]
        task = cls(calls, resources, job_name, plan)
        for call in task.calls:
            call.task = task
        return task

    @classmethod
    def pooled(
        cls,
        futures: Sequence[ClusterFuture[Any]],
        payloads: Sequence[Payload],
        resources: Resources,
        job_name: str,
        plan: EnvironmentPlan | None,
        workers: int,
    ) -> list[Task]:
        """``workers`` tasks that take the calls of one pool, each the next nobody has."""
        pool = Pool([Call(f, p) for f, p in zip(futures, payloads, strict=True)])
        return [cls([], resources, job_name, plan, pool=pool) for _ in range(workers)]

    def open(self) -> bool:
        """True while the task has calls left: its own, or unclaimed ones in its pool."""
        return bool(self.open_calls()) or (self.pool is not None and bool(self.pool.unclaimed()))

    @property
    def group_key(self) -> tuple[str, str, str, tuple[str, ...]]:
        """Tasks with equal keys can share one submission (same resources, same code)."""
        code = self.plan.code_hash if self.plan else ""
        requirements = self.plan.requirements if self.plan else ()
        return (self.resources.model_dump_json(), self.job_name, code, requirements)

    @property
    def finished(self) -> bool:
        """True once the engine is done with the job (its state is final)."""
        return self.state.is_final

    def open_calls(self) -> list[Call]:
        """Calls still waiting for their outcome."""
        return [c for c in self.calls if not c.resolved]

    def set_state(self, state: JobState, native: str | None = None) -> None:
        """Move the task (and its futures) to ``state``; raises on an illegal move.

        ``native`` is the scheduler's word for it (default: the state's own name)."""
        self.state = advance(self.state, state)
        self.native = native if native is not None else state.name
        for call in self.calls:
            if call.future is not None:
                call.future._set_job_state(self.state, self.native)


@dataclass(eq=False)
class Batch:
    """One submission: a job directory and the tasks it runs."""

    job_dir: str
    secret: bytes
    tasks: list[Task]
    throttle: int | None
    had_failure: bool = False
    paths: dict[str, Call] = field(default_factory=dict)  # result path -> call
    submitted_at: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # given up on (connection lost): its jobs may still run
    #: The submit command ran (or may have) without a definite answer: the job may exist.
    may_exist: bool = False
    pool: Pool | None = None  # the calls its tasks take from (self-scheduled), if any

    def calls(self) -> list[Call]:
        """Every call of the submission, in call index order."""
        if self.pool is not None:
            return list(self.pool.calls)
        return [c for t in self.tasks for c in t.calls]

    def assign(self, call: Call, task: Task) -> None:
        """``task`` claimed ``call`` on the node: the call is now that task's."""
        call.task = task
        task.calls.append(call)
        if call.future is not None:
            call.future._task_index = task.index
            call.future._job_id = task.job_id
            call.future._set_job_state(task.state, task.native)

    def unfinished(self) -> int:
        """How many of its tasks the engine is not done with."""
        return sum(not t.finished for t in self.tasks)

    def slots_in_use(self) -> int:
        """How many ``max_workers`` slots the submission holds."""
        n = self.unfinished()
        return min(n, self.throttle) if self.throttle else n


def claim_path(batch: Batch, call: Call) -> str:
    """The claim file of ``call`` in a self-scheduled submission."""
    return f"{batch.job_dir}/{_wire.CLAIMS_DIR}/{call.index}"


def result_path(batch: Batch, call: Call) -> str:
    """Where the worker writes ``call``'s result record."""
    return f"{batch.job_dir}/{_wire.RESULTS_DIR}/{call.index}{_wire.SUFFIX}"


def describe_request(resources: Resources) -> str:
    """The resource fields a job asked for, as ``name=value`` (those that were set)."""
    asked = resources.model_dump(exclude_defaults=True, exclude={"job_name", "max_retries"})
    asked.setdefault("cores", resources.cores)
    return ", ".join(f"{name}={value!r}" for name, value in sorted(asked.items()))
