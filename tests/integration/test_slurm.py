"""SLURM specifics against the real test cluster: arrays, throttling, accounting paths,
jobs that die behind clustrix's back, and the one-status-command-per-cycle rule."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, wait_running

from clustrix import ClusterExecutor, JobFailedError, SubmissionError

pytestmark = pytest.mark.cluster

SLURM_BACKENDS = ["slurm-local", "slurm-ssh"]


@pytest.fixture(params=SLURM_BACKENDS)
def make_slurm(
    request: pytest.FixtureRequest, make: Callable[..., ClusterExecutor]
) -> Callable[..., ClusterExecutor]:
    return lambda **overrides: make(request.param, **overrides)


def scancel_as_root(job_id: str) -> None:
    """Cancel a job behind clustrix's back, as an administrator (or the user) would."""
    subprocess.run(["scancel", job_id], check=True)


def test_a_burst_of_submits_becomes_one_job_array(
    make_slurm: Callable[..., ClusterExecutor],
) -> None:
    executor = make_slurm()
    futures = [executor.submit(jf.square, i) for i in range(10)]
    assert [f.result(timeout=120) for f in futures] == [i * i for i in range(10)]
    # One array; two at most when the loaded machine paused the submitting thread for
    # longer than the burst window (5 ms) once: never one job per call.
    bases = sorted({(f.job_id or "").split("_")[0] for f in futures}, key=int)
    assert 1 <= len(bases) <= 2
    assert executor.stats()["commands.sbatch"] == len(bases)
    ids = [f.job_id for f in futures]
    first = sum(1 for f in futures if (f.job_id or "").startswith(f"{bases[0]}_"))
    assert ids == [f"{bases[0]}_{i}" for i in range(first)] + [
        f"{bases[-1]}_{i}" for i in range(10 - first)
    ]


def test_one_status_command_per_poll_cycle(make_slurm: Callable[..., ClusterExecutor]) -> None:
    executor = make_slurm()
    assert list(executor.map(jf.square, range(60), chunksize=1)) == [i * i for i in range(60)]
    stats = executor.stats()
    assert stats["commands.sbatch"] == 1
    assert stats["poll_cycles"] >= 1
    assert stats["commands.squeue"] == stats["poll_cycles"]


def test_default_chunking_uses_the_partition_slots(
    make_slurm: Callable[..., ClusterExecutor],
) -> None:
    executor = make_slurm()
    pids = list(executor.map(jf.pid_of, range(200)))
    assert len(pids) == 200
    # 2 CPUs x OverSubscribe=FORCE:8 = 16 slots: one array of at most 16 tasks sharing the calls
    assert 1 < len(set(pids)) <= 16


def test_max_workers_throttles_and_holds_back(make_slurm: Callable[..., ClusterExecutor]) -> None:
    executor = make_slurm(max_workers=2)
    spans = list(executor.map(jf.timed_sleep, [1.0] * 6, chunksize=1))
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2
    # held-back calls are PENDING futures that cancel() still takes back
    blocker = executor.submit(jf.sleep_then, 3, "x")
    more = [executor.submit(jf.sleep_then, 3, i) for i in range(4)]
    assert all(f.job_id is None or not f.running() for f in more)
    assert sum(f.cancel() for f in more) >= 2
    assert blocker.result(timeout=120) == "x"


def test_arrays_are_split_at_max_array_size(make_slurm: Callable[..., ClusterExecutor]) -> None:
    executor = make_slurm()
    executor._engine.scheduler.max_array_size = 4  # as if the cluster said MaxArraySize=4
    futures = [executor.submit(jf.square, i) for i in range(10)]
    assert [f.result(timeout=120) for f in futures] == [i * i for i in range(10)]
    bases = {f.job_id.split("_")[0] for f in futures if f.job_id}
    assert len(bases) == 3
    assert executor.stats()["commands.sbatch"] == 3


