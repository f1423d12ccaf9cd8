"""Submission limits of a real SLURM: a refused ``sbatch`` is retried, not a failed future.

The test cluster enforces association limits (``AccountingStorageEnforce=associations,limits``,
see ``scripts/testcluster.sh``); the test user has a second account, ``clustrix-limit``, whose
limits these tests set with ``sacctmgr`` (root), so that jobs of other tests, submitted with
the default account, are not held back meanwhile.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, test_cluster

from clustrix import ClusterExecutor

pytestmark = pytest.mark.cluster

LIMIT_ACCOUNT = "clustrix-limit"


def set_max_submit_jobs(user: str, limit: int) -> None:
    """Set MaxSubmitJobs of ``user``'s association with LIMIT_ACCOUNT (-1: no limit) and wait
    until slurmctld enforces it (slurmdbd passes the change on asynchronously)."""
    subprocess.run(
        [
            "sacctmgr",
            "-i",
            "modify",
            "user",
            "where",
            f"name={user}",
            f"account={LIMIT_ACCOUNT}",
            "set",
            f"MaxSubmitJobs={limit}",
        ],
        check=True,
        capture_output=True,
    )
    expected = "" if limit < 0 else str(limit)
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [
                "scontrol",
                "show",
                "assoc_mgr",
                f"users={user}",
                f"accounts={LIMIT_ACCOUNT}",
                "flags=assoc",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # the user's record (not the account's) comes after its UserName=<user>(<uid>) line
        _, _, record = out.partition(f"UserName={user}(")
        match = re.search(r"MaxSubmitJobs=(\d*)", record)
        if match and match.group(1) == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"slurmctld did not take MaxSubmitJobs={limit} within 30 s: {out}")
        time.sleep(0.2)


@pytest.fixture
def max_submit_jobs_2() -> Iterator[str]:
    """The test user may have at most 2 jobs (queued or running) in LIMIT_ACCOUNT; the limit
    is lifted again whatever the test does."""
    require_cluster(ssh=True, slurm=True)
    if os.geteuid() != 0:
        message = "setting SLURM limits with sacctmgr needs root (as testcluster.sh start does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    user = test_cluster().user
    set_max_submit_jobs(user, 2)
    try:
        yield LIMIT_ACCOUNT
    finally:
        set_max_submit_jobs(user, -1)


def test_max_submit_jobs_is_waited_out_not_failed(tmp_path: Path, max_submit_jobs_2: str) -> None:
    executor = ClusterExecutor(
        backend_config("slurm-ssh", tmp_path, account=max_submit_jobs_2, submit_retry_s=120)
    )
    try:
        # distinct job names: six submissions (six sbatch calls), not one job array
        futures = [
            executor.options(job_name=f"clustrix-limit-{i}").submit(jf.sleep_then, 1.5, i)
            for i in range(6)
        ]
        assert [f.result(timeout=180) for f in futures] == list(range(6))
        assert len({f.job_id for f in futures}) == 6
        stats = executor.stats()
        # sbatch said "AssocMaxSubmitJobLimit" (at least) for the third job: retried, and
        # every refused sbatch was one retry
        assert stats.get("submit_retries", 0) >= 1
        assert stats.get("commands.sbatch", 0) == 6 + stats["submit_retries"]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_array_larger_than_max_submit_jobs_goes_out_in_pieces(
    tmp_path: Path, max_submit_jobs_2: str
) -> None:
    """sbatch refuses a 6-task array under MaxSubmitJobs=2 with the same message as a full
    queue: the submission is split (6 -> 3 -> 1 task per array) and waited out."""
    executor = ClusterExecutor(
        backend_config("slurm-ssh", tmp_path, account=max_submit_jobs_2, submit_retry_s=120)
    )
    try:
        values = list(range(6))
        assert list(executor.map(jf.sleep_then, [1.0] * 6, values, chunksize=1, timeout=180)) == (
            values
        )
        stats = executor.stats()
        assert stats.get("submit_splits", 0) >= 2  # 6 tasks, then 3, are more than 2
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
