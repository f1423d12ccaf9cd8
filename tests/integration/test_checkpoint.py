"""Checkpoint and requeue on SLURM: a call told that its job is about to stop saves its
progress (``checkpoint()``), the job is requeued under the same ID, and the future gets
the result of the resumed call. Calls of a chunk that had not started are requeued as they
are, and calls that had finished are not run again.

The checkpoint signal comes from SLURM itself: sent by hand (``scancel --batch
--signal=USR2``, what ``--signal=B:USR2@N`` does at the time) and, in one test, by a real
time limit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, ssh_run, wait_running

from clustrix import ClusterExecutor, ConfigError

pytestmark = pytest.mark.cluster


def signal_checkpoint(job_id: str) -> None:
    """What SLURM does ``checkpoint_before_s`` before the time limit: USR2 to the batch shell."""
    ssh_run(f"scancel --batch --signal=USR2 {job_id}")


def restarts_of(job_id: str) -> int:
    out = ssh_run(f"scontrol -o show job {job_id}")
    fields = dict(token.split("=", 1) for token in out.split() if "=" in token)
    return int(fields["Restarts"])


def test_checkpointable_call_is_resumed_in_the_requeued_job(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=False)
    config = backend_config("slurm-ssh", tmp_path, time_limit_min=10, checkpoint_before_s=30)
    with ClusterExecutor(config) as executor:
        future = executor.submit(jf.CountTo(), 40, 0.2)  # 8 s of work
        wait_running(future)
        job_id = future.job_id
        assert job_id is not None
        time.sleep(2.0)
        signal_checkpoint(job_id)
        outcome = future.result(timeout=240)
        assert outcome == {"done": 40, "starts": 2, "checkpoints": 1}
        assert future.job_id == job_id  # requeued, not resubmitted
        assert restarts_of(job_id) == 1
        log = future.stderr()
        assert "checkpointed: 1 call(s) left" in log
        assert "requeueing the job" in log


def test_requeue_runs_the_calls_not_started_and_never_reruns_finished_ones(
    tmp_path: Path,
) -> None:
    require_cluster(ssh=True, slurm=False)
    log_path = f"/tmp/clustrix-checkpoint-{os.getpid()}-{time.monotonic_ns()}.log"
    config = backend_config("slurm-ssh", tmp_path, time_limit_min=10, checkpoint_before_s=30)
    with ClusterExecutor(config) as executor:
        values = list(range(6))
        futures = executor.submit_map(
            jf.note_then_sleep, values, [log_path] * 6, [1.0] * 6, chunksize=6
        )
        wait_running(futures[0])
        job_id = futures[0].job_id
        assert job_id is not None
        time.sleep(2.5)  # in the third call: it has no checkpoint(), so it finishes first
        signal_checkpoint(job_id)
        assert [f.result(timeout=240) for f in futures] == [10 * v for v in values]
        assert restarts_of(job_id) == 1
        runs = ssh_run(f"cat {log_path}; rm -f {log_path}").split()
        assert sorted(int(x) for x in runs) == values  # each call ran exactly once
        assert "has no checkpoint() method" in futures[0].stderr()


def test_time_limit_signal_checkpoints_and_the_call_finishes(tmp_path: Path) -> None:
    """The real thing: --time=1 --signal=B:USR2@55. slurmctld looks at time limits about
    every 30 s, so the signal comes 5 to ~35 s into each run; the work needs 40 s, so the call
    checkpoints at least once and finishes in a later run instead of timing out."""
    require_cluster(ssh=True, slurm=False)
    config = backend_config("slurm-ssh", tmp_path, time_limit_min=1, checkpoint_before_s=55)
    with ClusterExecutor(config) as executor:
        future = executor.submit(jf.CountTo(), 160, 0.25)
        outcome = future.result(timeout=400)
        assert outcome["done"] == 160
        assert outcome["starts"] >= 2
        assert outcome["checkpoints"] == outcome["starts"] - 1
        assert "requeueing the job" in future.stderr()


def test_checkpointing_needs_a_scheduler_that_requeues(tmp_path: Path) -> None:
    executor = ClusterExecutor(backend_config("local", tmp_path))
    try:
        with pytest.raises(ConfigError, match="checkpoint_before_s=60 needs a scheduler"):
            executor.options(checkpoint_before_s=60).submit(jf.square, 2)
        assert executor.submit(jf.square, 3).result(timeout=60) == 9  # nothing half-done
    finally:
        executor.shutdown()


def test_job_requeued_by_slurm_mid_chunk_returns_every_result_once(tmp_path: Path) -> None:
    """What preemption with PreemptMode=REQUEUE (or a node failure) does: SLURM stops the
    running job (TERM, the worker dies, the script records 143) and queues it again under the
    same ID. That exit status is not the end: the job runs again, skips the calls it had
    finished, and every future gets its result. No checkpointing involved."""
    require_cluster(ssh=True, slurm=False)
    log_path = f"/tmp/clustrix-requeue-{os.getpid()}-{time.monotonic_ns()}.log"
    with ClusterExecutor(backend_config("slurm-ssh", tmp_path)) as executor:
        values = list(range(4))
        futures = executor.submit_map(
            jf.note_then_sleep, values, [log_path] * 4, [1.0] * 4, chunksize=4
        )
        wait_running(futures[0])
        job_id = futures[0].job_id
        assert job_id is not None
        time.sleep(1.5)  # in the second call
        ssh_run(f"scontrol requeue {job_id}")
        assert [f.result(timeout=240) for f in futures] == [10 * v for v in values]
        assert restarts_of(job_id) == 1
        runs = [int(x) for x in ssh_run(f"cat {log_path}; rm -f {log_path}").split()]
        assert sorted(set(runs)) == values
        assert len(runs) <= len(values) + 1  # only the interrupted call ran twice
        assert runs.count(0) == 1  # the call finished before the requeue was not redone