@pytest.mark.parametrize("use_sacct", [True, False], ids=["sacct", "scontrol"])
def test_job_cancelled_behind_our_back_fails_with_slurm_state(
    make_slurm: Callable[..., ClusterExecutor], use_sacct: bool
) -> None:
    executor = make_slurm(slurm_use_sacct=use_sacct)
    future = executor.submit(jf.sleep_then, 60, None)
    wait_running(future)
    assert future.job_id
    scancel_as_root(future.job_id)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.state == "CANCELLED"
    assert info.value.job_id == future.job_id
    assert future.job_id in str(info.value)


def test_shutdown_cancels_queued_jobs_with_one_scancel(
    make_slurm: Callable[..., ClusterExecutor],
) -> None:
    executor = make_slurm()
    futures = [executor.submit(jf.sleep_then, 4, i) for i in range(24)]  # 16 slots: 8 wait
    wait_running(futures[0])
    time.sleep(1.5)  # let SLURM start what fits
    executor.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    finished = [f for f in futures if not f.cancelled()]
    assert cancelled, "some array tasks should still have been pending"
    assert all(f.result() == futures.index(f) for f in finished)
    assert executor.stats()["commands.scancel"] == 1


def test_invalid_partition_is_a_submission_error(
    make_slurm: Callable[..., ClusterExecutor],
) -> None:
    executor = make_slurm()
    future = executor.options(partition="nosuchpart").submit(jf.square, 3)
    with pytest.raises(SubmissionError, match="Invalid partition name") as info:
        future.result(timeout=60)
    assert "nosuchpart" in info.value.stderr
    assert executor.submit(jf.square, 3).result(timeout=120) == 9


def test_resources_reach_the_job(make_slurm: Callable[..., ClusterExecutor]) -> None:
    executor = make_slurm(environment_variables={"CLUSTRIX_PROBE": "a b'c\"$d"})
    env = (
        executor.options(cores=2, job_name="probe job")
        .submit(jf.env_values, ["SLURM_CPUS_PER_TASK", "SLURM_JOB_NAME", "CLUSTRIX_PROBE"])
        .result(timeout=120)
    )
    assert env["SLURM_CPUS_PER_TASK"] == "2"
    assert env["SLURM_JOB_NAME"] == "probe_job"
    assert env["CLUSTRIX_PROBE"] == "a b'c\"$d"


def test_time_limit_fails_the_future_with_timeout(tmp_path: Path) -> None:
    # SLURM time limits have minute granularity: this test waits about 80 s, so it runs on
    # one backend only (the state comes from the same squeue/sacct either way).
    executor = ClusterExecutor(backend_config("slurm-local", tmp_path, time_limit_min=1))
    try:
        future = executor.submit(jf.sleep_then, 600, None)
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=300)
        assert info.value.state == "TIMEOUT"
        assert info.value.job_id == future.job_id
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("chunksize", [None, 100], ids=["default-chunks", "chunksize-100"])
def test_ten_thousand_calls_in_order(
    make: Callable[..., ClusterExecutor], chunksize: int | None
) -> None:
    executor = make("slurm-ssh")
    values = range(10_000)
    results = list(executor.map(jf.square, values, chunksize=chunksize, timeout=600))
    assert results == [v * v for v in values]
    stats = executor.stats()
    assert stats["commands.sbatch"] == 1
    assert stats["commands.squeue"] == stats["poll_cycles"]  # one status command per cycle


def test_over_ssh_a_long_calls_result_comes_from_the_wait_on_the_cluster(
    make: Callable[..., ClusterExecutor],
) -> None:
    """Past the first 2 s every pause is 30 s here, spent on the cluster (looks 6 s
    apart): the result of a 4 s call comes back from the waiting command, which went on
    at the news; the executor's marker in the jobs root goes at shutdown."""
    executor = make("slurm-ssh", poll_interval_min_s=30.0, poll_interval_max_s=30.0)
    future = executor.submit(jf.sleep_then, 4, "done")
    assert future.result(timeout=120) == "done"
    assert executor.stats()["poll_waits_news"] >= 1
    assert executor.stats().get("poll_waits_cut_short", 0) == 0
    marker = executor._engine._monitor.news_marker  # type: ignore[attr-defined]
    assert marker is not None and executor.exists(marker)
    executor.shutdown(wait=True)
    assert not make("slurm-ssh").exists(marker)
