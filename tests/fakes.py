"""Fakes for fast engine tests: a scheduler whose answers the test scripts, and a transport
that counts its round trips and fails on demand (as httpx's ``MockTransport`` serves the
tests of its client's policy).

``ClusterExecutor(fake_config(tmp_path), scheduler=FakeScheduler(...),
transport=FakeTransport(...))`` runs the real engine in seconds; the real test cluster
(``tests/contract``, ``tests/integration``) still runs the real path.

What is real
    * everything under ``clustrix/``: executor, engine, futures, job directory, secrets,
      sealed task files and result records, cleanup;
    * every command the engine sends, run by a real ``sh`` on this machine through
      :class:`~clustrix.transports.local.LocalTransport`: the poll script (status command,
      ``grep`` of the exit files, ``find`` of the result files, deletion of consumed files),
      the one-command submission (``mkdir``, ``tar -x`` from stdin, then the submit command),
      ``rm -rf``;
    * the calls are run by the real worker code (:func:`clustrix.worker.run_task`, in this
      process: cheap) or, with ``run(job_id, script=True)``, by the rendered job script itself
      (``sh job.sh <task>``, which starts the worker from the runtime zip).

What is fake
    * the scheduler: no queue, no nodes. Its commands are tiny ``sh`` scripts in
      ``<state_dir>/bin`` (``fake-submit``, ``fake-status``, ``fake-cancel``, ``fake-detail``,
      ``fake-find``) reading and writing files under ``<state_dir>``: one file per job
      (``jobs/<id>``, holding ``id|STATE|reason``), the submissions (``submitted``), scripted
      refusals, final details. Every command they receive is logged
      (:meth:`FakeScheduler.calls`). Jobs never move by themselves: the test moves them
      (:meth:`~FakeScheduler.set_state`, :meth:`~FakeScheduler.run`,
      :meth:`~FakeScheduler.end`, :meth:`~FakeScheduler.requeue`,
      :meth:`~FakeScheduler.vanish`) or lets :meth:`~FakeScheduler.autorun` run each job as
      it appears. Its native words are SLURM's (``PENDING``, ``RUNNING``, ``REQUEUED``,
      ``COMPLETED``, ``FAILED``, ``OUT_OF_MEMORY``, ``CANCELLED``, ``TIMEOUT``, ``NODE_FAIL``,
      ``PREEMPTED``), mapped to :class:`clustrix.lifecycle.JobState` by ``native_states``.
    * the transport's distance and its failures: :class:`FakeTransport` is the local
      transport that may claim its round trips are costly (as SSH's are, so a submission is
      ONE command with the job directory as a tar on stdin), counts every operation
      (:attr:`FakeTransport.ops`, :attr:`FakeTransport.history`), and runs the test's hooks
      before or after an operation, e.g. to raise
      :class:`~clustrix.errors.ConnectionLostError` (:meth:`FakeTransport.fail`).

One :class:`FakeScheduler` serves one executor at a time (its submit command numbers jobs
without a lock; an engine submits one batch at a time). A later backend's tests can reuse
:class:`FakeTransport` as it is, and subclass :class:`FakeScheduler` for other native words.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import posixpath
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from clustrix import ClusterConfig, ClusterExecutor, _wire, worker
from clustrix.errors import ConnectionLostError
from clustrix.lifecycle import JobState
from clustrix.schedulers.base import JobSpec, Scheduler, TaskStatus, render_body
from clustrix.transports.base import CommandResult, DirEntry, FileHandle, FileStat, OnError
from clustrix.transports.local import LocalTransport

__all__ = [
    "FakeScheduler",
    "FakeTransport",
    "Hook",
    "Operation",
    "Refusal",
    "Submission",
    "fake_config",
    "shut_down",
    "wait_until",
]

T = TypeVar("T")

#: The fake's native states that mean the job is still in its hands.
LIVE_WORDS = frozenset({"PENDING", "RUNNING", "REQUEUED"})


def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout_s`` (a deadline
    against hangs only: tests never assert on durations)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


def fake_config(base: Path, **overrides: Any) -> ClusterConfig:
    """A config for the fakes: files under ``base``, fast polling, no packaging (the calls
    are stdlib or test-module functions, importable where the fake worker runs)."""
    settings: dict[str, Any] = {
        "cluster_type": "slurm",  # any registered type: the fakes replace what it builds
        "remote_work_dir": str(base / "work"),
        "state_dir": base / "registry",
        "python_executable": sys.executable,
        "packaging": False,
        "poll_interval_min_s": 0.01,
        "poll_interval_max_s": 0.05,
        "poll_rate_max_per_s": 1000.0,  # the budget is tested on its own (test_poll_budget)
        "connection_grace_s": 60.0,
        "submit_retry_s": 60.0,
    }
    settings.update(overrides)
    return ClusterConfig(**settings)


# --------------------------------------------------------------------------- the scheduler


@dataclass(frozen=True)
class Submission:
    """One accepted submission, as the fake's submit command recorded it."""

    base_id: str
    n_tasks: int
    throttle: int | None
    script_path: str

    @property
    def job_dir(self) -> str:
        return posixpath.dirname(self.script_path)

    @property
    def job_ids(self) -> list[str]:
        """One ID per task, as SLURM numbers them (``base`` alone, or ``base_<i>``)."""
        if self.n_tasks == 1:
            return [self.base_id]
        return [f"{self.base_id}_{i}" for i in range(self.n_tasks)]


