"""Sending one submission: its job directory and the submit command, until accepted.

What can pass is waited out rather than failed: a scheduler's "not now" (rate limits, job
count limits, a busy controller) for up to ``submit_retry_s``; a lost connection for up to
``connection_grace_s``, reconnecting with backoff. A connection lost while the submit
command ran may have left a job behind: it is looked up by its script before anything is
submitted again, so that no call runs twice.
"""

from __future__ import annotations

import asyncio
import posixpath
import time

from .. import _wire
from .._remote_env import RemoteEnvironment
from ..errors import (
    CommandTimeoutError,
    ConnectionLostError,
    SchedulerError,
    SubmissionError,
    TransportError,
)
from ..schedulers.base import JobSpec
from ..transports.base import CommandResult
from ._core import Core, log
from ._jobdir import UNPACK_AND_SUBMIT, UNPACK_FAILED, job_files, tar, upload
from ._model import Batch, Task, describe_request

__all__ = ["NothingToSubmit", "Sender", "TooManyTasks"]


class TooManyTasks(Exception):
    """The scheduler refused a submission for a job count limit it may never fit under."""


class NothingToSubmit(Exception):
    """Every call of a refused submission was cancelled before it could be sent again."""


class Sender:
    """Writes a batch's job directory and submits it; returns the job IDs."""

    def __init__(
        self, core: Core, environment: RemoteEnvironment, job_environment: dict[str, str]
    ) -> None:
        self.core = core
        self.environment = environment
        self.job_environment = job_environment

    def spec(
        self, batch: Batch, throttle: int | None, python: str, code_path: str | None
    ) -> JobSpec:
        """What the scheduler renders the batch's job script from."""
        tasks = batch.tasks
        return JobSpec(
            job_dir=batch.job_dir,
            n_tasks=len(tasks),
            resources=tasks[0].resources,
            job_name=tasks[0].job_name,
            python=python,
            worker_path=self.core.worker_path,
            module_loads=tuple(self.core.config.module_loads),
            environment=self.job_environment,
            array_throttle=throttle,
            code_path=code_path,
        )

    async def submit(self, batch: Batch, throttle: int | None) -> list[str]:
        """Upload the job directory and submit it; return the job IDs (one per task).

        A lost connection (or a submit command that timed out) is retried, reconnecting
        with backoff, for up to ``connection_grace_s``; see the module docstring.
        """
        core = self.core
        tasks = batch.tasks
        lost_since: tuple[float, str] | None = None
        delay_s = 1.0
        while True:
            try:
                python, code_path = await self.environment.prepare(tasks[0].plan)
                spec = self.spec(batch, throttle, python, code_path)
                script_path = spec.path(_wire.SCRIPT_FILE)
                if batch.may_exist:
                    job_ids = await self._find_submitted(spec, script_path)
                    if job_ids is not None:
                        log.warning(
                            "clustrix: the submission of %s went through before the "
                            "connection was lost: job %s",
                            script_path,
                            job_ids[0],
                        )
                        return job_ids
                    batch.may_exist = False
                files = job_files(core.scheduler, batch, spec)
                argv = core.scheduler.submit_argv(spec, script_path)
                packed: bytes | None = None
                if core.transport.round_trips_are_costly:
                    packed = tar(files)  # sent with the submit command: one round trip
                else:
                    await upload(core.transport, batch.job_dir, files)
                batch.may_exist = True
                try:
                    result = await self._run_submit(
                        argv, tasks, job_dir=batch.job_dir, packed=packed
                    )
                except SubmissionError:
                    batch.may_exist = False  # refused: there is no job
                    raise
                try:
                    return core.scheduler.parse_submit(spec, result.stdout)
                except ValueError as exc:
                    raise SchedulerError(f"cannot read job IDs from {argv[0]}: {exc}") from exc
            except (ConnectionLostError, CommandTimeoutError) as exc:
                if isinstance(exc, CommandTimeoutError) and not batch.may_exist:
                    raise  # a slow upload or environment build: not worth repeating
                now = time.monotonic()
                if lost_since is None:
                    lost_since = (now, time.strftime("%Y-%m-%d %H:%M:%S"))
                started, wall = lost_since
                grace_s = core.config.connection_grace_s
                if now + delay_s - started > grace_s:
                    maybe = (
                        f"; the job may have been submitted: look for {batch.job_dir}/"
                        f"{_wire.SCRIPT_FILE} in the queue"
                        if batch.may_exist
                        else ""
                    )
                    raise type(exc)(
                        f"submission failed: connection to {core.transport.location} lost "
                        f"since {wall} (longer than connection_grace_s={grace_s:g}): "
                        f"{exc}{maybe}"
                    ) from exc
                log.warning(
                    "clustrix: submission interrupted (%s); retrying in %.0f s", exc, delay_s
                )
                core.stats["submit_reconnects"] += 1
                await asyncio.sleep(delay_s)
                delay_s = min(30.0, delay_s * 2)

    async def _find_submitted(self, spec: JobSpec, script_path: str) -> list[str] | None:
        """The job IDs of an earlier submission of ``script_path``, or None if there is
        none. Raises if the scheduler cannot tell (submitting again could run calls twice)."""
        scheduler = self.core.scheduler
        argv = scheduler.find_submitted_argv(script_path)
        if argv is None:
            raise SchedulerError(
                f"the connection was lost while {script_path} was being submitted, and "
                f"{scheduler.name} cannot tell whether the job exists; not submitting "
                "it twice"
            )
        result = await self.core.run(argv)
        if not result.ok:
            raise ConnectionLostError(  # retried like a lost connection: must know first
                f"cannot look up the interrupted submission: {result.stderr.strip()}"
            )
        return scheduler.parse_find_submitted(spec, result.stdout, script_path)

    async def _run_submit(
        self, argv: list[str], tasks: list[Task], *, job_dir: str, packed: bytes | None
    ) -> CommandResult:
        """Run the submit command; wait and retry while the scheduler says "not now".

        With ``packed`` (a tar of the job directory's files), one shell command creates the
        directory, unpacks it from stdin and then runs the submit command."""
        core = self.core
        deadline = time.monotonic() + core.config.submit_retry_s
        delay_s = 1.0
        command = argv
        if packed is not None:
            command = ["sh", "-c", UNPACK_AND_SUBMIT, "clustrix-submit", job_dir, *argv]
        while True:
            result = await core.run(command, counts_as=posixpath.basename(argv[0]), stdin=packed)
            if result.ok:
                return result
            if packed is not None and result.returncode == UNPACK_FAILED:
                raise TransportError(
                    f"cannot write the job directory {job_dir} on {core.transport.location}: "
                    f"{result.stderr.strip()[-500:]}; check remote_work_dir (space, "
                    "permissions)"
                )
            message = result.stderr.strip() or result.stdout.strip()
            if len(tasks) > 1 and core.scheduler.is_job_count_limit(message):
                # Maybe the whole array can never fit under the limit: send it in pieces.
                log.warning("clustrix: %s: %s; splitting the submission", argv[0], message)
                raise TooManyTasks
            if not core.scheduler.is_transient_submit_error(message) or (
                time.monotonic() + delay_s > deadline
            ):
                raise SubmissionError(
                    f"{argv[0]} refused the job (exit status {result.returncode}): {message}\n"
                    f"requested: {describe_request(tasks[0].resources)}; change these "
                    "(ClusterConfig or ex.options(...)) to what the cluster offers",
                    argv=argv,
                    stderr=result.stderr,
                )
            log.warning("clustrix: %s: %s; retrying in %.0f s", argv[0], message, delay_s)
            core.stats["submit_retries"] += 1
            await asyncio.sleep(delay_s)
            if not any(t.open() for t in tasks):
                raise NothingToSubmit  # every call was cancelled while we waited
            delay_s = min(60.0, delay_s * 2)
