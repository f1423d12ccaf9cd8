"""What the job commands stand on: the config's scheduler and transport (no executor: nothing
is uploaded or started), the local job registry, and ONE round trip that says where every
job of it is.

:func:`look` runs the executor's own poll script (:func:`clustrix.monitor.poll_script`):
one status command of the scheduler for every job asked about, never one per job, and the
exit and claim files of their job directories in the same command. A job the scheduler no
longer lists is judged by its exit file (0: completed, else failed), or lost if it left none.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from .. import _wire
from .._factory import make_scheduler, make_transport
from ..config import ClusterConfig
from ..lifecycle import JobState
from ..monitor import parse_poll_output, poll_script
from ..registry import JobRegistry, SubmissionRecord, default_state_dir, owner_alive
from ..schedulers.base import Scheduler, TaskStatus
from ..transports.base import CommandResult, Transport
from ._output import CliError

__all__ = ["Remote", "SubmissionView", "TaskView", "label", "look", "open_remote", "select"]

#: What a job the scheduler has forgotten, with no exit file, is shown as.
GONE = "gone"


@dataclass
class Remote:
    """The cluster as the config reaches it, connected; and this machine's job registry."""

    config: ClusterConfig
    scheduler: Scheduler
    transport: Transport
    work_dir: str
    registry: JobRegistry
    #: Commands run, by program (``sh:<label>`` for scripts), as ``ex.stats()`` counts them.
    commands: Counter[str] = field(default_factory=Counter)

    @property
    def jobs_root(self) -> str:
        return f"{self.work_dir}/jobs"

    @property
    def location(self) -> str:
        return self.transport.location

    async def run(
        self, argv: Sequence[str], *, counts_as: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command on the cluster (counted in :attr:`commands`)."""
        self.commands[counts_as or posixpath.basename(argv[0])] += 1
        return await self.transport.run(argv, timeout_s=self.config.command_timeout_s, stdin=stdin)

    def records(self) -> list[SubmissionRecord]:
        """The registry's submissions to this cluster and work dir, oldest first."""
        return self.registry.records(self.location, self.work_dir)


@contextlib.asynccontextmanager
async def open_remote(config: ClusterConfig) -> AsyncIterator[Remote]:
    """Connect as an executor would (same scheduler, transport, work dir), run nothing."""
    scheduler = make_scheduler(config)
    transport = make_transport(config)
    try:
        await transport.connect()
        work_dir = await transport.expand(config.remote_work_dir)
        scheduler.attach(work_dir=work_dir, jobs_root=f"{work_dir}/jobs")
        registry = JobRegistry(config.state_dir or default_state_dir())
        yield Remote(config, scheduler, transport, work_dir, registry)
    finally:
        await transport.close()


@dataclass(frozen=True)
class TaskView:
    """One job (or array task) of a submission, as the round trip saw it."""

    job_id: str
    index: int
    #: The lifecycle's word (``queued``, ``running``, ``completed``, …), ``gone`` if the
    #: scheduler forgot the job and it left no exit status, ``unknown`` if the status
    #: command failed.
    state: str
    native: str  # the scheduler's own word, "" if it does not list the job
    exit_code: int | None
    calls: int  # calls it runs (of a self-scheduled map: those it has taken so far)
    reason: str = ""

    @property
    def ended(self) -> bool:
        """True once nothing more will happen to the job."""
        return self.state in {s.value for s in JobState if s.is_final} or self.state == GONE

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "task": self.index,
            "state": self.state,
            "native_state": self.native or None,
            "exit_code": self.exit_code,
            "calls": self.calls,
            "reason": self.reason or None,
        }


@dataclass(frozen=True)
class SubmissionView:
    """One registry entry (a job or a job array) and where its tasks are."""

    record: SubmissionRecord
    client_alive: bool
    tasks: list[TaskView]

    @property
    def label(self) -> str:
        return label(self.record)

    @property
    def calls(self) -> int:
        return len(self.record.pool) or sum(len(c) for c in self.record.calls)

    def states(self) -> dict[str, int]:
        """How many tasks are in each state."""
        return dict(Counter(t.state for t in self.tasks))

    def describe_states(self) -> str:
        """``running 2, queued 2``."""
        return ", ".join(f"{state} {n}" for state, n in self.states().items())

    @property
    def client(self) -> str:
        record = self.record
        if self.client_alive:
            return f"pid {record.pid} on {record.hostname}"
        return "gone: clustrix recover"

    def to_json(self) -> dict[str, object]:
        from ._output import iso

        record = self.record
        return {
            "job": self.label,
            "job_ids": record.job_ids,
            "function": record.function,
            "submitted_at": iso(record.submitted_at),
            "job_dir": record.job_dir,
            "calls": self.calls,
            "client": {
                "pid": record.pid,
                "hostname": record.hostname,
                "alive": self.client_alive,
                "recoverable": not self.client_alive,
            },
            "states": self.states(),
            "tasks": [t.to_json() for t in self.tasks],
        }


