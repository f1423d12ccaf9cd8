"""The Grid Engine backend ((Son of) Grid Engine 8.x and its kin): ``qsub`` scripts with
``#$`` directives, task arrays, ``qstat -xml`` and ``qacct`` parsing, ``qdel``.

Pure text in, text out (the formats are pinned by outputs captured from Debian 12's
gridengine 8.1.9 under ``tests/data/sge/``); :meth:`SgeScheduler.discovery_argv` finds Grid
Engine on the host (also where the login shell does not set ``SGE_ROOT``) and reads its
limits once.
The shell scripts it builds live in :mod:`._sge_sh`. It never knows whether its commands run
locally or over SSH.

Grid Engine numbers array tasks from 1 (``$SGE_TASK_ID``), clustrix from 0: task ``i`` of a
submission is Grid Engine's task ``i + 1``, and its job ID is ``<job>.<i + 1>``.
"""

from __future__ import annotations

import math
import posixpath
import shlex
from collections.abc import Mapping, Sequence

from .. import _wire
from ..config import ClusterConfig, Resources
from ..errors import ConfigError
from ..lifecycle import JobState
from . import _sge_sh as sh
from ._sge_parse import expand_tasks, job_ranges, parse_qacct, parse_qstat_xml
from .base import JobSpec, Scheduler, TaskStatus, render_body

__all__ = [
    "QACCT_FAILED",
    "SGE_STATES",
    "SgeScheduler",
    "expand_tasks",
    "job_ranges",
    "parse_qacct",
    "parse_qstat_xml",
]

_Q, _R, _F, _C = JobState.QUEUED, JobState.RUNNING, JobState.FAILED, JobState.CANCELLED
#: qacct's ``failed`` codes (accounting(5)): what ended a job, in the one lifecycle. 0 is no
#: failure of Grid Engine's (the job's own exit status tells); a job that never started for
#: a reason of the host (shepherd, execd) is LOST, one the job asked for (its working
#: directory, its output file, its shell) FAILED.
QACCT_FAILED: dict[int, tuple[str, JobState]] = {
    1: ("assumedly before job", JobState.LOST),
    3: ("before writing config", JobState.LOST),
    4: ("before writing PID", JobState.LOST),
    5: ("on reading config file", JobState.LOST),
    6: ("setting processor set", JobState.LOST),
    7: ("before prolog", JobState.LOST),
    8: ("in prolog", _F),
    9: ("before pestart", JobState.LOST),
    10: ("in pestart", _F),
    11: ("before job", JobState.LOST),
    12: ("before pestop", _F),
    13: ("in pestop", _F),
    14: ("before epilog", _F),
    15: ("in epilog", _F),
    16: ("releasing processor set", JobState.LOST),
    17: ("through signal", _F),
    18: ("shepherd returns error", JobState.LOST),
    19: ("before writing exit_status", JobState.LOST),  # e.g. killed while execd was down
    20: ("found unexpected error file", _F),
    21: ("in recognizing job", JobState.LOST),
    24: ("migrating (checkpointing jobs)", JobState.LOST),
    25: ("rescheduling", JobState.LOST),
    26: ("opening output file", _F),
    27: ("searching requested shell", _F),
    28: ("changing to working directory", _F),
    29: ("AFS setup", _F),
    30: ("application error", _F),
    31: ("accessing sgepasswd file", _F),
    32: ("entry is missing in password file", _F),
    33: ("wrong password", _F),
    34: ("communicating with Grid Engine Helper Service", JobState.LOST),
    35: ("before job in Grid Engine Helper Service", JobState.LOST),
    36: ("checking configured daemons", JobState.LOST),
    37: ("qmaster enforced h_rt, h_cpu, or h_vmem limit", JobState.TIMED_OUT),
    38: ("adding supplementary group", _F),
    100: ("assumedly after job", _C),  # killed by a signal: qdel (exit status 137)
}

