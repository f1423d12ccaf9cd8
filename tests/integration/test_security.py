"""Secure by default (issue 6): authenticated results, private job files, no leaked
password, host keys checked, ~/.ssh/config honoured."""

from __future__ import annotations

import getpass
import json
import logging
import os
import pickle
import shlex
import shutil
import stat
import subprocess
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import jobfuncs as jf
import pytest
from clustertools import require_cluster, ssh_run, wait_running

from clustrix import (
    ClusterConfig,
    ClusterExecutor,
    ConfigError,
    ResultAuthenticationError,
    TransportError,
    _wire,
)

#: Every wait has a deadline: a hang fails the test. Generous: the test cluster is shared.
JOB_TIMEOUT_S = 240

PASSWORD = "hunter2-secret"


# ------------------------------------------------------------------ authenticated results
class CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: the marker proves code ran on load."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def plant(job_dir: str, name: str, data: bytes) -> None:
    """Put ``data`` at ``results/<name>`` atomically, as a worker would."""
    results = Path(job_dir) / _wire.RESULTS_DIR
    tmp = results / f".{name}.forged.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, results / name)


def test_the_payload_would_run_code_if_unpickled(tmp_path: Path) -> None:
    # The control for the two tests below: their payload is really dangerous.
    marker = tmp_path / "control"
    pickle.loads(cloudpickle.dumps(CreatesFileWhenUnpickled(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("forgery", ["sealed-with-wrong-secret", "raw-cloudpickle"])
def test_a_planted_result_is_rejected_and_never_unpickled(
    make: Callable[..., ClusterExecutor],
    tmp_path: Path,
    forgery: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "unpickled-the-forgery"
    evil = CreatesFileWhenUnpickled(marker)
    if forgery == "sealed-with-wrong-secret":
        record = {"ok": True, "value": cloudpickle.dumps("forged"), "payload": evil}
        data = _wire.dump_record(b"x" * 32, record)
    else:
        data = cloudpickle.dumps(evil)
    # Result files: the jobs engine's (the local pool's results come over a private pipe).
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")
    executor = make("local")
    future = executor.submit(jf.sleep_then, 5, "real")
    wait_running(future)
    assert future.job_dir is not None
    plant(future.job_dir, f"0{_wire.SUFFIX}", data)
    with pytest.raises(ResultAuthenticationError, match="not unpickled") as info:
        future.result(timeout=JOB_TIMEOUT_S)
    assert future.job_id is not None and future.job_id in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------------ private files
def modes(lines: str) -> dict[str, str]:
    """``{path: octal mode}`` from ``stat -c '%a %n'`` output."""
    return {path: mode for mode, path in (line.split(" ", 1) for line in lines.splitlines())}


def expected_modes(job_dir: str, read: bool = False) -> dict[str, str]:
    """The job directory's paths and their modes; ``read``: the result file was moved to
    ``results/done/`` (by the poll after the one that read it)."""
    result = {f"{job_dir}/results/0.pkl": "600"}
    if read:
        result = {f"{job_dir}/results/done": "700", f"{job_dir}/results/done/0.pkl": "600"}
    return {
        job_dir: "700",
        f"{job_dir}/tasks": "700",
        f"{job_dir}/results": "700",
        f"{job_dir}/secret": "600",
        f"{job_dir}/job.sh": "600",
        f"{job_dir}/tasks/0.pkl": "600",
        **result,
    }


def test_job_dirs_are_0700_and_job_files_0600_on_the_local_backend(
    make: Callable[..., ClusterExecutor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Job directories: the jobs engine's (the local pool has only its logs, checked in
    # tests/unit/test_localpool.py).
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")
    executor = make("local", cleanup="never")  # keep tasks/ and results/ to look at
    future = executor.submit(jf.square, 3)
    assert future.result(timeout=JOB_TIMEOUT_S) == 9
    job_dir = future.job_dir
    assert job_dir is not None
    expected = expected_modes(job_dir, read=not os.path.exists(f"{job_dir}/results/0.pkl"))
    found = {p: oct(stat.S_IMODE(os.stat(p).st_mode))[2:] for p in expected}
    assert found == expected
    jobs_root = tmp_path / "work" / "jobs"
    assert stat.S_IMODE(jobs_root.stat().st_mode) == 0o700


@pytest.mark.cluster
def test_job_dirs_are_0700_and_job_files_0600_over_ssh() -> None:
    cluster = require_cluster(slurm=False)
    work_dir = f".clustrix-security-{uuid.uuid4().hex[:12]}"  # relative: under the home
    config = cluster.ssh_config(
        cluster_type="slurm", remote_work_dir=f"~/{work_dir}", cleanup="never"
    )
    try:
        with ClusterExecutor(config) as executor:
            future = executor.submit(jf.square, 3)
            assert future.result(timeout=JOB_TIMEOUT_S) == 9
        job_dir = future.job_dir
        assert job_dir is not None
        read = ssh_run(f"test -e {shlex.quote(job_dir)}/results/0.pkl || echo moved").strip()
        expected = {**expected_modes(job_dir, read=read == "moved")}
        expected[str(Path(job_dir).parent.parent)] = "700"
        found = modes(ssh_run("stat -c '%a %n' " + " ".join(shlex.quote(p) for p in expected)))
        assert found == expected
    finally:
        ssh_run(f"rm -rf ~/{shlex.quote(work_dir)}")


# --------------------------------------------------------------------- no leaked password
def test_password_is_not_in_reprs_or_saved_configs() -> None:
    config = ClusterConfig(cluster_type="slurm", cluster_host="login.example", password=PASSWORD)
    assert config.password is not None and config.password.get_secret_value() == PASSWORD
    for text in (
        repr(config),
        str(config),
        config.model_dump_json(),
        json.dumps(config.model_dump(mode="json")),
        repr(config.model_dump()),
        repr(config.password),
    ):
        assert PASSWORD not in text


def test_password_is_not_in_config_errors_about_other_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ClusterConfig(cluster_host="login.example", password=PASSWORD)
    attempts: list[Callable[[], Any]] = [
        lambda: ClusterConfig(cluster_host="login.example", password=PASSWORD, cores=0),
        lambda: config.with_overrides(cores=0),
        lambda: ClusterConfig(password=PASSWORD, no_such_field=1),
    ]
    config_file = tmp_path / "clustrix.yml"
    config_file.write_text(f"cluster_host: login.example\npassword: {PASSWORD}\ncores: zero\n")
    attempts.append(lambda: ClusterConfig.from_file(config_file))
    for attempt in attempts:
        with pytest.raises(ConfigError) as info:
            attempt()
        assert PASSWORD not in str(info.value)
        assert PASSWORD not in "".join(traceback.format_exception(info.value))
    monkeypatch.setenv("CLUSTRIX_PASSWORD", PASSWORD)
    monkeypatch.setenv("CLUSTRIX_CORES", "zero")
    with pytest.raises(ConfigError, match="cores") as info:
        ClusterConfig.load()
    assert PASSWORD not in str(info.value)


def test_password_is_not_in_logs_or_errors_when_the_connection_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = ClusterConfig(
        cluster_type="slurm",
        cluster_host="127.0.0.1",
        cluster_port=1,
        username="clustrix",
        password=PASSWORD,
        connect_timeout_s=5,
    )
    with pytest.raises(TransportError) as info:
        ClusterExecutor(config)
    assert "127.0.0.1" in caplog.text  # DEBUG logging was captured
    for text in (
        str(info.value),
        repr(info.value),
        "".join(traceback.format_exception(info.value)),
        caplog.text,
        repr([record.args for record in caplog.records]),
    ):
        assert PASSWORD not in text


@pytest.mark.cluster
def test_password_is_not_in_logs_or_errors_when_authentication_fails(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cluster = require_cluster(slurm=False)
    key = tmp_path / "fresh_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransportError, match="authentication") as info:
        ClusterExecutor(cluster.ssh_config(cluster_type="slurm", key_file=key, password=PASSWORD))
    assert "Auth failed" in caplog.text  # asyncssh's DEBUG log of the handshake was captured
    for text in (str(info.value), "".join(traceback.format_exception(info.value)), caplog.text):
        assert PASSWORD not in text


# ----------------------------------------------------------------------------- host keys
@pytest.mark.cluster
def test_host_key_checking_is_on_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = require_cluster(slurm=False)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(TransportError, match="host key") as info:
        ClusterExecutor(cluster.ssh_config(cluster_type="slurm", known_hosts=empty))
    assert str(empty) in str(info.value) and "known_hosts" in str(info.value)
    # No known_hosts given and none in ~/.ssh: refused too, not trusted on first use.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(TransportError, match="host key"):
        ClusterExecutor(cluster.ssh_config(cluster_type="slurm", known_hosts=None))


@pytest.mark.cluster
def test_turning_host_key_checking_off_warns_and_connects(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cluster = require_cluster(slurm=False)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    caplog.set_level(logging.WARNING)
    config = cluster.ssh_config(
        cluster_type="slurm",
        known_hosts=empty,
        strict_host_key_checking=False,
        remote_work_dir="~/.clustrix-tests",
    )
    with ClusterExecutor(config) as executor:
        assert executor.submit(jf.square, 7).result(timeout=JOB_TIMEOUT_S) == 49
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("strict_host_key_checking=False" in r.getMessage() for r in warnings), warnings


# --------------------------------------------------------------------------- ~/.ssh/config
ALIAS = "clustrix-test-alias"


@pytest.fixture
def ssh_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME with a ``.ssh/config`` that defines the test cluster as ``clustrix-test-alias``
    (asyncssh reads ``~/.ssh/config`` when SSHTransport passes no ``config``)."""
    cluster = require_cluster(slurm=False)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "config").write_text(
        f"Host {ALIAS}\n"
        f"    HostName {cluster.host}\n"
        f"    Port {cluster.port}\n"
        f"    User {cluster.user}\n"
        f"    IdentityFile {cluster.key_file}\n"
        f"    UserKnownHostsFile {cluster.known_hosts}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.cluster
def test_ssh_config_host_alias_is_honoured(ssh_config_home: Path) -> None:
    cluster = require_cluster(slurm=False)
    with ClusterExecutor(
        cluster_type="slurm",
        cluster_host=ALIAS,
        known_hosts=cluster.known_hosts,
        remote_work_dir="~/.clustrix-tests",
    ) as executor:
        assert executor.submit(jf.square, 5).result(timeout=JOB_TIMEOUT_S) == 25


@pytest.mark.cluster
def test_ssh_config_hostname_user_identity_and_known_hosts_are_honoured(
    ssh_config_home: Path,
) -> None:
    # Port given explicitly (it overrides the alias's); everything else comes from the alias:
    # HostName, User, IdentityFile and UserKnownHostsFile (no known_hosts here).
    cluster = require_cluster(slurm=False)
    with ClusterExecutor(
        cluster_type="slurm",
        cluster_host=ALIAS,
        cluster_port=cluster.port,
        remote_work_dir="~/.clustrix-tests",
    ) as executor:
        assert repr(executor).startswith(f"<ClusterExecutor slurm on {cluster.user}@{ALIAS}")
        assert executor.submit(jf.square, 5).result(timeout=JOB_TIMEOUT_S) == 25


@pytest.mark.cluster
def test_a_locked_identity_file_is_named_with_the_user_really_tried(
    ssh_config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A passphrase-protected IdentityFile the server accepts, no agent, no passphrase given and
    # nobody to ask (stdin is not a terminal). The error names the User of ~/.ssh/config (not
    # the local user), the key, the fixes.
    cluster = require_cluster(slurm=False)
    locked = ssh_config_home / ".ssh" / "id_locked"
    shutil.copy(cluster.key_file, locked)  # the authorized key, encrypted
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f", str(locked)],
        check=True,
    )
    config = ssh_config_home / ".ssh" / "config"
    config.write_text(config.read_text().replace(str(cluster.key_file), str(locked)))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(TransportError) as info:
        ClusterExecutor(cluster_type="slurm", cluster_host=ALIAS, known_hosts=cluster.known_hosts)
    message = str(info.value)
    assert f"authentication as {cluster.user}@{ALIAS} refused" in message, message
    assert f"IdentityFile in ~/.ssh/config {locked} is passphrase-protected" in message
    assert f"ssh-add {locked}" in message and "SSH_AUTH_SOCK is not set" in message
    if getpass.getuser() != cluster.user:
        assert f"{getpass.getuser()}@" not in message
