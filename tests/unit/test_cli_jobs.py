"""``clustrix jobs/status/logs/cancel/recover`` on the local backend: real job processes of a
client that died, one status command per invocation, every state, log and exit status."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cliclient import clustrix, submit_and_die, write_config
from fakes import wait_until

from clustrix import ClusterConfig
from clustrix.cli import _remote
from clustrix.transports.base import CommandResult


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The programs every command ran on the cluster, in order."""
    ran: list[str] = []
    real = _remote.Remote.run

    async def spy(self: _remote.Remote, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        ran.append(kwargs.get("counts_as") or argv[0])
        return await real(self, argv, **kwargs)

    monkeypatch.setattr(_remote.Remote, "run", spy)
    return ran


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[str]:
    config = ClusterConfig(
        remote_work_dir=str(tmp_path / "work"),
        state_dir=tmp_path / "state",
        poll_interval_min_s=0.05,
        poll_interval_max_s=0.2,
    )
    yield write_config(tmp_path / "clustrix.yml", config)


def test_the_jobs_of_a_client_that_died(
    tmp_path: Path, config_file: str, commands: list[str]
) -> None:
    config = ClusterConfig.load(config_file)
    go_a, go_b = str(tmp_path / "go-a"), str(tmp_path / "go-b")
    first, second = submit_and_die(config, ["a", "b"], [go_a, go_b])
    cfg = ["--config", config_file]

    # jobs: the submission, both tasks running, its client gone; ONE status command
    listed = clustrix("jobs", *cfg, "--json")
    assert listed.status == 0, listed.stderr
    (submission,) = listed.json
    assert submission["job_ids"] == [first, second]
    assert submission["client"]["recoverable"] is True
    assert [t["state"] for t in submission["tasks"]] == ["running", "running"]
    assert commands == ["ps"]
    text = clustrix("jobs", *cfg, "--tasks")
    assert "running 2" in text.stdout and "gone: clustrix recover" in text.stdout
    assert first in text.stdout and second in text.stdout

    # status of one task; of the whole submission by its job directory's name
    commands.clear()
    one = clustrix("status", *cfg, first, "--json")
    assert [t["job_id"] for t in one.json[0]["tasks"]] == [first]
    assert commands == ["ps"]
    whole = clustrix("status", *cfg, Path(submission["job_dir"]).name, "--json")
    assert [t["job_id"] for t in whole.json[0]["tasks"]] == [first, second]

    # logs so far, the last line only
    wait_until(lambda: "a tick 2" in clustrix("logs", *cfg, first).stdout, "a's ticks")
    last = clustrix("logs", *cfg, first, "--tail", "1").stdout.splitlines()
    assert len(last) == 1 and last[0].startswith("a tick")

    # cancel b: the local job gets TERM, its script records the status
    cancelled = clustrix("cancel", *cfg, second, "--json")
    assert cancelled.status == 0, cancelled.stderr
    assert cancelled.json == [{"job_id": second, "cancelled": True, "state": "running"}]

    def state_of_b() -> dict[str, Any]:
        return clustrix("status", *cfg, second, "--json").json[0]["tasks"][0]

    wait_until(lambda: state_of_b()["state"] == "failed", "b to end")
    assert state_of_b()["exit_code"] == 143  # TERM, passed on to the worker
    again = clustrix("cancel", *cfg, second)  # ended: left alone
    assert "not cancelled: had ended (failed)" in again.stdout

    # follow a until it ends: it ends when its go file appears
    Path(go_a).touch()
    followed = clustrix("logs", *cfg, first, "--follow")
    assert followed.status == 0, followed.stderr
    assert followed.stdout.startswith("a tick 0\n")
    assert followed.stdout.endswith("a done\n")
    assert clustrix("logs", *cfg, first, "--stderr").stdout == "a says goodbye\n"
    (line,) = clustrix("logs", *cfg, first, "--stderr", "--json").lines()
    assert line["job_id"] == first and line["text"] == "a says goodbye\n"
    assert [t["state"] for t in clustrix("jobs", *cfg, "--json").json[0]["tasks"]] == [
        "completed",
        "failed",
    ]

    # recover: what recover() adopts; --wait collects it, a failed call fails the command
    listed = clustrix("recover", *cfg, "--json")
    assert [s["job_ids"] for s in listed.json] == [[first, second]]
    saved = tmp_path / "results.pkl"
    collected = clustrix("recover", *cfg, "--wait", "--save", str(saved), "--json")
    assert collected.status == 1
    calls = collected.json["calls"]
    assert [(c["call_index"], c["ok"]) for c in calls] == [(0, True), (1, False)]
    assert calls[0]["result"] == "'a'"
    assert "JobFailedError" in calls[1]["error"]
    assert "1 of 2 recovered call(s) failed" in collected.stderr
    import pickle

    assert pickle.loads(saved.read_bytes()) == {0: "a"}
    assert clustrix("jobs", *cfg, "--json").json == []
    assert clustrix("recover", *cfg).stdout.startswith("nothing to recover")


def test_unknown_jobs_are_refused_with_the_fix(config_file: str, commands: list[str]) -> None:
    cfg = ["--config", config_file]
    missing = clustrix("status", *cfg, "999999999")
    assert missing.status == 1
    assert "no job 999999999 in the job registry" in missing.stderr
    assert "`clustrix jobs` lists" in missing.stderr
    assert commands == ["ps"]  # asked the scheduler, once
    refused = clustrix("cancel", *cfg, "999999999")
    assert refused.status == 1
    assert "nothing was cancelled" in refused.stderr
    assert "kill -TERM 999999999" in refused.stderr  # what to run instead
    assert commands == ["ps"]  # nothing was run for the refused cancel
    logs = clustrix("logs", *cfg, "999999999", "--json")
    assert logs.status == 1
    assert logs.json == {"ok": False, "error": logs.stderr.split(": ", 1)[1].strip()}
    assert clustrix("jobs", *cfg).stdout.startswith("no clustrix jobs in the registry for local:")
