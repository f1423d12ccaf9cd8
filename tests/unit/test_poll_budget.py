"""The poll budget: a lone submission still polls back to back, a steady stream of
submissions costs ``poll_rate_max_per_s`` status commands a second, not 20."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fakes import FakeScheduler

from clustrix import ClusterConfig, ClusterExecutor
from clustrix.monitor import POLL_BURST, PollBudget, poll_delay
from clustrix.schedulers.direct import DirectScheduler
from clustrix.schedulers.local import LocalScheduler

Make = Callable[..., ClusterExecutor]


def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    budget = PollBudget(per_s=2.0)
    for _ in range(POLL_BURST):
        assert budget.wait_s(100.0) == 0.0
        budget.spend(100.0)
    assert budget.wait_s(100.0) == pytest.approx(0.5)
    assert budget.wait_s(100.25) == pytest.approx(0.25)
    assert budget.wait_s(100.5) == 0.0
    budget.spend(100.5)
    # an idle spell fills it up again, never beyond the burst
    assert budget.wait_s(1000.0) == 0.0
    assert budget.tokens == POLL_BURST


def simulated_polls(
    submit_every_s: float, duration_s: float, budget: PollBudget | None, poll_s: float = 0.01
) -> int:
    """How many polls the monitor's schedule (poll_delay, then the budget) starts in
    ``duration_s`` while calls are submitted every ``submit_every_s``; each poll takes
    ``poll_s``."""
    now_s, polls = 0.0, 0
    while now_s < duration_s:
        if budget is not None:
            now_s += budget.wait_s(now_s)
            budget.spend(now_s)
        started = now_s
        polls += 1
        now_s += poll_s
        newest_s = (now_s // submit_every_s) * submit_every_s
        now_s += poll_delay(now_s - newest_s, 0.05, 5.0, last_poll_s=now_s - started)
    return polls


def test_steady_submissions_cost_the_rate_not_the_eager_polls() -> None:
    # a call submitted every second for a minute
    unbounded = simulated_polls(1.0, 60.0, None)
    bounded = simulated_polls(1.0, 60.0, PollBudget(per_s=1.0))
    assert unbounded > 20 * 50  # the eager window never closes: 20 polls a second
    assert bounded <= POLL_BURST + 60 + 1


def test_a_lone_submission_keeps_its_polls_back_to_back() -> None:
    # one submission: the first 1.5 s of eager polls (at 20 a second) are the burst
    with_budget = simulated_polls(1e9, 1.5, PollBudget(per_s=1.0))
    without = simulated_polls(1e9, 1.5, None)
    assert with_budget == without


def test_the_engine_holds_the_budget_while_calls_keep_coming(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    ex = make_fake_executor(poll_rate_max_per_s=5.0)
    start = time.monotonic()
    futures = []
    while time.monotonic() - start < 3.0:  # a call every 50 ms: the eager window stays open
        futures.append(ex.submit(pow, 2, len(futures)))
        time.sleep(0.05)
    elapsed_s = time.monotonic() - start
    polls = len(fake_scheduler.calls("status"))
    # unbounded, 3 s of polls every 10 ms (fake_config's poll_interval_min_s) is ~300
    assert polls <= POLL_BURST + 5.0 * elapsed_s + 2
    with fake_scheduler.autorun():
        assert [f.result(timeout=60) for f in futures] == [2**i for i in range(len(futures))]


def test_ps_on_a_host_has_no_budget() -> None:
    # nobody else shares it; the schedulers that poll a shared daemon do
    assert not LocalScheduler.status_is_shared and not DirectScheduler.status_is_shared
    assert FakeScheduler.status_is_shared
    assert ClusterConfig().poll_rate_max_per_s == 1.0
