"""``map`` as a pool: the default map vs a raw job array on SLURM, and self-scheduling vs
static chunks on the local pool, same run.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_pool.py            # full run (about 5 minutes on an idle cluster)
    python benchmarks/bench_pool.py --quick    # one sample of each (under 2 minutes)

(1) SLURM over SSH: the default ``map`` (no chunksize: one array of one task per slot, each
    task claiming the next call) of N calls that each sleep ~0.2 s, vs ONE raw
    ``sbatch --array=0-(N-1)`` whose tasks each run one call (``python3 -c``, result to a
    file), ``squeue`` every 50 ms until no task is left, then one ``cat`` of the N results.
    Makespan: the call → every result in hand. Each sample starts on an idle cluster
    (``squeue -h -t PD,R`` empty; waited for up to 15 minutes, polling every 10 s; if it never
    empties this part is skipped, not measured on a busy cluster).
(2) local: ``ClusterExecutor()`` (the embedded local pool) vs ``ProcessPoolExecutor`` with the
    same number of workers, on a map whose calls mostly take 0.05 s but 2 of 40 take 3 s
    (both in the first static chunk): the default map (self-scheduling; the pool's
    ``map`` with its default chunksize=1), and ``chunksize=ceil(n/workers)`` (static chunks).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor

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
    wait_for_idle,
)
from bench_slurm import Login, Raw

from clustrix import ClusterExecutor

IDLE_TIMEOUT_S = 900.0
CALL_S = 0.2  # one call of the SLURM map
FAST_S, SLOW_S = 0.05, 3.0  # the local map's calls
N_LOCAL, N_SLOW = 40, 2


def nap(seconds: float, value: int) -> int:
    """Sleep, return ``value`` squared (sent by value: ``__main__``)."""
    time.sleep(seconds)
    return value * value


def local_work() -> tuple[list[float], list[int]]:
    """The local map's arguments: the first N_SLOW calls are slow (one static chunk)."""
    durations = [SLOW_S if i < N_SLOW else FAST_S for i in range(N_LOCAL)]
    return durations, list(range(N_LOCAL))


def timed_map(ex: Executor, chunksize: int | None) -> float:
    durations, values = local_work()
    kwargs = {} if chunksize is None else {"chunksize": chunksize}
    t = time.perf_counter()
    results = list(ex.map(nap, durations, values, **kwargs))
    elapsed = time.perf_counter() - t
    assert results == [v * v for v in values], "wrong results"
    return elapsed


def slurm_part(
    n: int, repeats: int, idle_timeout: float, rows: list[Row], diag: list[str], notes: list[str]
) -> None:
    """(1): the default map vs a raw array of one call per task, alternating."""
    login = Login.from_env()
    name = f".clustrix-bench-pool-{secrets.token_hex(4)}"
    raw: Raw | None = None
    ex: ClusterExecutor | None = None
    try:
        raw = Raw(login, scratch="")
        home = raw.run('printf %s "$HOME"')
        raw.scratch = f"{home}/{name}"
        raw.run(f"mkdir -p {shlex.quote(raw.scratch)}/out")

        def idle(part: str) -> bool:
            assert raw is not None
            waited = wait_for_idle(raw.busy_jobs, part, timeout_s=idle_timeout)
            if waited is None:
                notes.append(
                    f"{part}: the cluster never went idle within {idle_timeout / 60:.0f} "
                    "minutes (another run's jobs): the SLURM part was skipped, not measured."
                )
                return False
            return True

        if not idle("(1) start"):
            return
        ex = ClusterExecutor(login.config(f"{raw.scratch}/clustrix"))
        ex.submit(nap, 0, 1).result()  # warm: connection, work dir, runtime, discovery
        python = ex.config.python_executable or "python3"
        slots = ex._engine.slots(ex.config.resources()) if hasattr(ex, "_engine") else None
        expected = [i * i for i in range(n)]
        code = f"import sys, time; time.sleep({CALL_S}); print(int(sys.argv[1]) ** 2)"
        wrap = (
            f'{python} -c {shlex.quote(code)} "$SLURM_ARRAY_TASK_ID" > out/"$SLURM_ARRAY_TASK_ID"'
        )
        collect = f"cd {shlex.quote(raw.scratch)}/out && for i in $(seq 0 {n - 1}); do cat $i; done"

        cx_times: list[float] = []
        raw_times: list[float] = []
        cx_makes: list[float] = []
        raw_makes: list[float] = []
        for _ in range(repeats):
            if not idle("(1) raw array"):
                return
            raw.run(f"rm -f {shlex.quote(raw.scratch)}/out/*")
            t = time.perf_counter()
            _, raw_id = raw.poll_job(array=n, wrap=wrap)
            got = [int(x) for x in raw.run(collect).split()]
            raw_times.append(time.perf_counter() - t)
            assert got == expected, f"raw array: {len(got)} results, not the expected {n}"
            print(f"raw array of {n} tasks: {fmt_s(raw_times[-1])}")
            raw_span = raw.job_span(raw_id)

            if not idle("(1) clustrix"):
                return
            job_name = f"bench-pool-{secrets.token_hex(4)}"
            view = ex.options(job_name=job_name)
            t = time.perf_counter()
            results = list(view.map(nap, [CALL_S] * n, range(n)))
            cx_times.append(time.perf_counter() - t)
            assert results == expected, "clustrix map: wrong results"
            print(f"clustrix default map: {fmt_s(cx_times[-1])}")
            cx_id = raw.job_id_named(job_name)
            cx_span = raw.job_span(cx_id) if cx_id else None
            if raw_span and cx_span:
                raw_makes.append(raw_span[2] - raw_span[0])
                cx_makes.append(cx_span[2] - cx_span[0])

        cx, rw = median(cx_times), median(raw_times)
        pairs = ", ".join(f"{c / r:.2f}x" for c, r in zip(cx_times, raw_times, strict=True))
        rows.append(
            Row(
                f"(1) SLURM over SSH: default map of {n} calls of {CALL_S:g} s ({slots} pool "
                f"tasks) vs a raw {n}-task array, one call per task; call → all results "
                f"(median of {repeats}; each pair: {pairs})",
                fmt_s(cx),
                fmt_s(rw),
                fmt_ratio(cx / rw),
            )
        )
        print(rows[-1])
        if cx_makes and raw_makes:
            cm, rm = median(cx_makes), median(raw_makes)
            rows.append(
                Row(
                    "(1) of which inside SLURM: first SubmitTime → last EndTime (scontrol, "
                    "whole seconds; median)",
                    f"{cm:.0f} s",
                    f"{rm:.0f} s",
                    fmt_ratio(cm / rm) if rm else "",
                )
            )
        diag.append(
            "(1) all samples, clustrix / raw: "
            + ", ".join(
                f"{fmt_s(c)} / {fmt_s(r)}" for c, r in zip(cx_times, raw_times, strict=True)
            )
            + f"; sleeping alone: {n} x {CALL_S:g} s / {slots} slots = "
            + (fmt_s(n * CALL_S / slots) if slots else "n/a")
        )
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        if raw is not None:
            raw.close()


