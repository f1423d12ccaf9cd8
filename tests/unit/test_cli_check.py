"""``clustrix check-config`` on this machine: each check, what it found, and the fix of each
failure (the SSH checks, host key and login, run against the real sshd in
tests/integration/test_cli.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from cliclient import clustrix, write_config

from clustrix import ClusterConfig
from clustrix.cli._check import run_checks, scheduler_programs
from clustrix.schedulers.local import LocalScheduler


def statuses(document: dict[str, object]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in document["checks"]}  # type: ignore[attr-defined,index]


def test_a_good_local_config_passes_every_check(tmp_path: Path) -> None:
    config = ClusterConfig(remote_work_dir=str(tmp_path / "work"))
    ran = clustrix("check-config", "--config", write_config(tmp_path / "c.yml", config), "--json")
    assert ran.status == 0, ran.stdout
    document = ran.json
    assert document["ok"] is True
    assert statuses(document) == {
        "config": "ok",
        "connection": "ok",
        "host key": "skipped",
        "login": "skipped",
        "python": "ok",
        "work dir": "ok",
        "scheduler": "ok",
    }
    assert document["facts"]["work_dir"] == str(tmp_path / "work")
    assert document["facts"]["runtime_uploaded"] is False  # checked, nothing uploaded
    assert (tmp_path / "work" / "jobs").is_dir()
    assert (tmp_path / "work").stat().st_mode & 0o777 == 0o700
    text = clustrix("check-config", "--config", str(tmp_path / "c.yml"))
    assert text.stdout.splitlines()[-1] == "all checks passed"
    assert "ok    scheduler   sh, ps, kill found" in text.stdout


def test_a_python_that_does_not_run_fails_with_its_fix(tmp_path: Path) -> None:
    config = ClusterConfig(
        remote_work_dir=str(tmp_path / "work"), python_executable="/nonexistent/python3"
    )
    ran = clustrix("check-config", "--config", write_config(tmp_path / "c.yml", config))
    assert ran.status == 1
    assert "FAIL  python" in ran.stdout
    assert "fix: set python_executable to a Python" in ran.stdout
    assert "skip  work dir" in ran.stdout
    assert ran.stdout.splitlines()[-1] == "1 check(s) failed"


def test_a_work_dir_others_may_write_fails_with_its_fix(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may put a directory of their own in place of ours
    config = ClusterConfig(remote_work_dir=str(shared / "work"))
    ran = clustrix("check-config", "--config", write_config(tmp_path / "c.yml", config), "--json")
    assert ran.status == 1
    (work_dir,) = [c for c in ran.json["checks"] if c["name"] == "work dir"]
    assert work_dir["status"] == "failed"
    assert "not safe to run code from" in work_dir["detail"]
    assert "remote_work_dir" in work_dir["fix"]
    assert statuses(ran.json)["python"] == "ok"
    assert not (shared / "work").exists()  # nothing written into a refused directory


def test_an_invalid_config_is_the_first_failed_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("cluster_type: slurm\ncores: 0\n")
    ran = clustrix("check-config", "--config", str(bad), "--json")
    assert ran.status == 1
    assert statuses(ran.json)["config"] == "failed"
    assert "cores" in ran.json["checks"][0]["detail"]
    assert set(statuses(ran.json).values()) == {"failed", "skipped"}


class MissingCommands(LocalScheduler):
    """A backend whose status command this machine does not have."""

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["clustrix-no-such-status", *job_ids]


def test_scheduler_commands_not_found_fail_with_their_names(tmp_path: Path) -> None:
    config = ClusterConfig(remote_work_dir=str(tmp_path / "work"))
    scheduler = MissingCommands()
    assert scheduler_programs(scheduler, config, "/w") == ["sh", "clustrix-no-such-status", "kill"]
    checks, _ = asyncio.run(run_checks(config, scheduler=scheduler))
    (check,) = [c for c in checks if c.name == "scheduler"]
    assert check.status == "failed"
    assert check.detail.endswith("not found on local: clustrix-no-such-status")
    assert "non-interactive shell" in check.fix


@pytest.mark.parametrize("flag_first", [True, False])
def test_config_and_json_go_before_or_after_the_command(tmp_path: Path, flag_first: bool) -> None:
    config = ClusterConfig(remote_work_dir=str(tmp_path), state_dir=tmp_path)
    config_file = write_config(tmp_path / "c.yml", config)
    args = ["--config", config_file, "--json"]
    argv = [*args, "jobs"] if flag_first else ["jobs", *args]
    ran = clustrix(*argv)
    assert ran.status == 0, ran.stderr
    assert ran.json == []
