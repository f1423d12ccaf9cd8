"""The concurrent.futures contract, run against every backend (see ``BACKENDS``)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import threading
import time
import weakref
from collections.abc import Callable

import jobfuncs as jf
import pytest

from clustrix import (
    ClusterExecutor,
    ClusterFuture,
    ConfigError,
    JobFailedError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    cluster,
)

MakeExecutor = Callable[..., ClusterExecutor]


def test_submit_returns_a_real_future_backed_by_a_job(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.add, 2, 3)
    assert isinstance(future, cf.Future)
    assert isinstance(future, ClusterFuture)
    assert future.result(timeout=120) == 5
    assert future.job_id
    assert future.stdout_path and future.stderr_path
    assert future.stderr_path.endswith(".err")


def test_any_keyword_name_reaches_the_function(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.echo_kwargs, fn=1, self=2, timeout=3, x="y")
    assert future.result(timeout=120) == {"fn": 1, "self": 2, "timeout": 3, "x": "y"}


def test_map_returns_results_in_input_order(executor: ClusterExecutor) -> None:
    assert list(executor.map(jf.add, range(20), range(100, 120))) == [
        x + y for x, y in zip(range(20), range(100, 120), strict=True)
    ]


def test_map_chunksize_packs_calls_into_jobs(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One process per job: on ``local`` the jobs engine's way. The local pool runs a job's
    # calls on one warm worker and many jobs on the same worker (tests/unit/test_localpool.py).
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")
    executor = make_executor()
    pids = list(executor.map(jf.pid_of, range(12), chunksize=4))
    assert len(pids) == 12
    assert len(set(pids)) == 3  # 3 jobs of 4 calls, each job one process
    assert all(len(set(pids[i : i + 4])) == 1 for i in range(0, 12, 4))


def test_map_chunksize_one_runs_one_call_per_job(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")  # one process per job (see above)
    executor = make_executor()
    pids = list(executor.map(jf.pid_of, range(4), chunksize=1))
    assert len(set(pids)) == 4


def test_map_rejects_bad_chunksize(executor: ClusterExecutor) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(jf.square, [1], chunksize=0)


def test_map_raises_when_the_failing_result_is_reached(executor: ClusterExecutor) -> None:
    results = executor.map(jf.fail_if, range(6), [3] * 6, chunksize=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad value 3"):
        next(results)


def test_a_failing_call_in_a_chunk_fails_only_its_own_result(executor: ClusterExecutor) -> None:
    futures = [executor.submit(jf.fail_if, x, 2) for x in range(4)]
    assert [f.exception(timeout=120) is None for f in futures] == [True, True, False, True]
    results = executor.map(jf.fail_if, range(4), [2] * 4, chunksize=4)
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(ValueError):
        next(results)


def test_map_timeout_is_one_overall_deadline(executor: ClusterExecutor) -> None:
    results = executor.map(jf.sleep_then, [5, 5], timeout=1.0, chunksize=1)
    with pytest.raises(cf.TimeoutError):
        list(results)


def test_leaving_map_early_cancels_calls_not_started(make_executor: MakeExecutor) -> None:
    executor = make_executor(max_workers=1)
    work = executor.config.remote_work_dir
    markers = [f"{work}/early-{i}" for i in range(6)]
    results = executor.map(jf.sleep_and_touch, [0.2] * 6, markers, chunksize=1)
    assert next(results) == markers[0]
    results.close()  # cancels every call that has not started
    executor.submit(jf.add, 0, 0).result(timeout=120)  # runs after whatever had started
    ran = executor.submit(jf.count_existing, markers).result(timeout=120)
    # The first call, and at most the one that took the freed slot before close().
    assert 1 <= ran <= 2


def test_cancel_pending_future_removes_it(make_executor: MakeExecutor, tmp_path) -> None:
    executor = make_executor(max_workers=1)
    blocker = executor.submit(jf.sleep_then, 3, "done")
    queued = executor.submit(jf.sleep_and_touch, 0, f"{executor.config.remote_work_dir}/x")
    assert queued.cancel()
    assert queued.cancelled()
    done, _ = cf.wait([queued], timeout=5)
    assert queued in done
    with pytest.raises(cf.CancelledError):
        queued.result()
    assert blocker.result(timeout=120) == "done"


def test_cancel_running_future_fails_and_kill_stops_it(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    marker = f"{executor.config.remote_work_dir}/killed-marker"
    future = executor.submit(jf.sleep_and_touch, 8, marker)
    deadline = time.monotonic() + 120
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.running()
    assert not future.cancel()  # standard contract: running calls are not cancelled
    assert future.kill()
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.state == "CANCELLED"
    assert info.value.job_id == future.job_id
    time.sleep(9)  # past the sleeper's end: had the job survived, the marker would exist
    assert executor.submit(jf.path_exists, marker).result(timeout=120) is False


def test_shutdown_is_idempotent_and_refuses_new_work(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    assert executor.submit(jf.add, 1, 2).result(timeout=120) == 3
    executor.shutdown()
    executor.shutdown()
    executor.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(jf.add, 1, 2)


def test_shutdown_cancel_futures_cancels_queued_jobs(make_executor: MakeExecutor) -> None:
    executor = make_executor(max_workers=1)
    first = executor.submit(jf.sleep_then, 2, "first")
    queued = [executor.submit(jf.sleep_then, 60, i) for i in range(5)]
    deadline = time.monotonic() + 120
    while not first.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    executor.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    assert all(f.cancelled() for f in queued)


def test_context_manager_waits_for_results(make_executor: MakeExecutor) -> None:
    with make_executor() as executor:
        futures = [executor.submit(jf.sleep_then, 0.5, i) for i in range(3)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2]


def test_as_completed_and_wait(executor: ClusterExecutor) -> None:
    futures = [executor.submit(jf.square, i) for i in range(6)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=120)) == [
        0,
        1,
        4,
        9,
        16,
        25,
    ]
    bad = executor.submit(jf.fail_if, 1, 1)
    slow = executor.submit(jf.sleep_then, 20, None)
    done, not_done = cf.wait([bad, slow], timeout=120, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    slow.kill()


def test_done_callback_runs_once(executor: ClusterExecutor) -> None:
    called = threading.Event()
    seen: list[int] = []

    def callback(future: cf.Future[int]) -> None:
        seen.append(future.result())
        called.set()

    executor.submit(jf.square, 7).add_done_callback(callback)
    assert called.wait(120)
    assert seen == [49]


def test_asyncio_wrap_future(executor: ClusterExecutor) -> None:
    async def main() -> list[int]:
        futures = [asyncio.wrap_future(executor.submit(jf.square, i)) for i in range(3)]
        return list(await asyncio.gather(*futures))

    assert asyncio.run(main()) == [0, 1, 4]


def test_user_exception_keeps_its_type_and_remote_traceback(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.raise_custom, "boom")
    with pytest.raises(jf.CustomError, match="boom") as info:
        future.result(timeout=120)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_custom" in str(cause) and "CustomError" in str(cause)


def test_unrebuildable_exception_degrades_to_remote_error(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.raise_unpicklable)
    with pytest.raises(RemoteError) as info:
        future.result(timeout=120)
    assert info.value.type_name.endswith("UnpicklableError")
    assert "first/second" in str(info.value)
    assert "raise_unpicklable" in info.value.traceback_text


@pytest.mark.parametrize(
    ("func", "status"),
    [(jf.die, 3), (jf.kill_self, 137), (jf.segfault, 139)],
    ids=["os._exit", "SIGKILL", "segfault"],
)
def test_job_dying_without_result_fails_its_future(
    executor: ClusterExecutor, func: Callable[..., None], status: int
) -> None:
    args = (3, "last words") if func is jf.die else ("last words",)
    future = executor.submit(func, *args)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=120)
    error = info.value
    assert error.exit_code == status
    assert error.job_id == future.job_id
    assert "last words" in error.stderr_tail
    assert str(status) in str(error)


def test_lambdas_closures_and_user_classes_travel(executor: ClusterExecutor) -> None:
    assert executor.submit(lambda x: x * 3, 5).result(timeout=120) == 15
    assert executor.submit(jf.make_adder(10), 5).result(timeout=120) == 15
    local = 7
    assert executor.submit(lambda: local + 1).result(timeout=120) == 8
    point = executor.submit(jf.shift, jf.Point(1, 2), 3).result(timeout=120)
    assert isinstance(point, jf.Point) and point == jf.Point(4, 2)
    assert executor.submit(jf.Point(3, 4).norm2).result(timeout=120) == 25


def test_unserializable_argument_fails_at_submit(executor: ClusterExecutor) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"positional argument 0.*lock"):
        executor.submit(jf.identity, lock)
    with pytest.raises(SerializationError, match="keyword argument 'data'"):
        executor.submit(jf.echo_kwargs, data=lock)


def test_results_are_not_kept_by_the_executor(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.Point, 1, 2)
    result = future.result(timeout=120)
    ref = weakref.ref(result)
    del result, future
    gc.collect()
    assert ref() is None


def test_job_logs_are_readable(executor: ClusterExecutor) -> None:
    future = executor.submit(jf.print_both, "hello")
    assert future.result(timeout=120) == "hello"
    assert "out: hello" in future.stdout()
    assert "err: hello" in future.stderr()


def test_options_sets_resources_without_taking_user_kwargs(executor: ClusterExecutor) -> None:
    view = executor.options(cores=1, job_name="custom")
    assert view.resources.job_name == "custom"
    assert view.submit(jf.echo_kwargs, cores=5, mem_gb=2).result(timeout=120) == {
        "cores": 5,
        "mem_gb": 2,
    }
    assert list(view.map(jf.square, [2, 3])) == [4, 9]


def test_options_rejects_unknown_resources(executor: ClusterExecutor) -> None:
    with pytest.raises(ConfigError, match="did you mean 'mem_gb'"):
        executor.options(mem_gbs=4)


def test_cluster_decorator(executor: ClusterExecutor) -> None:
    @cluster(executor=executor, cores=1)
    def triple(x: int) -> int:
        return 3 * x

    assert triple(4) == 12
    assert triple.__name__ == "triple"
    future = triple.submit(5)
    assert isinstance(future, ClusterFuture) and future.result(timeout=120) == 15
    futures = triple.map(range(4), chunksize=2)
    assert [f.result(timeout=120) for f in futures] == [0, 3, 6, 9]
