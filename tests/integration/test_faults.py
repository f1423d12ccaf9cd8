"""Faults a real cluster has, injected into the real test cluster: nothing is lost.

These tests cut the SSH connection of the test user (``scripts/testcluster.sh drop-ssh``),
which needs root, like starting the test cluster does.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster

from clustrix import ClusterExecutor, JobFailedError, TransportError

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"


def drop_ssh_later(delay_s: float, down_s: float) -> threading.Thread:
    """Cut every SSH connection after ``delay_s`` and keep sshd down for ``down_s``."""
    if os.geteuid() != 0:
        message = "cutting SSH connections needs root (as scripts/testcluster.sh start does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)

    def drop() -> None:
        time.sleep(delay_s)
        subprocess.run(
            ["bash", str(SCRIPT), "drop-ssh", str(down_s)], check=True, capture_output=True
        )

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    return thread


def test_map_survives_a_dropped_connection(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=False)
    executor = ClusterExecutor(backend_config("slurm-ssh", tmp_path))
    try:
        dropper = drop_ssh_later(delay_s=2.0, down_s=3.0)
        values = list(range(500))
        results = list(executor.map(jf.slow_square, values, chunksize=10, timeout=600))
        dropper.join()
        assert results == [v * v for v in values]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_futures_fail_after_the_grace_period(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=False)
    executor = ClusterExecutor(backend_config("slurm-ssh", tmp_path, connection_grace_s=3.0))
    try:
        future = executor.submit(jf.sleep_then, 20, "late")
        deadline = time.monotonic() + 60
        while not future.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        dropper = drop_ssh_later(delay_s=0.0, down_s=12.0)
        with pytest.raises(TransportError, match="lost since") as info:
            future.result(timeout=120)
        assert "connection_grace_s" in str(info.value)
        assert str(future.job_id) in str(info.value)  # the job may still run: say which
        dropper.join()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def set_node_state(state: str) -> None:
    """Take the node down, or resume it if it is still down (with ReturnToService=2 the
    running slurmd usually brings it back by itself within seconds)."""
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    if state == "resume":
        current = subprocess.run(
            ["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True
        ).stdout
        if not current.startswith(("down", "drain")):
            return
    command = ["scontrol", "update", f"nodename={node}", f"state={state}"]
    if state == "down":
        command.append("reason=clustrix-test")
    subprocess.run(command, check=True)


def test_node_failure_is_retried_with_max_retries(tmp_path: Path) -> None:
    require_cluster(ssh=False, slurm=True)
    if os.geteuid() != 0:
        pytest.skip("taking the SLURM node down needs root")
    config = backend_config(
        "slurm-local", tmp_path, max_retries=1, extra_directives=["--no-requeue"]
    )
    executor = ClusterExecutor(config)
    try:
        future = executor.submit(jf.sleep_then, 4, "survived")
        deadline = time.monotonic() + 60
        while not future.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        first_job = future.job_id
        set_node_state("down")  # the running job ends with NODE_FAIL
        try:
            while future.job_id == first_job and time.monotonic() < deadline + 60:
                time.sleep(0.1)
        finally:
            set_node_state("resume")
        assert future.result(timeout=120) == "survived"
        assert future.job_id != first_job
        assert executor.stats()["retries"] == 1
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_node_failure_without_retries_fails_with_node_fail(tmp_path: Path) -> None:
    require_cluster(ssh=False, slurm=True)
    if os.geteuid() != 0:
        pytest.skip("taking the SLURM node down needs root")
    executor = ClusterExecutor(
        backend_config("slurm-local", tmp_path, extra_directives=["--no-requeue"])
    )
    try:
        future = executor.submit(jf.sleep_then, 30, None)
        deadline = time.monotonic() + 60
        while not future.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        set_node_state("down")
        try:
            with pytest.raises(JobFailedError) as info:
                future.result(timeout=60)
        finally:
            set_node_state("resume")
        assert info.value.state == "NODE_FAIL"
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
