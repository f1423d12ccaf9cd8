"""The engine: what an executor does on its event-loop thread.

It holds back calls beyond ``max_workers``, groups what is queued into one submission (a job
array where the scheduler has them), uploads the job directory, submits, and runs the ONE
monitor that polls all outstanding jobs per cycle and resolves their futures.

Every method whose name starts with ``_`` runs on the loop thread and touches the engine's
state without locks; the public methods are the thread-safe doors into it. The engine knows
the :class:`~clustrix.schedulers.base.Scheduler` and
:class:`~clustrix.transports.base.Transport` interfaces, never a particular one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import pickle
import posixpath
import secrets
import socket
import tarfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _wire
from ._bundle import worker_bundle
from ._loop import LoopThread
from ._remote_env import RemoteEnvironment
from ._serialize import Payload, decode_result
from .config import ClusterConfig, Resources
from .errors import (
    BrokenClusterExecutor,
    ClusterError,
    CommandTimeoutError,
    ConnectionLostError,
    JobFailedError,
    JobLostError,
    ResultAuthenticationError,
    SchedulerError,
    SubmissionError,
    TransportError,
)
from .future import ClusterFuture
from .monitor import parse_poll_output, poll_delay, poll_script
from .packaging import EnvironmentPlan
from .registry import JobRegistry, SubmissionRecord
from .schedulers.base import (
    ENDED_STATES,
    QUEUED_STATES,
    RUNNING_STATES,
    JobSpec,
    Scheduler,
    TaskStatus,
)
from .transports.base import CommandResult, Transport

__all__ = ["Engine", "Task"]

log = logging.getLogger("clustrix")

#: Submissions arriving less than this apart go out together (one job array) ...
BATCH_WINDOW_S = 0.005
#: ... unless the burst goes on for longer than this.
BATCH_MAX_WAIT_S = 0.1
#: At most this many results are fetched per round (bounds the memory of a huge map).
FETCH_ROUND = 512
#: At most this many file transfers in flight at once over one connection.
IO_CONCURRENCY = 64
#: Final states that say the infrastructure failed, not the call: retried (max_retries).
RETRY_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
#: At most this many consumed files are deleted by one poll command (keeps it short).
MAX_DELETE = 1000
#: How much of a failed job's stderr its error carries.
STDERR_TAIL_BYTES = 4000


@dataclass(eq=False)
class _Call:
    # Both dropped once the call is resolved: the engine keeps neither arguments nor results.
    future: ClusterFuture[Any] | None
    payload: Payload | None
    task: Task | None = None
    index: int = -1  # index within its submission: names its result file
    resolved: bool = False

    def __post_init__(self) -> None:
        # the executor-wide index the user sees as ClusterFuture.call_index
        self.call_id = self.future.call_index if self.future is not None else -1


@dataclass(eq=False)
class Task:
    """One job (or one array task): one or more calls (``chunksize``) sharing resources."""

    calls: list[_Call]
    resources: Resources
    job_name: str
    plan: EnvironmentPlan | None = None
    index: int = -1
    job_id: str | None = None
    batch: _Batch | None = None
    state: str = "HELD"
    grace_used: bool = False
    finalized: bool = False
    attempt: int = 0  # how many times it was resubmitted after an infrastructure failure

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
        calls = [_Call(f, p) for f, p in zip(futures, payloads, strict=True)]
        task = cls(calls, resources, job_name, plan)
        for call in task.calls:
            call.task = task
        return task

    @property
    def group_key(self) -> tuple[str, str, str, tuple[str, ...]]:
        """Tasks with equal keys can share one submission (same resources, same code)."""
        code = self.plan.code_hash if self.plan else ""
        requirements = self.plan.requirements if self.plan else ()
        return (self.resources.model_dump_json(), self.job_name, code, requirements)

    def open_calls(self) -> list[_Call]:
        """Calls still waiting for their outcome."""
        return [c for c in self.calls if not c.resolved]

    def set_state(self, state: str) -> None:
        """Record the scheduler's state on the task and its futures."""
        self.state = state
        for call in self.calls:
            if call.future is not None:
                call.future._job_state = state


@dataclass(eq=False)
class _Batch:
    """One submission: a job directory and the tasks it runs."""

    job_dir: str
    secret: bytes
    tasks: list[Task]
    throttle: int | None
    had_failure: bool = False
    paths: dict[str, _Call] = field(default_factory=dict)  # result path -> call
    submitted_at: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # given up on (connection lost): its jobs may still run
    #: The submit command ran (or may have) without a definite answer: the job may exist.
    may_exist: bool = False

    def unfinished(self) -> int:
        return sum(not t.finalized for t in self.tasks)

    def slots_in_use(self) -> int:
        n = self.unfinished()
        return min(n, self.throttle) if self.throttle else n


