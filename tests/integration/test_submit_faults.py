"""The connection is lost while a job is being submitted: the submission is retried after
reconnecting, and a job that reached SLURM before the loss is found, not submitted twice.

Faults are real: sshd is taken down (``scripts/testcluster.sh drop-ssh``) and slurmctld is
paused with SIGSTOP so that a real ``sbatch`` is in flight when the connection goes. Needs
root, like starting the test cluster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, ssh_run

from clustrix import ClusterExecutor, ConnectionLostError

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"
SLURMCTLD_PID = Path("/run/slurm-test/slurmctld.pid")


def need_root() -> None:
    if os.geteuid() != 0:
        message = "injecting faults needs root (as scripts/testcluster.sh start does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def sshd_down() -> bool:
    """No sshd listens for the test user and none of its connections is left."""
    port = int(os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222"))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        user = os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix")
        sessions = subprocess.run(["pgrep", "-f", f"^sshd: {user}"], capture_output=True)
        return sessions.returncode != 0
    return False


def drop_ssh(down_s: float) -> subprocess.Popen[bytes]:
    """Cut every SSH connection of the test user; return once sshd is down (it comes back
    ``down_s`` later)."""
    dropper = subprocess.Popen(["bash", str(SCRIPT), "drop-ssh", str(down_s)])
    wait_for("sshd to stop", sshd_down)
    return dropper


def wait_for(condition: str, predicate: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {condition}")
        time.sleep(0.05)


@contextmanager
def slurmctld_paused() -> Iterator[None]:
    """SIGSTOP slurmctld (sbatch and squeue wait for it), SIGCONT on leaving, always."""
    pid = int(SLURMCTLD_PID.read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def sbatch_running() -> bool:
    user = os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix")
    return (
        subprocess.run(["pgrep", "-u", user, "-x", "sbatch"], capture_output=True).returncode == 0
    )


def test_submission_waits_for_a_connection_that_comes_back(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=True)
    need_root()
    with ClusterExecutor(backend_config("slurm-ssh", tmp_path)) as executor:
        assert executor.submit(jf.square, 2).result(timeout=120) == 4  # connected, warm
        dropper = drop_ssh(down_s=3.0)
        # sshd is down: the upload fails, and is retried after reconnecting
        future = executor.submit(jf.square, 7)
        assert future.result(timeout=180) == 49
        assert dropper.wait(timeout=60) == 0
        assert executor.stats()["submit_reconnects"] >= 1


def test_job_submitted_before_the_connection_dropped_is_not_submitted_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_cluster(ssh=True, slurm=True)
    need_root()
    job_name = f"clx-lost-{os.getpid()}-{time.monotonic_ns()}"
    with ClusterExecutor(backend_config("slurm-ssh", tmp_path, job_name=job_name)) as executor:
        assert executor.submit(jf.square, 2).result(timeout=120) == 4  # connected, warm
        with slurmctld_paused():
            future = executor.submit(jf.square, 9)
            # sbatch is running on the cluster, its request waiting in slurmctld's socket
            wait_for("sbatch to start", sbatch_running)
            time.sleep(0.5)
            dropper = drop_ssh(down_s=1.0)  # the connection goes while sbatch still waits
        # slurmctld now creates the job whose sbatch lost its connection
        assert future.result(timeout=180) == 81
        assert dropper.wait(timeout=60) == 0
        assert executor.stats()["submit_reconnects"] >= 1
        assert "went through before the connection was lost" in caplog.text
        # exactly one job for that submission (the warm-up job is the other one)
        listed = ssh_run(f"squeue --me -h -t all -n {job_name} -o %i")
        assert len(listed.split()) == 2, listed


def test_submission_fails_after_the_grace_period_with_the_time_of_loss(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=True)
    need_root()
    config = backend_config("slurm-ssh", tmp_path, connection_grace_s=2.0)
    with ClusterExecutor(config) as executor:
        assert executor.submit(jf.square, 2).result(timeout=120) == 4
        dropper = drop_ssh(down_s=8.0)
        future = executor.submit(jf.square, 3)
        with pytest.raises(ConnectionLostError, match="lost since") as info:
            future.result(timeout=120)
        assert "connection_grace_s=2" in str(info.value)
        assert dropper.wait(timeout=60) == 0
