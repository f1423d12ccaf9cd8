"""clustrix on its local backend vs concurrent.futures.ProcessPoolExecutor, same run.

    python benchmarks/bench_local.py            # full run (about 5-10 minutes on 2 CPUs)
    python benchmarks/bench_local.py --quick    # fewer samples, 100-call chunksize=1 maps
    python benchmarks/bench_local.py --write    # also rewrite the results in README.md

Both executors get ``os.cpu_count()`` workers and are warm (started, one call done) before
anything is timed. Measured:

(a) submit-to-result latency of one no-op call (median of N, the two executors interleaved);
(b) wall time of ``list(ex.map(fn, range(1000), chunksize=k))`` for k = 1 and k = 50, with
    ``fn`` a no-op and a pure-Python CPU-bound loop calibrated to about 5 ms per call.

Plus the cost floor of the local backend (one OS process per job): the start-up of the
worker's Python process, measured directly.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from _common import (
    Row,
    fmt_ratio,
    fmt_s,
    load_text,
    local_cluster_jobs,
    machine_facts,
    median,
    now_text,
    print_report,
    revision,
    table,
    verdict,
    wait_for_idle,
    write_readme_section,
)

from clustrix import ClusterExecutor
from clustrix._bundle import worker_bundle

TARGET_CS50 = 3.0
SPIN_TARGET_S = 0.005


# The work functions live in __main__: cloudpickle sends them by value to clustrix's
# workers, and ProcessPoolExecutor's forked workers find them in their copy of __main__.
def noop(x: Any = None) -> Any:
    """Nothing at all."""
    return x


def spin(x: int, iterations: int) -> int:
    """A pure-Python loop: CPU-bound, holds the GIL, about 5 ms for the calibrated count."""
    acc = 0
    for i in range(iterations):
        acc += i ^ x
    return acc


def calibrate_spin() -> tuple[int, float]:
    """Iterations of :func:`spin` that take about 5 ms here, and the measured median."""
    iterations = 20_000
    for _ in range(5):
        t = time.perf_counter()
        spin(0, iterations)
        elapsed = time.perf_counter() - t
        iterations = max(1, int(iterations * SPIN_TARGET_S / elapsed))
    samples = []
    for _ in range(21):
        t = time.perf_counter()
        spin(0, iterations)
        samples.append(time.perf_counter() - t)
    return iterations, median(samples)


@dataclass
class Workload:
    name: str
    fn: Callable[..., Any]
    extra: tuple[Any, ...]

    def args(self, n: int) -> list[Iterator[Any]]:
        its: list[Iterator[Any]] = [iter(range(n))]
        its += [itertools.repeat(value, n) for value in self.extra]
        return its


def time_map(ex: Executor, work: Workload, n: int, chunksize: int) -> float:
    t = time.perf_counter()
    results = list(ex.map(work.fn, *work.args(n), chunksize=chunksize))
    elapsed = time.perf_counter() - t
    assert len(results) == n
    return elapsed


def latency(ex: Executor) -> float:
    t = time.perf_counter()
    ex.submit(noop, 1).result()
    return time.perf_counter() - t


def process_floor(samples: int) -> tuple[float, float]:
    """Median wall time of (1) ``python -c pass`` and (2) the worker's imports from the
    bundle (what every local job pays before it runs a call)."""
    bundle = worker_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = os.path.join(tmp, bundle.filename)
        with open(zip_path, "wb") as fh:
            fh.write(bundle.data)
        # as the job script runs it: PYTHONSAFEPATH keeps the cwd off sys.path
        env = dict(os.environ, PYTHONPATH=zip_path, PYTHONSAFEPATH="1")
        bare, worker = [], []
        for _ in range(samples):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            code = "import clustrix.worker, cloudpickle"
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            worker.append(time.perf_counter() - t)
    return median(bare), median(worker)


def cpu_s(who: int) -> float:
    """User + system CPU seconds of this process or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def local_timeline(cx: ClusterExecutor, work: Workload, n: int, chunksize: int) -> list[str]:
    """Where a local map's time goes, job by job: one more map with the engine's submit,
    poll and resolve steps timed (wrapped on this instance only), and the job processes'
    start (log file created by the launcher) and end (exit file written by the job script)
    taken from their files. Reads private attributes: if they changed, says so and skips."""
    try:
        engine: Any = cx._engine
        submitter, core, monitor = engine._submitter, engine._core, engine._monitor
        batches: dict[str, tuple[float, float]] = {}
        resolved: dict[tuple[str, int], float] = {}
        polls: list[float] = []
        orig_submit, orig_resolve, orig_poll = (
            submitter.submit_batch,
            core.resolve,
            monitor.poll_once,
        )

        async def submit_batch(tasks: list[Any], throttle: int | None) -> None:
            t = time.time()
            await orig_submit(tasks, throttle)
            batches[tasks[0].batch.job_dir] = (t, time.time())

        def resolve(call: Any, value: Any, exception: BaseException | None) -> None:
            task = call.task
            if task is not None and task.batch is not None:
                resolved[(task.batch.job_dir, task.index)] = time.time()
            orig_resolve(call, value, exception)

        async def poll_once() -> bool:
            t = time.perf_counter()
            changed = bool(await orig_poll())
            polls.append(time.perf_counter() - t)
            return changed

        submitter.submit_batch, core.resolve, monitor.poll_once = (
            submit_batch,
            resolve,
            poll_once,
        )
        try:
            self_cpu, child_cpu = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)
            wall = time_map(cx, work, n, chunksize)
            self_cpu = cpu_s(resource.RUSAGE_SELF) - self_cpu
            child_cpu = cpu_s(resource.RUSAGE_CHILDREN) - child_cpu
        finally:
            del submitter.submit_batch, core.resolve, monitor.poll_once
        stages: dict[str, list[float]] = {"refill": [], "submit": [], "run": [], "detect": []}
        done_times = sorted(resolved.values())
        first_starts = sorted(start for start, _ in batches.values())[: cx.max_workers or 1]
        for job_dir, (start, end) in batches.items():
            stages["submit"].append(end - start)
            before = [t for t in done_times if t < start]
            if before and start not in first_starts:
                stages["refill"].append(start - before[-1])
            for name in os.listdir(os.path.join(job_dir, "exit")):
                if not name.isdigit():
                    continue
                ended = os.stat(os.path.join(job_dir, "exit", name)).st_mtime
                began = os.stat(os.path.join(job_dir, "logs", f"{name}.err")).st_mtime
                stages["run"].append(ended - began)
                if (job_dir, int(name)) in resolved:
                    stages["detect"].append(resolved[(job_dir, int(name))] - ended)
    except Exception as exc:  # the engine's internals moved: the benchmark still stands
        return [f"timeline unavailable ({type(exc).__name__}: {exc})"]
    jobs = len(set(resolved))
    workers = cx.max_workers or 1
    rounds = math.ceil(jobs / (cx.max_workers or 1))
    parts = ", ".join(
        f"{name} {fmt_s(median(values))}" for name, values in stages.items() if values
    )
    return [
        f"timeline of one more {n}-call {work.name} map, chunksize={chunksize} ({fmt_s(wall)}, "
        f"{jobs} jobs in {len(batches)} submissions, {rounds} rounds of {cx.max_workers} = "
        f"{fmt_s(wall / rounds)} per round). Median per job: {parts}. (refill: a slot's "
        "result seen → next job's submission starts; submit: job dir upload + launcher "
        "command; run: job process start → exit file; detect: exit file → future resolved "
        "by a poll.) "
        f"{len(polls)} polls, median {fmt_s(median(polls) if polls else 0.0)} each.",
        f"CPU during that map: the client process {self_cpu:.2f} s, the commands it ran (poll "
        f"and launch: sh, ps, find, grep) {child_cpu:.2f} s, of {wall * workers:.2f} CPU-s "
        f"on {workers} CPUs ({(self_cpu + child_cpu) / (wall * workers):.0%}); the jobs "
        "themselves are detached (not counted)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller maps")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    opts = parser.parse_args()
    load_before = load_text()
    code = revision()

    workers = os.cpu_count() or 1
    n_latency = 7 if opts.quick else 20
    n_map = 1000
    n_map_cs1 = 100 if opts.quick else 1000
    repeats = 1 if opts.quick else 3  # cheap maps; the clustrix chunksize=1 maps run once
    notes: list[str] = []

    waited = wait_for_idle(local_cluster_jobs, "local")
    if waited is None:
        notes.append("The test cluster (same CPUs) was busy and never went idle in 10 minutes.")

    iterations, spin_s = calibrate_spin()
    print(f"spin: {iterations} iterations = {spin_s * 1e3:.2f} ms in-process (median of 21)")
    works = [Workload("no-op", noop, ()), Workload("CPU ~5 ms", spin, (iterations,))]

    rows: list[Row] = []
    diag: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="clustrix-bench-") as work_dir,
        ClusterExecutor(remote_work_dir=work_dir, max_workers=workers) as cx,
        ProcessPoolExecutor(max_workers=workers) as pool,
    ):
        # Warm: the pool forks all its workers on the first submits; clustrix connects,
        # writes its worker bundle and starts its loops in the constructor.
        list(pool.map(noop, range(workers * 4)))
        cx.submit(noop).result()

        # (a) latency, interleaved
        lat_cx: list[float] = []
        lat_pp: list[float] = []
        for _ in range(n_latency):
            lat_pp.append(latency(pool))
            lat_cx.append(latency(cx))
        a_cx, a_pp = median(lat_cx), median(lat_pp)
        rows.append(
            Row(
                f"(a) submit→result, no-op, warm (median of {n_latency})",
                fmt_s(a_cx),
                fmt_s(a_pp),
                fmt_ratio(a_cx / a_pp),
            )
        )
        print(rows[-1])

        # (b) maps
        for chunksize in (1, 50):
            n = n_map_cs1 if chunksize == 1 else n_map
            for work in works:
                pp_times: list[float] = []
                cx_times: list[float] = []
                cx_repeats = 1 if chunksize == 1 else repeats
                before = cx.stats()
                for r in range(repeats):
                    pp_times.append(time_map(pool, work, n, chunksize))
                    if r < cx_repeats:
                        waited = wait_for_idle(local_cluster_jobs, "local")
                        if waited is None:
                            notes.append("Cluster busy during a local map; timings may suffer.")
                        cx_times.append(time_map(cx, work, n, chunksize))
                after = cx.stats()
                b_cx, b_pp = median(cx_times), median(pp_times)
                ratio = b_cx / b_pp
                jobs = math.ceil(n / chunksize)
                target = met = ""
                if chunksize == 50:
                    target, met = f"≤ {TARGET_CS50:g}x", verdict(ratio <= TARGET_CS50)
                label = (
                    f"(b) map {n} calls, {work.name}, chunksize={chunksize} ({jobs} jobs; "
                    f"median of {len(cx_times)} / {len(pp_times)})"
                )
                rows.append(Row(label, fmt_s(b_cx), fmt_s(b_pp), fmt_ratio(ratio), target, met))
                polls = (after["poll_cycles"] - before.get("poll_cycles", 0)) / len(cx_times)
                diag.append(
                    f"{work.name}, chunksize={chunksize}: {jobs} jobs, {polls:.0f} poll cycles "
                    f"per map, clustrix {fmt_s(b_cx / jobs * workers)} per job per worker slot"
                )
                print(rows[-1])

        diag += local_timeline(cx, works[0], n_map, 50)
        print(diag[-1])

    bare_s, worker_s = process_floor(5 if opts.quick else 11)
    floor_cs1 = math.ceil(n_map_cs1 / workers) * worker_s
    floor_cs50 = math.ceil(math.ceil(n_map / 50) / workers) * worker_s
    diag += [
        f"`python -c pass`: {fmt_s(bare_s)}; worker process start (`python -c 'import "
        f"clustrix.worker, cloudpickle'` from the bundle zip): {fmt_s(worker_s)} (medians)",
        f"process-start floor of a {n_map_cs1}-call chunksize=1 map on {workers} workers: "
        f"{fmt_s(floor_cs1)}; of a {n_map}-call chunksize=50 map: {fmt_s(floor_cs50)}",
    ]

    title = f"{workers} workers each; spin = {iterations} loop iterations ≈ {spin_s * 1e3:.1f} ms"
    result_table = table(rows, "ProcessPoolExecutor")
    print_report(result_table, diag, notes, f"Local backend vs ProcessPoolExecutor ({title})")

    if opts.write:
        cmd = "python benchmarks/bench_local.py" + (" --quick" if opts.quick else "") + " --write"
        body = "\n".join(
            [
                f"### Local backend vs ProcessPoolExecutor — {now_text()}",
                "",
                f"Machine: {machine_facts()}",
                "",
                f"Code: {code}. Run: `{cmd}` ({title}). Before the run: {load_before}; "
                f"after: {load_text()}.",
                "",
                result_table,
                "",
                "Diagnostics:",
                "",
                *[f"- {line}" for line in diag],
                *([""] + [f"**Note:** {n}" for n in notes] if notes else []),
            ]
        )
        write_readme_section("bench_local", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