#: Grid Engine's job states (``qstat``'s state column: the combinations its documentation
#: lists) and the words :func:`parse_qacct` gives a finished job (``failed <code>`` as qacct
#: says, ``exited`` for failed 0: the job's own exit status tells), in the one lifecycle.
#: Error states (E) will never run: they are failures. Suspended jobs (s, S, T) are alive but
#: not running. A word not listed is judged by its letters (:meth:`SgeScheduler.lifecycle`).
SGE_STATES: dict[str, JobState] = {
    **dict.fromkeys(("qw", "hqw"), _Q),
    **dict.fromkeys(("Rq", "hRq", "hRwq", "Rwq"), JobState.REQUEUED),
    **dict.fromkeys(("r", "t", "Rr", "Rt", "hr"), _R),
    **dict.fromkeys(("s", "ts", "S", "tS", "T", "tT", "Rs", "Rts", "RS", "RtS", "RT", "RtT"), _Q),
    **dict.fromkeys(("Eqw", "Ehqw", "EhRqw"), _F),
    **dict.fromkeys(("dr", "dt", "dRr", "dRt", "ds", "dS", "dT", "dRs", "dRS", "dRT"), _C),
    **dict.fromkeys(("dqw", "dhqw", "dEqw"), _C),
    "exited": _F,
    **{f"failed {code}": state for code, (_, state) in QACCT_FAILED.items()},
}

#: The letters of qstat's state column (qstat(1)): d(eleted) E(rror) h(old) r(unning)
#: R(estarted) s S T (suspended) t(ransferring) w(aiting) q(ueued) z(ombie).
_STATE_LETTERS = frozenset("dEhrRsStTwqz")
#: Parallel environments tried for ``cores`` > 1, in this order, among those that keep a
#: job's slots on one host (``allocation_rule $pe_slots``); else the first such one.
PREFERRED_PES = ("smp", "shm", "threads", "openmp", "omp", "make")
#: Default of ``max_aj_tasks`` (tasks per array) until discovery reads the cluster's.
DEFAULT_MAX_AJ_TASKS = 75000
#: How long a detail query waits for an accounting record not written yet, when discovery
#: could not read ``accounting_flush_time`` (Grid Engine's default flush_time is 15 s).
DEFAULT_ACCOUNTING_WAIT_S = 16
#: Status queries list this many job-number ranges at most (a bounded command line).
MAX_LISTED_RANGES = 300
#: qsub's refusals after which the same submission succeeds later (a job count limit,
#: qmaster down or restarting).
_TRANSIENT_SUBMIT_ERRORS = (
    "jobs are allowed per user",
    "jobs are allowed in the cluster",
    "unable to send message to qmaster",
    "unable to contact qmaster",
    "failed receiving gdi request",
    "commlib error",
)


