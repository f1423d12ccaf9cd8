"""The ``clustrix`` command: every command takes --config and --json, exits non-zero with a
message that says what to do; the file commands (ls, du, get, put) on the local backend;
plan, backends and version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cliclient import clustrix, write_config

from clustrix import ClusterConfig, __version__
from clustrix.cli import build_parser

COMMANDS = [
    "check-config", "jobs", "status", "cancel", "logs", "recover",
    "ls", "du", "get", "put", "plan", "disconnect", "backends", "version",
]  # fmt: skip


def test_every_command_takes_config_and_json() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[arg-type]
    for name in COMMANDS:
        ran = clustrix(name, "--help")
        assert ran.status == 0
        assert "--config FILE" in ran.stdout and "--json" in ran.stdout, name
        assert "CLUSTRIX_<FIELD>" in ran.stdout, name  # the same variables as the library


def test_the_entry_point_and_python_m() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "clustrix.cli", "version", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["clustrix"] == __version__


def test_version_and_backends() -> None:
    assert clustrix("version").stdout.strip() == __version__
    document = clustrix("version", "--json").json
    assert document["clustrix"] == __version__ and document["python"]
    rows = clustrix("backends", "--json").json
    assert {"local", "slurm"} <= {r["name"] for r in rows if r["available"]}


def test_usage_errors_exit_2() -> None:
    assert clustrix("status").status == 2  # JOB missing
    assert clustrix("nonsense").status == 2


def test_a_bad_config_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("cluster_type: slurm\nmax_workres: 3\n")
    ran = clustrix("jobs", "--config", str(bad), "--json")
    assert ran.status == 1
    assert "did you mean 'max_workers'" in ran.stderr
    assert ran.json["ok"] is False and "max_workres" in ran.json["error"]
    monkeypatch.setenv("CLUSTRIX_CORES", "0")  # the environment, as for the library
    ran = clustrix("ls", "--config", str(tmp_path / "missing.yml"))
    assert ran.status == 1 and "cannot read config file" in ran.stderr


def test_plan_shows_what_a_function_ships(tmp_path: Path) -> None:
    (tmp_path / "helper_mod.py").write_text("def twice(x):\n    return 2 * x\n")
    script = tmp_path / "job.py"
    script.write_text("import helper_mod\n\ndef work(x):\n    return helper_mod.twice(x)\n")
    ran = clustrix("plan", f"{script}:work", "--json")
    assert ran.status == 0, ran.stderr
    assert [m["name"] for m in ran.json["local_modules"]] == ["helper_mod"]
    missing = clustrix("plan", f"{script}:nope")
    assert missing.status == 2 and "defines no 'nope'; it defines work" in missing.stderr
    assert clustrix("plan", "no-colon").status == 2


# ------------------------------------------------------------------------------ files
@pytest.fixture
def local_config(tmp_path: Path) -> list[str]:
    work = tmp_path / "work"
    (work / "results" / "run1").mkdir(parents=True)
    (work / "results" / "run1" / "a.csv").write_text("x\n1\n")
    (work / "results" / "b.txt").write_text("hello")
    config = ClusterConfig(remote_work_dir=str(work), state_dir=tmp_path / "state")
    return ["--config", write_config(tmp_path / "c.yml", config)]


def test_ls_and_du(local_config: list[str]) -> None:
    assert clustrix("ls", "results", *local_config).stdout == "b.txt\nrun1\n"
    long = clustrix("ls", "-l", "results", *local_config).stdout.splitlines()
    assert long[0].startswith("-rw") and long[0].endswith(" b.txt")
    assert long[1].startswith("drwx") and long[1].endswith(" run1/")
    detail = clustrix("ls", "-l", "results", *local_config, "--json").json
    assert (detail[0]["name"], detail[0]["size"]) == ("b.txt", 5)
    usage = clustrix("du", "results", *local_config, "--json").json
    assert (usage["total_bytes"], usage["file_count"], usage["dir_count"]) == (9, 2, 1)
    assert (
        "9 B  results  (9 bytes in 2 files, 1 directories)"
        in clustrix("du", "results", *local_config).stdout
    )


def test_get_and_put(
    tmp_path: Path, local_config: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    ran = clustrix("get", "results", str(here / "copy"), "-r", *local_config)
    assert ran.status == 0, ran.stderr
    assert (here / "copy" / "run1" / "a.csv").read_text() == "x\n1\n"
    (here / "input.txt").write_text("data")
    assert clustrix("put", str(here / "input.txt"), "inputs/", *local_config).status == 0
    assert (tmp_path / "work" / "inputs" / "input.txt").read_text() == "data"
    monkeypatch.chdir(here)
    assert clustrix("get", "results/b.txt", *local_config).status == 0  # into ., its name
    assert (here / "b.txt").read_text() == "hello"


def test_disconnect_on_a_config_without_a_host_says_there_is_nothing_to_end(
    local_config: list[str],
) -> None:
    ran = clustrix("disconnect", *local_config)
    assert ran.status == 2
    assert "no cluster_host" in ran.stderr and "no SSH connection to end" in ran.stderr


def test_file_errors_say_where_relative_paths_start(
    tmp_path: Path, local_config: list[str]
) -> None:
    missing = clustrix("ls", "no-such-dir", *local_config)
    assert missing.status == 1
    assert "no-such-dir: no such file or directory on local" in missing.stderr
    assert f"relative paths start at remote_work_dir, {tmp_path / 'work'}" in missing.stderr
    tree = clustrix("get", "results", str(tmp_path / "x"), *local_config)
    assert tree.status == 1 and "give -r" in tree.stderr
    assert clustrix("put", str(tmp_path / "nothing"), *local_config).status == 1
