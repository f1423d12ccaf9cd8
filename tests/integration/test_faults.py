"""Faults a real cluster has, injected into the real test cluster: nothing is lost.

These tests cut the SSH connection of the test user (``scripts/testcluster.sh drop-ssh``),
restart slurmd (``scripts/testcluster.sh restart-slurmd``) or take the node down, which needs
root, like starting the test cluster does.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, wait_running

from clustrix import ClusterExecutor, JobFailedError, TransportError

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"


def require_root(what: str) -> None:
    """Skip (fail under CI=true) unless this process may inject faults into the cluster."""
    if os.geteuid() != 0:
        message = f"{what} needs root (as scripts/testcluster.sh start does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def drop_ssh_later(delay_s: float, down_s: float) -> threading.Thread:
    """Cut every SSH connection after ``delay_s`` and keep sshd down for ``down_s``."""
    require_root("cutting SSH connections")

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


# --- slurmd stopped and restarted under running jobs ---------------------------------------
#
# What SLURM 22.05 does (measured on the test cluster):
# - a running job does not need slurmd: its slurmstepd keeps it running while slurmd is down,
#   and a job that ends meanwhile stays COMPLETING until slurmd is back, then COMPLETED;
# - a job whose processes died with slurmd (slurmstepd killed too, as in a node crash) stays
#   RUNNING in squeue until slurmd registers again; slurmctld then ends it ("Batch JobId=N
#   missing from batch node") if it started more than BatchStartTimeout + MessageTimeout
#   (10 s + 10 s) before: requeued (PENDING, eligible again AuthInfo cred_expire later) or,
#   with --no-requeue, NODE_FAIL (exit code 1:0). One that started later stays RUNNING
#   until the next registration;
# - a job slurmctld launches while slurmd is down is requeued ("per user/system request"),
#   eligible again cred_expire later.

#: slurmctld only notices that a job's processes are gone if the job started this long before
#: slurmd registers again (BatchStartTimeout + MessageTimeout, plus a second of rounding).
MISSING_JOB_AGE_S = 22


def restart_slurmd(down_s: float, *job_ids: str) -> None:
    """Stop slurmd for ``down_s``, SIGKILL the processes of ``job_ids`` meanwhile, and wait
    until the node is back."""
    subprocess.run(
        ["bash", str(SCRIPT), "restart-slurmd", str(down_s), *job_ids],
        check=True,
        capture_output=True,
    )


def restart_slurmd_when_running(job_name: str, down_s: float) -> threading.Thread:
    """Restart slurmd as soon as a job named ``job_name`` runs (gives up after 60 s)."""

    def restart() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = subprocess.run(
                ["squeue", "-h", "-t", "RUNNING", "-n", job_name, "-o", "%i"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if running:
                break
            time.sleep(0.1)
        restart_slurmd(down_s)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


def job_field(job_id: str, field: str) -> str:
    """One ``Key=Value`` field of ``scontrol show job`` (as root: any user's job)."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    for token in out.split():
        key, _, value = token.partition("=")
        if key == field:
            return value
    raise AssertionError(f"no {field} in scontrol show job {job_id}: {out}")


def kill_job_with_slurmd(job_id: str) -> None:
    """Wait until slurmctld will notice the job is gone, then kill slurmd with the job's
    processes and start slurmd again: the node crashed under the job."""
    started = datetime.fromisoformat(job_field(job_id, "StartTime"))
    age_s = (datetime.now() - started).total_seconds()
    time.sleep(max(0.0, MISSING_JOB_AGE_S - age_s))
    restart_slurmd(1, job_id)
    deadline = time.monotonic() + 5
    while job_field(job_id, "JobState") == "RUNNING":
        if time.monotonic() > deadline:  # not noticed (a slow registration?): register again
            restart_slurmd(0)
            break
        time.sleep(0.2)


def test_map_survives_a_slurmd_restart(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=True)
    require_root("restarting slurmd")
    executor = ClusterExecutor(
        backend_config("slurm-ssh", tmp_path, job_name="clustrix-slurmd-restart")
    )
    try:
        restarter = restart_slurmd_when_running("clustrix-slurmd-restart", down_s=3)
        values = list(range(8))
        # each job runs 4 s: the first ones run when slurmd goes and end while it is away;
        # any that slurmctld launches meanwhile are requeued and run again
        results = list(executor.map(jf.sleep_then, [4] * 8, values, chunksize=1, timeout=120))
        restarter.join()
        assert results == values
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# A call that takes long on its first run and returns at once when SLURM reruns it: a
# stdlib function (pickled by reference, nothing to ship) running a shell snippet.
FIRST_RUN_SLOW = (
    'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 90; fi; '
    'echo "restarts=$SLURM_RESTART_COUNT"'
)


def test_job_requeued_after_slurmd_lost_it_returns(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=True)
    require_root("killing slurmd")
    executor = ClusterExecutor(backend_config("slurm-ssh", tmp_path))
    try:
        future = executor.submit(subprocess.check_output, ["bash", "-c", FIRST_RUN_SLOW], text=True)
        wait_running(future, timeout_s=60)
        assert future.job_id is not None
        kill_job_with_slurmd(future.job_id)  # SLURM requeues it (JobRequeue=1, the default)
        # PENDING again, then the same job ID runs a second time
        assert future.result(timeout=120) == "restarts=1\n"
        assert job_field(future.job_id, "Restarts") == "1"
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_job_lost_with_slurmd_fails_with_node_fail(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=True)
    require_root("killing slurmd")
    executor = ClusterExecutor(
        backend_config("slurm-ssh", tmp_path, extra_directives=["--no-requeue"])
    )
    try:
        future = executor.submit(jf.sleep_then, 90, None)
        wait_running(future, timeout_s=60)
        assert future.job_id is not None
        kill_job_with_slurmd(future.job_id)
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=60)
        assert info.value.state == "NODE_FAIL"  # what SLURM says: sacct and scontrol agree
        assert info.value.job_id == future.job_id
        assert job_field(future.job_id, "JobState") == "NODE_FAIL"
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
