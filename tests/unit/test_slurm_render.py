"""Golden-file tests of the job scripts the SLURM and local backends render.

The expected scripts live in ``tests/data/golden/*.sh``. After an intended change of the
rendering, regenerate them and review the diff before committing::

    CLUSTRIX_TEST_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_slurm_render.py

With the variable set, each test rewrites its golden file from the current output and passes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from clustrix.config import Resources
from clustrix.schedulers.base import JobSpec, Scheduler, render_body
from clustrix.schedulers.local import LocalScheduler
from clustrix.schedulers.slurm import SlurmScheduler

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE = os.environ.get("CLUSTRIX_TEST_UPDATE_GOLDEN") == "1"

WEIRD = "a b'c\"$d`e`;f"
SPACED_DIR = "/scratch/my jobs/run 1/0f3c9a"

SINGLE = JobSpec(
    job_dir="/home/u/.clustrix/jobs/5e1d0c",
    n_tasks=1,
    resources=Resources(),
    job_name="clustrix-simulate",
    python="/usr/bin/python3",
    worker_path="/home/u/.clustrix/runtime/clustrix-worker.zip",
)

ARRAY = JobSpec(
    job_dir=SPACED_DIR,
    n_tasks=10,
    resources=Resources(
        cores=4,
        mem_gb=2.5,
        time_limit_min=90,
        partition="short",
        account="proj42",
        qos="normal",
        gpus=1,
        extra_directives=["--constraint=skylake", "#SBATCH --exclusive"],
    ),
    job_name="clustrix-simulate",
    python="/opt/python 3.11/bin/python3",
    worker_path="/scratch/my jobs/runtime/clustrix-worker.zip",
    module_loads=["gcc/12", "python/3.11"],
    environment={"OMP_NUM_THREADS": "4", "WEIRD": WEIRD},
    array_throttle=4,
)

CHECKPOINTING = replace(SINGLE, resources=Resources(time_limit_min=30, checkpoint_before_s=120))

CASES = [
    pytest.param(SlurmScheduler(), SINGLE, "slurm_single.sh", id="slurm-single"),
    pytest.param(SlurmScheduler(), CHECKPOINTING, "slurm_checkpoint.sh", id="slurm-checkpoint"),
    pytest.param(SlurmScheduler(), ARRAY, "slurm_array.sh", id="slurm-array"),
    pytest.param(LocalScheduler(), SINGLE, "local_single.sh", id="local-single"),
    pytest.param(LocalScheduler(), ARRAY, "local_array.sh", id="local-array"),
]


@pytest.mark.parametrize(("scheduler", "spec", "golden"), CASES)
def test_script_matches_golden_file(scheduler: Scheduler, spec: JobSpec, golden: str) -> None:
    script = scheduler.render_script(spec)
    path = GOLDEN / golden
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script, encoding="utf-8")
    assert path.exists(), f"missing {path}: run with CLUSTRIX_TEST_UPDATE_GOLDEN=1 to create it"
    assert script == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(("scheduler", "spec", "golden"), CASES)
def test_script_is_valid_shell(scheduler: Scheduler, spec: JobSpec, golden: str) -> None:
    shell = "bash" if isinstance(scheduler, SlurmScheduler) else "sh"
    proc = subprocess.run(
        [shell, "-n"], input=scheduler.render_script(spec), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def sbatch_options(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line[:7] == "#SBATCH"]


def test_single_task_defaults() -> None:
    script = SlurmScheduler().render_script(SINGLE)
    assert script.startswith("#!/bin/bash\n")
    assert sbatch_options(script) == [
        "--job-name=clustrix-simulate",
        "--output=/home/u/.clustrix/jobs/5e1d0c/logs/0.out",
        "--error=/home/u/.clustrix/jobs/5e1d0c/logs/0.err",
        "--open-mode=append",
        "--cpus-per-task=1",
    ]
    assert "USR2" not in script  # no checkpoint signal unless asked for
    assert 'task="${SLURM_ARRAY_TASK_ID:-0}"' in script
    # The directives must all come before the first command, or sbatch ignores them.
    first_command = next(
        i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#")
    )
    assert all(
        i < first_command
        for i, line in enumerate(script.splitlines())
        if line.startswith("#SBATCH")
    )


def test_array_resources_mapped_to_slurm() -> None:
    options = sbatch_options(SlurmScheduler().render_script(ARRAY))
    assert "--array=0-9%4" in options
    assert "--cpus-per-task=4" in options
    assert "--mem=2560M" in options  # 2.5 GB, in whole MB
    assert "--time=90" in options  # minutes
    assert "--partition=short" in options
    assert "--account=proj42" in options
    assert "--qos=normal" in options
    assert "--gpus=1" in options
    assert options[-2:] == ["--constraint=skylake", "--exclusive"]  # '#SBATCH' prefix dropped


def test_checkpointing_signals_the_batch_shell_and_allows_requeue() -> None:
    script = SlurmScheduler().render_script(CHECKPOINTING)
    options = sbatch_options(script)
    assert "--signal=B:USR2@120" in options
    assert "--requeue" in options
    assert "--time=30" in options
    assert "CLUSTRIX_CHECKPOINT_SIGNAL=USR2 " in script
    assert 'scontrol requeue "$SLURM_JOB_ID" && exit 0' in script


def test_local_scheduler_never_renders_checkpointing() -> None:
    assert "USR2" not in LocalScheduler().render_script(CHECKPOINTING)
    assert not LocalScheduler.supports_requeue


def test_mem_rounds_up_to_a_whole_megabyte() -> None:
    spec = replace(SINGLE, resources=Resources(mem_gb=0.0001))
    assert "--mem=1M" in sbatch_options(SlurmScheduler().render_script(spec))


def test_array_without_throttle() -> None:
    spec = replace(ARRAY, array_throttle=None)
    assert "--array=0-9" in sbatch_options(SlurmScheduler().render_script(spec))


def test_job_dir_with_spaces_is_quoted_in_directives_and_body() -> None:
    script = SlurmScheduler().render_script(ARRAY)
    options = sbatch_options(script)
    assert f'--output="{SPACED_DIR}/logs/%a.out"' in options
    assert f'--error="{SPACED_DIR}/logs/%a.err"' in options
    assert f"_clx_job_dir={shlex.quote(SPACED_DIR)}" in script.splitlines()
    assert f"_clx_exit_dir={shlex.quote(SPACED_DIR + '/exit')}" in script.splitlines()
    # every other mention of the directory is inside quotes
    body = render_body(ARRAY, '"$1"')
    for line in body.splitlines():
        for match in re.finditer(re.escape(SPACED_DIR), line):
            assert line[match.start() - 1] in "'\"", line


def test_body_is_the_same_for_both_backends_but_for_the_task_index() -> None:
    slurm = SlurmScheduler().render_script(ARRAY)
    local = LocalScheduler().render_script(ARRAY)
    assert slurm.endswith(render_body(ARRAY, '"${SLURM_ARRAY_TASK_ID:-0}"'))
    assert local.endswith(render_body(ARRAY, '"$1"'))
    assert local.startswith("#!/bin/sh\n# clustrix job clustrix-simulate: 10 task(s)\n")


def test_weird_environment_value_survives_the_shell() -> None:
    line = next(x for x in render_body(ARRAY, "0").splitlines() if x.startswith("export WEIRD="))
    proc = subprocess.run(
        ["bash", "-c", f'{line}\nprintf %s "$WEIRD"'], capture_output=True, text=True, check=True
    )
    assert proc.stdout == WEIRD