@dataclass(frozen=True)
class Refusal:
    """A submission the fake's submit command refused."""

    n_tasks: int
    message: str


def _tool_header(state_dir: Path, name: str) -> str:
    # Log the invocation first, as one write (tab-separated arguments).
    return (
        "set -u\n"
        f"d={shlex.quote(str(state_dir))}\n"
        f"line={name}\n"
        'for a in "$@"; do line="$line\t$a"; done\n'
        'printf \'%s\\n\' "$line" >> "$d/calls.log"\n'
        # A failure scripted in "$d/<dir>/" (one file each, oldest first): its message to
        # stderr, exit 1. Taken with mv, so concurrent commands never take the same one.
        "fail_if_scripted() {\n"
        '  for f in "$d/$1"/*; do\n'
        '    [ -e "$f" ] || break\n'
        '    t="$d/$1/.taken.$$"\n'
        '    mv -f -- "$f" "$t" 2>/dev/null || continue\n'
        '    cat -- "$t" >&2; rm -f -- "$t"; exit 1\n'
        "  done\n"
        "}\n"
    )


# $1 = script path, $2 = task count, $3 = array throttle (0: none).
_SUBMIT = r"""
refuse() {
  printf '%s|%s\n' "$2" "$1" >> "$d/refused"
  printf '%s\n' "$1" >&2
}
for f in "$d"/refusals/*; do
  [ -e "$f" ] || break
  t="$d/refusals/.taken.$$"
  mv -f -- "$f" "$t" 2>/dev/null || continue
  { IFS= read -r rc; msg=$(cat); } < "$t"
  rm -f -- "$t"
  refuse "$msg" "$2"
  exit "$rc"
done
if [ -f "$d/job_limit" ]; then
  IFS= read -r limit < "$d/job_limit"
  if [ "$2" -gt "$limit" ]; then
    refuse "fake-scheduler: job count limit: $2 jobs, MaxJobs=$limit" "$2"
    exit 1
  fi
fi
IFS= read -r base < "$d/next_id"
printf '%s\n' $((base + 1)) > "$d/next_id"
i=0
while [ "$i" -lt "$2" ]; do
  if [ "$2" = 1 ]; then id=$base; else id=${base}_$i; fi
  printf '%s|PENDING|None\n' "$id" > "$d/jobs/.$id.$$" && mv -f -- "$d/jobs/.$id.$$" "$d/jobs/$id"
  i=$((i + 1))
done
printf '%s|%s|%s|%s\n' "$base" "$2" "$3" "$1" >> "$d/submitted"
printf '%s\n' "$base"
"""

_STATUS = r"""
fail_if_scripted status_errors
cat -- "$d"/jobs/* 2>/dev/null
exit 0
"""

# Cancels live jobs (an array by its base ID too); ended ones stay as they are, as scancel.
_CANCEL = r"""
fail_if_scripted cancel_errors
for id in "$@"; do
  for f in "$d/jobs/$id" "$d/jobs/${id}_"*; do
    [ -e "$f" ] || continue
    IFS='|' read -r jid state reason < "$f"
    case $state in
      PENDING|RUNNING|REQUEUED)
        printf '%s|CANCELLED|None\n' "$jid" > "$d/jobs/.$jid.$$" &&
          mv -f -- "$d/jobs/.$jid.$$" "$d/jobs/$jid"
        printf '%s|CANCELLED||cancelled by fake-cancel\n' "$jid" > "$d/detail/$jid" ;;
    esac
  done
done
exit 0
"""