def local_part(repeats: int, rows: list[Row], diag: list[str], notes: list[str]) -> None:
    """(2): the local pool vs ProcessPoolExecutor, self-scheduled and static chunks."""
    workers = os.cpu_count() or 1
    static = math.ceil(N_LOCAL / workers)
    if wait_for_idle(local_cluster_jobs, "(2)", timeout_s=60) is None:
        notes.append("(2): the test cluster (same CPUs) was not idle: measured anyway.")
    times: dict[tuple[str, int | None], list[float]] = {}
    with ClusterExecutor(max_workers=workers) as cx, ProcessPoolExecutor(workers) as pool:
        cx.submit(nap, 0, 1).result()  # warm: workers started
        list(pool.map(nap, [0] * workers, range(workers)))
        for _ in range(repeats):  # interleaved
            for chunksize in (None, static):
                for label, ex in (("clustrix", cx), ("pool", pool)):
                    times.setdefault((label, chunksize), []).append(timed_map(ex, chunksize))
        # which job (task) ran each call of one more default map: self-scheduling at work?
        durations, values = local_work()
        futures = cx.submit_map(nap, durations, values)
        for f in futures:
            f.result()
        runs = Counter(str(getattr(f, "job_id", "?")) for f in futures)
        slow_by = sorted({str(getattr(f, "job_id", "?")) for f in futures[:N_SLOW]})
        engine = type(getattr(cx, "_engine", None)).__name__
    ideal = (N_SLOW * SLOW_S + (N_LOCAL - N_SLOW) * FAST_S) / workers
    work = f"{N_LOCAL} calls, {N_SLOW} of {SLOW_S:g} s, the rest {FAST_S:g} s; {workers} workers"
    cx_self = median(times[("clustrix", None)])
    for chunksize, what in (
        (None, "default map (self-scheduling; the pool's map: chunksize=1)"),
        (static, f"chunksize={static} (static chunks: ceil(n/workers))"),
    ):
        c, p = median(times[("clustrix", chunksize)]), median(times[("pool", chunksize)])
        rows.append(
            Row(
                f"(2) local `ClusterExecutor()` vs `ProcessPoolExecutor.map`, {what}: {work} "
                f"(median of {repeats})",
                fmt_s(c),
                fmt_s(p),
                fmt_ratio(c / p),
            )
        )
        print(rows[-1])
    cx_static = median(times[("clustrix", static)])
    rows.append(
        Row(
            f"(2) what self-scheduling saves: clustrix default map / chunksize={static} "
            f"(ideal: all the work spread evenly, {fmt_s(ideal)})",
            f"{fmt_s(cx_self)} / {fmt_s(cx_static)}",
            "",
            fmt_ratio(cx_self / cx_static),
        )
    )
    print(rows[-1])
    diag.append(
        f"(2) one more default map on the local `ClusterExecutor()` ({engine}): its {N_LOCAL} "
        f"calls ran in {len(runs)} job(s), calls per job: "
        + ", ".join(str(k) for _, k in runs.most_common())
        + f"; the {N_SLOW} slow calls in {len(slow_by)} job(s)"
    )
    diag.append(
        "(2) all samples: "
        + "; ".join(
            f"{label} chunksize={cs or 'default'}: " + ", ".join(fmt_s(x) for x in v)
            for (label, cs), v in times.items()
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one sample of each part")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT_S,
        help="seconds to wait for an idle cluster before skipping the SLURM part",
    )
    parser.add_argument("--no-slurm", action="store_true", help="only the local part")
    opts = parser.parse_args()
    load_before = load_text()
    code = revision()
    started = now_text()
    repeats = 1 if opts.quick else 3
    n = 200 if opts.quick else 500
    rows: list[Row] = []
    diag: list[str] = []
    notes: list[str] = []
    if not opts.no_slurm:
        slurm_part(n, repeats, opts.idle_timeout, rows, diag, notes)
    local_part(repeats, rows, diag, notes)
    flags = " ".join(f for f, on in (("--quick", opts.quick), ("--no-slurm", opts.no_slurm)) if on)
    title = f"Map as a pool — {started}"
    print_report(table(rows, "baseline"), diag, notes, title)
    print(
        f"\nMachine: {machine_facts()}\nCode: {code}. Run: `python benchmarks/bench_pool.py"
        f"{' ' + flags if flags else ''}`. Before: {load_before}; after: {load_text()}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
