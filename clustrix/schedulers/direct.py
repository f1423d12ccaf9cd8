"""The ``ssh`` backend: each job is a detached process group on a plain host, no scheduler.

One submission starts each task as ``setsid sh job.sh <task>``: its own session and process
group, which outlives the SSH connection that started it. The job script records who it is
(``logs/<t>.run``: pid, start time in clock ticks after boot, boot id), so that a reused pid
is never taken for the job, and carries what a scheduler would do for it: the time limit
(a watchdog that marks ``logs/<t>.timeout``, then TERM to the group, KILL after a grace) and
the GPUs (``CUDA_VISIBLE_DEVICES`` claimed from the host's devices under ``flock``; a job
waits for them, marked ``logs/<t>.wait``, and its time limit counts from when it has them).
Jobs beyond ``max_workers`` wait on the client, in the engine's held queue, as with every
backend; its default is the host's CPU count.

Job IDs read ``<host>:<run id>``, the run id being ``<job dir name>_<task>``: the status
command finds the run record from it. ONE status command reports every job (liveness from
``/proc``, then the markers and the exit file once the process is gone), so the final state
(TIMEOUT, CANCELLED...) is known in the poll round trip. Needs Linux (``/proc``, ``setsid``
of util-linux; ``flock`` for GPUs) and a POSIX ``sh``. Text in, text out, as every backend:
the engine runs the argv built here through the SSH transport.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace

from .. import _wire
from ..config import ClusterConfig, Resources
from ..errors import ConfigError
from ..lifecycle import JobState
from ._direct_sh import CANCEL, CLAIM_GPUS, DISCOVER, LAUNCHER, RELEASE_GPUS, START_OF, STATUS
from .base import JobSpec, Scheduler, TaskStatus, render_body

__all__ = ["DIRECT_STATES", "KILL_GRACE_S", "DirectScheduler", "gpu_pool", "parse_job_id"]

#: The words of the status command (:data:`STATUS`) in the one lifecycle.
DIRECT_STATES: dict[str, JobState] = {
    "WAITING": JobState.QUEUED,  # started, waiting for free GPUs
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMED_OUT,
    # gone without an exit status: killed from outside, or the host restarted
    "LOST": JobState.LOST,
}
#: Seconds between TERM and KILL, on cancel and at the time limit (by default).
KILL_GRACE_S = 10
#: Ask about up to this many jobs by name; beyond, report every job of the work dir.
MAX_LISTED_JOBS = 300
#: What the config's ``CUDA_VISIBLE_DEVICES`` (the devices clustrix may hand out) is called.
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
_RUN_NAME = re.compile(r"^[A-Za-z0-9.-]+$")
_MARK = "CLX"


def parse_job_id(job_id: str) -> tuple[str, str]:
    """``host:run id`` → (host, run id); the host may hold colons (IPv6), the run id not."""
    host, sep, run_id = job_id.rpartition(":")
    if not sep or "_" not in run_id:
        raise ValueError(f"not a job ID of the ssh backend: {job_id!r}")
    return host, run_id


def gpu_pool(environment: Mapping[str, str], discovered: Sequence[str]) -> list[str]:
    """The devices jobs may claim: the config's ``CUDA_VISIBLE_DEVICES`` if it sets one,
    else what ``nvidia-smi`` listed on the host."""
    given = environment.get(CUDA_VISIBLE_DEVICES)
    if given is None:
        return list(discovered)
    devices = [d.strip() for d in given.split(",") if d.strip()]
    bad = [d for d in devices if any(c.isspace() or c in "'\"" for c in d)]
    if bad:
        raise ConfigError(
            f"environment_variables CUDA_VISIBLE_DEVICES={given!r}: {bad[0]!r} is not a "
            "device; give indices or UUIDs separated by commas, e.g. '0,1,2,3'"
        )
    return devices


class DirectScheduler(Scheduler):
    """A plain host reached by SSH: detached process groups, ``/proc`` status, group kill."""

    name = "ssh"
    supports_array_throttle = False
    status_is_shared = False  # ps on the host: the poll budget need not hold
    native_states = DIRECT_STATES
    #: No scheduler to ask: memory, partitions, accounts, QoS and directives cannot be
    #: honoured, nor more than one core (nothing reserves cores for a job).
    unsupported_resources = frozenset(
        {"cores", "mem_gb", "partition", "account", "qos", "extra_directives"}
    )
    unsupported_fix = "submit through a scheduler (cluster_type='slurm' or 'sge')"

    def __init__(self, host: str, *, kill_grace_s: int = KILL_GRACE_S) -> None:
        self.host = host
        #: Seconds between TERM and KILL, on cancel and at the time limit.
        self.kill_grace_s = kill_grace_s
        self.jobs_root = ""
        self.gpu_dir = ""
        self.cpus: int | None = None
        self.gpus: list[str] = []  # what nvidia-smi listed
        self.has_flock = False

    @classmethod
    def from_config(cls, config: ClusterConfig) -> DirectScheduler:
        """The host is ``cluster_host``: there is no other way to reach it."""
        if config.cluster_host is None:
            raise ConfigError(
                "cluster_type 'ssh' runs jobs on a host reached by SSH, but no cluster_host "
                "is set: set cluster_host (and username, key_file if needed), or use "
                "cluster_type 'local' for processes on this machine"
            )
        return cls(config.cluster_host)

    def attach(self, *, work_dir: str, jobs_root: str) -> None:
        """Status and cancel read the run records under ``jobs_root``; GPU claims live in
        ``<work_dir>/gpus``."""
        self.jobs_root = jobs_root
        self.gpu_dir = f"{work_dir}/gpus"

    def discovery_argv(self) -> list[str]:
        """CPU count, GPUs, and whether the host can run jobs at all (one command)."""
        return ["sh", "-c", DISCOVER, "clustrix-discover"]

    def read_discovery_answer(self, returncode: int, stdout: str, stderr: str) -> None:
        """:meth:`read_facts` of the answer."""
        self.read_facts(stdout, stderr)

    def read_facts(self, out: str, err: str = "") -> None:
        """Take the facts of :data:`DISCOVER`'s output; refuse a host jobs cannot run on."""
        facts: dict[str, list[str]] = {}
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            facts.setdefault(word, []).append(rest.strip())
        nproc = (facts.get("CLX-NPROC") or [""])[0]
        self.cpus = int(nproc) if nproc.isdigit() and int(nproc) > 0 else None
        self.gpus = [g for g in facts.get("CLX-GPU", []) if g]
        self.has_flock = "CLX-FLOCK" in facts
        missing = [
            what
            for word, what in (("CLX-PROC", "/proc"), ("CLX-SETSID", "setsid (util-linux)"))
            if word not in facts
        ]
        if missing:
            system = (facts.get("CLX-OS") or [""])[0] or err.strip()[-200:] or "unknown system"
            raise ConfigError(
                f"cluster_type 'ssh' runs jobs as process groups on a Linux host, but "
                f"{self.host} ({system}) has no {' and no '.join(missing)}; use a Linux host "
                "(install util-linux for setsid), or another cluster_type"
            )

    def default_max_workers(self) -> int | None:
        """The host's CPU count: no queue but the client's, so the client caps."""
        return self.cpus

    def slots(self, resources: Resources) -> int | None:
        """One job per CPU."""
        return self.cpus

    # ------------------------------------------------------------------ submission
    def job_id(self, spec: JobSpec, task: int) -> str:
        """``<host>:<job dir name>_<task>``."""
        return f"{self.host}:{posixpath.basename(spec.job_dir)}_{task}"

    def render_script(self, spec: JobSpec) -> str:
        """The job script: who runs it, GPUs, the time limit, then the common body."""
        q = shlex.quote
        logs = spec.path(_wire.LOGS_DIR)
        lines = [
            "#!/bin/sh",
            f"# clustrix job {q(spec.job_name)}: {spec.n_tasks} task(s) on a plain host",
            "umask 077  # what the job creates is private, its run record and GPU claims too",
            '_clx_t="$1"',
            f"_clx_logs={q(logs)}",
            START_OF.rstrip("\n"),
            "# who runs this task: status and cancel check the pid, its start time and the",
            "# boot, so that a reused pid is never taken for the job",
            '_clx_start_of "$$"',
            '_clx_me="$$ $_clx_s $_clx_boot"',
            '[ -n "$_clx_s" ] && printf \'%s\\n\' "$_clx_me" > "$_clx_logs/.$_clx_t.run" &&',
            '  mv -f "$_clx_logs/.$_clx_t.run" "$_clx_logs/$_clx_t.run" || exit 1',
            "_clx_wd= _clx_gpus=",
        ]
        gpus = spec.resources.gpus
        if gpus is not None:
            lines += self._gpu_lines(spec, gpus)
            environment = {k: v for k, v in spec.environment.items() if k != CUDA_VISIBLE_DEVICES}
            spec = replace(spec, environment=environment)
        if spec.resources.time_limit_min is not None:
            lines += _watchdog_lines(spec.resources.time_limit_min, self.kill_grace_s)
        lines += [
            '_clx_end() { [ -z "$_clx_wd" ] || kill "$_clx_wd" 2>/dev/null',
            '  [ -z "$_clx_gpus" ] || _clx_release; }',
            "trap _clx_end EXIT",
        ]
        return "\n".join(lines) + "\n" + render_body(spec, '"$_clx_t"')

    def _gpu_lines(self, spec: JobSpec, gpus: int) -> list[str]:
        """Claim ``gpus`` devices (waiting while they are taken); export them."""
        if gpus == 0:
            return ["export CUDA_VISIBLE_DEVICES="]
        pool = gpu_pool(spec.environment, self.gpus)
        if len(pool) < gpus:
            have = f"only {', '.join(pool)}" if pool else "none"
            raise ConfigError(
                f"gpus={gpus}: {self.host} has {have} for clustrix's jobs (nvidia-smi, or "
                "CUDA_VISIBLE_DEVICES in environment_variables, lists them); ask for fewer, "
                "or list the devices in environment_variables CUDA_VISIBLE_DEVICES"
            )
        if not self.has_flock:
            raise ConfigError(
                f"gpus={gpus}: handing out GPUs needs flock (util-linux) on {self.host}; "
                "install it, or leave gpus unset and set CUDA_VISIBLE_DEVICES yourself"
            )
        q = shlex.quote
        # lock files named by the device's hex: any device name makes a file name
        pairs = " ".join(f"{q(device)} {device.encode().hex()}" for device in pool)
        keys = " ".join(device.encode().hex() for device in pool)
        flock = f'flock "$_clx_gpu_dir/.lock" sh -c {q(CLAIM_GPUS)} clustrix-gpus'
        release = f'flock "$_clx_gpu_dir/.lock" sh -c {q(RELEASE_GPUS)} clustrix-gpus'
        exits = spec.path(_wire.EXIT_DIR)
        return [
            "# failing before the worker runs: the exit status says so (else: LOST)",
            f'_clx_fail() {{ echo "clustrix: $1" >&2; _clx_x={q(exits)}',
            "  printf '1\\n' > \"$_clx_x/.$_clx_t.tmp\" &&",
            '  mv -f "$_clx_x/.$_clx_t.tmp" "$_clx_x/$_clx_t"',
            "  exit 1; }",
            f"# {gpus} GPU(s) of the host's, held by no other clustrix job: wait for them",
            f"_clx_gpu_dir={q(self.gpu_dir)}",
            'mkdir -p "$_clx_gpu_dir" || _clx_fail "cannot create $_clx_gpu_dir"',
            f'_clx_release() {{ {release} "$_clx_gpu_dir" "$_clx_me" {keys}; }}',
            ': > "$_clx_logs/$_clx_t.wait"',
            "while :; do",
            f'  _clx_gpus=$({flock} "$_clx_gpu_dir" {gpus} "$_clx_me" {pairs}) ||',
            '    _clx_fail "cannot claim GPUs (flock $_clx_gpu_dir/.lock)"',
            '  [ -z "$_clx_gpus" ] || break',
            "  sleep 1",
            "done",
            'rm -f "$_clx_logs/$_clx_t.wait"',
            'export CUDA_VISIBLE_DEVICES="$_clx_gpus"',
        ]

    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        """``sh -c <launcher> script job_dir 0 1 …``: one command starts every task."""
        tasks = [str(t) for t in range(spec.n_tasks)]
        return ["sh", "-c", LAUNCHER, "clustrix-launch", script_path, spec.job_dir, *tasks]

    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        """``<task> <pid> <start>`` per task → one job ID per task, in task order."""
        name = posixpath.basename(spec.job_dir)
        if not _RUN_NAME.match(name):
            raise ValueError(f"job directory name {name!r} cannot be part of a job ID")
        started = {
            int(parts[0])
            for parts in (line.split() for line in stdout.splitlines())
            if len(parts) == 3 and all(p.isdigit() for p in parts)
        }
        if started != set(range(spec.n_tasks)):
            raise ValueError(f"expected {spec.n_tasks} started tasks, got {stdout!r}")
        return [self.job_id(spec, t) for t in range(spec.n_tasks)]

    def find_submitted_argv(self, script_path: str) -> list[str] | None:
        """The tasks a launcher claimed in the job directory of ``script_path``."""
        logs = f"{posixpath.dirname(script_path)}/{_wire.LOGS_DIR}"
        script = 'for f in "$1"/*.launch; do [ -e "$f" ] && echo "${f##*/}"; done; exit 0'
        return ["sh", "-c", script, "clustrix-find", logs]

    def parse_find_submitted(
        self, spec: JobSpec, stdout: str, script_path: str
    ) -> list[str] | None:
        """The job IDs if every task was claimed; else None, and the engine submits again:
        the launcher then starts only the tasks nobody claimed."""
        claimed = {line.strip() for line in stdout.splitlines()}
        if all(f"{t}.launch" in claimed for t in range(spec.n_tasks)):
            return [self.job_id(spec, t) for t in range(spec.n_tasks)]
        return None

    # ------------------------------------------------------------------ status, cancel
    def _run_ids(self, job_ids: Sequence[str]) -> list[str]:
        if not self.jobs_root:
            raise RuntimeError("DirectScheduler.attach() was not called")
        return [parse_job_id(job_id)[1] for job_id in job_ids]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One command for every job: by run id, or all of the work dir beyond 300."""
        run_ids = self._run_ids(job_ids)
        listed = run_ids if len(run_ids) <= MAX_LISTED_JOBS else []
        return ["sh", "-c", STATUS, "clustrix-status", self.jobs_root, *listed]

    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        """``CLX|run id|WORD|exit status|reason`` lines; anything else is ignored."""
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            parts = line.split("|", 4)
            if len(parts) != 5 or parts[0] != _MARK or not parts[2].isupper():
                continue
            job_id = f"{self.host}:{parts[1]}"
            rc = parts[3].strip()
            exit_code = int(rc) if rc.lstrip("-").isdigit() else None
            states[job_id] = TaskStatus(job_id, parts[2], reason=parts[4], exit_code=exit_code)
        return states

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """TERM to each job's process group now, KILL after ``kill_grace_s``."""
        grace = str(self.kill_grace_s)
        return [
            "sh",
            "-c",
            CANCEL,
            "clustrix-cancel",
            self.jobs_root,
            grace,
            *self._run_ids(job_ids),
        ]


