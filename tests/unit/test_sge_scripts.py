"""The Grid Engine backend's shell scripts, run with ``sh`` against stub ``qstat``/``qacct``/
``qdel``/``qalter``/``qconf`` programs that answer with outputs captured from the real daemons
(``tests/data/sge/``) and record how they were called. The real cluster runs the same scripts
in ``tests/integration/test_sge.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from clustrix.config import Resources
from clustrix.errors import ConfigError
from clustrix.schedulers import _sge_sh
from clustrix.schedulers.base import JobSpec
from clustrix.schedulers.sge import SgeScheduler

DATA = Path(__file__).resolve().parents[1] / "data" / "sge"
JOBS: dict[str, str] = json.loads((DATA / "jobs.json").read_text())

# Answers with the first rule whose "match" is in its argv (joined by spaces); a rule with
# "times" answers that often, then gives way to the next. Records every call.
STUB = """\
import json, os, sys
name = os.path.basename(sys.argv[0])
argv = " ".join(sys.argv[1:])
spec_path = os.environ["STUB_SPEC"]
with open(spec_path) as fh:
    spec = json.load(fh)
with open(os.environ["STUB_CALLS"], "a") as fh:
    fh.write(json.dumps([name, sys.argv[1:]]) + "\\n")
for rule in spec.get(name, []):
    if rule["match"] in argv and rule.get("times", 1) > 0:
        if "times" in rule:
            rule["times"] -= 1
            with open(spec_path, "w") as fh:
                json.dump(spec, fh)
        sys.stdout.write(rule.get("out", ""))
        sys.stderr.write(rule.get("err", ""))
        sys.exit(rule.get("rc", 0))
sys.exit(0)
"""

PROGRAMS = ("qstat", "qacct", "qdel", "qalter", "qconf", "qsub")


def capture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


@dataclass
class Stubs:
    bin: Path
    spec: Path
    calls: Path

    def answer(self, **rules: list[dict[str, object]]) -> None:
        self.spec.write_text(json.dumps(rules))

    def called(self, name: str) -> list[list[str]]:
        if not self.calls.exists():
            return []
        records = [json.loads(line) for line in self.calls.read_text().splitlines()]
        return [argv for program, argv in records if program == name]

    def run(self, argv: list[str], path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": path if path is not None else f"{self.bin}:{os.environ['PATH']}",
            "STUB_SPEC": str(self.spec),
            "STUB_CALLS": str(self.calls),
            "LC_ALL": "C",
        }
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def write_stubs(directory: Path, names: tuple[str, ...] = PROGRAMS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text(f"#!{sys.executable}\n{STUB}")
        path.chmod(0o755)


#: What the scripts need besides Grid Engine's programs: a PATH with only these.
TOOLS = ("sh", "awk", "sort", "paste", "grep", "tr", "cut", "sleep", "id", "cat", "env")


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    write_stubs(tmp_path / "bin")
    return Stubs(tmp_path / "bin", tmp_path / "spec.json", tmp_path / "calls")


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH with the shell tools but none of Grid Engine's programs (which this machine
    may have in /usr/bin)."""
    import shutil

    tools = tmp_path / "tools"
    tools.mkdir()
    for name in TOOLS:
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    return str(tools)


