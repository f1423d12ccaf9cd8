"""The SLURM backend: sbatch scripts, job arrays, squeue/sacct/scontrol parsing.

Pure text in, text out (the formats are pinned by outputs captured from a real SLURM 22.05
under ``tests/data/slurm/``); :meth:`SlurmScheduler.discovery_argv` reads the cluster's limits
once.
It never knows whether its commands run locally or over SSH.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence

from .. import _wire
from ..config import ClusterConfig, Resources
from ..lifecycle import JobState
from .base import JobSpec, Scheduler, TaskStatus, render_body

__all__ = [
    "ENDED_STATES",
    "RUNNING_STATES",
    "SLURM_STATES",
    "SlurmScheduler",
    "parse_exit_code",
    "parse_key_values",
]

#: SLURM's job states (``squeue -t all``, ``sacct``, ``scontrol``) in the one lifecycle.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "SUSPENDED": JobState.QUEUED,
    "STOPPED": JobState.QUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMED_OUT,
    "DEADLINE": JobState.TIMED_OUT,
    # the infrastructure's fault, not the call's: max_retries resubmits these
    "NODE_FAIL": JobState.LOST,
    "PREEMPTED": JobState.LOST,
    "BOOT_FAIL": JobState.LOST,
}
#: Native states in which a job is running.
RUNNING_STATES = frozenset(k for k, v in SLURM_STATES.items() if v is JobState.RUNNING)
#: Native states after which a job will not produce anything more.
ENDED_STATES = frozenset(k for k, v in SLURM_STATES.items() if v.is_final)

#: Poll with ``-j <ids>`` up to this many distinct jobs; beyond, ask for all of the user's
#: jobs (``--me``) and filter here, so the command line never grows with the job count.
MAX_LISTED_JOBS = 300
_SQUEUE_FORMAT = "%i|%T|%r"
_SACCT_FIELDS = "JobID,State,ExitCode,Reason"
_SEP = "@@clustrix-discover@@"
#: sbatch messages after which the same submission succeeds later (rate limits, job count
#: limits, slurmctld busy or restarting).
_TRANSIENT_SUBMIT_ERRORS = (
    "Resource temporarily unavailable",
    "MaxSubmitJobs",
    "MaxSubmitJobLimit",
    "QOSMaxSubmitJobPerUserLimit",
    "AssocMaxSubmitJobLimit",
    "Socket timed out",
    "Unable to contact slurm controller",
    "Slurm temporarily unable to accept job",
)


def parse_exit_code(text: str) -> int | None:
    """SLURM's ``code:signal`` as a shell-style status: the code, or 128 + signal."""
    code, _, signal = text.strip().partition(":")
    if not code.isdigit():
        return None
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return int(code)


