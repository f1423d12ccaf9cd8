"""Golden-file tests of the Grid Engine job scripts, and the scripts run with bash.

The expected scripts are ``tests/data/golden/sge_*.sh``. After an intended change of the
rendering, regenerate them and review the diff before committing::

    CLUSTRIX_TEST_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_sge_render.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustrix import _wire
from clustrix.config import Resources
from clustrix.errors import ConfigError
from clustrix.schedulers.base import JobSpec, render_body
from clustrix.schedulers.sge import SgeScheduler
from clustrix.worker import BOOTSTRAP

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE = os.environ.get("CLUSTRIX_TEST_UPDATE_GOLDEN") == "1"
WEIRD = "a b'c\"$d`e`;f"

SINGLE = JobSpec(
    job_dir="/home/u/.clustrix/jobs/5e1d0c",
    n_tasks=1,
    resources=Resources(),
    job_name="clustrix-simulate",
    python="/usr/bin/python3",
    worker_path="/home/u/.clustrix/runtime/clustrix-worker.zip",
)

ARRAY = JobSpec(
    job_dir="/scratch/my jobs/run 1/0f3c9a",
    n_tasks=10,
    resources=Resources(
        cores=4,
        mem_gb=2.5,
        time_limit_min=90,
        partition="short.q",
        account="proj42",
        extra_directives=["-l scratch=10G", "#$ -R y"],
    ),
    job_name="clustrix-simulate",
    python="/opt/python 3.11/bin/python3",
    worker_path="/scratch/my jobs/runtime/clustrix-worker.zip",
    module_loads=["gcc/12", "python/3.11"],
    environment={"OMP_NUM_THREADS": "4", "WEIRD": WEIRD},
    array_throttle=4,
)


def sge(pes: dict[str, str] | None = None) -> SgeScheduler:
    scheduler = SgeScheduler()
    scheduler.parallel_environments = {"smp": "$pe_slots"} if pes is None else pes
    return scheduler


def options(script: str) -> list[str]:
    return [line.removeprefix("#$ ") for line in script.splitlines() if line.startswith("#$ ")]


@pytest.mark.parametrize(("spec", "golden"), [(SINGLE, "sge_single.sh"), (ARRAY, "sge_array.sh")])
def test_script_matches_golden_file(spec: JobSpec, golden: str) -> None:
    script = sge().render_script(spec)
    path = GOLDEN / golden
    if UPDATE:
        path.write_text(script, encoding="utf-8")
    assert path.exists(), f"missing {path}: run with CLUSTRIX_TEST_UPDATE_GOLDEN=1 to create it"
    assert script == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", [SINGLE, ARRAY])
def test_script_is_valid_bash(spec: JobSpec) -> None:
    proc = subprocess.run(
        ["bash", "-n"], input=sge().render_script(spec), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_single_job_defaults() -> None:
    script = sge().render_script(SINGLE)
    assert script.startswith("#!/bin/bash\n")
    assert options(script) == [
        "-N clustrix-simulate",
        "-S /bin/bash",
        "-cwd",
        "-j y",
        "-o /dev/null",
        "-A clustrix_5e1d0c",
    ]
    assert script.endswith(render_body(SINGLE, '"0"'))
    # qsub reads #$ lines only up to the first command
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#$"))


def test_array_resources_mapped_to_grid_engine() -> None:
    opts = options(sge().render_script(ARRAY))
    assert "-t 1-10" in opts and "-tc 4" in opts
    assert "-pe smp 4" in opts
    assert "-l h_vmem=640M" in opts  # 2.5 GB for the job = 640 MB for each of its 4 slots
    assert "-l h_rt=5400" in opts  # 90 minutes, in seconds
    assert "-q short.q" in opts
    assert "-P proj42" in opts
    assert opts[-2:] == ["-l scratch=10G", "-R y"]  # '#$' prefix dropped


def test_job_names_grid_engine_refuses_are_made_acceptable() -> None:
    assert "-N j1run" in options(sge().render_script(replace(SINGLE, job_name="1run")))


def test_no_path_of_the_job_dir_is_given_to_grid_engine() -> None:
    # a task dispatched after its directory was removed must end, not wait in Eqw (an -o
    # path Grid Engine cannot open puts it there); and Grid Engine expands $HOME... in -o
    spec = replace(SINGLE, job_dir="/home/u/$HOME/jobs/1")
    assert all(spec.job_dir not in o for o in options(sge().render_script(spec)))


def test_cores_use_the_single_host_parallel_environment() -> None:
    spec = replace(SINGLE, resources=Resources(cores=2))
    pes = {"mpi": "$fill_up", "threads": "$pe_slots", "zz": "$pe_slots"}
    assert "-pe threads 2" in options(sge(pes).render_script(spec))
    own = replace(spec, resources=Resources(cores=2, extra_directives=["-pe mine 2"]))
    opts = options(sge({}).render_script(own))
    assert "-pe mine 2" in opts and sum(o.startswith("-pe") for o in opts) == 1
    with pytest.raises(ConfigError, match=r"mpi \(\$fill_up\).*extra_directives=\['-pe NAME 2'\]"):
        sge({"mpi": "$fill_up"}).render_script(spec)


def test_unsupported_generic_resources_are_declared() -> None:
    assert SgeScheduler.unsupported_resources == {"gpus", "qos"}
    assert not SgeScheduler.supports_requeue


# ---------------------------------------------------------------- run with bash
def stub_python(tmp_path: Path) -> str:
    """A "python" that records its argv, prints to both streams, exits with $STUB_RC."""
    stub = tmp_path / "py"
    stub.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "print('out', sys.argv[-1]); print('err', sys.argv[-1], file=sys.stderr)\n"
        "open(os.environ['STUB_ARGV'], 'w').write(repr(sys.argv[1:]))\n"
        "sys.exit(int(os.environ.get('STUB_RC', '0')))\n"
    )
    stub.chmod(0o755)
    return str(stub)


def run_job(spec: JobSpec, tmp_path: Path, sge_task_id: str, rc: int = 0) -> subprocess.Popen:
    for sub in (_wire.LOGS_DIR, _wire.EXIT_DIR):
        Path(spec.path(sub)).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SGE_TASK_ID": sge_task_id,  # "undefined" for a job that is no array, as qsub sets
        "STUB_ARGV": str(tmp_path / "argv"),
        "STUB_RC": str(rc),
    }
    script = sge().render_script(spec)
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=30)
    return proc  # type: ignore[return-value]


@pytest.mark.parametrize(("n_tasks", "sge_task_id", "index"), [(1, "undefined", 0), (5, "3", 2)])
def test_task_logs_and_exit_file_are_named_by_task_index(
    tmp_path: Path, n_tasks: int, sge_task_id: str, index: int
) -> None:
    job_dir = tmp_path / "job dir $(x)"
    spec = replace(SINGLE, job_dir=str(job_dir), n_tasks=n_tasks, python=stub_python(tmp_path))
    proc = run_job(spec, tmp_path, sge_task_id, rc=3)
    assert proc.returncode == 3
    logs = job_dir / _wire.LOGS_DIR
    assert (logs / f"{index}.out").read_text() == f"out {index}\n"
    assert (logs / f"{index}.err").read_text() == f"err {index}\n"
    assert (job_dir / _wire.EXIT_DIR / str(index)).read_text() == "3\n"
    assert eval((tmp_path / "argv").read_text())[-1] == str(index)
    assert not proc.stdout and not proc.stderr  # all of it went to the task's logs


def test_logs_are_appended_across_runs(tmp_path: Path) -> None:
    spec = replace(SINGLE, job_dir=str(tmp_path / "j"), python=stub_python(tmp_path))
    run_job(spec, tmp_path, "undefined")
    run_job(spec, tmp_path, "undefined")  # rescheduled: the same task runs again
    assert (tmp_path / "j" / _wire.LOGS_DIR / "0.out").read_text() == "out 0\nout 0\n"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\"'%\n\r/\x00"),
        min_size=1,
        max_size=12,
    ).filter(lambda s: s not in (".", ".."))
)
def test_any_job_dir_reaches_the_worker_and_the_logs(tmp_path: Path, name: str) -> None:
    here = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh one for each example
    job_dir = here / name / "0f3c"
    spec = replace(SINGLE, job_dir=str(job_dir), n_tasks=2, python=stub_python(here))
    proc = run_job(spec, here, "2")
    assert proc.returncode == 0, proc.stderr
    assert (job_dir / _wire.LOGS_DIR / "1.out").read_text() == "out 1\n"
    argv = eval((here / "argv").read_text())
    assert argv == ["-c", BOOTSTRAP, "clustrix.worker", "run", str(job_dir), "1"]
    quoted = shlex.quote(str(job_dir / _wire.LOGS_DIR))
    assert f"_clx_logs={quoted}" in sge().render_script(spec).split("\n")


def test_a_task_whose_job_dir_was_removed_ends_at_once(tmp_path: Path) -> None:
    spec = replace(SINGLE, job_dir=str(tmp_path / "gone"), python=stub_python(tmp_path))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SGE_TASK_ID": "undefined"}
    env["STUB_ARGV"] = str(tmp_path / "argv")
    proc = subprocess.run(
        ["bash", "-c", sge().render_script(spec)], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 1
    assert not (tmp_path / "argv").exists()  # the worker never started
