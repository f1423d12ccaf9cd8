"""Submission policy against the fakes: round trips, job arrays, size limits, ``max_workers``
and the scheduler's refusals (see ``tests/fakes.py`` for what is real and what is fake)."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler, FakeTransport, Refusal, wait_until

from clustrix import ClusterExecutor, ClusterFuture, SubmissionError
from clustrix._engine._submit import BATCH_WINDOW_S

Make = Callable[..., ClusterExecutor]


def test_one_call_is_one_round_trip_over_a_costly_transport(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    start = len(fake_transport.history)
    future = ex.submit(pow, 2, 10)
    (submission,) = fake_scheduler.wait_submissions(1)
    wait_until(lambda: future.job_id is not None, "the job ID")

    # The first operation after submit() is the submit command, carrying the job directory
    # as a tar on its stdin; no file operation ever wrote into the job directory.
    first = fake_transport.history[start]
    assert first.op == "run" and str(fake_scheduler.tool("submit")) in first.target
    assert fake_transport.commands("fake-submit") == [first]
    assert first.stdin is not None
    with tarfile.open(fileobj=io.BytesIO(first.stdin)) as archive:
        names = set(archive.getnames())
    assert {"job.sh", "secret", "tasks/0.pkl"} <= names
    uploads = {"write_bytes", "makedirs", "mkdir", "put", "open"}
    assert [o for o in fake_transport.touching(submission.job_dir) if o.op in uploads] == []
    assert fake_scheduler.calls("submit") == [[submission.script_path, "1", "0"]]
    assert future.job_id == submission.base_id

    fake_scheduler.run(submission.base_id)
    assert future.result(timeout=30) == 1024
    assert ex.stats()["commands.fake-submit"] == 1


def test_over_a_local_transport_the_files_are_written_then_one_submit_command(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_transport.round_trips_are_costly = False
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 2)
    (submission,) = fake_scheduler.wait_submissions(1)
    (command,) = fake_transport.commands("fake-submit")
    assert command.stdin is None
    job_dir = submission.job_dir
    files = fake_transport.touching(job_dir)
    made = {o.target for o in files if o.op == "makedirs"}
    assert {job_dir} | {f"{job_dir}/{sub}" for sub in ("tasks", "results", "logs", "exit")} <= made
    written = {o.target for o in files if o.op == "write_bytes"}
    assert {f"{job_dir}/{name}" for name in ("secret", "job.sh", "tasks/0.pkl")} <= written
    # every upload came before the submit command
    assert fake_transport.history.index(command) > max(
        fake_transport.history.index(o) for o in files
    )
    fake_scheduler.run(submission.base_id)
    assert future.result(timeout=30) == 9


def test_a_map_is_one_job_array(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    with fake_scheduler.autorun():
        assert list(ex.map(pow, range(8), [2] * 8, chunksize=1)) == [i**2 for i in range(8)]
    (submission,) = fake_scheduler.submissions
    assert submission.n_tasks == 8
    assert len(fake_transport.commands("fake-submit")) == 1
    assert sorted(ran for _, ran in fake_scheduler.ran) == [[i] for i in range(8)]


def test_chunksize_packs_calls_into_the_tasks_of_one_array(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(8), [2] * 8, chunksize=3)
    (submission,) = fake_scheduler.wait_submissions(1)
    assert submission.n_tasks == 3
    assert [fake_scheduler.task_calls(j) for j in submission.job_ids] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7],
    ]
    for job_id in submission.job_ids:
        fake_scheduler.run(job_id)
    assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(8)]


def test_a_burst_of_submits_goes_out_as_one_array(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    # Done-callbacks run on the executor's loop thread: one that blocks holds the engine
    # still, so the burst below arrives as fast as the engine can possibly see it, however
    # slow this machine is (the batch window is milliseconds).
    gate = threading.Event()
    first = ex.submit(pow, 1, 1)
    first.add_done_callback(lambda _: gate.wait(30))
    fake_scheduler.run(fake_scheduler.wait_submissions(1)[0].base_id)
    wait_until(first.done, "the first result")
    try:
        futures = [ex.submit(pow, i, 2) for i in range(10)]
    finally:
        gate.set()
    _, burst = fake_scheduler.wait_submissions(2)
    assert burst.n_tasks == 10
    for job_id in burst.job_ids:
        fake_scheduler.run(job_id)
    assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(10)]
    assert len(fake_scheduler.submissions) == 2


def test_an_array_larger_than_max_array_size_is_split(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.max_array_size = 4
    ex = make_fake_executor()
    with fake_scheduler.autorun():
        assert list(ex.map(pow, range(10), [2] * 10, chunksize=1)) == [i**2 for i in range(10)]
    assert [s.n_tasks for s in fake_scheduler.submissions] == [4, 4, 2]


def test_max_workers_throttles_one_array_where_the_scheduler_can(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor(max_workers=2)
    with fake_scheduler.autorun():
        assert list(ex.map(pow, range(5), [2] * 5, chunksize=1)) == [i**2 for i in range(5)]
    (submission,) = fake_scheduler.submissions
    assert (submission.n_tasks, submission.throttle) == (5, 2)
    assert fake_scheduler.calls("submit")[0][1:] == ["5", "2"]


def test_max_workers_holds_calls_back_until_a_slot_frees(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.supports_array_throttle = False
    ex = make_fake_executor(max_workers=2)
    futures = ex.submit_map(pow, range(5), [2] * 5, chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    assert submission.n_tasks == 2
    wait_until(lambda: futures[1].job_id is not None, "the first job IDs")
    # held: still PENDING futures without a job
    assert [f.job_id is None for f in futures] == [False, False, True, True, True]
    assert not any(f.running() or f.done() for f in futures)

    def has_job(future: ClusterFuture[Any]) -> Callable[[], bool]:
        return lambda: future.job_id is not None

    for step in range(1, 4):  # each job that ends lets exactly one held call go out
        fake_scheduler.run(fake_scheduler.live_jobs()[0])
        fake_scheduler.wait_submissions(1 + step)
        wait_until(has_job(futures[1 + step]), "the next job")
        assert [f.job_id is None for f in futures] == [False] * (2 + step) + [True] * (3 - step)
        assert len(fake_scheduler.live_jobs()) == 2
    for job_id in fake_scheduler.live_jobs():
        fake_scheduler.run(job_id)
    assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(5)]
    assert [s.n_tasks for s in fake_scheduler.submissions] == [2, 1, 1, 1]


def test_a_job_count_limit_splits_the_array_in_halves_until_it_fits(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.limit_jobs(3)
    ex = make_fake_executor()
    with fake_scheduler.autorun():
        assert list(ex.map(pow, range(10), [2] * 10, chunksize=1)) == [i**2 for i in range(10)]
    assert [r.n_tasks for r in fake_scheduler.refusals] == [10, 5]
    accepted = [s.n_tasks for s in fake_scheduler.submissions]
    assert all(n <= 3 for n in accepted) and sum(accepted) == 10
    assert len(fake_scheduler.ran) == 10  # every call ran once


def test_a_transient_refusal_is_retried_until_accepted(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.refuse_next(FakeScheduler.TRANSIENT)
    ex = make_fake_executor()
    with fake_scheduler.autorun():
        assert ex.submit(pow, 2, 3).result(timeout=30) == 8
    assert fake_scheduler.refusals == [Refusal(1, FakeScheduler.TRANSIENT)]
    (submission,) = fake_scheduler.submissions
    assert fake_scheduler.calls("submit") == [[submission.script_path, "1", "0"]] * 2


def test_a_final_refusal_fails_the_calls_with_what_the_scheduler_said(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    message = "fake-scheduler: invalid partition specified: gpu"
    fake_scheduler.refuse_next(message)
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 3)
    error = future.exception(timeout=30)
    assert isinstance(error, SubmissionError)
    assert message in str(error) and message in error.stderr
    assert fake_scheduler.submissions == []
    ((script_path, _, _),) = fake_scheduler.calls("submit")  # not retried
    # refused: no job exists, so its directory goes
    wait_until(lambda: not Path(script_path).parent.exists(), "the job directory's removal")


def test_a_transient_refusal_fails_once_submit_retry_s_is_over(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.refuse_next(FakeScheduler.TRANSIENT, times=5)
    ex = make_fake_executor(submit_retry_s=0.5)  # shorter than the first retry's delay
    error = ex.submit(pow, 2, 3).exception(timeout=30)
    assert isinstance(error, SubmissionError)
    assert FakeScheduler.TRANSIENT in str(error)
    assert len(fake_scheduler.refusals) == 1


@pytest.mark.parametrize("costly", [True, False], ids=["costly", "local"])
def test_the_job_directory_holds_what_the_worker_needs(
    make_fake_executor: Make,
    fake_scheduler: FakeScheduler,
    fake_transport: FakeTransport,
    costly: bool,
) -> None:
    fake_transport.round_trips_are_costly = costly
    ex = make_fake_executor()
    future: Future[Any] = ex.submit(divmod, 17, 5)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_dir = Path(submission.job_dir)
    assert (job_dir / "secret").stat().st_mode & 0o777 == 0o600
    assert (job_dir / "job.sh").read_text().startswith("#!/bin/sh\n# clustrix fake job")
    assert fake_scheduler.task_calls(submission.base_id) == [0]
    fake_scheduler.run(submission.base_id)
    assert future.result(timeout=30) == (3, 2)


def test_a_fifty_call_map_is_one_operation_on_the_cluster(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    """Nothing per call that can be per submission: until the job IDs are known the only
    operation is the one submit command (polls aside), whatever the number of calls."""
    ex = make_fake_executor()
    start = len(fake_transport.history)
    futures = ex.submit_map(pow, range(50), [2] * 50, chunksize=1)
    fake_scheduler.wait_submissions(1)
    wait_until(lambda: all(f.job_id is not None for f in futures), "the job IDs")
    ops = [o for o in fake_transport.history[start:] if "fake-status" not in o.target]
    assert [o.op for o in ops] == ["run"] and "fake-submit" in ops[0].target
    assert ex.stats()["commands.fake-submit"] == 1


class SlowToPickle:
    """An argument that takes longer to pickle than the batch window (a big array would)."""

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        time.sleep(3 * BATCH_WINDOW_S)
        return (int, (2,))


def test_a_burst_whose_pickling_outlasts_the_batch_window_still_goes_out_together(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = [ex.submit(pow, i, SlowToPickle()) for i in range(3)]
    # Each submit() pickles for 3 batch windows: without the "pickling now" signal each
    # call would go out alone (3 submissions).
    submissions = fake_scheduler.wait_submissions(1)
    with fake_scheduler.autorun():
        assert [f.result(timeout=30) for f in futures] == [0, 1, 4]
    assert len(fake_scheduler.submissions) < 3
    assert submissions[0].n_tasks >= 2