_DETAIL = r"""
for id in "$@"; do
  for f in "$d/detail/$id" "$d/detail/${id}_"*; do
    if [ -e "$f" ]; then cat -- "$f"; fi
  done
done
exit 0
"""

_FIND = r"""
cat -- "$d/submitted" 2>/dev/null
exit 0
"""

_TOOLS = {
    "submit": _SUBMIT,
    "status": _STATUS,
    "cancel": _CANCEL,
    "detail": _DETAIL,
    "find": _FIND,
}


class _NodeDied(BaseException):
    """Raised into the fake worker to stop it half-way, as a node failure would."""


#: The fake worker runs one task at a time (its calls run in this process).
_WORKER_LOCK = threading.Lock()


class _Tripwire:
    """Unpickling this touches a file: proof that a forged result was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_trip, (self.path,))


def _trip(path: str) -> None:
    Path(path).touch()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FakeScheduler(Scheduler):
    """A scheduler whose commands are real ``sh`` scripts answering what the test scripted.

    Capabilities are plain attributes, set before the executor is built:
    ``max_array_size``, ``supports_array_throttle``, ``can_find_submitted`` (False:
    :meth:`find_submitted_argv` says the backend cannot tell), ``has_detail`` (False: no
    accounting command). Refusal messages: :attr:`TRANSIENT` ("not now": retried),
    :attr:`JOB_LIMIT` (a job count limit: an array is split, a single job waits).
    """

    name = "fake"
    supports_array_throttle = True
    max_array_size = 1000
    native_states: Mapping[str, JobState] = {
        "PENDING": JobState.QUEUED,
        "RUNNING": JobState.RUNNING,
        "COMPLETING": JobState.RUNNING,  # as SLURM's: ending, not ended yet
        "REQUEUED": JobState.REQUEUED,
        "COMPLETED": JobState.COMPLETED,
        "FAILED": JobState.FAILED,
        "OUT_OF_MEMORY": JobState.FAILED,
        "CANCELLED": JobState.CANCELLED,
        "TIMEOUT": JobState.TIMED_OUT,
        "NODE_FAIL": JobState.LOST,
        "PREEMPTED": JobState.LOST,
    }
    TRANSIENT = "fake-scheduler: temporarily unable to accept jobs"
    JOB_LIMIT = "fake-scheduler: job count limit"

    def __init__(self, state_dir: Path, *, first_id: int = 1000) -> None:
        self.state_dir = Path(state_dir)
        self.can_find_submitted = True
        self.has_detail = True
        #: (job ID, submission-wide indices of the calls run) per run of the fake worker
        self.ran: list[tuple[str, list[int]]] = []
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        self._autorun: threading.Thread | None = None
        self._autorun_stop = threading.Event()
        self._autorun_errors: list[BaseException] = []
        for sub in ("bin", "jobs", "detail", "refusals", "status_errors", "cancel_errors"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "next_id").write_text(f"{first_id}\n")
        for name, body in _TOOLS.items():
            path = self.tool(name)
            path.write_text("#!/bin/sh\n" + _tool_header(self.state_dir, name) + body)
            path.chmod(0o755)

    def tool(self, name: str) -> Path:
        """The path of one of the fake's commands (``submit``, ``status``, ...)."""
        return self.state_dir / "bin" / f"fake-{name}"

    # ------------------------------------------------------------------ Scheduler
    def render_script(self, spec: JobSpec) -> str:
        header = f"#!/bin/sh\n# clustrix fake job {shlex.quote(spec.job_name)}: {spec.n_tasks}\n"
        return header + render_body(spec, '"$1"')

    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        throttle = str(spec.array_throttle or 0)
        return [str(self.tool("submit")), script_path, str(spec.n_tasks), throttle]

    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        base = stdout.strip()
        if not base.isdigit():
            raise ValueError(f"no job ID in {stdout!r}")
        return Submission(base, spec.n_tasks, None, "").job_ids

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [str(self.tool("status")), *job_ids]

    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[0][:1].isdigit():
                reason = "" if parts[2] == "None" else parts[2]
                states[parts[0]] = TaskStatus(parts[0], parts[1], reason=reason)
        return states

    def is_transient_submit_error(self, message: str) -> bool:
        return self.TRANSIENT in message or self.JOB_LIMIT in message

    def is_job_count_limit(self, message: str) -> bool:
        return self.JOB_LIMIT in message

    def find_submitted_argv(self, script_path: str) -> list[str] | None:
        return [str(self.tool("find")), script_path] if self.can_find_submitted else None

    def parse_find_submitted(
        self, spec: JobSpec, stdout: str, script_path: str
    ) -> list[str] | None:
        for line in stdout.splitlines():
            base, _, rest = line.partition("|")
            if rest.split("|", 2)[-1] == script_path:
                return self.parse_submit(spec, base)
        return None

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return [str(self.tool("cancel")), *job_ids]

    def detail_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        return [str(self.tool("detail")), *job_ids] if self.has_detail else None

    def parse_detail(self, stdout: str) -> dict[str, TaskStatus]:
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 4 and parts[0][:1].isdigit():
                exit_code = int(parts[2]) if parts[2].lstrip("-").isdigit() else None
                states[parts[0]] = TaskStatus(parts[0], parts[1], parts[3], exit_code)
        return states

    # ------------------------------------------------------------------ records
    def calls(self, tool: str) -> list[list[str]]:
        """The arguments of every invocation of one command (``submit``, ``status``,
        ``cancel``, ``detail``, ``find``), oldest first, refused submissions included."""
        log = self.state_dir / "calls.log"
        if not log.exists():
            return []
        lines = [line.split("\t") for line in log.read_text().splitlines()]
        return [line[1:] for line in lines if line[0] == tool]

    @property
    def submissions(self) -> list[Submission]:
        """Every accepted submission, oldest first."""
        path = self.state_dir / "submitted"
        if not path.exists():
            return []
        found = []
        for line in path.read_text().splitlines():
            base, n_tasks, throttle, script = line.split("|", 3)
            found.append(Submission(base, int(n_tasks), int(throttle) or None, script))
        return found

    @property
    def refusals(self) -> list[Refusal]:
        """Every refused submission, oldest first."""
        path = self.state_dir / "refused"
        if not path.exists():
            return []
        pairs = [line.split("|", 1) for line in path.read_text().splitlines()]
        return [Refusal(int(n), message) for n, message in pairs]

    def wait_submissions(self, count: int, timeout_s: float = 30.0) -> list[Submission]:
        """The submissions, once there are at least ``count``."""
        wait_until(lambda: len(self.submissions) >= count, f"{count} submission(s)", timeout_s)
        return self.submissions

    def job_ids(self) -> list[str]:
        """Every job ID submitted so far, in submission and task order."""
        return [job_id for s in self.submissions for job_id in s.job_ids]

    def states(self) -> dict[str, str]:
        """The native state word of every job the fake's queue still lists."""
        found = {}
        for path in (self.state_dir / "jobs").iterdir():
            if not path.name.startswith("."):
                with contextlib.suppress(FileNotFoundError, ValueError):
                    job_id, state, _ = path.read_text().strip().split("|")
                    found[job_id] = state
        return found

    def state(self, job_id: str) -> str | None:
        """The job's native state word; None once the queue no longer lists it."""
        return self.states().get(job_id)

    def live_jobs(self) -> list[str]:
        """Jobs pending, running or requeued: what would still use the cluster."""
        return sorted(j for j, s in self.states().items() if s in LIVE_WORDS)

    def locate(self, job_id: str) -> tuple[Path, int]:
        """The job directory and task index of a job."""
        for submission in self.submissions:
            if job_id in submission.job_ids:
                return Path(submission.job_dir), submission.job_ids.index(job_id)
        raise KeyError(f"no job {job_id} was submitted to the fake scheduler")

    def task_calls(self, job_id: str) -> list[int]:
        """The submission-wide indices of the calls in the job's task file (of a
        self-scheduled submission: in its shared pool)."""
        job_dir, task = self.locate(job_id)
        secret = (job_dir / _wire.SECRET_FILE).read_bytes()
        path = job_dir / _wire.TASKS_DIR / f"{task}{_wire.SUFFIX}"
        if not path.exists():
            path = path.with_name(f"{getattr(_wire, 'POOL_FILE', 'pool')}{_wire.SUFFIX}")
        return [call[0] for call in pickle.loads(_wire.unseal(secret, path.read_bytes()))]

    # ------------------------------------------------------------------ scripting the queue
    def set_state(self, job_id: str, state: str, reason: str = "") -> None:
        """What the status command reports for ``job_id`` from now on."""
        path = self.state_dir / "jobs" / job_id
        if not path.exists():
            raise KeyError(f"the fake scheduler lists no job {job_id}")
        _write_atomic(path, f"{job_id}|{state}|{reason or 'None'}\n")

    def set_detail(
        self, job_id: str, state: str, exit_code: int | None = None, reason: str = ""
    ) -> None:
        """What the accounting command (``detail``) says about an ended job."""
        code = "" if exit_code is None else str(exit_code)
        _write_atomic(self.state_dir / "detail" / job_id, f"{job_id}|{state}|{code}|{reason}\n")

    def write_exit(self, job_id: str, exit_code: int) -> None:
        """The exit file the job script writes when its worker exits."""
        job_dir, task = self.locate(job_id)
        _write_atomic(job_dir / _wire.EXIT_DIR / str(task), f"{exit_code}\n")

    def write_stderr(self, job_id: str, text: str) -> None:
        """Append to the job's stderr log."""
        job_dir, task = self.locate(job_id)
        with open(job_dir / _wire.LOGS_DIR / f"{task}.err", "a") as fh:
            fh.write(text)

    def work(
        self, job_id: str, calls: int | None = None, *, script: bool = False
    ) -> tuple[list[int], int]:
        """Only the worker's part of a run (no state word, no exit file from the fake): the
        real worker runs the job's calls (all of them, or the first ``calls`` of those
        without a result: then the node dies) and writes their sealed results. With
        ``script=True`` the rendered job script runs them instead (``sh job.sh <task>``: a
        real worker process; the script writes the exit file itself). Returns the indices of
        the calls that got a result, and the exit status of the worker (or the script)."""
        job_dir, task = self.locate(job_id)
        results = job_dir / _wire.RESULTS_DIR
        with _WORKER_LOCK:  # one fake worker at a time: its results are its own
            before = {p.name for p in results.iterdir()}
            if script:
                logs = job_dir / _wire.LOGS_DIR
                with (
                    open(logs / f"{task}.out", "ab") as out,
                    open(logs / f"{task}.err", "ab") as err,
                ):
                    status = subprocess.run(
                        ["sh", str(job_dir / _wire.SCRIPT_FILE), str(task)],
                        stdout=out,
                        stderr=err,
                        check=False,
                    ).returncode
            elif calls is None:
                status = worker.run_task(str(job_dir), task)
            else:
                status = self._run_some(job_dir, task, calls)
            ran = sorted(
                int(name.removesuffix(_wire.SUFFIX))
                for name in {p.name for p in results.iterdir()} - before
                if not name.startswith(".") and name.endswith(_wire.SUFFIX)
            )
        with self._lock:
            self.ran.append((job_id, ran))
        return ran, status

    def run(
        self,
        job_id: str,
        *,
        calls: int | None = None,
        exit_code: int | Literal["worker"] | None = "worker",
        state: str | None = "COMPLETED",
        script: bool = False,
    ) -> list[int]:
        """Run the job as a node would; return the indices of the calls that got a result.

        In order: the stale exit file goes (as the job script does first), the job is
        RUNNING, the worker runs (see :meth:`work`, also for ``calls`` and ``script``), the
        exit file is written (the worker's status; an int instead; None: none, the node
        died first; with ``script=True`` the script writes its own), then the job is in
        ``state`` (None: left RUNNING).
        """
        job_dir, task = self.locate(job_id)
        (job_dir / _wire.EXIT_DIR / str(task)).unlink(missing_ok=True)
        self.set_state(job_id, "RUNNING")
        ran, status = self.work(job_id, calls, script=script)
        if not script and exit_code is not None:
            self.write_exit(job_id, status if exit_code == "worker" else exit_code)
        if state is not None:
            self.end(job_id, state)
        return ran

    @staticmethod
    def _run_some(job_dir: Path, task: int, limit: int) -> int:
        # The real run_task, with the node dying as call ``limit + 1`` starts: run_task finds
        # run_call in its module, so a stand-in there stops it (under _WORKER_LOCK).
        real = worker.run_call
        started = 0

        def run_call(*args: Any, **kwargs: Any) -> Any:
            nonlocal started
            if started == limit:
                raise _NodeDied
            started += 1
            return real(*args, **kwargs)

        worker.run_call = run_call
        try:
            return worker.run_task(str(job_dir), task)
        except _NodeDied:
            return 137  # what a shell reports for a SIGKILLed worker
        finally:
            worker.run_call = real

    def end(
        self,
        job_id: str,
        state: str,
        *,
        exit_code: int | None = None,
        reason: str = "",
        stderr: str = "",
        listed: bool = True,
    ) -> None:
        """End the job in ``state`` without running anything more: its stderr and exit file
        (if given) are written, accounting (``detail``) knows the end, and the queue lists
        it in ``state``, or no longer lists it (``listed=False``: forgotten, as SLURM does
        some minutes after the end)."""
        if stderr:
            self.write_stderr(job_id, stderr)
        if exit_code is not None:
            self.write_exit(job_id, exit_code)
        self.set_detail(job_id, state, exit_code, reason)
        if listed:
            self.set_state(job_id, state, reason)
        else:
            (self.state_dir / "jobs" / job_id).unlink(missing_ok=True)

    def requeue(self, job_id: str, *, stale_exit_code: int | None = None) -> None:
        """Put a job back in the queue (REQUEUED). ``stale_exit_code``: the exit file its
        run before left behind (written after the state, as on a real cluster)."""
        self.set_state(job_id, "REQUEUED")
        if stale_exit_code is not None:
            self.write_exit(job_id, stale_exit_code)

    def vanish(self, job_id: str) -> None:
        """The job disappears without a trace: no queue entry, no accounting, no exit file."""
        (self.state_dir / "jobs" / job_id).unlink(missing_ok=True)
        (self.state_dir / "detail" / job_id).unlink(missing_ok=True)

    def forge_result(self, job_id: str) -> Path:
        """Plant a result for the job's first call, sealed with a key that is not the
        job's; returns the file that appears if anyone unpickles it."""
        job_dir, _ = self.locate(job_id)
        first = self.task_calls(job_id)[0]
        tripwire = job_dir.parent / f"unpickled-{job_id}"
        body = pickle.dumps({"ok": True, "value": pickle.dumps(_Tripwire(str(tripwire)))})
        forged = _wire.seal(secrets.token_bytes(32), body)
        _wire.write_atomic(str(job_dir / _wire.RESULTS_DIR / f"{first}{_wire.SUFFIX}"), forged)
        return tripwire

    # ------------------------------------------------------------------ scripting refusals
    def refuse_next(self, message: str = TRANSIENT, *, times: int = 1, exit_code: int = 1) -> None:
        """The next ``times`` submissions are refused with ``message`` (to stderr)."""
        for _ in range(times):
            name = f"{time.time_ns():020d}-{next(self._sequence):06d}"
            _write_atomic(self.state_dir / "refusals" / name, f"{exit_code}\n{message}")

    def limit_jobs(self, max_jobs: int | None) -> None:
        """Refuse any submission of more than ``max_jobs`` tasks (:attr:`JOB_LIMIT`)."""
        path = self.state_dir / "job_limit"
        if max_jobs is None:
            path.unlink(missing_ok=True)
        else:
            _write_atomic(path, f"{max_jobs}\n")

    def fail_status(self, message: str = "fake-status: controller busy", times: int = 1) -> None:
        """The next ``times`` status commands fail (exit 1) with ``message``."""
        for _ in range(times):
            name = f"{time.time_ns():020d}-{next(self._sequence):06d}"
            _write_atomic(self.state_dir / "status_errors" / name, message + "\n")

    def fail_cancel(self, message: str = "fake-cancel: controller busy", times: int = 1) -> None:
        """The next ``times`` cancel commands fail (exit 1) with ``message``, cancelling
        nothing."""
        for _ in range(times):
            name = f"{time.time_ns():020d}-{next(self._sequence):06d}"
            _write_atomic(self.state_dir / "cancel_errors" / name, message + "\n")

    # ------------------------------------------------------------------ driving
    @contextlib.contextmanager
    def autorun(self) -> Iterator[None]:
        """Run every pending job (all its calls, then COMPLETED) as soon as it appears,
        until the block ends. Errors of the fake worker are raised at the end."""
        self._autorun_stop.clear()
        self._autorun_errors = []
        thread = threading.Thread(target=self._autorun_loop, name="fake-autorun", daemon=True)
        self._autorun = thread
        thread.start()
        try:
            yield
        finally:
            self.stop_autorun()
        if self._autorun_errors:
            raise self._autorun_errors[0]

    def stop_autorun(self) -> None:
        """End :meth:`autorun` (no-op when it is not on)."""
        self._autorun_stop.set()
        if self._autorun is not None:
            self._autorun.join()
            self._autorun = None

    def _autorun_loop(self) -> None:
        done: set[str] = set()
        while not self._autorun_stop.is_set():
            states = self.states()
            for job_id in self.job_ids():  # the recorded ones: the record comes last
                if states.get(job_id) == "PENDING" and job_id not in done:
                    done.add(job_id)
                    try:
                        self.run(job_id)
                    except Exception as exc:  # reported when the autorun block ends
                        self._autorun_errors.append(exc)
            self._autorun_stop.wait(0.002)

    def settle(self) -> None:
        """Undo the scripting and cancel every live job (for teardown)."""
        self.stop_autorun()
        self.limit_jobs(None)
        for directory in ("refusals", "status_errors", "cancel_errors"):
            for path in (self.state_dir / directory).iterdir():
                path.unlink(missing_ok=True)
        for job_id in self.live_jobs():
            with contextlib.suppress(KeyError):
                self.end(job_id, "CANCELLED")


