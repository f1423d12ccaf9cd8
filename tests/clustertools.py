"""The backends the tests run against, and the real test cluster they need.

The cluster backends need the test cluster that ``scripts/testcluster.sh start`` installs and
starts (sshd on 127.0.0.1:2222 for user ``clustrix``, single-node SLURM). Without it their
tests skip, saying how to start it; with ``CI=true`` a missing cluster fails the run instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from clustrix import ClusterConfig

START_HINT = "start the test cluster with: sudo scripts/testcluster.sh start"


@dataclass(frozen=True)
class TestCluster:
    """Where the test cluster's sshd listens and how to log in."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path

    def ssh_config(self, **overrides: Any) -> ClusterConfig:
        base: dict[str, Any] = dict(
            cluster_host=self.host,
            cluster_port=self.port,
            username=self.user,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
        )
        base.update(overrides)
        return ClusterConfig(**base)


def test_cluster() -> TestCluster:
    state = Path(os.environ.get("CLUSTRIX_TEST_STATE", "/tmp/clustrix-testcluster"))
    return TestCluster(
        host=os.environ.get("CLUSTRIX_TEST_SSH_HOST", "127.0.0.1"),
        port=int(os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222")),
        user=os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix"),
        key_file=Path(os.environ.get("CLUSTRIX_TEST_SSH_KEY", state / "keys" / "id_ed25519")),
        known_hosts=Path(
            os.environ.get("CLUSTRIX_TEST_KNOWN_HOSTS", state / "keys" / "known_hosts")
        ),
    )


test_cluster.__test__ = False  # type: ignore[attr-defined]
TestCluster.__test__ = False  # type: ignore[attr-defined]


def _cluster_problem(need_ssh: bool, need_slurm: bool) -> str | None:
    cluster = test_cluster()
    if need_ssh:
        if not cluster.key_file.exists():
            return f"no SSH key at {cluster.key_file}"
        try:
            socket.create_connection((cluster.host, cluster.port), timeout=2).close()
        except OSError as exc:
            return f"no sshd on {cluster.host}:{cluster.port} ({exc})"
    if need_slurm and shutil.which("sbatch") is None:
        return "no SLURM client (sbatch) on this machine"
    return None


def require_cluster(*, ssh: bool = True, slurm: bool = True) -> TestCluster:
    """The test cluster, or skip (fail under CI=true) saying how to start it."""
    problem = _cluster_problem(ssh, slurm)
    if problem is not None:
        _unavailable(f"test cluster not available: {problem}; {START_HINT}")
    return test_cluster()


#: The ssh-host backend's work dir: one per test session, so that files left by an earlier
#: session (a test's marker files) are never taken for this one's.
SSH_HOST_WORK_DIR = f"~/.clustrix-tests-ssh/{os.getpid()}-{int(time.time())}"

#: Backends the contract runs against; a new backend joins by adding one entry here and
#: one branch in ``backend_config``.
BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm-local", id="slurm-local", marks=pytest.mark.cluster),
    pytest.param("slurm-ssh", id="slurm-ssh", marks=pytest.mark.cluster),
    # Grid Engine over SSH as the test user; its submit-host mode ("sge-local", below) runs
    # the integration tests of tests/integration/test_sge.py only (the suite's time)
    pytest.param("sge-ssh", id="sge-ssh", marks=pytest.mark.cluster),
    pytest.param("ssh-host", id="ssh-host", marks=pytest.mark.cluster),
]


def backend_config(backend: str, tmp_path: Path, **overrides: Any) -> ClusterConfig:
    """A config for ``backend`` that keeps its files under ``tmp_path`` (or the test user's
    home for SSH), with fast polling for tests."""
    fast: dict[str, Any] = {
        "poll_interval_min_s": 0.05,
        "poll_interval_max_s": 0.5,
        "poll_rate_max_per_s": 20.0,
    }
    fast.update(overrides)
    if backend == "local":
        return ClusterConfig(remote_work_dir=str(tmp_path / "work"), **fast)
    if backend == "slurm-local":
        require_cluster(ssh=False, slurm=True)
        return ClusterConfig(cluster_type="slurm", remote_work_dir=str(tmp_path / "work"), **fast)
    if backend == "slurm-ssh":
        cluster = require_cluster(ssh=True, slurm=False)
        return cluster.ssh_config(cluster_type="slurm", remote_work_dir="~/.clustrix-tests", **fast)
    if backend == "ssh-host":  # the test user's processes on the machine behind the sshd
        cluster = require_cluster(ssh=True, slurm=False)
        return cluster.ssh_config(cluster_type="ssh", remote_work_dir=SSH_HOST_WORK_DIR, **fast)
    if backend == "sge-local":  # on the submit host, as this process's user (root in CI)
        require_sge()
        return ClusterConfig(cluster_type="sge", remote_work_dir=str(tmp_path / "work"), **fast)
    if backend == "sge-ssh":
        cluster = require_cluster(ssh=True, slurm=False)
        require_sge()
        return cluster.ssh_config(cluster_type="sge", remote_work_dir=SGE_SSH_WORK_DIR, **fast)
    raise ValueError(backend)


