"""Progress displays and log tails against the fakes: counts per state fed by the poll that
runs anyway (no command of their own), drawn into a fake stream; off where nobody watches."""

from __future__ import annotations

import io
import operator
import subprocess
import sys
import types
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler, FakeTransport, wait_until

import clustrix.progress as progress_module
from clustrix import ClusterExecutor, ClusterFuture, Progress

Make = Callable[..., ClusterExecutor]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def job_ids(futures: list[ClusterFuture[Any]]) -> list[str]:
    wait_until(lambda: all(f.job_id for f in futures), "the job IDs")
    return [f.job_id for f in futures if f.job_id]


def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@pytest.mark.parametrize("renderer", ["tqdm", "text"])
def test_counts_follow_the_polls_and_are_drawn(
    make_fake_executor: Make,
    fake_scheduler: FakeScheduler,
    fake_transport: FakeTransport,
    renderer: str,
) -> None:
    if renderer == "tqdm":
        pytest.importorskip("tqdm")
    fake_scheduler.max_array_size = 1  # one job per call: each moved on its own
    ex = make_fake_executor()
    futures = ex.submit_map(operator.neg, range(5), chunksize=1)
    futures.append(ex.submit(boom, 5))
    terminal = Terminal()
    shown = Progress(futures, desc="neg", file=terminal, renderer=renderer)  # type: ignore[arg-type]
    assert shown.counts() == {"pending": 6, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    first, second, third, *_, failing = job_ids(futures)

    fake_scheduler.set_state(first, "RUNNING")
    fake_scheduler.set_state(second, "RUNNING")
    wait_until(lambda: shown.counts()["running"] == 2, "two running")
    wait_until(lambda: "running 2" in terminal.getvalue(), "the bar to show two running")
    fake_scheduler.run(second)
    fake_scheduler.run(failing)
    wait_until(lambda: shown.finished == 2, "two finished")
    assert shown.counts() == {"pending": 3, "running": 1, "done": 1, "failed": 1, "cancelled": 0}
    assert futures[3].cancel()
    assert shown.counts()["cancelled"] == 1
    wait_until(lambda: "done 1, failed 1, cancelled 1" in terminal.getvalue(), "the bar")

    fake_scheduler.run(first)
    fake_scheduler.run(third)
    fake_scheduler.run(job_ids([futures[4]])[0])
    wait_until(lambda: shown.finished == 6, "all finished")
    assert shown.counts() == {"pending": 0, "running": 0, "done": 4, "failed": 1, "cancelled": 1}
    assert "6/6" in terminal.getvalue()
    assert "pending 0, running 0, done 4, failed 1, cancelled 1" in terminal.getvalue()
    assert shown._removers == []  # closed itself with the last call: no listener left
    ex.shutdown(wait=True)
    # no command of its own: every status command was one of the executor's poll cycles
    stats = ex.stats()
    assert stats["commands.fake-status"] == stats["poll_cycles"]
    assert len(fake_transport.commands("fake-status")) == stats["poll_cycles"]


def test_map_with_progress_draws_in_a_terminal_and_keeps_no_result(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    ex = make_fake_executor()
    with fake_scheduler.autorun():
        results = ex.map(operator.neg, range(20), progress=True)
        assert list(results) == [-i for i in range(20)]
    text = terminal.getvalue()
    assert "neg" in text
    assert "20/20" in text
    assert "done 20, failed 0" in text


def test_leaving_a_map_early_closes_its_progress(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Progress] = []
    real = progress_module.Progress

    def spy(*args: Any, **kwargs: Any) -> Progress:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(progress_module, "Progress", spy)
    ex = make_fake_executor()
    results = ex.map(operator.neg, range(10), progress=True, chunksize=1)
    (shown,) = made
    fake_scheduler.run(fake_scheduler.wait_submissions(1)[0].job_ids[0])
    assert next(results) == 0
    results.close()  # the consumer stops: the rest is cancelled, the display closed
    assert shown._closed
    assert shown.counts()["cancelled"] == 9


def test_silent_where_nobody_watches_but_counting(
    make_fake_executor: Make, fake_scheduler: FakeScheduler
) -> None:
    log_file = io.StringIO()  # not a terminal, not a notebook: a batch job's log
    ex = make_fake_executor()
    futures = ex.submit_map(operator.neg, range(3), chunksize=1)
    shown = Progress(futures, file=log_file)
    with fake_scheduler.autorun():
        wait_until(lambda: shown.finished == 3, "three done")
    assert log_file.getvalue() == ""
    assert shown.counts()["done"] == 3


def test_in_a_notebook_it_draws_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Kernel:
        kernel = object()  # what a Jupyter kernel's shell has

    fake_ipython = types.SimpleNamespace(get_ipython=lambda: Kernel())
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    assert progress_module.in_notebook()
    stream = io.StringIO()
    future: Future[int] = Future()
    with Progress([future], file=stream, renderer="text") as shown:
        future.set_result(1)
    assert "1/1 (pending 0, running 0, done 1, failed 0)" in stream.getvalue()
    assert shown.counts()["done"] == 1
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress_module.in_notebook()  # IPython in a terminal: not a notebook


def test_plain_futures_are_counted_too() -> None:
    futures: list[Future[int]] = [Future() for _ in range(3)]
    stream = Terminal()
    shown = Progress(futures, file=stream, renderer="text")  # type: ignore[arg-type]
    futures[0].set_running_or_notify_cancel()
    assert shown.counts()["running"] == 1
    futures[0].set_result(1)
    futures[1].set_exception(RuntimeError("x"))
    futures[2].cancel()
    assert shown.counts() == {"pending": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 1}
    assert shown._closed
    assert "3/3 (pending 0, running 0, done 1, failed 1, cancelled 1)" in stream.getvalue()


def test_done_futures_are_not_kept() -> None:
    futures: list[Future[int]] = [Future() for _ in range(2)]
    futures[0].set_result(1)
    shown = Progress(futures, show=False)
    assert shown._open == {futures[1]}
    futures[1].set_result(2)
    assert shown._open == set()


# ------------------------------------------------------------------------------- log tails


def test_logs_of_a_running_job_come_in_the_poll_round_trip(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    future = ex.submit(operator.neg, 1)
    assert future.logs() == ("", "")  # not submitted yet, or not started: nothing
    (job,) = job_ids([future])
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the job to run")
    job_dir, task = fake_scheduler.locate(job)
    (job_dir / "logs" / f"{task}.out").write_text("step 1\nstep 2\n" + "é" * 20 + "\n")
    fake_scheduler.write_stderr(job, "warning: slow\n")
    polls = ex.stats()["poll_cycles"]

    out, err = future.logs()
    assert out == "step 1\nstep 2\n" + "é" * 20 + "\n"
    assert err == "warning: slow\n"
    assert ex.stats()["poll_cycles"] > polls  # a poll brought them
    assert fake_transport.ops["read_tail"] == 0  # no read of their own
    assert future.logs(max_bytes=7).stdout == "é" * 3 + "\n"  # a cut character is left out
    assert future.stdout(max_bytes=6) == "é" * 2 + "\n"
    assert future.stderr(max_bytes=5) == "slow\n"
    assert fake_transport.ops["read_tail"] == 0
    tail_polls = [c for c in fake_transport.commands("fake-status") if "tail -c" in c.target]
    assert len(tail_polls) == 4  # one poll cycle per logs() here, none of its own

    fake_scheduler.run(job)
    assert future.result(timeout=30) == -1
    assert future.logs().stderr == "warning: slow\n"  # ended: one direct read each
    assert fake_transport.ops["read_tail"] == 2
    with pytest.raises(ValueError, match="max_bytes"):
        future.logs(0)


def test_a_poll_that_fails_leaves_the_tails_to_direct_reads(
    make_fake_executor: Make, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    ex = make_fake_executor()
    future = ex.submit(operator.neg, 1)
    (job,) = job_ids([future])
    fake_scheduler.set_state(job, "RUNNING")
    wait_until(future.running, "the job to run")
    fake_scheduler.write_stderr(job, "still here\n")
    fake_transport.fail(match="tail -c")  # the poll that carries the tails is lost
    assert future.logs().stderr == "still here\n"
    assert fake_transport.ops["read_tail"] == 2  # read directly instead
    fake_scheduler.run(job)
    assert future.result(timeout=30) == -1


def test_the_poll_script_brings_any_bytes_back(tmp_path: Path) -> None:
    from clustrix.monitor import MARK, TAIL_MARK, parse_poll_output, poll_script

    log = tmp_path / "odd name; $x" / "0.out"
    log.parent.mkdir()
    content = f"{MARK}\n{TAIL_MARK}\n".encode() + bytes(range(256)) + b"no newline"
    log.write_bytes(content)
    script = poll_script(
        ["echo", "1|RUNNING|None"],
        [str(tmp_path)],
        str(tmp_path),
        tails=[(str(log), 100), (str(log), 10**6), (str(tmp_path / "missing"), 10)],
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    seen = parse_poll_output(out.stdout)
    assert seen.status_text.strip() == "1|RUNNING|None"
    assert seen.tails == [content[-100:], content, b""]