class SgeScheduler(Scheduler):
    """Grid Engine via qsub / qstat -xml / qacct / qdel."""

    name = "sge"
    supports_array_throttle = True  # qsub -tc
    native_states = SGE_STATES
    #: No generic GPU or QOS request on Grid Engine (sites name their own complexes):
    #: extra_directives=["-l gpu=1"] asks for one.
    unsupported_resources = frozenset({"gpus", "qos"})

    def __init__(self, *, environment: Mapping[str, str] | None = None) -> None:
        #: SGE_ROOT/SGE_CELL from the config's environment_variables: where to look first
        self.hint = {k: v for k, v in (environment or {}).items() if k in ("SGE_ROOT", "SGE_CELL")}
        self.max_array_size = DEFAULT_MAX_AJ_TASKS
        #: variables Grid Engine's commands need that the login shell does not set
        self.env: dict[str, str] = dict(self.hint)
        #: where Grid Engine's commands are when they are not on the PATH ("": on it)
        self.binary_dir = ""
        self.parallel_environments: dict[str, str] = {}  # name -> allocation_rule
        self.queue_slots: dict[str, int] = {}
        self.accounting_wait_s = DEFAULT_ACCOUNTING_WAIT_S

    @classmethod
    def from_config(cls, config: ClusterConfig) -> SgeScheduler:
        """``environment_variables`` may say where Grid Engine is (``SGE_ROOT``,
        ``SGE_CELL``): the job gets them, and so do clustrix's own commands."""
        return cls(environment=config.environment_variables)

    def lifecycle(self, native: str) -> JobState:
        """A listed word as listed; an unlisted combination of state letters by its
        letters (E: error, d: being deleted, r/t: running), never silently QUEUED."""
        if native in self.native_states:
            return self.native_states[native]
        if native.startswith("failed "):
            return _F
        if not native or not set(native) <= _STATE_LETTERS:
            return _Q  # not Grid Engine's (the engine's own words, a new one): alive
        if "E" in native:
            return _F
        if native.startswith("d"):
            return _C
        if ("r" in native or "t" in native) and not set("sST") & set(native):
            return _R
        return _Q

    # ------------------------------------------------------------------ discovery
    def discovery_argv(self) -> list[str]:
        """Find Grid Engine (the login shell's PATH, else ``SGE_ROOT`` or common install
        roots), then read max_aj_tasks, the accounting flush delay, the parallel
        environments and the queues' slots, in one command."""
        hint = [self.hint.get("SGE_ROOT", ""), self.hint.get("SGE_CELL", "")]
        return ["sh", "-c", sh.DISCOVER, "clustrix-sge-discover", *hint, sh.ROOTS]

    def read_discovery_answer(self, returncode: int, stdout: str, stderr: str) -> None:
        """:meth:`read_discovery` of both streams."""
        self.read_discovery(stdout + stderr)

    def read_discovery(self, text: str) -> None:
        """Take what :data:`._sge_sh.DISCOVER` printed; a clear error if it found nothing."""
        found = sh.discovery_sections(text)
        if "found" not in found:
            if "SGE_ROOT" in self.hint:
                where = f"SGE_ROOT={self.hint['SGE_ROOT']} (environment_variables)"
            else:
                where = f"SGE_ROOT={found.get('SGE_ROOT') or 'unset'}"
            raise ConfigError(
                "cluster_type='sge': Grid Engine not found on the host (qsub on the PATH: "
                f"{found.get('qsub', 'none')}; {where}; looked in: {found.get('tried', '?')}; "
                f"{found.get('error', text.strip()[-300:])}). Fix: make a non-interactive "
                "login shell find it (source $SGE_ROOT/$SGE_CELL/common/settings.sh in the "
                "shell's startup file, before any check for an interactive shell), or give "
                "environment_variables={'SGE_ROOT': '/path/to/sge', 'SGE_CELL': 'default'}"
            )
        self.env = {k[4:]: v for k, v in found.items() if k.startswith("env ")}
        if found["found"] == "path" and not self.hint:
            self.env = {}  # the login shell knows Grid Engine: commands by name
        else:
            self.binary_dir = found.get("bin", "")
        self.read_config(found.get("conf", ""))
        self.read_parallel_environments(found.get("pes", ""))
        self.read_queues(found.get("queues", ""))

    def read_config(self, text: str) -> None:
        """max_aj_tasks and the accounting flush delay from ``qconf -sconf``."""
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            value = value.strip()
            if key == "max_aj_tasks" and value.isdigit() and int(value) > 0:
                self.max_array_size = int(value)
            elif key == "reporting_params":
                params = dict(p.partition("=")[::2] for p in value.split())
                if params.get("accounting", "true").lower() == "false":
                    self.accounting_wait_s = 0  # no accounting file: nothing to wait for
                    continue
                flush = params.get("accounting_flush_time") or params.get("flush_time", "")
                seconds = sh.seconds(flush)
                if seconds is not None:
                    self.accounting_wait_s = seconds + 1

    def read_parallel_environments(self, text: str) -> None:
        """Each parallel environment's allocation rule, from ``qconf -sp``."""
        name = ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "pe_name":
                name = value.strip()
            elif key == "allocation_rule" and name:
                self.parallel_environments[name] = value.strip()

    def read_queues(self, text: str) -> None:
        """Slots per queue from ``qstat -g c`` (TOTAL: the capacity, also while a queue
        instance is unreachable for a moment, e.g. an execd restarting)."""
        for line in text.splitlines():
            cols = line.split()
            if len(cols) == 8 and cols[-1].isdigit() and cols[-4].isdigit():
                self.queue_slots[cols[0]] = int(cols[-3])

    def slots(self, resources: Resources) -> int | None:
        """Jobs of ``resources`` the queue (or all queues) can run at once, if known."""
        if resources.partition:
            total = self.queue_slots.get(resources.partition, 0)
        else:
            total = sum(self.queue_slots.values())
        return max(1, total // resources.cores) if total else None

    def parallel_environment(self) -> str | None:
        """The parallel environment ``cores`` maps to: one host's slots (``$pe_slots``)."""
        single_host = [n for n, rule in self.parallel_environments.items() if rule == "$pe_slots"]
        for name in (*PREFERRED_PES, *sorted(single_host)):
            if name in single_host:
                return name
        return None

    # ------------------------------------------------------------------ commands
    def command(self, program: str) -> list[str]:
        """argv start of a Grid Engine program, with the variables it needs."""
        path = posixpath.join(self.binary_dir, program) if self.binary_dir else program
        env = [f"{k}={v}" for k, v in sorted(self.env.items())]
        return ["env", *env, path] if env else [path]

    def _script(self, template: str, label: str, *args: str) -> list[str]:
        return ["sh", "-c", sh.script(template, self.env, self.binary_dir), label, *args]

    # ------------------------------------------------------------------ submission
    def directives(self, spec: JobSpec) -> list[str]:
        """The ``#$`` options of a submission, generic resources mapped to Grid Engine."""
        res = spec.resources
        extras = [e.strip().removeprefix("#$").strip() for e in res.extra_directives]
        name = spec.job_name if spec.job_name[:1].isalpha() else f"j{spec.job_name}"
        options = [
            f"-N {name}",  # the executor keeps [A-Za-z0-9_.-]; qsub refuses a leading digit
            "-S /bin/bash",
            "-cwd",  # as sbatch: the job runs where the submit command ran (the login dir)
            # The script sends its output to the task's logs itself (below). Not the job dir
            # here: a task that starts after its directory was removed (cleaned up while the
            # task was being dispatched) would be held in error state (Eqw) for ever, where
            # with /dev/null it just ends. Grid Engine's own errors reach qstat -j and qacct.
            "-j y",
            "-o /dev/null",
            # the job dir's name marks the submission, in qstat -j and in qacct alike
            f"-A clustrix_{posixpath.basename(spec.job_dir)}",
        ]
        if spec.n_tasks > 1:
            options.append(f"-t 1-{spec.n_tasks}")
            if spec.array_throttle:
                options.append(f"-tc {spec.array_throttle}")
        if res.cores > 1 and not any(e.startswith("-pe ") for e in extras):
            pe = self.parallel_environment()
            if pe is None:
                rules = ", ".join(f"{n} ({r})" for n, r in self.parallel_environments.items())
                raise ConfigError(
                    f"cores={res.cores} needs a Grid Engine parallel environment that keeps "
                    f"a job's slots on one host (allocation_rule $pe_slots); the cluster has "
                    f"{rules or 'none'}. Name one with extra_directives=['-pe NAME "
                    f"{res.cores}'], or ask the cluster's admin for one"
                )
            options.append(f"-pe {pe} {res.cores}")
        if res.mem_gb is not None:
            # h_vmem is per slot: the job's memory shared among its cores
            options.append(f"-l h_vmem={math.ceil(res.mem_gb * 1024 / res.cores)}M")
        if res.time_limit_min is not None:
            options.append(f"-l h_rt={res.time_limit_min * 60}")
        if res.partition:
            options.append(f"-q {res.partition}")
        if res.account:
            options.append(f"-P {res.account}")  # Grid Engine charges projects
        return options + extras

    def render_script(self, spec: JobSpec) -> str:
        """The qsub script: directives, the output redirected to clustrix's log names
        (by task index, from 0), then the common body."""
        task = "$((SGE_TASK_ID - 1))" if spec.n_tasks > 1 else "0"
        q = shlex.quote
        lines = ["#!/bin/bash", *(f"#$ {option}" for option in self.directives(spec))]
        lines += [
            f"# clustrix job {q(spec.job_name)}: {spec.n_tasks} task(s)",
            f"_clx_logs={q(spec.path(_wire.LOGS_DIR))}",
            # (bash goes on after a redirection that failed: a removed job dir ends the task)
            f'exec >>"$_clx_logs/{task}.out" 2>>"$_clx_logs/{task}.err" || exit 1',
        ]
        return "\n".join(lines) + "\n" + render_body(spec, f'"{task}"')

    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        """``qsub -terse script``."""
        return [*self.command("qsub"), "-terse", script_path]

    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        """``12345`` or ``12345.1-10:1`` → the job ID, or one ``12345.<i>`` per task."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        number = lines[-1].split(".")[0] if lines else ""
        if not number.isdigit():
            raise ValueError(f"qsub printed no job ID: {stdout!r}")
        if spec.n_tasks == 1:
            return [number]
        return [f"{number}.{i}" for i in range(1, spec.n_tasks + 1)]

    def is_transient_submit_error(self, message: str) -> bool:
        """Refusals that mean "not now": job count limits, qmaster down or restarting."""
        return any(pattern in message for pattern in _TRANSIENT_SUBMIT_ERRORS)

    def is_job_count_limit(self, message: str) -> bool:
        """max_u_jobs / max_jobs, or an array above max_aj_tasks: send it in pieces."""
        return "jobs are allowed" in message or "submit a job with more than" in message

    def find_submitted_argv(self, script_path: str) -> list[str] | None:
        """The user's jobs with their account string (queued, running, and accounted)."""
        marker = f"clustrix_{posixpath.basename(posixpath.dirname(script_path))}"
        return self._script(sh.FIND_SUBMITTED, "clustrix-sge-find", marker)

    def parse_find_submitted(
        self, spec: JobSpec, stdout: str, script_path: str
    ) -> list[str] | None:
        """The job whose account string marks the submission of ``script_path``."""
        marker = f"clustrix_{posixpath.basename(posixpath.dirname(script_path))}"
        number = ""
        for line in stdout.splitlines():
            key, _, value = line.replace(":", " ", 1).partition(" ")
            if key in ("job_number", "jobnumber"):
                number = value.strip()
            elif key == "account" and value.strip() == marker and number.isdigit():
                return self.parse_submit(spec, number)
        return None

    # ------------------------------------------------------------------ status
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One script: ``qstat -xml`` of the user's jobs, plus the error reasons of ours
        in error state (which it deletes once they were reported)."""
        ranges = ",".join(job_ranges(job_ids)[:MAX_LISTED_RANGES])
        return self._script(sh.STATUS, "clustrix-sge-status", ranges)

    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        """States by job ID (see :func:`parse_qstat_xml`)."""
        return parse_qstat_xml(stdout)

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One ``qdel``; the tasks of an array as ranges (``12.1-500``)."""
        plain = sorted({j for j in job_ids if "." not in j}, key=int)
        tasks: dict[str, list[str]] = {}
        for job_id in job_ids:
            if "." in job_id:
                number, _, task = job_id.partition(".")
                tasks.setdefault(number, []).append(task)
        ids = plain + [
            f"{number}.{r}" for number, ts in sorted(tasks.items()) for r in job_ranges(ts)
        ]
        return [*self.command("qdel"), *ids]

    def detail_argv(self, job_ids: Sequence[str]) -> list[str] | None:
        """``qacct -j`` per job, waiting up to the accounting flush delay for records."""
        numbers = sorted({j.split(".")[0] for j in job_ids}, key=int)
        return self._script(sh.DETAIL, "clustrix-sge-qacct", str(self.accounting_wait_s), *numbers)

    def parse_detail(self, stdout: str) -> dict[str, TaskStatus]:
        """Final states from qacct (see :func:`parse_qacct`)."""
        return parse_qacct(stdout)
