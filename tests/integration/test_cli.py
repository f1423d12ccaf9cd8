"""The ``clustrix`` command against the real test cluster (SLURM over SSH): one job array of a
client that died carries the job commands (jobs, status, logs, cancel, logs --follow,
recover --wait); check-config's SSH checks fail as they should, each with its fix; the file
commands go through the same connection."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cliclient import clustrix, submit_and_die, write_config
from clustertools import TestCluster, require_cluster, ssh_run

from clustrix import ClusterConfig
from clustrix.cli import _remote
from clustrix.transports.base import CommandResult

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> TestCluster:
    return require_cluster(ssh=True, slurm=False)


@pytest.fixture(scope="module")
def work_dir(cluster: TestCluster) -> Iterator[str]:
    name = f".clustrix-cli-{os.getpid()}-{int(time.time())}"
    yield f"~/{name}"
    ssh_run(f"rm -rf ~/{name}")


def ssh_config(cluster: TestCluster, work_dir: str, state_dir: Path, **overrides: Any) -> str:
    config = cluster.ssh_config(
        cluster_type="slurm",
        remote_work_dir=work_dir,
        state_dir=state_dir,
        poll_interval_min_s=0.1,
        poll_interval_max_s=0.5,
        **overrides,
    )
    return write_config(state_dir / "clustrix.yml", config)


def wait_for(predicate: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_the_job_commands_on_an_array_of_a_client_that_died(
    cluster: TestCluster,
    work_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran_commands: list[str] = []
    real_run = _remote.Remote.run

    async def spy(self: _remote.Remote, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        ran_commands.append(kwargs.get("counts_as") or argv[0])
        return await real_run(self, argv, **kwargs)

    monkeypatch.setattr(_remote.Remote, "run", spy)
    config_file = ssh_config(cluster, work_dir, tmp_path)
    cfg = ["--config", config_file]
    go = f"{work_dir}/go-a"
    first, second = submit_and_die(
        ClusterConfig.load(config_file), ["a", "b"], [go, f"{work_dir}/go-b"]
    )
    base = first.rpartition("_")[0]
    assert (first, second) == (f"{base}_0", f"{base}_1")  # one array

    # jobs: the array under its base ID, its client gone; ONE squeue for the invocation
    ran_commands.clear()
    (submission,) = clustrix("jobs", *cfg, "--json").json
    assert submission["job"] == base and submission["client"]["recoverable"]
    assert ran_commands == ["squeue"]

    def states() -> list[str]:
        ran = clustrix("status", *cfg, base, "--json")
        assert ran.status == 0, ran.stderr
        return [t["state"] for t in ran.json[0]["tasks"]]

    wait_for(lambda: states() == ["running", "running"], "both tasks to run")
    assert clustrix("status", *cfg, second, "--json").json[0]["tasks"][0]["native_state"] == (
        "RUNNING"
    )
    wait_for(lambda: "a tick 1" in clustrix("logs", *cfg, first).stdout, "a's output")

    # cancel one task of the array: scancel, then SLURM says CANCELLED
    ran_commands.clear()
    cancelled = clustrix("cancel", *cfg, second, "--json")
    assert cancelled.status == 0, cancelled.stderr
    assert cancelled.json == [{"job_id": second, "cancelled": True, "state": "running"}]
    assert ran_commands == ["squeue", "scancel"]
    wait_for(lambda: states()[1] == "cancelled", "b to be cancelled")
    assert states()[0] == "running"

    # release a (a file put through the same command line), follow its log to the end
    local_go = tmp_path / "go"
    local_go.write_text("")
    assert clustrix("put", str(local_go), go, *cfg).status == 0
    followed = clustrix("logs", *cfg, first, "-f", "--json")
    assert followed.status == 0, followed.stderr
    text = "".join(line["text"] for line in followed.lines())
    assert text.startswith("a tick 0\n") and text.endswith("a done\n")
    assert clustrix("logs", *cfg, first, "-e").stdout == "a says goodbye\n"
    wait_for(lambda: states() == ["completed", "cancelled"], "a to complete")

    # recover --wait: a's result, b's failure (exit status 1)
    assert [s["job"] for s in clustrix("recover", *cfg, "--json").json] == [base]
    collected = clustrix("recover", *cfg, "--wait", "--json")
    assert collected.status == 1
    outcome = {c["job_id"]: c for c in collected.json["calls"]}
    assert outcome[first]["ok"] and outcome[first]["result"] == "'a'"
    assert not outcome[second]["ok"] and "CANCELLED" in outcome[second]["error"]
    assert clustrix("jobs", *cfg, "--json").json == []

    # collected: the registry forgot it, but asked by ID the scheduler still knows it
    gone = clustrix("status", *cfg, first, "--json")
    assert gone.status == 0, gone.stderr
    assert gone.json[0]["in_registry"] is False
    assert gone.json[0]["native_state"] == "COMPLETED"


def test_check_config_over_ssh_passes(cluster: TestCluster, work_dir: str, tmp_path: Path) -> None:
    ran = clustrix("check-config", "--config", ssh_config(cluster, work_dir, tmp_path), "--json")
    assert ran.status == 0, ran.stdout
    checks = {c["name"]: c for c in ran.json["checks"]}
    assert {name: c["status"] for name, c in checks.items()} == dict.fromkeys(checks, "ok")
    assert checks["login"]["detail"] == f"logged in as {cluster.user}@{cluster.host}:{cluster.port}"
    assert checks["scheduler"]["detail"].startswith("sbatch, squeue, scancel")
    assert ran.json["facts"]["max_array_size"] > 1


def test_check_config_over_ssh_names_each_failure(
    cluster: TestCluster, work_dir: str, tmp_path: Path
) -> None:
    import asyncssh

    other_key = tmp_path / "known_hosts"
    not_the_servers = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    other_key.write_text(f"[{cluster.host}]:{cluster.port} {not_the_servers}")
    ran = clustrix(
        "check-config", "--config",
        ssh_config(cluster, work_dir, tmp_path, known_hosts=other_key), "--json",
    )  # fmt: skip
    assert ran.status == 1
    checks = {c["name"]: c for c in ran.json["checks"]}
    assert checks["connection"]["status"] == "ok"
    assert checks["host key"]["status"] == "failed"
    assert "ssh-keygen -R" in checks["host key"]["fix"]
    assert checks["login"]["status"] == checks["python"]["status"] == "skipped"

    ran = clustrix(
        "check-config", "--config",
        ssh_config(cluster, work_dir, tmp_path, username="nobody-here"), "--json",
    )  # fmt: skip
    checks = {c["name"]: c for c in ran.json["checks"]}
    assert (checks["host key"]["status"], checks["login"]["status"]) == ("ok", "failed")
    assert "true` must log in without a prompt" in checks["login"]["fix"]

    ran = clustrix(
        "check-config", "--config",
        ssh_config(cluster, work_dir, tmp_path, python_executable="python2.2"), "--json",
    )  # fmt: skip
    checks = {c["name"]: c for c in ran.json["checks"]}
    assert (checks["login"]["status"], checks["python"]["status"]) == ("ok", "failed")
    assert "python_executable" in checks["python"]["fix"]

    ran = clustrix(
        "check-config", "--config",
        ssh_config(cluster, work_dir, tmp_path, cluster_port=1), "--json",
    )  # fmt: skip
    checks = {c["name"]: c for c in ran.json["checks"]}
    assert checks["connection"]["status"] == "failed"
    assert "cluster_port" in checks["connection"]["fix"]


def test_the_file_commands_over_ssh(cluster: TestCluster, work_dir: str, tmp_path: Path) -> None:
    cfg = ["--config", ssh_config(cluster, work_dir, tmp_path)]
    tree = tmp_path / "inputs"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x" * 10)
    (tree / "y.txt").write_text("y")
    assert clustrix("put", str(tree), "data", "-r", *cfg).status == 0
    assert clustrix("ls", "data", *cfg).stdout == "sub\ny.txt\n"
    usage = clustrix("du", "data", *cfg, "--json").json
    assert (usage["total_bytes"], usage["file_count"]) == (11, 2)
    assert clustrix("get", "data", str(tmp_path / "back"), "-r", *cfg).status == 0
    assert (tmp_path / "back" / "sub" / "x.txt").read_text() == "x" * 10
    missing = clustrix("ls", "no-such", *cfg)
    assert missing.status == 1
    assert f"no such file or directory on {cluster.user}@" in missing.stderr
