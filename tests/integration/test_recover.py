"""A client that dies while its jobs run: a new process reattaches and gets every result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clustertools import require_cluster

from clustrix import ClusterExecutor

pytestmark = pytest.mark.cluster

DYING_CLIENT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import jobfuncs as jf
from clustrix import ClusterConfig, ClusterExecutor

config = ClusterConfig.model_validate_json({config!r})
ex = ClusterExecutor(config)
futures = ex.submit_map(jf.sleep_then, [2.0] * 24, range(24), chunksize=1)
while any(f.job_id is None for f in futures):
    pass
print(json.dumps([f.job_id for f in futures]), flush=True)
os._exit(1)  # the client dies: no shutdown, no results collected
"""


def test_a_new_process_recovers_every_result(tmp_path: Path) -> None:
    cluster = require_cluster(ssh=True, slurm=False)
    state_dir = tmp_path / "state"
    config = cluster.ssh_config(
        cluster_type="slurm",
        remote_work_dir=f"~/.clustrix-recover-{os.getpid()}",
        state_dir=state_dir,
        poll_interval_max_s=0.5,
    )
    tests_dir = str(Path(__file__).resolve().parents[1])
    script = DYING_CLIENT.format(tests=tests_dir, config=config.model_dump_json())
    dead = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dead.returncode == 1 and dead.stdout.strip(), dead.stderr
    job_ids = json.loads(dead.stdout.strip().splitlines()[-1])
    assert len(job_ids) == 24
    assert len(list((state_dir / "submissions").glob("*.json"))) == 1
    time.sleep(3)  # let the first wave finish while nobody watches

    with ClusterExecutor(config) as executor:
        futures = executor.recover()
        assert [f.job_id for f in futures] == job_ids
        assert [f.result(timeout=300) for f in futures] == list(range(24))
        assert executor.stats().get("commands.sbatch", 0) == 0  # nothing was rerun
        assert executor.recover() == []  # collected: nothing left to recover
    assert list((state_dir / "submissions").glob("*.json")) == []
