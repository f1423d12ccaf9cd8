"""Cancellation, kill and shutdown against the fakes: queued jobs leave the scheduler in
one command, running ones are killed on request, held calls are never submitted."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fakes import FakeScheduler, FakeTransport, wait_until

from clustrix import ClusterExecutor, ClusterFuture, JobFailedError

Make = Callable[..., ClusterExecutor]


def job_ids_known(futures: list[ClusterFuture[int]]) -> None:
    wait_until(lambda: all(f.job_id is not None for f in futures), "every job ID")


def running_call(ex: ClusterExecutor, scheduler: FakeScheduler, x: int) -> ClusterFuture[int]:
    """``pow(x, 2)`` submitted, its job RUNNING in the fake scheduler."""
    future = ex.submit(pow, x, 2)
    job_ids_known([future])
    assert future.job_id is not None
    scheduler.set_state(future.job_id, "RUNNING")
    wait_until(future.running, "the call to run")
    return future


def test_shutdown_cancelling_futures_cancels_queued_jobs_in_one_command(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(6), [2] * 6, chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_ids_known(futures)
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    assert fake_scheduler.calls("cancel") == [sorted(submission.job_ids)]
    assert fake_scheduler.live_jobs() == []


def test_shutdown_cancelling_futures_lets_running_calls_finish(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.submit_map(pow, range(6), [2] * 6, chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_ids_known(futures)
    running = submission.job_ids[:2]
    for job_id in running:
        fake_scheduler.set_state(job_id, "RUNNING")
    wait_until(lambda: futures[0].running() and futures[1].running(), "two running calls")
    shutdown = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    shutdown.start()
    wait_until(lambda: fake_scheduler.calls("cancel"), "the cancel command")
    assert fake_scheduler.calls("cancel") == [sorted(submission.job_ids[2:])]
    assert shutdown.is_alive()  # waiting for the running calls
    for job_id in running:
        fake_scheduler.run(job_id)
    shutdown.join(timeout=30)
    assert not shutdown.is_alive()
    assert [f.result(timeout=30) for f in futures[:2]] == [0, 1]
    assert all(f.cancelled() for f in futures[2:])
    assert fake_scheduler.live_jobs() == []
    assert len(fake_scheduler.calls("cancel")) == 1


def test_cancelling_one_queued_future_cancels_its_job_only(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.submit_map(pow, [2, 3], [2, 2], chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_ids_known(futures)
    assert futures[0].cancel()
    wait_until(lambda: fake_scheduler.state(submission.job_ids[0]) == "CANCELLED", "cancel")
    assert fake_scheduler.calls("cancel") == [[submission.job_ids[0]]]
    fake_scheduler.run(submission.job_ids[1])
    assert futures[1].result(timeout=30) == 9
    assert futures[0].cancelled()


def test_cancelling_one_call_of_a_chunk_keeps_the_job_for_the_others(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor()
    futures = ex.submit_map(pow, [2, 3], [2, 2], chunksize=2)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_ids_known(futures)
    assert futures[0].cancel()
    fake_scheduler.run(submission.base_id)
    assert futures[1].result(timeout=30) == 9
    ex.shutdown(wait=True)
    assert futures[0].cancelled()
    assert fake_scheduler.calls("cancel") == []


def test_killing_a_running_call_cancels_its_job(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    future = running_call(make_fake_executor(), fake_scheduler, 2)
    assert not future.cancel()
    assert future.kill()
    error = future.exception(timeout=30)
    assert isinstance(error, JobFailedError)
    assert (error.job_id, error.state) == (future.job_id, "CANCELLED")
    assert fake_scheduler.calls("cancel") == [[future.job_id]]
    assert fake_scheduler.state(future.job_id) == "CANCELLED"
    assert not future.kill()  # done already


def test_a_call_cancelled_while_held_is_never_submitted(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.supports_array_throttle = False
    ex = make_fake_executor(max_workers=1)
    futures = ex.submit_map(pow, [1, 2, 3], [2, 2, 2], chunksize=1)
    (first,) = fake_scheduler.wait_submissions(1)
    assert futures[1].job_id is None
    assert futures[1].cancel()
    fake_scheduler.run(first.base_id)
    _, second = fake_scheduler.wait_submissions(2)
    fake_scheduler.run(second.base_id)
    assert (futures[0].result(timeout=30), futures[2].result(timeout=30)) == (1, 9)
    ex.shutdown(wait=True)
    assert futures[1].cancelled()
    assert len(fake_scheduler.submissions) == 2
    assert fake_scheduler.calls("cancel") == []


def test_a_call_cancelled_while_its_submission_is_under_way_is_cancelled_once_it_exists(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    futures: list[ClusterFuture[int]] = []
    # cancelled from the loop thread, just before the submit command leaves
    fake_transport.hook(lambda op, target: futures[0].cancel(), ops=["run"], match="fake-submit")
    futures.append(ex.submit(pow, 2, 2))
    (submission,) = fake_scheduler.wait_submissions(1)
    wait_until(lambda: fake_scheduler.state(submission.base_id) == "CANCELLED", "the cancel")
    assert fake_scheduler.calls("cancel") == [[submission.base_id]]
    assert futures[0].cancelled()


def test_shutdown_cancelling_futures_gives_up_a_refused_submission(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    # Refused twice "for now": the engine would retry after 1 s, then after 2 s more.
    fake_scheduler.refuse_next(FakeScheduler.TRANSIENT, times=2)
    ex = make_fake_executor(submit_retry_s=600)
    future = ex.submit(pow, 2, 2)
    wait_until(lambda: fake_scheduler.refusals, "the first refusal")
    ex.shutdown(wait=True, cancel_futures=True)
    assert future.cancelled()
    # nothing more was sent for a call nobody wants
    assert len(fake_scheduler.calls("submit")) == 1
    assert fake_scheduler.submissions == []


def test_shutdown_waiting_after_shutdown_without_waiting_returns(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    before = set(threading.enumerate())
    ex = make_fake_executor()
    (loop_thread,) = [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("clustrix-executor")
    ]
    futures = ex.submit_map(pow, [2, 3], [2, 2], chunksize=1)
    (submission,) = fake_scheduler.wait_submissions(1)
    job_ids_known(futures)
    running = submission.job_ids[0]
    fake_scheduler.set_state(running, "RUNNING")
    wait_until(futures[0].running, "the call to run")
    ex.shutdown(wait=False)
    # The second shutdown cancels the queued call (one cancel command); only then does the
    # running call finish, so the second shutdown is surely waiting by then.
    fake_transport.hook(lambda op, target: fake_scheduler.run(running), match="fake-cancel")
    waiting = threading.Thread(
        target=ex.shutdown, kwargs={"cancel_futures": True}, name="second-shutdown", daemon=True
    )
    waiting.start()
    assert futures[0].result(timeout=30) == 4
    assert futures[1].cancelled()
    loop_thread.join(timeout=30)  # the executor's loop stopped itself, as shutdown(False) asks
    assert not loop_thread.is_alive()
    waiting.join(timeout=2)  # a hang detector: a working shutdown is done already
    assert not waiting.is_alive(), "shutdown(wait=True) hangs"


def test_a_kill_the_scheduler_refuses_leaves_the_call_to_its_own_outcome(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    future = running_call(make_fake_executor(), fake_scheduler, 3)
    fake_scheduler.fail_cancel("fake-cancel: Job/step already completing")
    assert not future.kill()  # not stopped: no CANCELLED failure invented
    assert fake_scheduler.calls("cancel") == [[future.job_id]]
    assert not future.done()
    fake_scheduler.run(future.job_id)
    assert future.result(timeout=30) == 9  # its result, not lost
