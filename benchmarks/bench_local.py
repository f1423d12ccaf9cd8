"""``ClusterExecutor()`` (the local backend) vs concurrent.futures.ProcessPoolExecutor, same run.

    python benchmarks/bench_local.py            # the rows of issue 16 (about 1 minute on 2 CPUs)
    python benchmarks/bench_local.py --quick    # fewer samples
    python benchmarks/bench_local.py --jobs     # also the per-process engine (+3 minutes)
    python benchmarks/bench_local.py --write    # also rewrite the results in README.md

Both executors get ``os.cpu_count()`` workers and are warm (started, one call done) before
anything is timed; every clustrix measurement is interleaved with the same measurement of
the ProcessPoolExecutor, and the ratio is of the medians. The rows (issue 16):

(a) submit-to-result latency of one no-op call;
(b) ``list(ex.map(fn, range(1000), chunksize=50))``;
(c) ``list(ex.map(fn, range(1000)))`` (default chunking: clustrix self-schedules one job
    per worker, ProcessPoolExecutor sends one call at a time);

with ``fn`` a no-op, and for (b)/(c) also a pure-Python CPU-bound loop calibrated to about
5 ms per call; and (d) the client memory a 10,000-call no-op map adds (peak RSS above the
RSS before the map, each executor in a fresh process). ``--jobs``: (a)-(c) again with the
local backend's per-process engine (``CLUSTRIX_LOCAL_ENGINE=jobs``: one OS process per job,
what the default was before the local pool).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    Row,
    fmt_ratio,
    fmt_s,
    load_text,
    local_cluster_jobs,
    machine_facts,
    median,
    print_report,
    revision,
    table,
    verdict,
    wait_for_idle,
    write_report,
)

from clustrix import ClusterExecutor

#: The targets of issue 16, ratio to ProcessPoolExecutor.
TARGET_LATENCY, TARGET_CS50, TARGET_DEFAULT, TARGET_MEMORY = 3.0, 3.0, 1.5, 2.0
SPIN_TARGET_S = 0.005
N_MAP, N_MEMORY = 1000, 10_000


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


def time_map(ex: Executor, work: Workload, n: int, chunksize: int | None) -> float:
    kwargs = {} if chunksize is None else {"chunksize": chunksize}
    t = time.perf_counter()
    results = list(ex.map(work.fn, *work.args(n), **kwargs))
    elapsed = time.perf_counter() - t
    assert len(results) == n
    return elapsed


def latency(ex: Executor) -> float:
    t = time.perf_counter()
    ex.submit(noop, 1).result()
    return time.perf_counter() - t


def measure(
    cx: ClusterExecutor,
    pool: ProcessPoolExecutor,
    works: list[Workload],
    samples: int,
    label: str,
    diag: list[str],
) -> list[Row]:
    """Rows (a)-(c) for ``cx``, each against ``pool``, interleaved."""
    rows: list[Row] = []
    lat_cx: list[float] = []
    lat_pp: list[float] = []
    for _ in range(samples * 5):
        lat_pp.append(latency(pool))
        lat_cx.append(latency(cx))
    a_cx, a_pp = median(lat_cx), median(lat_pp)
    rows.append(
        Row(
            f"(a){label} submit→result, no-op (median of {len(lat_cx)})",
            fmt_s(a_cx),
            fmt_s(a_pp),
            fmt_ratio(a_cx / a_pp),
            f"≤ {TARGET_LATENCY:g}x",
            verdict(a_cx / a_pp <= TARGET_LATENCY),
        )
    )
    print(rows[-1])
    for tag, chunksize, target in (("(b)", 50, TARGET_CS50), ("(c)", None, TARGET_DEFAULT)):
        for work in works:
            pp_times: list[float] = []
            cx_times: list[float] = []
            before = cx.stats()
            for _ in range(samples):
                pp_times.append(time_map(pool, work, N_MAP, chunksize))
                cx_times.append(time_map(cx, work, N_MAP, chunksize))
            after = cx.stats()
            b_cx, b_pp = median(cx_times), median(pp_times)
            ratio = b_cx / b_pp
            how = "default chunking" if chunksize is None else f"chunksize={chunksize}"
            met = verdict(ratio <= target) if work.fn is noop else ""
            rows.append(
                Row(
                    f"{tag}{label} map {N_MAP} calls, {work.name}, {how} (median of {samples})",
                    fmt_s(b_cx),
                    fmt_s(b_pp),
                    fmt_ratio(ratio),
                    f"≤ {target:g}x" if work.fn is noop else "",
                    met,
                )
            )
            counters = {
                k: (v - before.get(k, 0)) / samples
                for k, v in sorted(after.items())
                if v - before.get(k, 0)
            }
            diag.append(
                f"{tag}{label} {work.name}, {how}: per map "
                + ", ".join(f"{k} {v:g}" for k, v in counters.items())
            )
            print(rows[-1])
    return rows


def cpu_s() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_cpu_s(cx: ClusterExecutor) -> float | None:
    """CPU seconds of the local pool's worker processes so far (Linux ``/proc``; reads the
    engine's private state: None if it moved)."""
    try:
        pids = [w.pid for w in cx._engine._core.workers]  # type: ignore[attr-defined]
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


