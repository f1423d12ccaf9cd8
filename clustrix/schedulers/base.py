"""The scheduler interface: render a job script, build argv, parse output.

A backend is small and mostly pure. It never runs anything itself (the executor's engine runs
the argv it builds through a transport) and never knows which transport that is; the one
exception is :meth:`Scheduler.discover`, which reads a few facts about the cluster once
(a backend whose discovery is one command says which, :meth:`Scheduler.discovery_argv`, and
reads its answer, :meth:`Scheduler.read_discovery_answer`: the engine then runs it inside
its first command, one round trip less).
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import _wire
from ..config import ClusterConfig, Resources
from ..lifecycle import JobState
from ..worker import BOOTSTRAP

__all__ = [
    "JobSpec",
    "Scheduler",
    "TaskStatus",
    "render_body",
    "setup_lines",
]

RunCommand = Callable[[Sequence[str]], Awaitable[tuple[int, str, str]]]


@dataclass(frozen=True)
class TaskStatus:
    """What the scheduler says about one job (or one array task), in its own words
    (``state`` is the native word: :meth:`Scheduler.lifecycle` maps it)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """One submission: a job, or an array of ``n_tasks`` jobs, sharing a job directory."""

    job_dir: str
    n_tasks: int
    resources: Resources
    job_name: str
    python: str
    worker_path: str
    module_loads: Sequence[str] = ()
    environment: dict[str, str] = field(default_factory=dict)
    #: At most this many tasks of the array run at once (``--array=…%N``); None: no limit.
    array_throttle: int | None = None
    #: Directory of the user's shipped local code, put on PYTHONPATH after the runtime.
    code_path: str | None = None

    def path(self, *parts: str) -> str:
        """A path inside the job directory."""
        return "/".join((self.job_dir, *parts))


def setup_lines(module_loads: Sequence[str], environment: dict[str, str]) -> list[str]:
    """``module load`` and ``export`` lines (every value quoted), run before the worker."""
    q = shlex.quote
    lines = [f"module load {q(module)}" for module in module_loads]
    lines += [f"export {name}={q(value)}" for name, value in environment.items()]
    return lines


