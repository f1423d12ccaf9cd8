"""A client that submits calls and dies, leaving its jobs to the ``clustrix`` command's tests
(jobs, status, logs, cancel, recover), and a way to run the command in this process.

Each call prints a tick line until its ``go`` file exists on the cluster, then a last line to
stdout and one to stderr, and returns its name: the test decides when a job ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clustrix import ClusterConfig
from clustrix.cli import main

DYING_CLIENT = """
import json, os, sys, time
from clustrix import ClusterConfig, ClusterExecutor
from clustrix._factory import make_scheduler

def wait_for(name, go):
    import os, sys, time
    go, i = os.path.expanduser(go), 0
    while not os.path.exists(go):
        print(f"{name} tick {i}", flush=True)
        i += 1
        time.sleep(0.2)
    print(f"{name} done", flush=True)
    print(f"{name} says goodbye", file=sys.stderr, flush=True)
    return name

config = ClusterConfig.model_validate_json(sys.argv[1])
# the scheduler given: job processes in the registry even for the local backend (whose
# default, a warm pool, leaves nothing to adopt)
ex = ClusterExecutor(config, scheduler=make_scheduler(config))
futures = ex.submit_map(wait_for, json.loads(sys.argv[2]), json.loads(sys.argv[3]), chunksize=1)
while any(f.job_id is None for f in futures):
    time.sleep(0.01)
print(json.dumps([f.job_id for f in futures]), flush=True)
os._exit(17)  # dies: no shutdown, nothing collected
"""


def submit_and_die(config: ClusterConfig, names: Sequence[str], gos: Sequence[str]) -> list[str]:
    """Submit ``wait_for(name, go)`` for each pair from a process that then dies; the job
    IDs."""
    dead = subprocess.run(
        [sys.executable, "-c", DYING_CLIENT, config.model_dump_json(), json.dumps(list(names)),
         json.dumps(list(gos))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dead.returncode == 17, f"the client did not get to die: {dead.stderr}"
    job_ids: list[str] = json.loads(dead.stdout.strip().splitlines()[-1])
    return job_ids


@dataclass
class Ran:
    """What one ``clustrix`` command did."""

    status: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def lines(self) -> list[Any]:
        """``--json`` output of a streaming command: one object per line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def clustrix(*argv: str) -> Ran:
    """Run ``clustrix ARGV`` in this process (no interpreter start-up per command)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse: usage errors, --help
            status = int(exc.code or 0)
    return Ran(status, out.getvalue(), err.getvalue())


def write_config(path: os.PathLike[str] | str, config: ClusterConfig) -> str:
    """``config`` as a YAML file (what ``--config`` reads); its path."""
    import yaml

    data = json.loads(config.model_dump_json(exclude_defaults=True))
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return os.fspath(path)
