"""The poll budget: a steady stream of submissions costs ``poll_rate_max_per_s`` status
queries a second, not 20, and the cycles between them still bring the results."""

from __future__ import annotations

import time
from collections.abc import Callable

from fakes import FakeScheduler, wait_until

from clustrix import ClusterConfig, ClusterExecutor
from clustrix.monitor import POLL_BURST, PollBudget, poll_delay
from clustrix.schedulers.direct import DirectScheduler
from clustrix.schedulers.local import LocalScheduler

Make = Callable[..., ClusterExecutor]


def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    budget = PollBudget(per_s=2.0)
    assert all(budget.take(100.0) for _ in range(POLL_BURST))
    assert not budget.take(100.0)
    assert not budget.take(100.25)  # half a query back: not yet
    assert budget.take(100.5)  # one query a half second
    assert not budget.take(100.5)
    # an idle spell fills it up again, never beyond the burst
    assert budget.take(1000.0)
    assert budget.tokens == POLL_BURST - 1


def simulated_queries(submit_every_s: float, duration_s: float, budget: PollBudget | None) -> int:
    """How many status queries the monitor's schedule (a cycle per :func:`poll_delay`, a
    query when the budget has one) makes in ``duration_s`` while calls are submitted every
    ``submit_every_s``; each cycle takes 10 ms."""
    now_s, queries = 0.0, 0
    while now_s < duration_s:
        if budget is None or budget.take(now_s):
            queries += 1
        started = now_s
        now_s += 0.01
        newest_s = (now_s // submit_every_s) * submit_every_s
        now_s += poll_delay(now_s - newest_s, 0.05, 5.0, last_poll_s=now_s - started)
    return queries


def test_steady_submissions_cost_the_rate_not_the_eager_polls() -> None:
    # a call submitted every second for a minute
    unbounded = simulated_queries(1.0, 60.0, None)
    bounded = simulated_queries(1.0, 60.0, PollBudget(per_s=1.0))
    assert unbounded > 20 * 50  # the eager window never closes: 20 queries a second
    assert bounded <= POLL_BURST + 60 + 1


def test_a_lone_submission_keeps_its_queries_back_to_back() -> None:
    # one submission: the first 1.5 s of eager polls (at 20 a second) are the burst
    assert simulated_queries(1e9, 1.5, PollBudget(per_s=1.0)) == simulated_queries(1e9, 1.5, None)


def test_the_engine_holds_the_budget_while_calls_keep_coming(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    # no query comes back within the test (one per 1,000 s): the burst is all there is
    ex = make_fake_executor(poll_rate_max_per_s=0.001)
    futures = []
    for i in range(60):  # a call every 50 ms: the eager window stays open throughout
        futures.append(ex.submit(pow, 2, i))
        time.sleep(0.05)
    # unbounded, a query every cycle: one per 10 ms (fake_config's poll_interval_min_s)
    assert len(fake_scheduler.calls("status")) <= POLL_BURST
    assert ex.stats()["poll_cycles"] > POLL_BURST  # the cycles went on without a query
    with fake_scheduler.autorun():  # results, and the jobs' ends, come without one
        assert [f.result(timeout=60) for f in futures] == [2**i for i in range(60)]
    assert len(fake_scheduler.calls("status")) <= POLL_BURST


def test_a_result_comes_with_a_cycle_that_did_not_ask_the_scheduler(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    # once the 30 are spent, no query comes back within the test: the result cannot wait
    ex = make_fake_executor(poll_rate_max_per_s=0.001)
    future = ex.submit(pow, 3, 3)
    (submission,) = fake_scheduler.wait_submissions(1)
    wait_until(lambda: len(fake_scheduler.calls("status")) >= POLL_BURST, "the burst spent")
    # a cycle without a query has run: every cycle from now on is such
    wait_until(lambda: ex.stats().get("commands.poll", 0) > 0, "a cycle without a query")
    queries = len(fake_scheduler.calls("status"))
    fake_scheduler.run(submission.base_id)
    assert future.result(timeout=30) == 27
    assert len(fake_scheduler.calls("status")) == queries


def test_ps_on_a_host_has_no_budget() -> None:
    # nobody else shares it; the schedulers that poll a shared daemon do
    assert not LocalScheduler.status_is_shared and not DirectScheduler.status_is_shared
    assert FakeScheduler.status_is_shared
    assert ClusterConfig().poll_rate_max_per_s == 1.0


def test_a_finished_job_frees_its_slot_without_a_query(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    fake_scheduler.max_array_size = 1  # no arrays: one job per call, the second held back
    ex = make_fake_executor(poll_rate_max_per_s=0.001, max_workers=1)
    first, second = ex.submit(pow, 2, 5), ex.submit(pow, 2, 6)
    (job,) = fake_scheduler.wait_submissions(1)  # the second call waits for the slot
    wait_until(lambda: len(fake_scheduler.calls("status")) >= POLL_BURST, "the burst spent")
    wait_until(lambda: ex.stats().get("commands.poll", 0) > 0, "a cycle without a query")
    queries = len(fake_scheduler.calls("status"))
    fake_scheduler.run(job.base_id)
    assert first.result(timeout=30) == 32
    # its exit file and its one result were there: the job is over, the slot is free
    _, held = fake_scheduler.wait_submissions(2)
    assert len(fake_scheduler.calls("status")) == queries
    fake_scheduler.run(held.base_id)
    assert second.result(timeout=30) == 64