# ---------------------------------------------------------------- status
def status(stubs: Stubs, ranges: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    script = _sge_sh.script(_sge_sh.STATUS, {}, "")
    return stubs.run(["sh", "-c", script, "clustrix-sge-status", ranges], path=path)


def test_status_without_errors_is_qstat_xml_only(stubs: Stubs) -> None:
    xml = capture("qstat_xml_suspended_job.txt").replace("Eqw", "qw")  # none in error
    stubs.answer(qstat=[{"match": "-xml", "out": xml}])
    result = status(stubs, "1-999")
    assert result.returncode == 0
    assert result.stdout == xml if xml.endswith("\n") else xml + "\n"
    assert stubs.called("qstat") == [["-xml", "-u", user()]]
    assert not stubs.called("qalter") and not stubs.called("qdel")


def user() -> str:
    return subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()


def test_status_of_jobs_in_error_reports_marks_then_deletes(stubs: Stubs) -> None:
    eqw, eqw_array = JOBS["eqw"], JOBS["eqw_array"]
    xml = capture("qstat_xml_mixed.txt")
    unmarked = capture("qstat_j_error_single.txt") + capture("qstat_j_error_array.txt")
    stubs.answer(
        qstat=[{"match": "-xml", "out": xml}, {"match": "-j", "out": unmarked}],
    )
    first = status(stubs, f"{eqw}-{eqw_array}")
    assert first.returncode == 0
    assert _sge_sh.ERRORS_MARK in first.stdout
    assert stubs.called("qstat")[-1] == ["-j", f"{eqw},{eqw_array}"]
    assert sorted(stubs.called("qalter")) == sorted(
        [
            ["-ac", "clustrix_eqw_1=1", eqw],
            ["-ac", "clustrix_eqw_1=1,clustrix_eqw_2=1,clustrix_eqw_3=1", eqw_array],
        ]
    )
    assert not stubs.called("qdel")  # not yet: this poll's reasons must reach the future

    marked = capture("qstat_j_error_single_marked.txt") + capture(
        "qstat_j_error_array.txt"
    ).replace("binding:", "context:                    clustrix_eqw_2=1\nbinding:", 1)
    stubs.answer(qstat=[{"match": "-xml", "out": xml}, {"match": "-j", "out": marked}])
    second = status(stubs, f"{eqw}-{eqw_array}")
    assert second.returncode == 0
    assert stubs.called("qdel") == [[eqw, f"{eqw_array}.2"]]  # seen before: now deleted
    assert stubs.called("qalter")[-1] == ["-ac", "clustrix_eqw_1=1,clustrix_eqw_3=1", eqw_array]


def test_status_leaves_jobs_in_error_that_are_not_ours(stubs: Stubs) -> None:
    stubs.answer(qstat=[{"match": "-xml", "out": capture("qstat_xml_mixed.txt")}])
    result = status(stubs, JOBS["running"])
    assert result.returncode == 0 and _sge_sh.ERRORS_MARK not in result.stdout
    assert [argv[0] for argv in stubs.called("qstat")] == ["-xml"]


@pytest.mark.parametrize(
    ("out", "err", "rc"),
    [
        ("", capture("qstat_xml_qmaster_down.stderr.txt"), 1),
        ("", "", 0),  # no answer at all is no answer: never "every job has gone"
        ("<?xml version='1.0'?>\n<job_info>\n", "", 0),
    ],
)
def test_status_fails_without_a_complete_job_list(
    stubs: Stubs, out: str, err: str, rc: int
) -> None:
    stubs.answer(qstat=[{"match": "-xml", "out": out, "err": err, "rc": rc}])
    assert status(stubs, "1").returncode != 0


# ---------------------------------------------------------------- detail
def test_detail_waits_for_a_record_not_written_yet(stubs: Stubs) -> None:
    done, h_rt = JOBS["completed"], JOBS["h_rt"]
    stubs.answer(
        qacct=[
            {"match": h_rt, "err": f"error: job id {h_rt} not found\n", "rc": 1, "times": 2},
            {"match": h_rt, "out": capture("qacct_j_h_rt.txt")},
            {"match": done, "out": capture("qacct_j_completed.txt")},
        ]
    )
    argv = SgeScheduler().detail_argv([done, h_rt])
    assert argv is not None
    argv[4] = "5"  # wait budget
    result = stubs.run(argv)
    states = SgeScheduler().parse_detail(result.stdout)
    assert states[h_rt].state == "failed 37" and states[done].state == "exited"
    assert len(stubs.called("qacct")) == 4  # done once, h_rt twice missing then found


def test_detail_gives_up_after_its_wait_budget(stubs: Stubs) -> None:
    stubs.answer(qacct=[{"match": "-j", "err": "error: job id 9 not found\n", "rc": 1}])
    argv = SgeScheduler().detail_argv(["9", "10"])
    assert argv is not None
    argv[4] = "1"
    result = stubs.run(argv)
    assert result.returncode == 0 and SgeScheduler().parse_detail(result.stdout) == {}
    assert len(stubs.called("qacct")) == 3  # 9 twice (one second of waiting), 10 once


# ---------------------------------------------------------------- discovery
def discover(
    stubs: Stubs, root: str = "", path: str | None = None, roots: str = "/no/such/root"
) -> SgeScheduler:
    scheduler = SgeScheduler(environment={"SGE_ROOT": root} if root else {})
    argv = ["sh", "-c", _sge_sh.DISCOVER, "clustrix-sge-discover", root, "", roots]
    result = stubs.run(argv, path=path)
    scheduler.read_discovery(result.stdout + result.stderr)
    return scheduler


def answer_discovery(stubs: Stubs) -> None:
    stubs.answer(
        qconf=[
            {"match": "-sconf", "out": capture("qconf_sconf.txt")},
            {"match": "-spl", "out": capture("qconf_spl.txt")},
            {"match": "-sp smp", "out": capture("qconf_sp_smp.txt")},
        ],
        qstat=[{"match": "-g c", "out": capture("qstat_g_c.txt")}],
    )


def test_discovery_on_the_path(stubs: Stubs) -> None:
    answer_discovery(stubs)
    scheduler = discover(stubs)
    assert scheduler.env == {} and scheduler.binary_dir == ""
    assert scheduler.max_array_size == 75000 and scheduler.queue_slots == {"all.q": 16}
    assert scheduler.parallel_environment() == "smp"


def test_discovery_below_sge_root_when_the_login_shell_knows_nothing(
    stubs: Stubs, tmp_path: Path, bare_path: str
) -> None:
    answer_discovery(stubs)
    root = tmp_path / "opt sge"
    write_stubs(root / "bin" / "lx-amd64")
    (root / "default" / "common").mkdir(parents=True)
    (root / "default" / "common" / "settings.sh").write_text(
        f"SGE_ROOT='{root}'; export SGE_ROOT\nSGE_CELL=default; export SGE_CELL\n"
        "SGE_ARCH=lx-amd64; export SGE_ARCH\nSGE_QMASTER_PORT=6444; export SGE_QMASTER_PORT\n"
    )
    # qsub not on the PATH; SGE_ROOT given as environment_variables would say
    scheduler = discover(stubs, root=str(root), path=bare_path)
    assert scheduler.binary_dir == f"{root}/bin/lx-amd64"
    assert scheduler.env == {
        "SGE_ROOT": str(root),
        "SGE_CELL": "default",
        "SGE_QMASTER_PORT": "6444",
    }
    argv = scheduler.submit_argv(scheduler_spec(), "/j.sh")
    assert argv[0] == "env" and argv[-3] == f"{root}/bin/lx-amd64/qsub"
    # the status script, run as the engine runs it, finds the commands there too
    stubs.answer(qstat=[{"match": "-xml", "out": capture("qstat_xml_no_jobs.txt")}])
    result = stubs.run(scheduler.status_argv(["5"]), path=bare_path)
    assert result.returncode == 0 and "</job_info>" in result.stdout


def test_discovery_names_the_fix_when_grid_engine_is_nowhere(stubs: Stubs, bare_path: str) -> None:
    with pytest.raises(ConfigError, match="Grid Engine not found") as info:
        discover(stubs, path=bare_path)  # nothing on the PATH, no SGE_ROOT
    assert "qsub on the PATH: none; SGE_ROOT=unset" in str(info.value)
    with pytest.raises(ConfigError, match="Grid Engine not found") as info:
        discover(stubs, root="/no/such/sge", path=bare_path)
    assert "SGE_ROOT=/no/such/sge (environment_variables)" in str(info.value)


def scheduler_spec() -> JobSpec:
    return JobSpec("/h/jobs/1", 1, Resources(), "n", "python3", "/w.zip")


# ---------------------------------------------------------------- find submitted
def test_find_submitted_lists_queued_and_accounted_jobs(stubs: Stubs) -> None:
    stubs.answer(
        qstat=[{"match": "-j", "out": capture("qstat_j_list_error_and_other.txt")}],
        qacct=[{"match": "-A clustrix_5e1d", "out": capture("qacct_j_completed.txt")}],
    )
    scheduler = SgeScheduler()
    argv = scheduler.find_submitted_argv("/h/jobs/5e1d/job.sh")
    assert argv is not None
    result = stubs.run(argv)
    assert stubs.called("qacct") == [["-A", "clustrix_5e1d", "-j"]]
    assert "job_number:" in result.stdout and "jobnumber" in result.stdout
