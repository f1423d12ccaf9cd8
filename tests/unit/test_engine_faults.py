"""Faults against the fakes: lost connections (while polling, while the submit command
ran), timed-out commands, and jobs the infrastructure lost (retried with ``max_retries``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fakes import FakeScheduler, FakeTransport, wait_until

from clustrix import (
    ClusterExecutor,
    ClusterFuture,
    CommandTimeoutError,
    ConnectionLostError,
    JobFailedError,
    JobLostError,
    SchedulerError,
    TransportError,
)

Make = Callable[..., ClusterExecutor]

#: Arguments of every call of :func:`traced` in this process (the fake worker runs here).
RUNS: list[int] = []


def traced(x: int) -> int:
    RUNS.append(x)
    return 10 * x


def job_of(future: ClusterFuture[Any]) -> str:
    wait_until(lambda: future.job_id is not None, "the job ID")
    assert future.job_id is not None
    return future.job_id


# ---------------------------------------------------------------------- lost connections


def test_a_connection_lost_while_polling_comes_back_within_the_grace_period(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor(connection_grace_s=60)
    future = ex.submit(pow, 2, 5)
    job = job_of(future)
    lost = fake_transport.fail(match="fake-status")
    wait_until(lambda: lost.hits == 1, "a failed poll")
    fake_scheduler.run(job)
    assert future.result(timeout=30) == 32
    assert len(fake_scheduler.submissions) == 1


def test_a_connection_lost_beyond_the_grace_period_fails_the_calls_naming_their_jobs(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor(connection_grace_s=0.2)
    futures = ex.submit_map(pow, [1, 2], [2, 2], chunksize=1)
    jobs = [job_of(f) for f in futures]
    down = fake_transport.go_down()
    errors = [f.exception(timeout=30) for f in futures]
    fake_transport.unhook(down)
    for error in errors:
        assert type(error) is TransportError
        assert "connection_grace_s" in str(error)
        assert all(job in str(error) for job in jobs)
    # nothing was cancelled: the jobs may still run on the cluster
    assert fake_scheduler.live_jobs() == sorted(jobs)
    assert fake_scheduler.calls("cancel") == []


def test_a_connection_lost_while_the_submit_command_ran_finds_the_job_instead_of_resubmitting(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    lost = fake_transport.fail(ops=["run"], match="fake-submit", after=True)
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 3)
    with fake_scheduler.autorun():
        assert future.result(timeout=30) == 8
    assert lost.hits == 1
    (submission,) = fake_scheduler.submissions
    assert len(fake_scheduler.calls("submit")) == 1
    assert fake_scheduler.calls("find") == [[submission.script_path]]
    assert future.job_id == submission.base_id


def test_a_connection_lost_before_the_submit_command_ran_submits_once(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    lost = fake_transport.fail(ops=["run"], match="fake-submit")
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 3)
    with fake_scheduler.autorun():
        assert future.result(timeout=30) == 8
    assert lost.hits == 1
    assert len(fake_transport.commands("fake-submit")) == 2  # one attempt never arrived
    (submission,) = fake_scheduler.submissions
    assert len(fake_scheduler.calls("submit")) == 1
    assert fake_scheduler.calls("find") == [[submission.script_path]]  # looked first


def test_a_timed_out_submit_command_finds_the_job_instead_of_resubmitting(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_transport.fail(
        CommandTimeoutError, "no answer in time", ops=["run"], match="fake-submit", after=True
    )
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 3)
    with fake_scheduler.autorun():
        assert future.result(timeout=30) == 8
    assert len(fake_scheduler.submissions) == 1
    assert len(fake_scheduler.calls("submit")) == 1
    assert len(fake_scheduler.calls("find")) == 1


def test_a_scheduler_that_cannot_find_submissions_is_not_submitted_to_twice(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_scheduler.can_find_submitted = False
    fake_transport.fail(ops=["run"], match="fake-submit", after=True)
    ex = make_fake_executor()
    error = ex.submit(pow, 2, 3).exception(timeout=30)
    assert isinstance(error, SchedulerError)
    assert "not submitting it twice" in str(error)
    assert len(fake_scheduler.calls("submit")) == 1
    (submission,) = fake_scheduler.submissions  # it did go through
    assert fake_scheduler.live_jobs() == [submission.base_id]


def test_a_submission_lost_beyond_the_grace_period_fails_saying_the_job_may_exist(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_transport.fail(ops=["run"], match="fake-submit", times=None)
    ex = make_fake_executor(connection_grace_s=0.5)  # shorter than the first reconnect delay
    error = ex.submit(pow, 2, 3).exception(timeout=30)
    assert isinstance(error, ConnectionLostError)
    assert "connection_grace_s" in str(error) and "may have been submitted" in str(error)
    assert fake_scheduler.submissions == []


# ---------------------------------------------------------------------- retries


def test_a_lost_job_is_resubmitted_with_only_its_open_calls(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    RUNS.clear()
    ex = make_fake_executor()
    futures = ex.options(max_retries=1).submit_map(traced, [1, 2, 3], chunksize=3)
    (first,) = fake_scheduler.wait_submissions(1)
    # the node dies after the first call of the chunk
    assert fake_scheduler.run(first.base_id, calls=1, exit_code=None, state="NODE_FAIL") == [0]
    assert futures[0].result(timeout=30) == 10
    _, second = fake_scheduler.wait_submissions(2)
    assert second.n_tasks == 1
    assert len(fake_scheduler.task_calls(second.base_id)) == 2  # the two open calls only
    wait_until(lambda: futures[1].job_id == second.base_id, "the retried call's new job")
    fake_scheduler.run(second.base_id)
    assert [f.result(timeout=30) for f in futures] == [10, 20, 30]
    assert sorted(RUNS) == [1, 2, 3]  # nothing ran twice
    assert len(fake_scheduler.submissions) == 2


def test_a_lost_job_without_retries_left_fails_with_its_state(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.options(max_retries=1).submit_map(pow, [2], [2], chunksize=1)
    for attempt in (1, 2):
        fake_scheduler.wait_submissions(attempt)
        fake_scheduler.end(fake_scheduler.job_ids()[-1], "NODE_FAIL")
    error = futures[0].exception(timeout=30)
    assert isinstance(error, JobFailedError)
    assert (error.state, error.job_id) == ("NODE_FAIL", fake_scheduler.job_ids()[-1])
    ex.shutdown(wait=True)
    assert len(fake_scheduler.submissions) == 2


def test_a_job_that_failed_by_itself_is_not_retried(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.options(max_retries=3).submit(pow, 2, 2)
    job = job_of(future)
    fake_scheduler.end(job, "FAILED", exit_code=1)
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError) and error.state == "FAILED"
    ex.shutdown(wait=True)
    assert len(fake_scheduler.submissions) == 1


def test_a_job_that_vanished_is_not_resubmitted_even_with_retries_left(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    """Gone without a trace, the job may have run: its call fails with JobLostError rather
    than maybe run twice (max_retries is for what the scheduler reports lost)."""
    ex = make_fake_executor()
    future = ex.options(max_retries=1).submit(pow, 2, 2)
    fake_scheduler.vanish(job_of(future))
    with pytest.raises(JobLostError):
        future.result(timeout=30)
    assert len(fake_scheduler.submissions) == 1


def test_a_result_unreadable_for_two_polls_is_still_delivered(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_transport.round_trips_are_costly = False  # results read one by one, no bundle
    ex = make_fake_executor(connection_grace_s=60)
    future = ex.submit(pow, 2, 2)
    job = job_of(future)
    lost = fake_transport.fail(ops=["read_bytes"], match="/results/", times=2)
    # the job ends, result written, before the next poll; that poll and the one after it
    # cannot read the result
    fake_transport.hook(lambda op, target: fake_scheduler.run(job), match="fake-status")
    outcome = future.exception(timeout=30)
    assert lost.hits == 2
    assert outcome is None, outcome
    assert future.result() == 4


# ---------------------------------------------------------------------- unsettled endings
def completing_job(
    ex: ClusterExecutor, scheduler: FakeScheduler, *, running_first: bool = False
) -> tuple[ClusterFuture[int], str]:
    """A call whose job wrote its exit file (143: TERM) while the scheduler lists it, and
    describes it, as COMPLETING."""
    future = ex.submit(pow, 2, 5)
    job = job_of(future)
    if running_first:
        scheduler.set_state(job, "RUNNING")
        wait_until(future.running, "the call to run")
    scheduler.set_detail(job, "COMPLETING")
    scheduler.set_state(job, "COMPLETING")
    scheduler.write_exit(job, 143)
    return future, job


def test_a_job_still_completing_after_its_exit_file_fails_with_its_final_state(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    # scancel behind our back: the job script wrote its exit file (the worker got TERM)
    # while the scheduler still lists the job as COMPLETING, and says so when asked.
    future, job = completing_job(make_fake_executor(), fake_scheduler, running_first=True)
    wait_until(lambda: len(fake_scheduler.calls("detail")) >= 2, "two looks at the detail")
    assert not future.done()  # COMPLETING is no outcome: it waits for the final word
    fake_scheduler.end(job, "CANCELLED", reason="cancelled by root", listed=False)
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError)
    assert (error.job_id, error.state, error.exit_code) == (job, "CANCELLED", 143)


def test_a_job_that_never_settles_fails_with_the_state_it_has(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    future, job = completing_job(make_fake_executor(), fake_scheduler)
    error = future.exception(timeout=60)  # after UNSETTLED_POLLS cycles, not for ever
    assert isinstance(error, JobFailedError) and error.job_id == job
    assert (error.state, error.exit_code) == ("COMPLETING", 143)
    assert len(fake_scheduler.calls("detail")) == 6  # the first look + UNSETTLED_POLLS