_JOB_SUBDIRS = (_wire.TASKS_DIR, _wire.RESULTS_DIR, _wire.LOGS_DIR, _wire.EXIT_DIR)
#: Exit status of _UNPACK_AND_SUBMIT when the job directory could not be written.
_UNPACK_FAILED = 97
#: ``sh -c`` script: $1 = job dir, then the submit command (run from the login directory,
#: which becomes the job's working directory). Private modes (umask 077); ``tar -m``: the
#: files get the cluster's time, not the client's.
_UNPACK_AND_SUBMIT = (
    "umask 077; d=$1; shift; mkdir -p -- "
    + " ".join(f'"$d/{sub}"' for sub in _JOB_SUBDIRS)
    + f' && tar -x -m -f - -C "$d" || exit {_UNPACK_FAILED}; exec "$@"'
)


def _tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (relative path -> content), every file mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _TooManyTasks(Exception):
    """The scheduler refused a submission for a job count limit it may never fit under."""


def _describe_request(resources: Resources) -> str:
    """The resource fields a job asked for, as ``name=value`` (those that were set)."""
    asked = resources.model_dump(exclude_defaults=True, exclude={"job_name", "max_retries"})
    asked.setdefault("cores", resources.cores)
    return ", ".join(f"{name}={value!r}" for name, value in sorted(asked.items()))