# --------------------------------------------------------------------------- the transport


@dataclass(frozen=True)
class Operation:
    """One transport operation: its name (``run``, ``read_bytes``...), its target (the
    argv joined by spaces, or the path) and, for ``run``, the bytes sent on stdin."""

    op: str
    target: str
    stdin: bytes | None = None


@dataclass
class Hook:
    """An action run before (or after) matching operations, ``times`` times (None: until
    :meth:`FakeTransport.unhook`). ``ops``: operation names (None: all but ``close``);
    ``match``: a substring of the target."""

    action: Callable[[str, str], object]
    ops: frozenset[str] | None = None
    match: str | None = None
    times: int | None = 1
    after: bool = False
    hits: int = field(default=0, init=False)

    def applies(self, op: str, target: str, after: bool) -> bool:
        return (
            after == self.after
            and (self.ops is None or op in self.ops)
            and (self.match is None or self.match in target)
            and (self.times is None or self.hits < self.times)
        )


class FakeTransport(LocalTransport):
    """The local transport, counting every operation and running the test's hooks.

    ``costly=True`` (the default) makes the engine treat it as remote: a submission is one
    command carrying the job directory as a tar on stdin. ``home`` replaces the user's home
    directory (where ``~`` resolves). :attr:`ops` counts operations by name, attempts that a
    hook failed included; :attr:`history` lists them in order.
    """

    def __init__(
        self, *, costly: bool = True, home: str | None = None, location: str = "fake-cluster"
    ) -> None:
        super().__init__()
        self.round_trips_are_costly = costly
        self.location = location
        self._home = home
        self.ops: Counter[str] = Counter()
        self.history: list[Operation] = []
        self._hooks: list[Hook] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ scripting
    def hook(
        self,
        action: Callable[[str, str], object],
        *,
        ops: Sequence[str] | None = None,
        match: str | None = None,
        times: int | None = 1,
        after: bool = False,
    ) -> Hook:
        """Call ``action(op, target)`` on the loop thread before (``after=True``: after)
        the next ``times`` matching operations; an exception it raises is the operation's."""
        hook = Hook(action, frozenset(ops) if ops is not None else None, match, times, after)
        with self._lock:
            self._hooks.append(hook)
        return hook

    def fail(
        self,
        error: type[BaseException] = ConnectionLostError,
        message: str = "connection reset by fake peer",
        *,
        ops: Sequence[str] | None = None,
        match: str | None = None,
        times: int | None = 1,
        after: bool = False,
    ) -> Hook:
        """Raise ``error`` from the next ``times`` matching operations (None: until
        :meth:`unhook`). ``after=True``: the operation is carried out first (a command that
        ran but whose answer was lost)."""

        def raise_error(op: str, target: str) -> None:
            raise error(f"{message} ({op} {target[:80]})")

        return self.hook(raise_error, ops=ops, match=match, times=times, after=after)

    def go_down(self) -> Hook:
        """Every operation fails with ConnectionLostError until :meth:`unhook` of the hook."""
        return self.fail(times=None)

    def unhook(self, hook: Hook) -> None:
        """Stop a hook."""
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)

    def clear(self) -> None:
        """Stop every hook."""
        with self._lock:
            self._hooks.clear()

    def commands(self, match: str | None = None) -> list[Operation]:
        """The ``run`` operations (whose target contains ``match``), in order."""
        with self._lock:
            history = list(self.history)
        return [o for o in history if o.op == "run" and (match is None or match in o.target)]

    def touching(self, path: str) -> list[Operation]:
        """The file operations on ``path`` or below it, in order."""
        with self._lock:
            history = list(self.history)
        prefix = path.rstrip("/") + "/"
        return [
            o
            for o in history
            if o.op != "run" and (o.target == path or o.target.startswith(prefix))
        ]

    # ------------------------------------------------------------------ plumbing
    def _fire(self, op: str, target: str, after: bool) -> None:
        with self._lock:
            hooks = [h for h in self._hooks if h.applies(op, target, after)]
            for hook in hooks:
                hook.hits += 1
        for hook in hooks:
            hook.action(op, target)

    async def _do(
        self, op: str, target: str, work: Callable[[], Awaitable[T]], stdin: bytes | None = None
    ) -> T:
        with self._lock:
            self.ops[op] += 1
            self.history.append(Operation(op, target, stdin))
        self._fire(op, target, after=False)
        result = await work()
        self._fire(op, target, after=True)
        return result

    async def home(self) -> str:
        return self._home if self._home is not None else await super().home()

    async def connect(self) -> None:
        await self._do("connect", self.location, lambda: LocalTransport.connect(self))

    async def close(self) -> None:
        with self._lock:  # never fails: shutdown must get through
            self.ops["close"] += 1
            self.history.append(Operation("close", self.location))
        await super().close()

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        return await self._do(
            "run",
            " ".join(argv),
            lambda: LocalTransport.run(self, argv, timeout_s=timeout_s, stdin=stdin, errors=errors),
            stdin,
        )

    async def read_bytes(self, path: str) -> bytes:
        return await self._do("read_bytes", path, lambda: LocalTransport.read_bytes(self, path))

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        return await self._do(
            "read_tail", path, lambda: LocalTransport.read_tail(self, path, max_bytes)
        )

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await self._do(
            "write_bytes", path, lambda: LocalTransport.write_bytes(self, path, data, mode=mode)
        )

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        await self._do(
            "makedirs",
            path,
            lambda: LocalTransport.makedirs(self, path, mode=mode, exist_ok=exist_ok),
        )

    async def exists(self, path: str) -> bool:
        return await self._do("exists", path, lambda: LocalTransport.exists(self, path))

    async def remove_tree(self, path: str) -> None:
        await self._do("remove_tree", path, lambda: LocalTransport.remove_tree(self, path))

    async def stat(self, path: str) -> FileStat:
        return await self._do("stat", path, lambda: LocalTransport.stat(self, path))

    async def lstat(self, path: str) -> FileStat:
        return await self._do("lstat", path, lambda: LocalTransport.lstat(self, path))

    async def scandir(self, path: str) -> list[DirEntry]:
        return await self._do("scandir", path, lambda: LocalTransport.scandir(self, path))

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        return await self._do(
            "scan_tree",
            path,
            lambda: LocalTransport.scan_tree(self, path, on_error=on_error, detail=detail),
        )

    async def readlink(self, path: str) -> str:
        return await self._do("readlink", path, lambda: LocalTransport.readlink(self, path))

    async def symlink(self, target: str, path: str) -> None:
        await self._do("symlink", path, lambda: LocalTransport.symlink(self, target, path))

    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        await self._do("mkdir", path, lambda: LocalTransport.mkdir(self, path, mode=mode))

    async def remove(self, path: str) -> None:
        await self._do("remove", path, lambda: LocalTransport.remove(self, path))

    async def rmdir(self, path: str) -> None:
        await self._do("rmdir", path, lambda: LocalTransport.rmdir(self, path))

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        return await self._do("open", path, lambda: LocalTransport.open(self, path, mode))

    async def put(self, local_path: str, path: str) -> None:
        await self._do("put", path, lambda: LocalTransport.put(self, local_path, path))

    async def get(self, path: str, local_path: str) -> None:
        await self._do("get", path, lambda: LocalTransport.get(self, path, local_path))


# --------------------------------------------------------------------------- teardown


def shut_down(
    executor: ClusterExecutor,
    scheduler: FakeScheduler,
    transport: FakeTransport,
    timeout_s: float = 60.0,
) -> None:
    """Shut ``executor`` down whatever the test left behind: hooks and scripted refusals
    go, queued calls are cancelled, and jobs still live in the fake are cancelled until the
    executor is idle (a running job never ends by itself in the fake)."""
    transport.clear()
    scheduler.settle()
    done = threading.Event()

    def shutdown() -> None:
        try:
            executor.shutdown(wait=True, cancel_futures=True)
        finally:
            done.set()

    thread = threading.Thread(target=shutdown, name="fake-shutdown", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.02):
        scheduler.settle()
        if time.monotonic() > deadline:
            raise AssertionError(f"the executor did not shut down within {timeout_s:g} s")
    thread.join()