def label(record: SubmissionRecord) -> str:
    """The ID a person names a submission by: its job ID, or the array's common base
    (``12345`` of ``12345_0`` … ``12345_9``), else the first with a count."""
    ids = record.job_ids
    if len(ids) == 1:
        return ids[0]
    base = ids[0].rpartition("_")[0]
    if base and all(job_id == f"{base}_{i}" for i, job_id in enumerate(ids)):
        return base
    return f"{ids[0]} (+{len(ids) - 1})"


def select(records: Sequence[SubmissionRecord], job: str) -> list[tuple[SubmissionRecord, int]]:
    """The (submission, task index) pairs ``job`` names: a job ID, an array's base ID
    (every task), or a job directory's name (every task of the submission)."""
    found: list[tuple[SubmissionRecord, int]] = []
    for record in records:
        if job in (record.job_dir, posixpath.basename(record.job_dir), label(record)):
            found += [(record, i) for i in range(len(record.job_ids))]
            continue
        found += [
            (record, i)
            for i, job_id in enumerate(record.job_ids)
            if job_id == job or job_id.startswith(f"{job}_")
        ]
    return found


async def look(remote: Remote, records: Sequence[SubmissionRecord]) -> list[SubmissionView]:
    """Where every task of ``records`` is: ONE command (the scheduler's status of all of
    them, and their exit and claim files)."""
    if not records:
        return []
    job_ids = [job_id for record in records for job_id in record.job_ids]
    status_argv = remote.scheduler.status_argv(job_ids)
    script = poll_script(status_argv, [r.job_dir for r in records], remote.jobs_root)
    result = await remote.run(["sh", "-c", script], counts_as=posixpath.basename(status_argv[0]))
    seen = parse_poll_output(result.stdout)
    scheduler = remote.scheduler
    status_ok = seen.status_ok or scheduler.status_ok_anyway(seen.status_text)
    statuses = scheduler.parse_status(seen.status_text) if status_ok else {}
    views = []
    for record in records:
        claimed = Counter(
            owner
            for path, owner in seen.claims.items()
            if path.startswith(f"{record.job_dir}/{_wire.CLAIMS_DIR}/")
        )
        tasks = []
        for index, job_id in enumerate(record.job_ids):
            exit_code = seen.exit_codes.get(f"{record.job_dir}/{_wire.EXIT_DIR}/{index}")
            calls = claimed[str(index)] if record.pool else len(record.calls[index])
            tasks.append(
                task_view(scheduler, job_id, index, statuses.get(job_id), exit_code, calls)
                if status_ok
                else TaskView(job_id, index, "unknown", "", exit_code, calls)
            )
        views.append(SubmissionView(record, owner_alive(record), tasks))
    return views


def task_view(
    scheduler: Scheduler,
    job_id: str,
    index: int,
    status: TaskStatus | None,
    exit_code: int | None,
    calls: int,
) -> TaskView:
    """A task's state from the scheduler's word, else from its exit file."""
    if status is not None:
        state = scheduler.lifecycle(status.state)
        if state.is_live:  # an exit file beside a live state is from a run before a requeue
            exit_code = None
        return TaskView(job_id, index, state.value, status.state, exit_code, calls, status.reason)
    if exit_code is None:
        return TaskView(job_id, index, GONE, "", None, calls)
    state = JobState.COMPLETED if exit_code == 0 else JobState.FAILED
    return TaskView(job_id, index, state.value, "", exit_code, calls)


async def ask_scheduler(remote: Remote, job_id: str) -> TaskStatus | None:
    """What the scheduler says about a job the registry does not list: its status command,
    then its accounting (``detail_argv``) if the queue has forgotten it."""
    scheduler = remote.scheduler
    try:
        argv = scheduler.status_argv([job_id])
    except ValueError as exc:  # not an ID this backend can even ask about
        raise CliError(
            f"{job_id!r} is not a job ID of cluster_type={remote.config.cluster_type!r} "
            f"({exc}); `clustrix jobs` lists the jobs of this cluster"
        ) from exc
    result = await remote.run(argv)
    if result.ok or scheduler.status_ok_anyway(result.stdout + result.stderr):
        found = scheduler.parse_status(result.stdout).get(job_id)
        if found is not None:
            return found
    detail = scheduler.detail_argv([job_id])
    if detail is None:
        return None
    result = await remote.run(detail)
    return scheduler.parse_detail(result.stdout).get(job_id)


def registry_hint(remote: Remote) -> str:
    """Where the registry is, for messages."""
    return os.fspath(remote.registry.directory)