def render_body(spec: JobSpec, task_index: str, *, requeue_command: str | None = None) -> str:
    """The part of every job script after the scheduler's directives.

    ``task_index`` is a shell expression giving this task's index (e.g.
    ``${SLURM_ARRAY_TASK_ID:-0}``). Every user-supplied value is quoted with
    :func:`shlex.quote`. The worker runs as a child so the script can record its exit status
    even when the job is asked to stop (TERM is passed on to the worker).

    With ``requeue_command`` (a shell command requeueing this job) and
    ``checkpoint_before_s`` set, the checkpoint signal (USR2) is passed on to the worker too,
    and a worker that checkpointed (exit status :data:`clustrix._wire.EXIT_REQUEUE`) gets its
    job requeued instead of an exit status: the job is not over.
    """
    q = shlex.quote
    checkpoint = requeue_command is not None and spec.resources.checkpoint_before_s is not None
    # The task index is read before the user's variables are exported (a user variable
    # named like the scheduler's must not move the task), and the script's own variables
    # carry a _clx_ prefix that user variables may not use (see ClusterConfig).
    # umask 077: what the job creates (logs, __pycache__ of shipped code, results) is
    # private even where the scheduler does not pass on the submitter's umask.
    lines = ["set -u", "umask 077", f"_clx_task={task_index}"]
    lines += setup_lines(spec.module_loads, spec.environment)
    python_path = spec.worker_path + (f":{spec.code_path}" if spec.code_path else "")
    lines += [
        f"_clx_job_dir={q(spec.job_dir)}",
        f"_clx_exit_dir={q(spec.path(_wire.EXIT_DIR))}",
        "# a run before a requeue (preemption, node failure) may have left its exit status",
        'if [ -e "$_clx_exit_dir/$_clx_task" ]; then rm -f "$_clx_exit_dir/$_clx_task"; fi',
    ]
    worker_env = ""
    if checkpoint:
        worker_env = f"{_wire.CHECKPOINT_SIGNAL_ENV}=USR2 "
        lines += [
            "# USR2 ignored until the worker's handler is in place (ignoring survives exec)",
            "trap '' USR2",
        ]
    lines += [
        "# PYTHONSAFEPATH: a 'clustrix' directory in the job's cwd must not shadow the runtime",
        f"{worker_env}PYTHONSAFEPATH=1 "
        f'PYTHONPATH={q(python_path)}"${{PYTHONPATH:+:$PYTHONPATH}}" \\',
        f'  {q(spec.python)} -c {q(BOOTSTRAP)} clustrix.worker run "$_clx_job_dir" "$_clx_task" &',
        "_clx_child=$!",
        "trap '_clx_sig=1; kill -TERM \"$_clx_child\" 2>/dev/null' TERM INT HUP",
    ]
    if checkpoint:
        lines.append("trap '_clx_sig=1; kill -USR2 \"$_clx_child\" 2>/dev/null' USR2")
    lines += [
        '# a trapped signal interrupts "wait" (status 128+n): wait again for the real status,',
        "# unless the worker is gone and its status with it (a zombie still counts: dash",
        "# waits for it; bash reaps on its own, and waiting again there returns -1, or",
        "# blocks while another child lives)",
        "_clx_sig=1",
        'while [ "$_clx_sig" = 1 ]; do _clx_sig=0; wait "$_clx_child"; _clx_rc=$?',
        '  kill -0 "$_clx_child" 2>/dev/null || break; done',
    ]
    if checkpoint:
        lines += [
            f'if [ "$_clx_rc" = {_wire.EXIT_REQUEUE} ]; then',
            "  echo 'clustrix: the worker checkpointed; requeueing the job' >&2",
            f"  {requeue_command} && exit 0",
            "  echo 'clustrix: the job could not be requeued' >&2",
            "fi",
        ]
    lines += [
        "# written in place, no temp file and mv (a process, ~1 ms of every task): a reader",
        "# that comes between the create and the one write sees an empty file, which counts",
        "# as none (the poll's grep prints nothing for it)",
        'printf \'%s\\n\' "$_clx_rc" > "$_clx_exit_dir/$_clx_task"',
        'exit "$_clx_rc"',
    ]
    return "\n".join(lines) + "\n"


