"""The local pool (``ClusterExecutor()`` on this machine): warm worker processes that take
calls over pipes. What it promises beyond the contract suite: a job ID naming the process
that ran the job, a chunk on one worker, each call's own output in its worker's logs, no
file per call, a worker that dies failing exactly its own call, kill(), time limits, and a
worker process that imports only what the call needs.

No wall-clock thresholds: waits have generous deadlines, order is asserted with markers.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import signal
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jobfuncs as jf
import pytest

from clustrix import (
    BrokenClusterExecutor,
    ClusterConfig,
    ClusterExecutor,
    ConfigError,
    JobFailedError,
    RemoteTraceback,
    SerializationError,
)
from clustrix._engine import Engine
from clustrix._engines import uses_local_pool
from clustrix._localpool import _dispatch
from clustrix._localpool.engine import LocalPoolEngine
from clustrix.lifecycle import JobState
from clustrix.schedulers.local import LocalScheduler
from clustrix.transports.local import LocalTransport

Make = Callable[..., ClusterExecutor]
TIMEOUT_S = 120


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    """``make(**overrides)``: a local-pool executor, shut down after the test."""
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "pool")
    created: list[ClusterExecutor] = []

    def build(**overrides: Any) -> ClusterExecutor:
        settings: dict[str, Any] = {"remote_work_dir": str(tmp_path / "work"), "max_workers": 2}
        settings.update(overrides)
        executor = ClusterExecutor(ClusterConfig(**settings))
        created.append(executor)
        return executor

    yield build
    for executor in created:
        executor.shutdown(wait=True, cancel_futures=True)


# Calls of these tests (importable by the workers: they get this process's sys.path).
def print_then_wait(text: str, path: str) -> str:
    print(text, flush=True)
    return str(jf.wait_for(path, text))


def read_stdin() -> str:
    return sys.stdin.read()


def die_if(x: int, bad: int) -> int:
    print(f"dying at {x}" if x == bad else f"not dying at {x}", file=sys.stderr, flush=True)
    if x == bad:
        os._exit(7)
    return x


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_of_job(job_id: str | None) -> int:
    assert job_id is not None
    kind, pid, number = job_id.split(":")
    assert kind == "local" and number.isdigit()
    return int(pid)


# ----------------------------------------------------------------------------- the engine
def test_the_pool_is_what_local_gets_and_the_switch_picks_the_jobs_engine(
    make: Make, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert isinstance(make()._engine, LocalPoolEngine)
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")
    with ClusterExecutor(remote_work_dir=str(tmp_path / "jobs")) as ex:
        assert isinstance(ex._engine, Engine)
        assert ex.submit(jf.add, 1, 2).result(timeout=TIMEOUT_S) == 3
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "threads")
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ConfigError, match=r"CLUSTRIX_LOCAL_ENGINE='threads'.*pool or jobs"):
        ClusterExecutor(remote_work_dir=str(tmp_path / "x"))
    assert {t.name for t in threading.enumerate()} <= before  # no loop thread left behind


def test_only_local_without_host_or_injected_parts_gets_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CLUSTRIX_LOCAL_ENGINE", raising=False)  # the default: pool
    local = ClusterConfig()
    assert uses_local_pool(local, scheduler=None, transport=None)
    assert not uses_local_pool(local, scheduler=LocalScheduler(), transport=None)
    assert not uses_local_pool(local, scheduler=None, transport=LocalTransport())
    over_ssh = ClusterConfig(cluster_type="local", cluster_host="login.example.org")
    assert not uses_local_pool(over_ssh, scheduler=None, transport=None)  # jobs there
    venv = ClusterConfig(build_environment=True)  # a venv per job: the jobs engine's
    assert not uses_local_pool(venv, scheduler=None, transport=None)
    assert not uses_local_pool(ClusterConfig(cluster_type="slurm"), scheduler=None, transport=None)


def test_a_job_id_names_the_worker_process_that_ran_it(make: Make) -> None:
    ex = make()
    future = ex.submit(jf.pid_of)
    pid = future.result(timeout=TIMEOUT_S)
    assert pid_of_job(future.job_id) == pid != os.getpid()
    assert future.lifecycle is JobState.COMPLETED and future.job_state == "COMPLETED"
    assert ex.recover() == []
    stats = ex.stats()
    assert stats["pool.submissions"] == 1 and stats["pool.calls"] == 1
    assert stats["pool.workers_started"] == 2 and stats["commands.setup"] == 1


def test_workers_are_warm_and_a_map_shares_them(make: Make) -> None:
    ex = make()
    futures = ex.submit_map(jf.pid_of, range(40))
    pids = [f.result(timeout=TIMEOUT_S) for f in futures]
    assert 1 <= len(set(pids)) <= 2  # two workers took every call
    for future, pid in zip(futures, pids, strict=True):
        assert pid_of_job(future.job_id) == pid
    # the same processes again: none started for it (a second worker that came up late may
    # take its first calls now, on a busy machine)
    started = ex.stats()["pool.workers_started"]
    again = set(ex.map(jf.pid_of, range(10)))
    assert ex.stats()["pool.workers_started"] == started <= 2
    assert len(again | set(pids)) <= 2


def test_a_chunk_is_one_job_on_one_worker(make: Make) -> None:
    ex = make()
    futures = ex.submit_map(jf.pid_of, range(12), chunksize=4)
    pids = [f.result(timeout=TIMEOUT_S) for f in futures]
    chunks = [futures[i : i + 4] for i in range(0, 12, 4)]
    assert len({f.job_id for f in futures}) == 3
    for i, chunk in enumerate(chunks):
        assert len({f.job_id for f in chunk}) == 1
        assert len(set(pids[4 * i : 4 * i + 4])) == 1
        assert pid_of_job(chunk[0].job_id) == pids[4 * i]


def test_no_file_per_call_only_the_workers_logs(make: Make) -> None:
    ex = make()
    futures = ex.submit_map(jf.square, range(200))
    assert [f.result(timeout=TIMEOUT_S) for f in futures] == [x * x for x in range(200)]
    job_dir = futures[0].job_dir
    assert job_dir is not None and all(f.job_dir == job_dir for f in futures)
    workers = ex.stats()["pool.workers_started"]
    names = sorted(os.listdir(job_dir))
    assert names == ["logs"]
    assert len(os.listdir(f"{job_dir}/logs")) == 2 * workers
    assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700
    for name in os.listdir(f"{job_dir}/logs"):
        assert stat.S_IMODE(os.stat(f"{job_dir}/logs/{name}").st_mode) == 0o600


def test_each_call_reads_only_its_own_output(make: Make) -> None:
    ex = make(max_workers=1)  # every call on the same worker, one log
    futures = [ex.submit(jf.print_both, f"call {i}") for i in range(5)]
    assert [f.result(timeout=TIMEOUT_S) for f in futures] == [f"call {i}" for i in range(5)]
    assert len({f.stdout_path for f in futures}) == 1
    for i, future in enumerate(futures):
        assert future.stdout() == f"out: call {i}\n"
        assert future.stderr() == f"err: call {i}\n"
    assert ex._engine.tail_logs(futures[2], 5) == (b"ll 2\n", b"ll 2\n")


def test_the_output_of_a_running_call_is_readable(make: Make, tmp_path: Path) -> None:
    ex = make()
    release = tmp_path / "release"
    future = ex.submit(print_then_wait, "early words", str(release))
    wait_until(lambda: "early words" in future.stdout(), "the running call's output")
    release.write_text("")
    assert future.result(timeout=TIMEOUT_S) == "early words"


def test_the_users_code_reads_an_empty_stdin(make: Make) -> None:
    ex = make(max_workers=1)
    assert ex.submit(read_stdin).result(timeout=TIMEOUT_S) == ""
    assert ex.submit(jf.add, 2, 3).result(timeout=TIMEOUT_S) == 5  # the pipes are intact


# ----------------------------------------------------------------------------- failures
def test_a_dying_worker_fails_only_its_own_call_and_is_replaced(make: Make) -> None:
    ex = make(max_workers=1)
    dying = ex.submit(jf.die, 3, "last words")
    after = [ex.submit(jf.pid_of) for _ in range(3)]
    with pytest.raises(JobFailedError) as info:
        dying.result(timeout=TIMEOUT_S)
    assert info.value.exit_code == 3 and "last words" in info.value.stderr_tail
    assert dying.lifecycle is JobState.FAILED
    pids = {f.result(timeout=TIMEOUT_S) for f in after}
    assert len(pids) == 1 and pid_of_job(dying.job_id) not in pids  # a new worker
    assert ex.stats()["pool.worker_exits"] == 1


def test_a_crash_in_a_chunk_keeps_the_results_before_it_and_runs_those_after(
    make: Make,
) -> None:
    ex = make(max_workers=1)
    futures = ex.submit_map(die_if, range(6), [3] * 6, chunksize=6)
    outcomes = [f.exception(timeout=TIMEOUT_S) for f in futures]
    assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]
    error = outcomes[3]
    assert isinstance(error, JobFailedError) and error.exit_code == 7
    assert "dying at 3" in error.stderr_tail and "at 2" not in error.stderr_tail
    before, after = {f.job_id for f in futures[:4]}, {f.job_id for f in futures[4:]}
    assert len(before) == 1 and len(after) == 1 and before != after  # continued as a new job


def test_kill_stops_the_worker_and_the_pool_goes_on(make: Make, tmp_path: Path) -> None:
    ex = make(max_workers=1)
    marker = tmp_path / "not-touched"
    future = ex.submit(jf.sleep_and_touch, 60, str(marker))
    wait_until(future.running, "the call to start")
    pid = pid_of_job(future.job_id)
    assert future.kill()
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=TIMEOUT_S)
    assert info.value.state == "CANCELLED" and info.value.job_id == future.job_id
    assert future.lifecycle is JobState.CANCELLED
    wait_until(lambda: not alive(pid), "the killed worker to go")
    assert ex.submit(jf.pid_of).result(timeout=TIMEOUT_S) != pid
    assert not marker.exists()
    assert not future.kill()  # done: nothing to kill


def test_kill_stops_every_call_of_a_chunk(make: Make) -> None:
    ex = make(max_workers=1)
    futures = ex.submit_map(jf.sleep_then, [60] * 3, range(3), chunksize=3)
    wait_until(futures[0].running, "the chunk to start")
    assert futures[1].kill()
    for future in futures:
        with pytest.raises(JobFailedError, match="CANCELLED"):
            future.result(timeout=TIMEOUT_S)


def test_a_call_past_its_time_limit_fails_timed_out(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatch, "SECONDS_PER_MINUTE", 0.5)  # time_limit_min=1: 0.5 s
    ex = make(max_workers=1)
    view = ex.options(time_limit_min=1)
    slow = view.submit(jf.sleep_then, 60, "never")
    quick = view.submit(jf.add, 1, 1)
    with pytest.raises(JobFailedError) as info:
        slow.result(timeout=TIMEOUT_S)
    assert info.value.state == "TIMEOUT" and "time_limit_min=1" in str(info.value)
    assert slow.lifecycle is JobState.TIMED_OUT
    assert quick.result(timeout=TIMEOUT_S) == 2


def test_a_ctrl_c_stops_the_running_call_and_spares_the_idle_worker(make: Make) -> None:
    ex = make(max_workers=1)
    pid = ex.submit(jf.pid_of).result(timeout=TIMEOUT_S)
    os.kill(pid, signal.SIGINT)  # idle: ignored
    future = ex.submit(jf.sleep_then, 60, None)
    wait_until(future.running, "the call to start")
    time.sleep(0.2)  # inside time.sleep, not in the worker's own code
    os.kill(pid, signal.SIGINT)
    assert isinstance(future.exception(timeout=TIMEOUT_S), KeyboardInterrupt)
    assert ex.submit(jf.pid_of).result(timeout=TIMEOUT_S) == pid  # the same worker


def test_workers_that_cannot_start_break_the_executor_with_their_words(
    make: Make, tmp_path: Path
) -> None:
    # A Python that passes the work directory check but cannot run a worker.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *clustrix._localpool._worker*) echo "no worker here" >&2; exit 7;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    ex = make(python_executable=str(fake))
    future = ex.submit(jf.add, 1, 2)
    with pytest.raises(BrokenClusterExecutor) as info:
        future.result(timeout=TIMEOUT_S)
    assert "did not start (exit status 7)" in str(info.value.__cause__)
    assert "no worker here" in str(info.value.__cause__)
    with pytest.raises(BrokenClusterExecutor):
        ex.submit(jf.add, 1, 2)


# ----------------------------------------------------------------------------- queue
def test_cancelled_queued_calls_never_start(make: Make, tmp_path: Path) -> None:
    ex = make(max_workers=1)
    release = tmp_path / "release"
    blocker = ex.submit(jf.wait_for, str(release), "done")
    wait_until(blocker.running, "the blocker to start")
    markers = [tmp_path / f"m{i}" for i in range(4)]
    queued = ex.submit_map(jf.touch, [str(m) for m in markers], chunksize=1)
    wait_until(lambda: all(f.lifecycle is JobState.QUEUED for f in queued), "queued")
    assert all(f.job_id is None for f in queued)  # given when a worker takes the job
    assert all(f.cancel() for f in queued[1:])
    release.write_text("")
    assert blocker.result(timeout=TIMEOUT_S) == "done"
    assert queued[0].result(timeout=TIMEOUT_S) is None
    ex.shutdown(wait=True)
    assert [m.exists() for m in markers] == [True, False, False, False]


def test_shutdown_stops_every_worker_and_removes_a_clean_pool_dir(make: Make) -> None:
    ex = make()
    futures = ex.submit_map(jf.pid_of, range(20))
    pids = {f.result(timeout=TIMEOUT_S) for f in futures}
    job_dir = futures[0].job_dir
    assert job_dir is not None and os.path.isdir(job_dir)
    ex.shutdown(wait=True)
    assert not any(alive(pid) for pid in pids)
    assert not os.path.exists(job_dir)  # cleanup="on_success"
    assert futures[0].stdout() == ""


def test_a_failure_keeps_the_logs_after_shutdown(make: Make) -> None:
    ex = make()
    future = ex.submit(jf.raise_custom, "kept")
    assert isinstance(future.exception(timeout=TIMEOUT_S), jf.CustomError)
    ex.shutdown(wait=True)
    assert future.job_dir is not None and os.path.isdir(future.job_dir)


# ----------------------------------------------------------------------------- the process
def test_the_worker_imports_only_what_the_call_needs(make: Make) -> None:
    ex = make(max_workers=1)
    # eval travels by reference (plain pickle), its argument is a string: the call needs
    # nothing beyond the worker itself
    modules = ex.submit(eval, "sorted(__import__('sys').modules)").result(timeout=TIMEOUT_S)
    heavy = (
        "asyncio",
        "concurrent",
        "threading",
        "multiprocessing",
        "subprocess",
        "typing",
        "cloudpickle",
        "pydantic",
        "asyncssh",
        "yaml",
        "clustrix.executor",
        "clustrix.config",
        "clustrix._engine",
        "clustrix._localpool.engine",
        "clustrix._localpool._dispatch",
        "clustrix.transports",
        "clustrix.schedulers",
    )
    assert [m for m in modules if m.startswith(heavy)] == []
    assert "clustrix._localpool._worker" in modules and "clustrix.worker" in modules


def test_the_workers_get_the_configured_environment(make: Make) -> None:
    ex = make(environment_variables={"CLUSTRIX_TEST_POOL_VAR": "set"})
    assert ex.submit(jf.read_env, "CLUSTRIX_TEST_POOL_VAR").result(timeout=TIMEOUT_S) == "set"


# ---------------------------------------------------------------- map(..., chunksize=k)
# A chunk travels as ONE call of clustrix.worker.run_chunk (clustrix/_chunked.py).


def test_a_map_chunk_travels_as_one_call(make: Make) -> None:
    ex = make()
    before = ex.stats()
    results = list(ex.map(jf.add, range(100), range(100, 200), chunksize=10))
    assert results == [x + y for x, y in zip(range(100), range(100, 200), strict=True)]
    after = ex.stats()
    assert after["pool.calls"] - before.get("pool.calls", 0) == 10  # one message per chunk
    assert after["pool.submissions"] - before.get("pool.submissions", 0) == 1
    # a short last chunk, and more chunks than workers
    assert list(ex.map(jf.square, range(23), chunksize=5)) == [x * x for x in range(23)]


def test_a_failing_input_of_a_chunk_raises_its_own_error_at_its_place(make: Make) -> None:
    ex = make()
    results = ex.map(jf.fail_if, range(8), [5] * 8, chunksize=4)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]  # 4 is in the failing chunk
    with pytest.raises(ValueError, match="bad value 5") as info:
        next(results)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_if" in str(info.value.__cause__)
    with pytest.raises(StopIteration):  # map ends at its first error, as the stdlib's does
        next(results)


def test_a_crash_in_a_map_chunk_fails_that_chunk_and_the_pool_goes_on(make: Make) -> None:
    ex = make(max_workers=1)
    results = ex.map(die_if, range(9), [4] * 9, chunksize=3)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(JobFailedError) as info:  # the chunk of inputs 3-5
        next(results)
    assert info.value.exit_code == 7 and "dying at 4" in info.value.stderr_tail
    assert ex.submit(jf.add, 1, 2).result(timeout=TIMEOUT_S) == 3  # a new worker
    assert ex.stats()["pool.worker_exits"] == 1


def test_an_input_that_cannot_travel_is_named_and_nothing_runs(make: Make) -> None:
    ex = make()
    before = ex.stats().get("pool.submissions", 0)
    with pytest.raises(SerializationError, match=r"map call 6 \(input #6\)"):
        ex.map(jf.identity, [*range(6), threading.Lock(), 8], chunksize=4)
    assert ex.stats().get("pool.submissions", 0) == before


def test_leaving_a_chunked_map_early_cancels_the_chunks_not_started(
    make: Make, tmp_path: Path
) -> None:
    ex = make(max_workers=1)
    markers = [str(tmp_path / f"early-{i}") for i in range(8)]
    results = ex.map(jf.sleep_and_touch, [0.2] * 8, markers, chunksize=2)
    assert next(results) == markers[0]
    results.close()
    ex.submit(jf.add, 0, 0).result(timeout=TIMEOUT_S)  # runs after whatever had started
    ran = sum(os.path.exists(m) for m in markers)
    assert 2 <= ran <= 4  # the first chunk, and at most the one that had started


def test_a_chunked_map_timeout_is_one_deadline(make: Make, tmp_path: Path) -> None:
    ex = make()
    ready, release = tmp_path / "ready", tmp_path / "release"
    ready.touch()
    # The chunk's second call waits for a file only the test creates: it cannot end before
    # the deadline, however fast or slow the machine.
    results = ex.map(jf.wait_for, [str(ready), str(release)], timeout=0.5, chunksize=2)
    with pytest.raises(cf.TimeoutError):
        list(results)
    release.touch()  # the waiting call ends: nothing left running at shutdown
    assert ex.submit(jf.add, 1, 1).result(timeout=TIMEOUT_S) == 2


def test_a_chunked_map_keeps_no_yielded_result(make: Make) -> None:
    ex = make()
    results = ex.map(jf.make_blob, [10, 20, 30], chunksize=3)
    first = next(results)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None  # the iterator holds the other records, not this value
    assert [b.data for b in results] == [b"x" * 20, b"x" * 30]