#: The sge-ssh backend's work dir: the test user's, apart from SLURM's, and one per test
#: session, so that a marker file an earlier (or a concurrent) session left is never taken
#: for this one's.
SGE_SSH_WORK_DIR = f"~/.clustrix-tests-sge/{os.getpid()}-{int(time.time())}"


@functools.lru_cache(maxsize=1)
def _sge_problem() -> str | None:
    import subprocess

    if shutil.which("qsub") is None:
        return "no Grid Engine client (qsub) on this machine"
    try:
        answer = subprocess.run(["qstat", "-g", "c"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sge_qmaster does not answer (qstat -g c timed out)"
    if answer.returncode != 0:
        return f"sge_qmaster does not answer: {answer.stderr.strip()[-300:]}"
    return None


def require_sge() -> None:
    """Grid Engine of the test cluster (qmaster answering), or skip (fail under CI=true)."""
    problem = _sge_problem()
    if problem is not None:
        _unavailable(f"Grid Engine not available: {problem}; {START_HINT}")


def _unavailable(message: str) -> NoReturn:
    """Skip the test saying why; with ``CI=true`` fail it instead (CI must run it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: these tests must run)")
    pytest.skip(message)


#: The second unprivileged user of the shared-cluster tests: the neighbour.
NEIGHBOUR = "clustrix-neighbour"


def require_neighbour() -> int:
    """The neighbour's uid; the user is created (idempotently) if missing, which needs
    root, as does giving it directories: skips without root (fails under CI=true)."""
    import pwd
    import subprocess

    if os.geteuid() != 0:
        _unavailable(f"the shared-cluster tests need root (to create user {NEIGHBOUR})")
    try:
        return pwd.getpwnam(NEIGHBOUR).pw_uid
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NEIGHBOUR],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 9):  # 9: made meanwhile, by a concurrent test run
        _unavailable(f"cannot create user {NEIGHBOUR}: {result.stderr.strip()}")
    return pwd.getpwnam(NEIGHBOUR).pw_uid


def ssh_run(command: str) -> str:
    """Run a shell command as the test user over the test cluster's sshd; its stdout."""
    import subprocess

    cluster = test_cluster()
    result = subprocess.run(
        [
            "ssh",
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={cluster.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-i",
            str(cluster.key_file),
            "-p",
            str(cluster.port),
            f"{cluster.user}@{cluster.host}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ssh {command!r} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def wait_running(future: Any, timeout_s: float = 240) -> None:
    """Wait until the scheduler runs ``future``'s job (fails the test after ``timeout_s``)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not future.running() and not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.running(), f"job of {future!r} did not start within {timeout_s} s"


@dataclass(frozen=True)
class LoginServers:
    """The login-test sshds of ``scripts/testcluster.sh`` beside the cluster's: a jump host
    (bastion) and one that wants a key and a one-time code; one known_hosts for all three."""

    cluster: TestCluster
    bastion_port: int
    two_factor_port: int
    totp_secret: str  # base32, as google-authenticator writes it
    known_hosts: Path

    def totp(self, at: float | None = None) -> str:
        """The one-time code the two-factor sshd accepts now (RFC 6238: 30 s, 6 digits)."""
        import base64
        import hashlib
        import hmac
        import struct
        import time

        key = base64.b32decode(self.totp_secret + "=" * (-len(self.totp_secret) % 8))
        counter = int((time.time() if at is None else at) // 30)
        digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
        return f"{number % 1_000_000:06d}"


def require_login_servers() -> LoginServers:
    """The login-test sshds, or skip (fail under CI=true) saying how to start them."""
    cluster = require_cluster(ssh=True, slurm=False)
    keys = cluster.key_file.parent
    secret_file = Path(os.environ.get("CLUSTRIX_TEST_TOTP_SECRET", keys / "totp_secret"))
    servers = LoginServers(
        cluster=cluster,
        bastion_port=int(os.environ.get("CLUSTRIX_TEST_BASTION_PORT", "2224")),
        two_factor_port=int(os.environ.get("CLUSTRIX_TEST_2FA_PORT", "2225")),
        totp_secret=secret_file.read_text().strip() if secret_file.is_file() else "",
        known_hosts=Path(
            os.environ.get("CLUSTRIX_TEST_LOGIN_KNOWN_HOSTS", keys / "known_hosts_login")
        ),
    )
    problem = None if servers.totp_secret else f"no TOTP secret at {secret_file}"
    for port in (servers.bastion_port, servers.two_factor_port):
        try:
            socket.create_connection((cluster.host, port), timeout=2).close()
        except OSError as exc:
            problem = problem or f"no sshd on {cluster.host}:{port} ({exc})"
    if problem is not None:
        _unavailable(f"login test servers not available: {problem}; {START_HINT}")
    return servers