class Scheduler(ABC):
    """What a backend implements. All methods but :meth:`discover` are pure.

    What a backend can do is declared in the class attributes below, which the engine reads;
    it never tests a backend by its name.
    """

    #: Name used in ``ClusterConfig.cluster_type`` (the registry's key).
    name: str = ""
    #: True if one submission can start many tasks with a concurrency limit (``%N``).
    supports_array_throttle: bool = False
    #: Largest number of tasks in one submission (1: no arrays).
    max_array_size: int = 1_000_000
    #: True if a job can be signalled before its time limit and requeued (checkpointing).
    supports_requeue: bool = False
    #: The backend's native state words and the lifecycle state each one means. A word not
    #: listed counts as :attr:`~clustrix.lifecycle.JobState.QUEUED` (alive, not running):
    #: a scheduler's new word never ends a job by mistake.
    native_states: Mapping[str, JobState] = {}
    #: Said when a checkpointed job could not be requeued (the scheduler's own limits).
    requeue_refused_hint: str = "see the job's stderr"
    #: Generic resource fields (``Resources``) this backend cannot honour: asking for one
    #: is a :class:`~clustrix.errors.ConfigError` at submission, never silently ignored.
    unsupported_resources: frozenset[str] = frozenset()
    #: What that error proposes besides leaving them unset.
    unsupported_fix: str = "give the scheduler's own option in extra_directives"
    #: True if a status poll asks a daemon that the cluster's users share (slurmctld,
    #: qmaster): the engine's poll budget (``poll_rate_max_per_s``) applies. False for
    #: ``ps`` on a host, which costs nobody else anything.
    status_is_shared: bool = True

    def lifecycle(self, native: str) -> JobState:
        """The lifecycle state a native state word means."""
        return self.native_states.get(native, JobState.QUEUED)

    @classmethod
    def from_config(cls, config: ClusterConfig) -> Scheduler:
        """The backend as ``config`` sets it up (the registry builds it this way)."""
        return cls()

    def attach(self, *, work_dir: str, jobs_root: str) -> None:
        """Told once, before :meth:`discover`, where ``remote_work_dir`` is on the cluster
        and where the job directories live (``<jobs_root>/<name>``), both absolute: for a
        backend whose commands read files there. Default: not needed."""
        return None

    async def discover(self, run: RunCommand) -> None:
        """Read facts about the cluster once (array size limit, accounting). Default: run
        :meth:`discovery_argv` (if any) and give its answer to
        :meth:`read_discovery_answer`."""
        argv = self.discovery_argv()
        if argv is not None:
            self.read_discovery_answer(*await run(argv))

    def discovery_argv(self) -> list[str] | None:
        """The one command that reads the facts :meth:`discover` wants, for the engine to
        run within its first command on the cluster (started before :meth:`attach`: it must
        not depend on it). None: no facts, or a :meth:`discover` of several steps."""
        return None

    def read_discovery_answer(self, returncode: int, stdout: str, stderr: str) -> None:
        """Take the facts from :meth:`discovery_argv`'s answer (may raise
        :class:`~clustrix.errors.ConfigError` for a cluster the backend cannot use)."""
        return None

    def default_max_workers(self) -> int | None:
        """``max_workers`` when the config leaves it unset (asked after :meth:`discover`).
        None: no limit but the cluster's own, for a scheduler that queues what cannot run
        yet; a backend without a queue says how many jobs the machine runs at once."""
        return None

    def slots(self, resources: Resources) -> int | None:
        """How many jobs of ``resources`` the cluster can run at once, if known."""
        return None

    @abstractmethod
    def render_script(self, spec: JobSpec) -> str:
        """The job script text."""

    @abstractmethod
    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        """The command that submits the script."""

    @abstractmethod
    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        """The job ID of each task (index order), from the submit command's stdout."""

    @abstractmethod
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command reporting the state of all ``job_ids`` (never one per job)."""

    @abstractmethod
    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        """States by job ID. A job absent from the result has ended and been forgotten."""

    def is_transient_submit_error(self, message: str) -> bool:
        """True if a refused submission should be retried later (e.g. a rate limit)."""
        return False

    def find_submitted_argv(self, script_path: str) -> list[str] | None:
        """A command listing the jobs submitted from ``script_path``, run when the connection
        was lost while the submit command ran. None: the backend cannot tell."""
        return None

    def parse_find_submitted(
        self, spec: JobSpec, stdout: str, script_path: str
    ) -> list[str] | None:
        """The job IDs (as :meth:`parse_submit` gives them) of the submission of
        ``script_path`` in :meth:`find_submitted_argv`'s output, or None if it is not there."""
        return None

    def is_job_count_limit(self, message: str) -> bool:
        """True if a refused submission hit a limit on the number of jobs (which a big
        array may exceed on its own, so it is sent in smaller pieces)."""
        return False

    def status_ok_anyway(self, output: str) -> bool:
        """True if a non-zero exit of the status command still means a valid answer."""
        return False

    @abstractmethod
    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command that cancels (or kills) all ``job_ids``."""

    def detail_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """A command giving final state and exit code of ended jobs, if the backend has one."""
        return None

    def parse_detail(self, stdout: str) -> dict[str, TaskStatus]:
        """Parse :meth:`detail_argv`'s output."""
        return {}
