"""The ``ssh`` backend's pure parts: job scripts pinned by golden files, parsing, the host
check, configuration; and the backend through the real engine on this machine (the local
transport), which only swaps SSH for local processes.

The golden files live in ``tests/data/golden/direct_*.sh``; after an intended change of the
rendering, regenerate them and review the diff::

    CLUSTRIX_TEST_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_direct_scheduler.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jobfuncs as jf
import pytest

from clustrix import ClusterConfig, ClusterExecutor, ConfigError, JobFailedError
from clustrix.backends import check_cluster_type, registered_backends
from clustrix.config import Resources
from clustrix.lifecycle import JobState
from clustrix.schedulers.base import JobSpec
from clustrix.schedulers.direct import DIRECT_STATES, DirectScheduler, gpu_pool, parse_job_id
from clustrix.transports.local import LocalTransport

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
UPDATE = os.environ.get("CLUSTRIX_TEST_UPDATE_GOLDEN") == "1"

SINGLE = JobSpec(
    job_dir="/home/u/.clustrix/jobs/5e1d0c",
    n_tasks=1,
    resources=Resources(),
    job_name="clustrix-simulate",
    python="/usr/bin/python3",
    worker_path="/home/u/.clustrix/runtime/clustrix-worker.zip",
)
GPUS = JobSpec(
    job_dir="/scratch/my jobs/run 1/0f3c9a",
    n_tasks=4,
    resources=Resources(gpus=2, time_limit_min=90),
    job_name="clustrix-train",
    python="/opt/python 3.11/bin/python3",
    worker_path="/scratch/my jobs/runtime/clustrix-worker.zip",
    environment={"CUDA_VISIBLE_DEVICES": "0,1,GPU-5f2c", "WEIRD": "a b'c\"$d`e`;f"},
)


def scheduler(host: str = "gpu1") -> DirectScheduler:
    s = DirectScheduler(host)
    s.attach(work_dir="/scratch/my jobs/run 1", jobs_root="/scratch/my jobs/run 1/jobs")
    s.read_facts("CLX-NPROC 16\nCLX-PROC\nCLX-SETSID\nCLX-FLOCK\n")
    return s


@pytest.mark.parametrize(
    ("spec", "golden"), [(SINGLE, "direct_single.sh"), (GPUS, "direct_gpus.sh")]
)
def test_script_matches_golden_file(spec: JobSpec, golden: str) -> None:
    script = scheduler().render_script(spec)
    path = GOLDEN / golden
    if UPDATE:
        path.write_text(script, encoding="utf-8")
    assert script == path.read_text(encoding="utf-8")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_the_pool_is_not_exported_as_it_is_but_claimed() -> None:
    script = scheduler().render_script(GPUS)
    assert "CUDA_VISIBLE_DEVICES=0,1,GPU-5f2c" not in script
    assert "export WEIRD=" in script  # the other variables are the body's, as always
    plain = scheduler().render_script(replace(GPUS, resources=Resources()))
    assert "export CUDA_VISIBLE_DEVICES=0,1,GPU-5f2c" in plain  # gpus unset: untouched


def test_status_lines_and_noise() -> None:
    out = (
        "CLX|5e1d0c_0|RUNNING||\n"
        "sh: 1: cannot open /x: No such file\n"
        "CLX|5e1d0c_1|FAILED|3|\n"
        "CLX|5e1d0c_2|TIMEOUT|143|time limit reached\n"
        "CLX|5e1d0c_3|LOST||the host restarted\n"
        "CLX|broken\n"
    )
    states = scheduler().parse_status(out)
    assert set(states) == {f"gpu1:5e1d0c_{t}" for t in range(4)}
    assert states["gpu1:5e1d0c_1"].exit_code == 3
    assert states["gpu1:5e1d0c_2"].reason == "time limit reached"
    assert states["gpu1:5e1d0c_3"].exit_code is None


def test_unknown_words_never_end_a_job() -> None:
    s = scheduler()
    states = s.parse_status("CLX|5e1d0c_0|SOMETHINGNEW||\n")
    assert s.lifecycle(states["gpu1:5e1d0c_0"].state) is JobState.QUEUED
    assert {word for word, state in DIRECT_STATES.items() if state.is_final} == {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "LOST",
    }


def test_job_ids_and_their_commands() -> None:
    s = scheduler("fe80::1")
    assert parse_job_id("fe80::1:5e1d0c_7") == ("fe80::1", "5e1d0c_7")
    with pytest.raises(ValueError, match="not a job ID"):
        parse_job_id("12345")
    ids = [f"fe80::1:5e1d0c_{t}" for t in range(3)]
    assert s.status_argv(ids)[-3:] == ["5e1d0c_0", "5e1d0c_1", "5e1d0c_2"]
    many = [f"fe80::1:5e1d0c_{t}" for t in range(301)]
    assert s.status_argv(many)[-1] == "/scratch/my jobs/run 1/jobs"  # every job of the dir
    assert s.cancel_argv(ids)[-4:] == ["10", "5e1d0c_0", "5e1d0c_1", "5e1d0c_2"]
    with pytest.raises(RuntimeError, match="attach"):
        DirectScheduler("h").status_argv(ids)


def test_submit_output_and_an_interrupted_submission() -> None:
    s = scheduler()
    spec = replace(SINGLE, n_tasks=2)
    assert s.parse_submit(spec, "0 41 900\n1 42 901\n") == ["gpu1:5e1d0c_0", "gpu1:5e1d0c_1"]
    with pytest.raises(ValueError, match="expected 2 started tasks"):
        s.parse_submit(spec, "0 41 900\n")
    assert s.parse_find_submitted(spec, "0.launch\n1.launch\n", "") == [
        "gpu1:5e1d0c_0",
        "gpu1:5e1d0c_1",
    ]
    # not all claimed: submitted again, and the launcher starts only the others
    assert s.parse_find_submitted(spec, "0.launch\n", "") is None


def test_host_facts_and_a_host_jobs_cannot_run_on() -> None:
    s = DirectScheduler("mac")
    s.read_facts("CLX-NPROC 8\nCLX-PROC\nCLX-SETSID\nCLX-GPU 0\nCLX-GPU 1\n")
    assert (s.default_max_workers(), s.gpus, s.has_flock) == (8, ["0", "1"], False)
    assert s.slots(Resources()) == 8
    with pytest.raises(ConfigError, match=r"mac \(Darwin 23.1.0\) has no /proc and no setsid"):
        s.read_facts("CLX-NPROC 8\nCLX-OS Darwin 23.1.0\n")


def test_gpu_pool_from_the_config_or_the_host() -> None:
    assert gpu_pool({}, ["0", "1"]) == ["0", "1"]
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": " 2, 3 ,"}, ["0", "1"]) == ["2", "3"]
    with pytest.raises(ConfigError, match="separated by commas"):
        gpu_pool({"CUDA_VISIBLE_DEVICES": "0 1"}, [])


def test_the_backend_is_registered_and_needs_a_host(tmp_path: Path) -> None:
    assert check_cluster_type("SSH") == "ssh" and registered_backends()["ssh"].available
    config = ClusterConfig(cluster_type="ssh", remote_work_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no cluster_host is set: set cluster_host"):
        ClusterExecutor(config)


@pytest.fixture
def local_host(tmp_path: Path) -> ClusterExecutor:
    """The ssh backend through the engine, on this machine (local transport)."""
    config = ClusterConfig(
        cluster_type="ssh",
        cluster_host="localhost",
        remote_work_dir=str(tmp_path / "work"),
        python_executable=sys.executable,
        build_environment=False,
        state_dir=tmp_path / "state",
        poll_interval_min_s=0.05,
        poll_interval_max_s=0.2,
    )
    return ClusterExecutor(config, transport=LocalTransport())


def test_through_the_engine(local_host: ClusterExecutor) -> None:
    with local_host as ex:
        assert ex.max_workers == os.cpu_count()  # the host's CPUs (discovered, not local)
        future = ex.submit(jf.add, 2, 3)
        assert future.result(timeout=60) == 5
        host, run_id = parse_job_id(future.job_id or "")
        assert host == "localhost" and run_id.endswith("_0")
        with pytest.raises(ConfigError, match="cannot honour mem_gb"):
            ex.options(mem_gb=4).submit(jf.add, 1, 1)
        slow = ex.submit(jf.sleep_then, 300, None)
        while not slow.running():
            assert not slow.done()
        assert slow.kill()
        with pytest.raises(JobFailedError) as info:
            slow.result(timeout=60)
        assert info.value.state == "CANCELLED"