def chunk_breakdown(cx: ClusterExecutor, samples: int) -> str:
    """Where a 1,000-call chunksize=50 no-op map's time goes: ``map()`` itself (its 20
    chunks pickled, one call each, and queued), the rest until the last result; the
    client's CPU (its threads share one GIL) and the workers'; and, for contrast,
    ``submit_map`` (a future and a pickle per call, what ``map`` avoids for chunks)."""
    parts: list[tuple[float, float, float, float, float]] = []
    for _ in range(samples):
        cpu0, workers0 = cpu_s(), worker_cpu_s(cx)
        t0 = time.perf_counter()
        results = cx.map(noop, range(N_MAP), chunksize=50)
        t1 = time.perf_counter()
        for _result in results:
            pass
        t2 = time.perf_counter()
        workers1 = worker_cpu_s(cx)
        spent = (workers1 - workers0) if workers0 is not None and workers1 is not None else -1
        cpu1 = cpu_s()
        futures = cx.submit_map(noop, range(N_MAP), chunksize=50)
        t3 = time.perf_counter()
        for future in futures:
            future.result()
        parts.append((t1 - t0, t2 - t1, cpu1 - cpu0, spent, t3 - t2))
    submit, rest, client, workers, per_call = (median(list(x)) for x in zip(*parts, strict=True))
    return (
        f"(b) no-op chunksize=50, where the time goes (median of {samples}): map() "
        f"{fmt_s(submit)} (20 chunks pickled, one call each, queued), then {fmt_s(rest)} to "
        f"the last result; CPU: the client {fmt_s(client)} (executor and engine threads, one "
        "GIL), the workers "
        + (f"{fmt_s(workers)}" if workers >= 0 else "n/a")
        + f" (clock ticks of 10 ms); submit_map of the same (a future and a pickle per call) "
        f"{fmt_s(per_call)}"
    )