def _watchdog_lines(time_limit_min: float, grace_s: int) -> list[str]:
    """A background watchdog: at the time limit, mark the job timed out, TERM its group,
    KILL it after the grace. The job's end stops the watchdog (TERM, trapped).

    A job that ends at once must not leave the ``sleep`` behind for the whole time limit
    (seen under load, about one quick job in 150): the TERM may come before ``sleep`` is
    started, before its pid is known, or before ``wait``; the trap kills the ``sleep`` if
    its pid is known, and the check after ``$!`` covers the rest. KILL, not TERM: a
    ``sleep`` not yet exec'd still has the shell's handler, which would swallow a TERM."""
    limit_s = max(1, math.ceil(time_limit_min * 60))
    return [
        f"# the time limit ({time_limit_min:g} min), enforced here: there is no scheduler",
        "(",
        "  _clx_stop= _clx_z=",
        '  trap \'_clx_stop=1; [ -z "$_clx_z" ] || kill -KILL "$_clx_z" 2>/dev/null\' TERM',
        f"  sleep {limit_s} & _clx_z=$!",
        '  [ -n "$_clx_stop" ] || wait "$_clx_z"',
        '  if [ -n "$_clx_stop" ]; then kill -KILL "$_clx_z" 2>/dev/null; exit 0; fi',
        "  trap '' TERM  # the TERM for the group below is not for the watchdog",
        '  [ -e "$_clx_logs/$_clx_t.cancel" ] || : > "$_clx_logs/$_clx_t.timeout"',
        f"  echo 'clustrix: time limit ({time_limit_min:g} min) reached: stopping the job' >&2",
        '  kill -TERM -"$$"',
        f"  sleep {grace_s}",
        '  kill -KILL -"$$"',
        ") &",
        "_clx_wd=$!",
    ]