def parse_key_values(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value2`` (``scontrol -o`` lines) as a dict."""
    pairs = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def _quote_directive(value: str) -> str:
    # sbatch's #SBATCH parser honours double quotes around a value with spaces; the config
    # refuses quotes and newlines in the paths that reach here.
    return f'"{value}"' if any(c.isspace() for c in value) else value


class SlurmScheduler(Scheduler):
    """SLURM via sbatch / squeue / sacct (or scontrol) / scancel."""

    name = "slurm"
    supports_array_throttle = True
    supports_requeue = True
    native_states = SLURM_STATES
    requeue_refused_hint = "see stderr; SLURM's MaxBatchRequeue limits requeues per job"

    def __init__(self, *, use_sacct: bool | None = None) -> None:
        self.use_sacct = use_sacct
        self.max_array_size = 1001  # SLURM's default MaxArraySize until discover() reads it
        self._partition_slots: dict[str, int] = {}
        self._default_partition: str | None = None

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SlurmScheduler:
        """``slurm_use_sacct`` decides how final states are read."""
        return cls(use_sacct=config.slurm_use_sacct)

    # ------------------------------------------------------------------ discovery
    def discovery_argv(self) -> list[str]:
        """MaxArraySize, whether accounting runs, and partition sizes (one command)."""
        return ["sh", "-c", f"scontrol show config; echo {_SEP}; scontrol -o show partition"]

    def read_discovery_answer(self, returncode: int, stdout: str, stderr: str) -> None:
        """Take the config and partitions from :meth:`discovery_argv`'s output."""
        config_text, _, partitions_text = stdout.partition(_SEP)
        self.read_config(config_text)
        self.read_partitions(partitions_text)

    def read_config(self, text: str) -> None:
        """Take MaxArraySize and AccountingStorageType from ``scontrol show config``."""
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                continue
            if key == "MaxArraySize" and value.isdigit():
                self.max_array_size = max(1, int(value))
            elif key == "AccountingStorageType" and self.use_sacct is None:
                self.use_sacct = value not in ("accounting_storage/none", "(null)", "")

    def read_partitions(self, text: str) -> None:
        """How many single-core jobs each partition runs at once (CPUs x oversubscription)."""
        for line in text.splitlines():
            fields = parse_key_values(line)
            name, cpus = fields.get("PartitionName"), fields.get("TotalCPUs", "")
            if not name or not cpus.isdigit():
                continue
            share = 1
            mode, _, count = fields.get("OverSubscribe", "NO").partition(":")
            if mode == "FORCE" and count.isdigit():
                share = int(count)
            self._partition_slots[name] = int(cpus) * share
            if fields.get("Default") == "YES":
                self._default_partition = name

    def slots(self, resources: Resources) -> int | None:
        """Jobs of ``resources`` the partition can run at once, if discovered."""
        partition = resources.partition or self._default_partition
        total = self._partition_slots.get(partition or "")
        return max(1, total // resources.cores) if total else None

    # ------------------------------------------------------------------ submission
    def directives(self, spec: JobSpec) -> list[str]:
        """The ``#SBATCH`` options of a submission, generic resources mapped to SLURM."""
        res = spec.resources
        logs = spec.path(_wire.LOGS_DIR)
        task = "%a" if spec.n_tasks > 1 else "0"
        options = [
            f"--job-name={spec.job_name}",
            f"--output={_quote_directive(f'{logs}/{task}.out')}",
            f"--error={_quote_directive(f'{logs}/{task}.err')}",
            # a requeued job (checkpoint, node failure) keeps the logs of its earlier runs
            "--open-mode=append",
        ]
        if spec.n_tasks > 1:
            throttle = f"%{spec.array_throttle}" if spec.array_throttle else ""
            options.append(f"--array=0-{spec.n_tasks - 1}{throttle}")
        options.append(f"--cpus-per-task={res.cores}")
        if res.mem_gb is not None:
            options.append(f"--mem={math.ceil(res.mem_gb * 1024)}M")
        if res.time_limit_min is not None:
            options.append(f"--time={res.time_limit_min}")
        for flag, value in (
            ("partition", res.partition),
            ("account", res.account),
            ("qos", res.qos),
        ):
            if value:
                options.append(f"--{flag}={value}")
        if res.gpus:
            options.append(f"--gpus={res.gpus}")
        if res.checkpoint_before_s is not None:
            # B: signal the batch shell only; it passes USR2 on to the worker (render_body)
            options += [f"--signal=B:USR2@{res.checkpoint_before_s}", "--requeue"]
        for extra in res.extra_directives:
            options.append(extra.strip().removeprefix("#SBATCH").strip())
        return options

    def render_script(self, spec: JobSpec) -> str:
        """The sbatch script: directives, then the common body."""
        lines = ["#!/bin/bash"] + [f"#SBATCH {option}" for option in self.directives(spec)]
        body = render_body(
            spec, '"${SLURM_ARRAY_TASK_ID:-0}"', requeue_command='scontrol requeue "$SLURM_JOB_ID"'
        )
        return "\n".join(lines) + "\n" + body

    def is_transient_submit_error(self, message: str) -> bool:
        """Refusals that mean "not now": submission limits and a busy or restarting
        controller. Bad requests (invalid partition, impossible resources) are final."""
        return any(pattern in message for pattern in _TRANSIENT_SUBMIT_ERRORS)

    def is_job_count_limit(self, message: str) -> bool:
        """``AssocMaxSubmitJobLimit``, ``QOSMaxSubmitJobPerUserLimit`` and the like: said
        the same way whether the queue is full or the array alone is larger than the limit."""
        return "MaxSubmitJob" in message

    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        """``sbatch --parsable script``."""
        return ["sbatch", "--parsable", script_path]

    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        """``12345`` or ``12345;cluster`` → the job ID, or one ``12345_<i>`` per array task."""
        first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        base = first.split(";")[0].strip()
        if not base.isdigit():
            raise ValueError(f"sbatch printed no job ID: {stdout!r}")
        if spec.n_tasks == 1:
            return [base]
        return [f"{base}_{i}" for i in range(spec.n_tasks)]

    def find_submitted_argv(self, script_path: str) -> list[str] | None:
        """Every job of the user with its command (the script path sbatch was given)."""
        return ["squeue", "--me", "-h", "-t", "all", "-o", "%F|%o"]

    def parse_find_submitted(
        self, spec: JobSpec, stdout: str, script_path: str
    ) -> list[str] | None:
        """``<array job id>|<command>`` lines → the IDs of the job whose command is
        ``script_path`` (its array tasks are numbered as in :meth:`parse_submit`)."""
        for line in stdout.splitlines():
            job_id, sep, command = line.partition("|")
            if sep and job_id.isdigit() and command == script_path:
                return self.parse_submit(spec, job_id)
        return None

    # ------------------------------------------------------------------ status
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One ``squeue`` for every job, finished ones included (``-t all``)."""
        bases = sorted({job_id.split("_")[0] for job_id in job_ids}, key=int)
        argv = ["squeue", "-h", "-t", "all", "-r", "-o", _SQUEUE_FORMAT]
        if len(bases) <= MAX_LISTED_JOBS:
            return [*argv, "-j", ",".join(bases)]
        return [*argv, "--me"]

    def status_ok_anyway(self, output: str) -> bool:
        """``squeue -j <one id>`` fails once the job has left slurmctld's memory."""
        return "Invalid job id specified" in output

    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        """``id|STATE|reason`` lines."""
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0][:1].isdigit() and parts[1].isupper():
                reason = "" if parts[2] == "None" else parts[2]
                states[parts[0]] = TaskStatus(parts[0], parts[1], reason=reason)
        return states

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One ``scancel`` for all of them (array tasks by ``base_index``)."""
        return ["scancel", *job_ids]

    def detail_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """``sacct`` where accounting runs, else ``scontrol show job`` per array/job."""
        bases = sorted({job_id.split("_")[0] for job_id in job_ids}, key=int)
        scontrol = 'for j in "$@"; do scontrol -o show job "$j"; done; exit 0'
        if not self.use_sacct:
            return ["sh", "-c", scontrol, "clustrix-detail", *bases]
        # sacct first; if the accounting database does not answer, scontrol still knows
        # the jobs slurmctld has not purged yet (MinJobAge)
        sacct = shlex.join(
            ["sacct", "-X", "-n", "-P", "-o", _SACCT_FIELDS, "-j", ",".join(job_ids)]
        )
        script = f"{sacct} 2>/dev/null || {{ {scontrol}; }}"
        return ["sh", "-c", script, "clustrix-detail", *bases]

    def parse_detail(self, stdout: str) -> dict[str, TaskStatus]:
        """Final states from sacct's ``JobID|State|ExitCode|Reason`` or scontrol lines."""
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            if line.startswith("JobId="):
                fields = parse_key_values(line)
                job_id = fields["JobId"]
                if fields.get("ArrayTaskId", "N/A") not in ("N/A", ""):
                    job_id = f"{fields.get('ArrayJobId', job_id)}_{fields['ArrayTaskId']}"
                state, exit_text, reason = (
                    fields.get("JobState", ""),
                    fields.get("ExitCode", ""),
                    fields.get("Reason", ""),
                )
            else:
                parts = line.strip().split("|")
                if len(parts) != 4 or not parts[0][:1].isdigit():
                    continue
                job_id, state, exit_text, reason = parts
            state = state.split()[0] if state else ""  # "CANCELLED by 1001"
            exit_code = parse_exit_code(exit_text)
            if exit_code == 0 and state not in ("COMPLETED", "FAILED"):
                # sacct reports 0:0 at job level for TIMEOUT/CANCELLED: not a real status
                exit_code = None
            states[job_id] = TaskStatus(
                job_id, state, reason="" if reason == "None" else reason, exit_code=exit_code
            )
        return states
