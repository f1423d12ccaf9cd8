"""``map`` as a pool, on every backend: each task of a map's job array takes the next call
nobody has taken, so a slow call holds up only its own task, and leaving early stops work.

No wall-clock thresholds: the tests assert the order of events with marker files.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import posixpath
import shutil
import subprocess
import uuid
import weakref
from collections.abc import Callable

import jobfuncs as jf
import pytest

from clustrix import ClusterExecutor

MakeExecutor = Callable[..., ClusterExecutor]


def marker_dir() -> str:
    """A fresh directory name under the job user's home (expanded on the node)."""
    return f"~/.clustrix-markers/{uuid.uuid4().hex}"


def processes_using(text: str) -> list[str]:
    """Command lines of this machine's processes that mention ``text`` (the nodes of the
    test cluster are this machine)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def queued_jobs_using(text: str) -> list[str]:
    """The scheduler's jobs whose command mentions ``text`` and that are queued or running
    (SLURM here; none locally). A job COMPLETING has ended: SLURM is cleaning up after it
    (its processes are checked by :func:`processes_using`)."""
    if shutil.which("squeue") is None:
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %o"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if text in line and " COMPLETING " not in line]


def test_a_call_waiting_on_another_calls_side_effect_finishes(
    make_executor: MakeExecutor,
) -> None:
    """Call 0 waits for a file that call 1 writes: a pool runs both, whatever the slots."""
    ex = make_executor(max_workers=2)
    path = f"{marker_dir()}/handshake"
    assert list(ex.map(jf.handshake, ["wait", "write"], [path, path], timeout=240)) == [
        "waited",
        "wrote",
    ]


def test_other_calls_finish_while_a_slow_call_runs(make_executor: MakeExecutor) -> None:
    """One slow call first, then quick ones: with two tasks, one runs the slow call and
    the other drains every quick call while the slow one still waits."""
    ex = make_executor(max_workers=2)
    markers = marker_dir()
    release = f"{markers}/release"
    quick_paths = [f"{markers}/quick-{i}" for i in range(9)]
    futures = ex.submit_map(jf.handshake, ["wait"] + ["write"] * 9, [release, *quick_paths])
    slow, quick = futures[0], futures[1:]
    _, not_done = cf.wait(quick, timeout=240)
    assert not not_done, "the quick calls waited for the slow one"
    assert [f.result() for f in quick] == ["wrote"] * 9
    assert slow.running() and not slow.done()
    assert slow.job_id is not None and slow.job_id not in {f.job_id for f in quick}
    ex.write_bytes(release, b"")
    assert slow.result(timeout=240) == "waited"


def test_each_call_knows_the_task_that_ran_it(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2)
    futures = ex.submit_map(jf.pid_of, range(8))
    pids = [f.result(timeout=240) for f in futures]
    by_job: dict[str | None, set[int]] = {}
    for future, pid in zip(futures, pids, strict=True):
        by_job.setdefault(future.job_id, set()).add(pid)
    assert None not in by_job
    # every task (job ID) is one process; at most 2 tasks took the 8 calls
    assert all(len(p) == 1 for p in by_job.values())
    assert 1 <= len(by_job) <= 2


def test_cancelled_calls_of_a_map_never_start_and_nothing_is_left_running(
    make_executor: MakeExecutor,
) -> None:
    """What leaving a map early does (it cancels every future): the calls nobody took are
    never started, the running ones finish, then no task is left in the queue or on the
    node."""
    ex = make_executor(max_workers=2)
    markers = marker_dir()
    futures = ex.submit_map(jf.start_then_wait, range(12), [markers] * 12)
    assert futures[0].result(timeout=240) == 0
    running = [f for f in futures[1:] if f.running()]
    # the two tasks: one took call 0 and then the next, the other took call 1
    for _ in range(2400):
        running = [f for f in futures[1:] if f.running()]
        if len(running) == 2:
            break
        cf.wait(futures[1:], timeout=0.1)
    assert len(running) == 2, [f.job_state for f in futures]
    cancelled = [f for f in futures if f.cancel()]
    assert len(cancelled) == 9  # running ones cannot be cancelled, as in any Executor
    job_dir = futures[0].job_dir
    assert job_dir is not None
    # the jobs engine claims the cancelled calls for nobody; only then may the tasks go on
    # (the local pool has no claim files: it forgets a cancelled call at once)
    for _ in range(2400 if ex.exists(f"{job_dir}/claims") else 0):
        if all(ex.exists(f"{job_dir}/claims/{futures.index(f)}") for f in cancelled):
            break
        cf.wait(running, timeout=0.1)
    # running() may come before the call's first line, as in ProcessPoolExecutor (the local
    # pool marks a call running when it sends it): release once both calls have begun
    for _ in range(2400):
        if all(ex.exists(f"{markers}/started-{futures.index(f)}") for f in running):
            break
        cf.wait(running, timeout=0.1)
    ex.write_bytes(f"{markers}/release", b"")
    assert sorted(f.result(timeout=240) for f in running) == sorted(
        futures.index(f) for f in running
    )
    started = {posixpath.basename(name) for name in ex.ls(markers) if "started-" in name}
    assert started == {f"started-{futures.index(f)}" for f in running}  # and no other
    ex.shutdown(wait=True)
    assert processes_using(job_dir) == []
    assert queued_jobs_using(job_dir) == []


def test_shutdown_cancel_futures_leaves_nothing_queued_or_running(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor(max_workers=2)
    markers = marker_dir()
    futures = ex.submit_map(jf.start_then_wait, range(1, 9), [markers] * 8)
    for _ in range(2400):
        # running, and its call has begun (made the marker dir): running() may come before
        # the call's first line (see above)
        if any(f.running() for f in futures) and ex.exists(markers):
            break
        cf.wait(futures, timeout=0.1)
    job_dir = futures[0].job_dir
    assert job_dir is not None
    ex.write_bytes(f"{markers}/release", b"")  # the running calls may finish
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    assert any(f.cancelled() for f in futures)
    assert processes_using(job_dir) == []
    assert queued_jobs_using(job_dir) == []


def test_a_yielded_result_is_no_longer_referenced(executor: ClusterExecutor) -> None:
    results = executor.map(jf.make_blob, [1000, 1000, 1000])
    first = next(results)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())  # as with ProcessPoolExecutor.map
    assert [len(b.data) for b in results] == [1000, 1000]


# the first run on a cluster builds the remote environment with scipy and numpy (pip)
@pytest.mark.timeout(900)
def test_scipy_differential_evolution_with_workers_ex_map(executor: ClusterExecutor) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    common = dict(bounds=[(-3, 3), (-3, 3)], seed=7, maxiter=4, popsize=5, polish=False)
    serial = optimize.differential_evolution(jf.sphere, updating="deferred", **common)
    clustered = optimize.differential_evolution(
        jf.sphere, updating="deferred", workers=executor.map, **common
    )
    assert list(clustered.x) == list(serial.x)
    assert clustered.fun == serial.fun
    assert clustered.nfev == serial.nfev
