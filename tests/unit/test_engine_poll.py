"""The monitor and collection against the fakes: one status round trip per poll cycle,
running futures, grace periods, requeues, and jobs that end without their results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakes import FakeScheduler, FakeTransport, wait_until

from clustrix import (
    ClusterExecutor,
    ClusterFuture,
    JobFailedError,
    JobLostError,
    RemoteTraceback,
    ResultAuthenticationError,
)

Make = Callable[..., ClusterExecutor]


def submitted_job(fake: FakeScheduler, future: ClusterFuture[Any]) -> str:
    """The job ID of the one call submitted so far, once the engine knows it."""
    (submission,) = fake.wait_submissions(1)
    wait_until(lambda: future.job_id is not None, "the job ID")
    assert future.job_id == submission.base_id
    return submission.base_id


def polls(fake: FakeScheduler) -> int:
    return len(fake.calls("status"))


def test_one_status_command_per_poll_cycle_whatever_the_number_of_jobs(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    fake_scheduler.max_array_size = 1  # no arrays: 50 jobs of their own
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(50), [2] * 50, chunksize=1)
    fake_scheduler.wait_submissions(50)
    wait_until(lambda: all(f.job_id is not None for f in futures), "50 job IDs")
    seen = polls(fake_scheduler)
    wait_until(lambda: polls(fake_scheduler) >= seen + 2, "two more poll cycles")
    assert sorted(fake_scheduler.calls("status")[-1]) == sorted(fake_scheduler.job_ids())
    with fake_scheduler.autorun():
        assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(50)]
    ex.shutdown(wait=True)
    # every status command was one poll cycle, one round trip
    stats = ex.stats()
    assert stats["poll_cycles"] == polls(fake_scheduler)
    assert len(fake_transport.commands("fake-status")) == polls(fake_scheduler)
    assert len(fake_transport.commands("fake-submit")) == 50


def test_status_commands_are_counted_by_program_name(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 2)
    fake_scheduler.run(submitted_job(fake_scheduler, future))
    assert future.result(timeout=30) == 4
    ex.shutdown(wait=True)
    stats = ex.stats()
    assert stats["commands.fake-status"] == stats["poll_cycles"] > 0


def test_a_running_job_makes_its_future_running(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 8)
    job = submitted_job(fake_scheduler, future)
    assert not future.running()
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the future to run")
    assert future.job_state == "RUNNING"
    assert not future.cancel()  # running: too late to cancel
    fake_scheduler.run(job)
    assert future.result(timeout=30) == 256


def test_the_users_exception_comes_back_with_the_remote_traceback(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(int, "not a number")
    fake_scheduler.run(submitted_job(fake_scheduler, future))
    error = future.exception(timeout=30)
    assert isinstance(error, ValueError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "not a number" in str(error.__cause__)


def test_the_real_job_script_runs_the_real_worker(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(print, "hello from the node")
    fake_scheduler.run(submitted_job(fake_scheduler, future), script=True)
    assert future.result(timeout=30) is None
    assert future.stdout() == "hello from the node\n"


def test_results_that_show_up_a_poll_after_the_job_ended_still_count(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    # Before one poll the job has ended (exit 0) with its result not visible yet (a shared
    # filesystem lags); before the next, the result is there.
    steps: list[Callable[[], object]] = [
        lambda: fake_scheduler.end(job, "COMPLETED", exit_code=0),
        lambda: fake_scheduler.work(job),
    ]
    fake_transport.hook(lambda op, target: steps.pop(0)(), match="fake-status", times=2)
    assert future.result(timeout=30) == 27
    assert steps == []


def test_a_job_that_ended_without_results_fails_after_one_grace_cycle(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    done_before_poll: list[bool] = []
    fake_transport.hook(
        lambda op, target: fake_scheduler.end(job, "FAILED", exit_code=3, stderr="boom\n"),
        match="fake-status",
    )
    fake_transport.hook(
        lambda op, target: done_before_poll.append(future.done()), match="fake-status", times=None
    )
    error = future.exception(timeout=30)
    ex.shutdown(wait=True)
    # poll 1 sees the end and gives the results one more cycle; poll 2 fails the call, and
    # no poll follows
    assert done_before_poll == [False, False]
    assert isinstance(error, JobFailedError) and not isinstance(error, JobLostError)
    assert (error.job_id, error.state, error.exit_code) == (job, "FAILED", 3)
    assert "boom" in error.stderr_tail
    assert fake_scheduler.calls("detail") == []  # the queue said how it ended


def test_a_job_the_queue_forgot_fails_with_the_accounting_state_and_exit_code(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the future to run")
    # gone from the queue, no exit file: only accounting knows how it ended
    fake_scheduler.end(job, "OUT_OF_MEMORY", reason="OutOfMemory", listed=False)
    fake_scheduler.set_detail(job, "OUT_OF_MEMORY", 137, "OutOfMemory")
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError) and not isinstance(error, JobLostError)
    assert (error.job_id, error.state, error.exit_code) == (job, "OUT_OF_MEMORY", 137)
    assert fake_scheduler.calls("detail") == [[job]]


def test_a_timed_out_job_fails_with_its_state(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    fake_scheduler.end(job, "TIMEOUT", exit_code=143)
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError)
    assert (error.state, error.exit_code) == ("TIMEOUT", 143)
    assert "SIGTERM" in str(error)


def test_a_job_that_vanished_without_a_trace_is_lost(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the future to run")
    fake_scheduler.vanish(job)
    error = future.exception(timeout=30)
    assert isinstance(error, JobLostError)
    assert error.job_id == job
    assert fake_scheduler.calls("detail") == [[job]]  # asked, and accounting knew nothing


def test_a_forged_result_is_rejected_unread(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 3, 3)
    job = submitted_job(fake_scheduler, future)
    fake_scheduler.set_state(job, "RUNNING")
    tripwire = fake_scheduler.forge_result(job)
    error = future.exception(timeout=30)
    assert isinstance(error, ResultAuthenticationError)
    assert job in str(error)
    assert not tripwire.exists()  # never unpickled


def test_a_requeued_jobs_earlier_exit_status_no_longer_fails_it(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 5)
    job = submitted_job(fake_scheduler, future)
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the future to run")
    # preempted: back in the queue, the killed run's exit status (143) left behind
    fake_scheduler.requeue(job, stale_exit_code=143)
    seen = polls(fake_scheduler)
    wait_until(lambda: polls(fake_scheduler) >= seen + 3, "three poll cycles")
    assert not future.done()
    fake_scheduler.set_state(job, "PENDING")
    seen = polls(fake_scheduler)
    wait_until(lambda: polls(fake_scheduler) >= seen + 2, "two poll cycles")
    assert not future.done()
    fake_scheduler.run(job)  # the second run
    assert future.result(timeout=30) == 32


def test_a_failing_status_command_does_not_fail_the_calls(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    future = ex.submit(pow, 2, 6)
    job = submitted_job(fake_scheduler, future)
    seen = polls(fake_scheduler)
    fake_scheduler.fail_status("fake-status: slurm_load_jobs error: Socket timed out", times=1000)
    fake_scheduler.vanish(job)  # unlisted while the status fails: no verdict from that
    wait_until(lambda: polls(fake_scheduler) >= seen + 3, "three failed polls")
    assert not future.done()
    fake_scheduler.work(job)  # the results are still collected
    assert future.result(timeout=30) == 64


def test_fifty_results_come_with_one_poll_round_trip_and_no_reads(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    """Over a costly transport the poll that lists the results also brings them (a tar in
    its output): no read per result; the next poll moves them out of the listing."""
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(50), [2] * 50, chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    wait_until(lambda: all(f.job_id is not None for f in futures), "the job IDs")
    for task in range(50):
        fake_scheduler.run(f"{submission.base_id}_{task}")
    before = polls(fake_scheduler)
    assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(50)]
    assert fake_transport.ops["read_bytes"] == 0
    # everything came back within a poll cycle or two after the jobs ended
    assert polls(fake_scheduler) - before <= 3


def test_results_are_read_one_by_one_over_a_cheap_transport(
    tmp_path: Any, fake_scheduler: FakeScheduler
) -> None:
    from fakes import fake_config, shut_down

    transport = FakeTransport(costly=False, home=str(tmp_path / "home"))
    ex = ClusterExecutor(fake_config(tmp_path), scheduler=fake_scheduler, transport=transport)
    try:
        futures = ex.submit_map(pow, range(5), [2] * 5, chunksize=1)
        (submission,) = fake_scheduler.wait_submissions(1)
        wait_until(lambda: all(f.job_id is not None for f in futures), "the job IDs")
        for task in range(5):
            fake_scheduler.run(f"{submission.base_id}_{task}")
        assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(5)]
        assert transport.ops["read_bytes"] == 5  # local reads are cheap: no tar
    finally:
        shut_down(ex, fake_scheduler, transport)


def test_one_poll_cycle_brings_fifty_finished_results_in_one_command(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    """The 50 jobs end just before a status command runs: that one command resolves every
    future (status, exit files and the results' content in its output); no read, and no
    other command, per result or per job."""
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(50), [2] * 50, chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    wait_until(lambda: all(f.job_id is not None for f in futures), "the job IDs")
    commands_at: dict[str, int] = {}

    def end_them_all(op: str, target: str) -> None:  # the poll is recorded, not run yet
        for task in range(50):
            fake_scheduler.run(f"{submission.base_id}_{task}")
        commands_at["poll"] = len(fake_transport.commands())

    seen: list[int] = []
    for future in futures:  # done-callbacks run where the poll's output is handled
        future.add_done_callback(lambda _: seen.append(len(fake_transport.commands())))
    reads = fake_transport.ops["read_bytes"]
    fake_transport.hook(end_them_all, ops=["run"], match="fake-status")
    assert [f.result(timeout=30) for f in futures] == [i**2 for i in range(50)]
    assert len(seen) == 50 and set(seen) == {commands_at["poll"]}
    assert fake_transport.ops["read_bytes"] == reads


# -- cycles that wait on the cluster (a costly transport, pauses of WAIT_THERE_MIN_S or more) --

#: After the first EAGER_S, every pause is 20 s, spent on the cluster (looks 4 s apart).
LONG_PAUSES = {"poll_interval_min_s": 20.0, "poll_interval_max_s": 20.0}


def waiting_polls(fake_transport: FakeTransport) -> int:
    """Poll commands started so far that wait on the cluster for news."""
    return len(fake_transport.commands("-newer"))


def submitted_into_a_wait(
    make: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport, exponent: int
) -> tuple[ClusterExecutor, ClusterFuture[Any], str]:
    """An executor with LONG_PAUSES, one call ``pow(2, exponent)`` submitted and not run,
    and a cycle waiting on the cluster: (executor, future, job ID)."""
    ex = make(**LONG_PAUSES)
    future = ex.submit(pow, 2, exponent)
    job = submitted_job(fake_scheduler, future)
    wait_until(lambda: waiting_polls(fake_transport) == 1, "a cycle waiting there")
    return ex, future, job


def test_a_result_written_while_a_cycle_waits_there_comes_back_in_that_cycle(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex, future, job = submitted_into_a_wait(make_fake_executor, fake_scheduler, fake_transport, 3)
    status_before = polls(fake_scheduler)
    fake_scheduler.run(job)
    assert future.result(timeout=60) == 8
    # the waiting cycle went on at the news, before its 20 s were over, and asked the
    # scheduler once after it
    assert ex.stats()["poll_waits_news"] >= 1
    assert polls(fake_scheduler) - status_before <= 2
    assert ex.stats().get("poll_waits_cut_short", 0) == 0


def test_a_submission_cuts_a_wait_there_short_and_is_polled_at_once(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex, first, first_job = submitted_into_a_wait(
        make_fake_executor, fake_scheduler, fake_transport, 5
    )
    second = ex.submit(pow, 2, 6)
    fake_scheduler.wait_submissions(2)
    wait_until(lambda: second.job_id is not None, "the second job ID")
    assert second.job_id is not None
    fake_scheduler.run(second.job_id)
    # the waiting cycle did not list the new job dir: it was cut short for a new cycle
    assert second.result(timeout=60) == 64
    assert ex.stats()["poll_waits_cut_short"] >= 1
    fake_scheduler.run(first_job)
    assert first.result(timeout=60) == 32


def test_logs_asked_while_a_cycle_waits_there_come_without_waiting_for_it(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex, future, job = submitted_into_a_wait(make_fake_executor, fake_scheduler, fake_transport, 7)
    fake_scheduler.set_state(job, "RUNNING")
    job_dir, task = fake_scheduler.locate(job)
    (job_dir / "logs" / f"{task}.out").write_text("step 1\n")
    assert future.logs().stdout == "step 1\n"
    # the waiting cycle was cut short, and the one that brought the tail did not wait
    (brought,) = fake_transport.commands("tail -c")
    assert "-newer" not in brought.target
    assert ex.stats()["poll_waits_cut_short"] >= 1
    fake_scheduler.run(job)
    assert future.result(timeout=60) == 128
