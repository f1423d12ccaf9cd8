"""The ``local`` backend: each job is a detached OS process on the transport's machine.

Through the local transport this is the embedded default (no cluster at all); the same
backend through an SSH transport runs jobs on a remote host without a scheduler. It renders
a POSIX ``sh`` script and builds argv; it runs nothing itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from .. import _wire
from ..lifecycle import JobState
from .base import JobSpec, Scheduler, TaskStatus, render_body

__all__ = ["LocalScheduler"]

# Starts each task in the background and prints its PID. nohup: a remote SSH session that
# ends must not take the jobs with it; stdin from /dev/null also keeps nohup silent.
_LAUNCHER = """\
script=$1; logs=$2; shift 2
for t in "$@"; do
  nohup sh "$script" "$t" </dev/null >"$logs/$t.out" 2>"$logs/$t.err" &
  echo $!
done
"""


class LocalScheduler(Scheduler):
    """Processes instead of a queue: the engine starts only as many as ``max_workers``."""

    name = "local"
    supports_array_throttle = False
    status_is_shared = False  # ps on the host: the poll budget need not hold
    #: ``ps`` only shows live processes; how they ended is in their exit file.
    native_states = {"RUNNING": JobState.RUNNING}
    #: Its jobs are plain processes with nothing to stop them at a time limit (the local
    #: pool enforces it itself and clears this; the ``ssh`` backend's jobs have a watchdog).
    unsupported_resources = frozenset({"time_limit_min"})
    unsupported_fix = (
        "run the calls on a host with cluster_type='ssh', or on this machine with the "
        "default local engine (CLUSTRIX_LOCAL_ENGINE unset): both enforce it"
    )

    def render_script(self, spec: JobSpec) -> str:
        """A ``sh`` script taking the task index as its first argument."""
        header = f"#!/bin/sh\n# clustrix job {shlex.quote(spec.job_name)}: {spec.n_tasks} task(s)\n"
        return header + render_body(spec, '"$1"')

    def submit_argv(self, spec: JobSpec, script_path: str) -> list[str]:
        """``sh -c <launcher> script logs 0 1 …``: one command starts every task."""
        tasks = [str(t) for t in range(spec.n_tasks)]
        logs = spec.path(_wire.LOGS_DIR)
        return ["sh", "-c", _LAUNCHER, "clustrix-launch", script_path, logs, *tasks]

    def parse_submit(self, spec: JobSpec, stdout: str) -> list[str]:
        """One PID per line, in task order."""
        pids = stdout.split()
        if len(pids) != spec.n_tasks or not all(p.isdigit() for p in pids):
            raise ValueError(f"expected {spec.n_tasks} PIDs, got {stdout!r}")
        return pids

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """``ps`` lists those PIDs still alive (works on Linux and macOS)."""
        return ["ps", "-o", "pid=,stat=", "-p", ",".join(job_ids)]

    def parse_status(self, stdout: str) -> dict[str, TaskStatus]:
        """Live PIDs are RUNNING; zombies (state Z) have ended and are left out."""
        states: dict[str, TaskStatus] = {}
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and not parts[1].startswith("Z"):
                states[parts[0]] = TaskStatus(parts[0], "RUNNING")
        return states

    def status_ok_anyway(self, output: str) -> bool:
        """``ps -p`` exits 1 when none of the PIDs is alive: an answer, not an error."""
        return not output.strip()

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """TERM to each job script, which passes it on to its worker."""
        return ["kill", "-TERM", *job_ids]