class Engine:
    """Submission, polling and resolution of futures for one executor."""

    def __init__(
        self,
        config: ClusterConfig,
        scheduler: Scheduler,
        transport: Transport,
        loop: LoopThread,
        *,
        max_workers: int | None,
        python: str,
        build_environment: bool,
        registry: JobRegistry,
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.transport = transport
        self.max_workers = max_workers
        self.python = python
        self.build_environment = build_environment
        self.registry = registry
        self._job_environment = dict(config.environment_variables)
        if config.max_result_mb is not None:  # the worker refuses bigger results
            self._job_environment["CLUSTRIX_MAX_RESULT_BYTES"] = str(
                int(config.max_result_mb * 1e6)
            )
        self._loop = loop
        self._held: deque[Task] = deque()
        self._enqueued = 0  # enqueue() calls so far: tells when a burst of them is over
        #: Most tasks per submission once the scheduler refused a bigger one for a job count
        #: limit (MaxSubmitJobs): an array that can never fit goes out in smaller pieces.
        self._tasks_cap: int | None = None
        self._batches: list[_Batch] = []
        self._call_of: dict[ClusterFuture[Any], _Call] = {}
        self._to_cancel: set[str] = set()
        self._finished_dirs: list[str] = []  # job dirs to delete at close (cleanup policy)
        self._consumed: list[str] = []  # files the next poll deletes (see _consume)
        self._lost_since: tuple[float, str] | None = None  # polls failing since (mono, wall)
        #: Counters: ``poll_cycles`` and ``commands.<program>`` run on the cluster.
        self.stats: Counter[str] = Counter()
        self._background: set[asyncio.Task[Any]] = set()
        self._broken: BaseException | None = None
        self.work_dir = self.jobs_root = self.worker_path = ""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect, prepare the work directory and worker runtime, read cluster facts."""
        self._wake_submitter = asyncio.Event()
        self._wake_monitor = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        await self.transport.connect()
        self.work_dir = await self.transport.expand(self.config.remote_work_dir)
        self.jobs_root = f"{self.work_dir}/jobs"
        bundle = worker_bundle()
        self.worker_path = f"{self.work_dir}/runtime/{bundle.filename}"
        self.environment = RemoteEnvironment(
            self.config,
            self.transport,
            self._run,
            self.stats,
            python=self.python,
            build_environment=self.build_environment,
            work_dir=self.work_dir,
            worker_path=self.worker_path,
        )
        if not await self.environment.check_python_and_layout():
            await self.transport.write_bytes(self.worker_path, bundle.data, mode=0o644)
        await self.scheduler.discover(self._run_scheduler_command)
        self._loops = [self._spawn(self._submitter()), self._spawn(self._monitor())]

    async def close(self) -> None:
        """Finish pending cancellations and clean-ups, then close the transport."""
        await self._flush_cancels()
        if self._finished_dirs:
            self._spawn(self._remove_quietly(self._finished_dirs))
            self._finished_dirs = []
        for task in getattr(self, "_loops", []):
            task.cancel()
        pending = [t for t in self._background if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        await self.transport.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _run(
        self, argv: Sequence[str], counts_as: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command on the cluster, counting it (by program) in :attr:`stats`."""
        name = counts_as or posixpath.basename(argv[0])
        if name == "sh" and len(argv) > 3:
            name = f"sh:{argv[3]}"  # sh -c <script> <name> ...: the script's own label
        self.stats[f"commands.{name}"] += 1
        return await self.transport.run(argv, timeout_s=self.config.command_timeout_s, stdin=stdin)

    async def _run_scheduler_command(self, argv: Sequence[str]) -> tuple[int, str, str]:
        result = await self._run(argv)
        return result.returncode, result.stdout, result.stderr

    # ------------------------------------------------------------------ thread-safe doors
    @property
    def broken(self) -> BaseException | None:
        """Why the engine stopped working, or None."""
        return self._broken

    def enqueue(self, tasks: list[Task]) -> None:
        """Queue tasks for submission (from any thread)."""
        self._loop.call_soon(self._on_enqueue, tasks)

    def cancel_calls(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls; cancel their jobs in the scheduler (from any thread)."""
        self._loop.call_soon(self._on_cancel, futures)

    def kill_call(self, future: ClusterFuture[Any]) -> bool:
        """Stop the job running ``future``'s call (blocking)."""
        return self._loop.run(self._kill(future))

    def read_log(self, future: ClusterFuture[Any], stream: str) -> str:
        """The text of a future's stdout or stderr log (blocking)."""
        path = future.stdout_path if stream == "out" else future.stderr_path
        if path is None:
            return ""
        try:
            data = self._loop.run(self.transport.read_bytes(path))
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace")

    def slots(self, resources: Resources) -> int | None:
        """How many jobs can run at once (for default chunking)."""
        known = self.scheduler.slots(resources)
        if self.max_workers is not None:
            return min(self.max_workers, known) if known else self.max_workers
        return known

    async def cancel_pending(self) -> None:
        """Cancel every call that has not started; one scheduler command for all."""
        pending = [f for f in self._call_of if not f.running() and not f.done()]
        cancelled = [f for f in pending if f.cancel()]
        self._on_cancel(cancelled)
        await self._flush_cancels()

    async def wait_idle(self) -> None:
        """Return once no call is outstanding."""
        await self._idle.wait()

    # ------------------------------------------------------------------ submission
    def _on_enqueue(self, tasks: list[Task]) -> None:
        if self._broken is not None:
            for task in tasks:
                for call in task.calls:
                    self._resolve(call, None, self._broken_error())
            return
        for task in tasks:
            for call in task.calls:
                assert call.future is not None
                self._call_of[call.future] = call
            self._held.append(task)
        self._enqueued += 1
        self._idle.clear()
        self._wake_submitter.set()

    def _free_slots(self) -> int:
        if self.max_workers is None:
            return self.scheduler.max_array_size
        return self.max_workers - sum(b.slots_in_use() for b in self._batches)

    def _take_batch(self, free: int) -> tuple[list[Task], int | None]:
        """The next tasks that can go out together, and the array throttle to use."""
        limit = self.scheduler.max_array_size
        if self._tasks_cap is not None:
            limit = min(limit, self._tasks_cap)
        if not self.scheduler.supports_array_throttle:
            limit = min(limit, free)
        key = self._held[0].group_key
        taken: list[Task] = []
        others: deque[Task] = deque()
        while self._held and len(taken) < limit:
            task = self._held.popleft()
            if not task.open_calls():
                continue  # every call was cancelled while held
            (taken if task.group_key == key else others).append(task)
        others.extend(self._held)
        self._held = others
        throttle = free if self.max_workers is not None and len(taken) > free else None
        return taken, throttle

    async def _submitter(self) -> None:
        while True:
            await self._wake_submitter.wait()
            await self._let_the_burst_gather()
            self._wake_submitter.clear()
            try:
                while self._held and self._free_slots() > 0:
                    while self._held and not self._held[0].open_calls():
                        self._held.popleft()
                    if not self._held:
                        break
                    tasks, throttle = self._take_batch(self._free_slots())
                    if tasks:
                        await self._submit_batch(tasks, throttle)
            except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
                self._break(exc)
                return
            self._update_idle()

    async def _let_the_burst_gather(self) -> None:
        """Wait while submit() calls keep coming (a loop of them on a busy machine can be
        milliseconds apart), so that they go out as one submission."""
        deadline = time.monotonic() + BATCH_MAX_WAIT_S
        while True:
            seen = self._enqueued
            await asyncio.sleep(BATCH_WINDOW_S)
            if self._enqueued == seen or time.monotonic() > deadline:
                return

    def _spec(
        self,
        job_dir: str,
        tasks: list[Task],
        throttle: int | None,
        python: str,
        code_path: str | None,
    ) -> JobSpec:
        return JobSpec(
            job_dir=job_dir,
            n_tasks=len(tasks),
            resources=tasks[0].resources,
            job_name=tasks[0].job_name,
            python=python,
            worker_path=self.worker_path,
            module_loads=tuple(self.config.module_loads),
            environment=self._job_environment,
            array_throttle=throttle,
            code_path=code_path,
        )

    async def _submit_batch(self, tasks: list[Task], throttle: int | None) -> None:
        job_dir = f"{self.jobs_root}/{uuid.uuid4().hex}"
        batch = _Batch(job_dir, secrets.token_bytes(32), tasks, throttle)
        call_index = 0
        for task_index, task in enumerate(tasks):
            task.index, task.batch = task_index, batch
            task.set_state("SUBMITTING")
            for call in task.calls:
                call.index = call_index
                call_index += 1
                if call.future is not None:
                    batch.paths[self._result_path(batch, call)] = call
                    call.future._job_dir, call.future._task_index = job_dir, task_index
        self._batches.append(batch)
        try:
            job_ids = await self._submit_until_accepted(batch, throttle)
        except _TooManyTasks:
            self._split(batch)
            return
        except (ClusterError, OSError) as exc:
            error = exc if isinstance(exc, ClusterError) else TransportError(str(exc))
            for task in tasks:
                task.finalized = True
                task.set_state("FAILED")
                for call in task.open_calls():
                    self._resolve(call, None, error)
            self._batches.remove(batch)
            if not batch.may_exist:  # else the job may run: keep what it needs
                self._spawn(self._remove_quietly([job_dir]))
            self._wake_submitter.set()
            return
        for task in tasks:
            if not task.resources.max_retries:
                for call in task.calls:
                    call.payload = None  # submitted: do not keep the arguments alive
        self._register(batch, job_ids)
        for task, job_id in zip(tasks, job_ids, strict=True):
            task.job_id = job_id
            for call in task.open_calls():
                assert call.future is not None
                call.future._job_id = job_id
            task.set_state("PENDING")
            if not task.open_calls():  # cancelled while we were uploading
                self._to_cancel.add(job_id)
        if self._to_cancel:
            await self._flush_cancels()
        self._wake_monitor.set()

    async def _submit_until_accepted(self, batch: _Batch, throttle: int | None) -> list[str]:
        """Upload the job directory and submit it; return the job IDs.

        A lost connection (or a submit command that timed out) is retried, reconnecting
        with backoff, for up to ``connection_grace_s``. If it happened while the submit command
        ran, the scheduler may have the job already: it is looked up by its script before
        anything is submitted again, so that no call runs twice.
        """
        tasks = batch.tasks
        lost_since: tuple[float, str] | None = None
        delay_s = 1.0
        while True:
            try:
                python, code_path = await self.environment.prepare(tasks[0].plan)
                spec = self._spec(batch.job_dir, tasks, throttle, python, code_path)
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
                files = self._job_files(batch, spec)
                argv = self.scheduler.submit_argv(spec, script_path)
                packed: bytes | None = None
                if self.transport.round_trips_are_costly:
                    packed = _tar(files)  # sent with the submit command: one round trip
                else:
                    await self._upload(batch.job_dir, files)
                batch.may_exist = True
                try:
                    result = await self._submit_with_retries(
                        argv, tasks, job_dir=batch.job_dir, packed=packed
                    )
                except SubmissionError:
                    batch.may_exist = False  # refused: there is no job
                    raise
                try:
                    return self.scheduler.parse_submit(spec, result.stdout)
                except ValueError as exc:
                    raise SchedulerError(f"cannot read job IDs from {argv[0]}: {exc}") from exc
            except (ConnectionLostError, CommandTimeoutError) as exc:
                if isinstance(exc, CommandTimeoutError) and not batch.may_exist:
                    raise  # a slow upload or environment build: not worth repeating
                now = time.monotonic()
                if lost_since is None:
                    lost_since = (now, time.strftime("%Y-%m-%d %H:%M:%S"))
                started, wall = lost_since
                if now + delay_s - started > self.config.connection_grace_s:
                    maybe = (
                        f"; the job may have been submitted: look for {batch.job_dir}/"
                        f"{_wire.SCRIPT_FILE} in the queue"
                        if batch.may_exist
                        else ""
                    )
                    raise type(exc)(
                        f"submission failed: connection to {self.transport.location} lost "
                        f"since {wall} (longer than connection_grace_s="
                        f"{self.config.connection_grace_s:g}): {exc}{maybe}"
                    ) from exc
                log.warning(
                    "clustrix: submission interrupted (%s); retrying in %.0f s", exc, delay_s
                )
                self.stats["submit_reconnects"] += 1
                await asyncio.sleep(delay_s)
                delay_s = min(30.0, delay_s * 2)

    async def _find_submitted(self, spec: JobSpec, script_path: str) -> list[str] | None:
        """The job IDs of an earlier submission of ``script_path``, or None if there is
        none. Raises if the scheduler cannot tell (submitting again could run calls twice)."""
        argv = self.scheduler.find_submitted_argv(script_path)
        if argv is None:
            raise SchedulerError(
                f"the connection was lost while {script_path} was being submitted, and "
                f"{self.scheduler.name} cannot tell whether the job exists; not submitting "
                "it twice"
            )
        result = await self._run(argv)
        if not result.ok:
            raise ConnectionLostError(  # retried like a lost connection: must know first
                f"cannot look up the interrupted submission: {result.stderr.strip()}"
            )
        return self.scheduler.parse_find_submitted(spec, result.stdout, script_path)

    async def _submit_with_retries(
        self, argv: list[str], tasks: list[Task], *, job_dir: str, packed: bytes | None
    ) -> CommandResult:
        """Run the submit command; wait and retry while the scheduler says "not now"
        (submission rate limits, MaxSubmitJobs, a busy controller) rather than fail.

        With ``packed`` (a tar of the job directory's files), one shell command creates the
        directory, unpacks it from stdin and then runs the submit command."""
        deadline = time.monotonic() + self.config.submit_retry_s
        delay_s = 1.0
        command = argv
        if packed is not None:
            command = ["sh", "-c", _UNPACK_AND_SUBMIT, "clustrix-submit", job_dir, *argv]
        while True:
            result = await self._run(command, counts_as=posixpath.basename(argv[0]), stdin=packed)
            if result.ok:
                return result
            if packed is not None and result.returncode == _UNPACK_FAILED:
                raise TransportError(
                    f"cannot write the job directory {job_dir} on {self.transport.location}: "
                    f"{result.stderr.strip()[-500:]}; check remote_work_dir (space, "
                    "permissions)"
                )
            message = result.stderr.strip() or result.stdout.strip()
            if len(tasks) > 1 and self.scheduler.is_job_count_limit(message):
                # Maybe the whole array can never fit under the limit: send it in pieces.
                log.warning("clustrix: %s: %s; splitting the submission", argv[0], message)
                raise _TooManyTasks
            if not self.scheduler.is_transient_submit_error(message) or (
                time.monotonic() + delay_s > deadline
            ):
                raise SubmissionError(
                    f"{argv[0]} refused the job (exit status {result.returncode}): {message}\n"
                    f"requested: {_describe_request(tasks[0].resources)}; change these "
                    "(ClusterConfig or ex.options(...)) to what the cluster offers",
                    argv=argv,
                    stderr=result.stderr,
                )
            log.warning("clustrix: %s: %s; retrying in %.0f s", argv[0], message, delay_s)
            for task in tasks:
                task.set_state("SUBMITTING")
            self.stats["submit_retries"] += 1
            await asyncio.sleep(delay_s)
            delay_s = min(60.0, delay_s * 2)

    def _split(self, batch: _Batch) -> None:
        """Put the tasks of a submission refused for its size back in front of the queue,
        and send at most half as many per submission from now on."""
        tasks = batch.tasks
        self._tasks_cap = max(1, len(tasks) // 2)
        self.stats["submit_splits"] += 1
        for task in tasks:
            task.index, task.batch = -1, None
            task.set_state("HELD")
            for call in task.calls:
                call.index = -1
                if call.future is not None:
                    call.future._job_dir = call.future._task_index = None
        self._batches.remove(batch)
        self._spawn(self._remove_quietly([batch.job_dir]))
        self._held.extendleft(reversed(tasks))
        self._wake_submitter.set()

    def _register(self, batch: _Batch, job_ids: list[str]) -> None:
        """Record the submission in the local registry, for :meth:`recover` after a crash."""
        record = SubmissionRecord(
            job_dir=batch.job_dir,
            location=self.transport.location,
            work_dir=self.work_dir,
            secret_hex=batch.secret.hex(),
            function=batch.tasks[0].job_name,
            job_ids=list(job_ids),
            calls=[[c.index for c in t.calls] for t in batch.tasks],
            call_ids=[[c.call_id for c in t.calls] for t in batch.tasks],
            submitted_at=time.time(),
            pid=os.getpid(),
            hostname=socket.gethostname(),
        )
        try:
            self.registry.add(record)
        except OSError as exc:  # the jobs run anyway; only a later recover() would miss them
            log.warning("clustrix: cannot write the job registry: %s", exc)

    async def recover(self) -> list[ClusterFuture[Any]]:
        """Futures for every call of submissions to this cluster and work dir whose
        submitting process has died; nothing is resubmitted."""
        futures: list[ClusterFuture[Any]] = []
        for record in self.registry.pending(self.transport.location, self.work_dir):
            futures.extend(self._adopt(record))
        return futures

    def _adopt(self, record: SubmissionRecord) -> list[ClusterFuture[Any]]:
        batch = _Batch(record.job_dir, bytes.fromhex(record.secret_hex), [], throttle=None)
        futures: list[ClusterFuture[Any]] = []
        resources = self.config.resources()
        for index, (job_id, calls, call_ids) in enumerate(
            zip(record.job_ids, record.calls, record.call_ids, strict=True)
        ):
            task = Task([], resources, record.function, index=index, job_id=job_id, batch=batch)
            for call_index, call_id in zip(calls, call_ids, strict=True):
                future: ClusterFuture[Any] = ClusterFuture(self, call_id)
                future._job_id, future._job_dir, future._task_index = job_id, batch.job_dir, index
                call = _Call(future, None, task, call_index)
                task.calls.append(call)
                batch.paths[self._result_path(batch, call)] = call
                self._call_of[future] = call
                futures.append(future)
            task.set_state("PENDING")
            batch.tasks.append(task)
        self._batches.append(batch)
        self.registry.add(
            dataclasses.replace(record, pid=os.getpid(), hostname=socket.gethostname())
        )
        self._idle.clear()
        self._wake_monitor.set()
        return futures

    def _job_files(self, batch: _Batch, spec: JobSpec) -> dict[str, bytes]:
        """The files of a job directory, by path relative to it."""
        files: dict[str, bytes] = {
            _wire.SECRET_FILE: batch.secret,
            _wire.SCRIPT_FILE: self.scheduler.render_script(spec).encode(),
        }
        for task in batch.tasks:
            calls = [(c.index, *c.payload) for c in task.open_calls() if c.payload is not None]
            body = pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL)
            files[f"{_wire.TASKS_DIR}/{task.index}{_wire.SUFFIX}"] = _wire.seal(batch.secret, body)
        return files

    async def _upload(self, job_dir: str, files: dict[str, bytes]) -> None:
        """Create the job directory and write ``files`` into it, one operation each."""
        t = self.transport
        await t.makedirs(job_dir)
        await asyncio.gather(*(t.makedirs(f"{job_dir}/{d}") for d in _JOB_SUBDIRS))
        limit = asyncio.Semaphore(IO_CONCURRENCY)

        async def put(name: str, data: bytes) -> None:
            async with limit:
                await t.write_bytes(f"{job_dir}/{name}", data, mode=0o600)

        await asyncio.gather(*(put(name, data) for name, data in files.items()))

    # ------------------------------------------------------------------ monitor
    async def _monitor(self) -> None:
        while True:
            if not self._batches:
                await self._wake_monitor.wait()
                self._wake_monitor.clear()
                continue
            try:
                await self._poll_once()
                self._lost_since = None
            except (TransportError, OSError) as exc:
                # The connection may come back (the transport reconnects on the next call);
                # futures keep waiting, up to the grace period.
                self._connection_trouble(exc)
            except Exception as exc:  # a bug: fail loudly rather than leave futures hanging
                self._break(exc)
                return
            newest = max((b.submitted_at for b in self._batches), default=time.monotonic())
            delay = poll_delay(
                time.monotonic() - newest,
                self.config.poll_interval_min_s,
                self.config.poll_interval_max_s,
            )
            if self._lost_since is not None:
                delay = max(delay, self._reconnect_delay())
            with contextlib.suppress(asyncio.TimeoutError):  # woken early by a submission
                await asyncio.wait_for(self._wake_monitor.wait(), delay)
            self._wake_monitor.clear()

    def _reconnect_delay(self) -> float:
        """Back off while the cluster cannot be reached: 1, 2, 4 ... 30 s since the loss,
        but often enough that the grace period ends on time."""
        assert self._lost_since is not None
        lost_for_s = time.monotonic() - self._lost_since[0]
        backoff_s = min(30.0, max(1.0, lost_for_s))  # doubles the wait with each retry
        return min(backoff_s, max(1.0, self.config.connection_grace_s / 4))

    def _connection_trouble(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = (now, time.strftime("%Y-%m-%d %H:%M:%S"))
            log.warning("clustrix: lost touch with %s, retrying: %s", self.transport.location, exc)
        started, wall = self._lost_since
        if now - started < self.config.connection_grace_s:
            return
        job_ids = sorted({t.job_id for b in self._batches for t in b.tasks if t.job_id})
        error = TransportError(
            f"connection to {self.transport.location} lost since {wall} "
            f"({now - started:.0f} s, longer than connection_grace_s="
            f"{self.config.connection_grace_s:g}): {exc}. The jobs may still run on the "
            f"cluster: {', '.join(job_ids[:20])}{' ...' if len(job_ids) > 20 else ''}"
        )
        for batch in list(self._batches):
            batch.abandoned = True  # a later process can still recover() it
            for task in batch.tasks:
                for call in task.open_calls():
                    self._resolve(call, None, error)
                task.finalized = True
        self._retire_batches()
        self._lost_since = None

    def _result_path(self, batch: _Batch, call: _Call) -> str:
        return f"{batch.job_dir}/{_wire.RESULTS_DIR}/{call.index}{_wire.SUFFIX}"

    async def _poll_once(self) -> bool:
        """One status round trip for every outstanding job; True if anything changed."""
        batches = list(self._batches)
        tasks = [t for b in batches for t in b.tasks if not t.finalized and t.job_id]
        if not tasks:
            return False
        job_ids = [t.job_id for t in tasks if t.job_id]
        status_argv = self.scheduler.status_argv(job_ids)
        consumed, self._consumed = self._consumed[:MAX_DELETE], self._consumed[MAX_DELETE:]
        script = poll_script(status_argv, [b.job_dir for b in batches], self.jobs_root, consumed)
        self.stats["poll_cycles"] += 1
        result = await self._run(["sh", "-c", script], counts_as=status_argv[0])
        seen = parse_poll_output(result.stdout)
        status_ok = seen.status_ok or self.scheduler.status_ok_anyway(seen.status_text)
        statuses = self.scheduler.parse_status(seen.status_text) if status_ok else {}
        if not status_ok:
            log.warning("clustrix: scheduler status failed: %s", seen.status_text.strip()[-500:])

        changed = False
        new = [
            call
            for batch in batches
            for path, call in batch.paths.items()
            if not call.resolved and path in seen.result_paths
        ]
        if new:
            changed = True
            await self._fetch_results(new)

        ended: list[tuple[Task, TaskStatus | None, int | None]] = []
        for task in tasks:
            assert task.batch is not None and task.job_id is not None
            status = statuses.get(task.job_id)
            exit_code = seen.exit_codes.get(f"{task.batch.job_dir}/{_wire.EXIT_DIR}/{task.index}")
            if status is not None and status.state != task.state:
                task.set_state(status.state)
                changed = True
            if status is not None and status.state in RUNNING_STATES:
                for call in task.open_calls():
                    assert call.future is not None
                    call.future._mark_running()
            gone = status_ok and (status is None or status.state in ENDED_STATES)
            if status is not None and status.state in QUEUED_STATES:
                # requeued (preempted, node failure): an exit status is from the run before
                exit_code, task.grace_used = None, False
            if exit_code is None and not gone:
                continue
            if not task.open_calls():
                self._finalize(task, status, exit_code)
                changed = True
            elif not task.grace_used:
                # Results on a shared filesystem may show up a moment after the job ends.
                task.grace_used = True
            else:
                ended.append((task, status, exit_code))
        if ended:
            changed = True
            await self._fail_ended(ended)
        self._retire_batches()
        return changed

    async def _fetch_results(self, calls: list[_Call]) -> None:
        # In rounds: 10,000 results that show up at once must not mean 10,000 reads (and
        # their data) in flight together.
        for start in range(0, len(calls), FETCH_ROUND):
            await self._fetch_round(calls[start : start + FETCH_ROUND])

    async def _fetch_round(self, calls: list[_Call]) -> None:
        limit = asyncio.Semaphore(IO_CONCURRENCY)

        async def fetch(call: _Call) -> bytes:
            assert call.task is not None and call.task.batch is not None
            async with limit:
                return await self.transport.read_bytes(self._result_path(call.task.batch, call))

        datas = await asyncio.gather(*(fetch(c) for c in calls), return_exceptions=True)
        for call, data in zip(calls, datas, strict=True):
            if call.resolved:
                continue  # cancelled or killed meanwhile
            if isinstance(data, BaseException):
                log.warning("clustrix: cannot read a result yet, will retry: %s", data)
                continue
            assert call.task is not None and call.task.batch is not None
            try:
                record = _wire.load_record(call.task.batch.secret, data)
            except (ValueError, pickle.UnpicklingError) as exc:
                error = ResultAuthenticationError(
                    f"result of job {call.task.job_id} rejected ({exc}); it was not written "
                    "by this executor's worker, so it was not unpickled"
                )
                self._resolve(call, None, error)
                continue
            value, exception = decode_result(record)
            self._resolve(call, value, exception)

    async def _fail_ended(self, ended: list[tuple[Task, TaskStatus | None, int | None]]) -> None:
        """Fail the calls of jobs that ended without writing their results."""
        unknown = [
            t.job_id for t, s, _ in ended if t.job_id and (s is None or s.state not in ENDED_STATES)
        ]
        details: dict[str, TaskStatus] = {}
        argv = self.scheduler.detail_argv(unknown) if unknown else None
        if argv:
            try:
                result = await self._run(argv)
                details = self.scheduler.parse_detail(result.stdout)
            except TransportError as exc:
                log.warning("clustrix: cannot read final job states: %s", exc)

        async def tail(task: Task) -> str:
            assert task.batch is not None
            path = f"{task.batch.job_dir}/{_wire.LOGS_DIR}/{task.index}.err"
            try:
                data = await self.transport.read_tail(path, STDERR_TAIL_BYTES)
            except (OSError, TransportError):
                return ""
            return data.decode(errors="replace")

        tails = await asyncio.gather(*(tail(t) for t, _, _ in ended))
        for (task, status, exit_code), stderr_tail in zip(ended, tails, strict=True):
            detail = details.get(task.job_id or "")
            final = status if status is not None and status.state in ENDED_STATES else detail
            if exit_code is None and final is not None:
                exit_code = final.exit_code
            if final is not None:
                state = final.state
            elif exit_code is not None:
                state = "FAILED" if exit_code else "COMPLETED"
            else:
                state = ""
            error: JobFailedError
            if not state:
                error = JobLostError(
                    task.job_id,
                    "UNKNOWN",
                    stderr_tail=stderr_tail,
                    reason="the job left the scheduler without a result or an exit status",
                )
            else:
                if exit_code == 0:
                    reason = "the worker exited before writing this call's result"
                elif exit_code == _wire.EXIT_REQUEUE:
                    reason = (
                        "the call checkpointed but the job could not be requeued (see "
                        "stderr; SLURM's MaxBatchRequeue limits requeues per job)"
                    )
                else:
                    reason = final.reason if final is not None else ""
                error = JobFailedError(
                    task.job_id,
                    state,
                    exit_code=exit_code,
                    stderr_tail=stderr_tail,
                    reason=reason,
                )
            if state in RETRY_STATES and self._retry(task, state):
                self._finalize(task, final, exit_code)
                continue
            for call in task.open_calls():
                self._resolve(call, None, error)
            self._finalize(task, final, exit_code)

    def _retry(self, task: Task, state: str) -> bool:
        """Queue the task's open calls again after an infrastructure failure, if allowed
        (``max_retries``). Calls that raised are never retried: they have results."""
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
            self._call_of[new.future] = new
            new.future._job_id, new.future._job_state = None, "HELD"
        log.warning(
            "clustrix: job %s ended with %s; resubmitting its %d call(s) (retry %d of %d)",
            task.job_id,
            state,
            len(calls),
            retry.attempt,
            task.resources.max_retries,
        )
        self.stats["retries"] += 1
        self._held.appendleft(retry)
        self._wake_submitter.set()
        return True

    def _consume(self, path: str) -> None:
        """A file read for the last time: the next poll deletes it (unless kept for good)."""
        if self.config.cleanup != "never":
            self._consumed.append(path)

    def _finalize(self, task: Task, status: TaskStatus | None, exit_code: int | None) -> None:
        task.finalized = True
        if exit_code == 0 and task.batch is not None:
            # Results stay until the whole submission is collected (a process that
            # reattaches after a crash reads them again); a clean exit file is not needed.
            self._consume(f"{task.batch.job_dir}/{_wire.EXIT_DIR}/{task.index}")
        if status is not None and status.state in ENDED_STATES:
            task.set_state(status.state)
        elif exit_code is not None:
            task.set_state("COMPLETED" if exit_code == 0 else "FAILED")
        self._wake_submitter.set()  # a slot is free

    def _retire_batches(self) -> None:
        for batch in [b for b in self._batches if not b.unfinished()]:
            self._batches.remove(batch)
            if batch.abandoned:
                continue  # its jobs may still run: keep the files and the registry entry
            self.registry.remove(batch.job_dir)
            policy = self.config.cleanup
            if policy == "always" or (policy == "on_success" and not batch.had_failure):
                # Arguments and results go now; the logs stay readable (future.stdout())
                # until the executor shuts down.
                self._spawn(
                    self._remove_quietly(
                        [
                            f"{batch.job_dir}/{_wire.TASKS_DIR}",
                            f"{batch.job_dir}/{_wire.RESULTS_DIR}",
                        ]
                    )
                )
                self._finished_dirs.append(batch.job_dir)
        self._update_idle()

    async def _remove_quietly(self, paths: list[str]) -> None:
        """``rm -rf`` many paths with few commands; a failure is only logged."""
        for i in range(0, len(paths), 200):
            argv = ["rm", "-rf", "--", *paths[i : i + 200]]
            try:
                result = await self._run(argv)
            except TransportError as exc:
                log.info("clustrix: could not remove job files: %s", exc)
                return
            if not result.ok:
                log.info("clustrix: could not remove job files: %s", result.stderr.strip())

    def _update_idle(self) -> None:
        if not self._call_of and not self._batches and not self._held:
            self._idle.set()

    # ------------------------------------------------------------------ resolution
    def _forget(self, call: _Call) -> ClusterFuture[Any] | None:
        """Mark ``call`` resolved and drop every reference to its future and arguments."""
        future = call.future
        if future is not None:
            self._call_of.pop(future, None)
        call.resolved = True
        call.future = call.payload = None
        batch = call.task.batch if call.task is not None else None
        if batch is not None:
            batch.paths.pop(self._result_path(batch, call), None)
        return future

    def _resolve(self, call: _Call, value: Any, exception: BaseException | None) -> None:
        future = self._forget(call)
        if future is None:
            return
        batch = call.task.batch if call.task is not None else None
        if batch is not None and exception is not None:
            batch.had_failure = True
        if not future._mark_running():
            return  # cancelled by the user: the outcome has no taker
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)

    def _broken_error(self) -> BrokenClusterExecutor:
        error = BrokenClusterExecutor(f"the executor stopped working: {self._broken!r}")
        error.__cause__ = self._broken
        return error

    def _break(self, exc: BaseException) -> None:
        log.error("clustrix: executor engine failed", exc_info=exc)
        self._broken = exc
        error = self._broken_error()
        for call in list(self._call_of.values()):
            self._resolve(call, None, error)
        self._held.clear()
        self._batches.clear()
        self._update_idle()

    # ------------------------------------------------------------------ cancellation
    def _on_cancel(self, futures: list[ClusterFuture[Any]]) -> None:
        for future in futures:
            call = self._call_of.get(future)
            if call is None or call.resolved:
                continue
            self._forget(call)
            task = call.task
            if task is None or task.job_id is None or task.finalized:
                continue  # held or still being submitted: the submitter skips it
            if not task.open_calls():
                self._to_cancel.add(task.job_id)
        if self._to_cancel:
            self._spawn(self._flush_cancels())
        self._update_idle()

    async def _flush_cancels(self) -> None:
        """One scheduler command cancels every job collected so far."""
        await asyncio.sleep(0)  # let cancellations of the same burst join in
        if not self._to_cancel:
            return
        job_ids = sorted(self._to_cancel)
        self._to_cancel.clear()
        argv = self.scheduler.cancel_argv(job_ids)
        try:
            result = await self._run(argv)
        except TransportError as exc:
            log.warning("clustrix: could not cancel jobs %s: %s", job_ids, exc)
            return
        if not result.ok:  # usually: some jobs had finished already
            log.info("clustrix: %s: %s", argv[0], result.stderr.strip())

    async def _kill(self, future: ClusterFuture[Any]) -> bool:
        call = self._call_of.get(future)
        if call is None or call.task is None:
            return False
        task = call.task
        if task.job_id is None:
            return future.cancel()
        argv = self.scheduler.cancel_argv([task.job_id])
        await self._run(argv)
        error = JobFailedError(task.job_id, "CANCELLED", reason="stopped by kill()")
        for other in task.open_calls():
            self._resolve(other, None, error)
        self._update_idle()
        return True