# ------------------------------------------------------------------------- (d) memory
def vm_rss_kb() -> int:
    """This process's resident set size now, in KB (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_child(which: str, work_dir: str) -> dict[str, Any]:
    """In a fresh process: the RSS before and the peak during a 10,000-call no-op map."""
    workers = os.cpu_count() or 1
    ex: Executor
    if which == "clustrix":
        ex = ClusterExecutor(remote_work_dir=work_dir, max_workers=workers)
    else:
        ex = ProcessPoolExecutor(workers)
    with ex:
        ex.submit(noop).result()  # warm
        inputs = list(range(N_MEMORY))
        before = vm_rss_kb()
        t = time.perf_counter()
        results = list(ex.map(noop, inputs))
        wall = time.perf_counter() - t
        assert results == inputs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return {"before_kb": before, "peak_kb": peak, "wall_s": wall}


def memory_rows(work_dir: str, rounds: int, diag: list[str]) -> list[Row]:
    """Row (d): the memory the 10,000-call map adds, clustrix / ProcessPoolExecutor."""
    added: dict[str, list[float]] = {"clustrix": [], "pool": []}
    for _ in range(rounds):
        for which in added:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", which, "--work-dir", work_dir],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            found = json.loads(out.strip().splitlines()[-1])
            added[which].append((found["peak_kb"] - found["before_kb"]) / 1024)
            diag.append(
                f"(d) {which}: RSS before the map {found['before_kb'] / 1024:.1f} MB, "
                f"peak {found['peak_kb'] / 1024:.1f} MB, map {fmt_s(found['wall_s'])}"
            )
    d_cx, d_pp = median(added["clustrix"]), median(added["pool"])
    ratio = d_cx / d_pp if d_pp > 0 else float("inf")
    return [
        Row(
            f"(d) memory a {N_MEMORY:,}-call map adds (peak RSS above the RSS before it; "
            f"median of {rounds}, fresh processes)",
            f"{d_cx:.1f} MB",
            f"{d_pp:.1f} MB",
            fmt_ratio(ratio),
            f"≤ {TARGET_MEMORY:g}x",
            verdict(ratio <= TARGET_MEMORY),
        )
    ]


# ---------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--jobs", action="store_true", help="also the per-process engine")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    parser.add_argument("--memory-child", choices=["clustrix", "pool"], help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.memory_child:
        print(json.dumps(memory_child(opts.memory_child, opts.work_dir)))
        return 0
    load_before = load_text()
    code = revision()
    workers = os.cpu_count() or 1
    samples = 3 if opts.quick else 7
    notes: list[str] = []
    if wait_for_idle(local_cluster_jobs, "local") is None:
        notes.append("The test cluster (same CPUs) was busy and never went idle in 10 minutes.")

    iterations, spin_s = calibrate_spin()
    print(f"spin: {iterations} iterations = {spin_s * 1e3:.2f} ms in-process (median of 21)")
    works = [Workload("no-op", noop, ()), Workload("CPU ~5 ms", spin, (iterations,))]
    rows: list[Row] = []
    diag: list[str] = []
    engines = ["pool", "jobs"] if opts.jobs else ["pool"]
    with tempfile.TemporaryDirectory(prefix="clustrix-bench-") as work_dir:
        for engine in engines:
            os.environ["CLUSTRIX_LOCAL_ENGINE"] = engine
            label = "" if engine == "pool" else " jobs engine:"
            with (
                ClusterExecutor(remote_work_dir=work_dir, max_workers=workers) as cx,
                ProcessPoolExecutor(max_workers=workers) as pool,
            ):
                list(pool.map(noop, range(workers * 4)))
                cx.submit(noop).result()
                list(cx.map(noop, range(workers * 4)))
                # the jobs engine's maps are slow (a process per job): fewer samples
                rows += measure(cx, pool, works, samples if engine == "pool" else 1, label, diag)
                if engine == "pool":
                    diag.append(chunk_breakdown(cx, samples))
                    print(diag[-1])
        os.environ.pop("CLUSTRIX_LOCAL_ENGINE", None)
        rows += memory_rows(work_dir, 1 if opts.quick else 3, diag)

    title = f"{workers} workers each; spin = {iterations} loop iterations ≈ {spin_s * 1e3:.1f} ms"
    result_table = table(rows, "ProcessPoolExecutor")
    print_report(result_table, diag, notes, f"ClusterExecutor() vs ProcessPoolExecutor ({title})")

    if opts.write:
        flags = "".join(f" --{f}" for f in ("quick", "jobs") if getattr(opts, f))
        write_report(
            "bench_local",
            "ClusterExecutor() (local pool) vs ProcessPoolExecutor",
            [
                f"Machine: {machine_facts()}",
                f"Code: {code}. Run: `python benchmarks/bench_local.py{flags} --write` "
                f"({title}). Before the run: {load_before}; after: {load_text()}.",
            ],
            [result_table],
            diag,
            notes,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
