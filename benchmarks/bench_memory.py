"""Client memory and status commands of a 10,000-call map on SLURM over SSH.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_memory.py            # 3 rounds (about 5 minutes)
    python benchmarks/bench_memory.py --quick    # 1 round
    python benchmarks/bench_memory.py --write    # also rewrite the "bench_memory" README section

Every case runs in a FRESH Python process, so its ``ru_maxrss`` is a clean peak of that
process alone (the parent only launches them, waits for an idle cluster, and removes the
scratch directory at the end). Each child imports clustrix, builds a ``ClusterExecutor``
for the test cluster exactly as ``bench_slurm.py`` does (connected: work dir, worker
runtime, scheduler discovery), then:

(1) baseline: holds a list of 10,000 inputs and the 10,000 results computed locally;
(2) ``list(ex.map(square, range(10_000)))``, default chunksize;
(3) the same with ``chunksize=100`` (100 jobs);
(4) ``list(ex.map(square, range(1_000)))``, default chunksize;
(5) ``ProcessPoolExecutor(2).map`` of the same 10,000 calls, the code clustrix replaces.

Each child checks that its results are all there, correct and in input order, and reports
its peak RSS, the map's wall time, the ``executor.stats()`` counters of the map
(``poll_cycles``, ``commands.squeue`` and the other commands), and how many jobs the map
became. Ratios: peak RSS of each map / the baseline process; of the 10,000-call map / the
1,000-call map; and the memory the 10,000-call map adds over the RSS before it, clustrix /
ProcessPoolExecutor (both hold 10,000 futures and results, so both grow with the number of
calls; the target is the cost per call, at most 3x the stdlib's). The squeue check: at most
one status command per poll cycle, for all outstanding jobs.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from _common import (
    Row,
    fmt_ratio,
    fmt_s,
    load_text,
    machine_facts,
    median,
    print_report,
    revision,
    table,
    verdict,
    wait_for_idle,
    write_report,
)
from bench_slurm import Login, Raw

from clustrix import ClusterExecutor

N_BIG = 10_000
N_SMALL = 1_000
USER_CHUNKSIZE = 100
#: 10,000-call / 1,000-call peak RSS: bounded memory is close to 1 (linear would be ~10)
TARGET_VS_POOL = 3.0
CHILD_TIMEOUT_S = 1200.0
CHILD_ATTEMPTS = 3  # the shared test cluster may be restarted under a run: retry a child
RESULT_TAG = "BENCH_MEMORY_RESULT "


def square(x: int) -> int:
    """A cheap call (sent by value: run as a script, this module is ``__main__``)."""
    return x * x


@dataclass(frozen=True)
class Case:
    """One child process: a baseline (no map) or a map of ``n`` calls."""

    key: str
    label: str
    n: int
    chunksize: int | None  # None: the default
    baseline: bool = False
    pool: bool = False  # concurrent.futures.ProcessPoolExecutor instead of clustrix


CASES = [
    Case(
        "baseline",
        f"(1) baseline: executor built, {N_BIG:,} inputs + results held",
        N_BIG,
        None,
        True,
    ),
    Case("map10k", f"(2) map {N_BIG:,} calls, default chunksize", N_BIG, None),
    Case(
        "map10k_cs", f"(3) map {N_BIG:,} calls, chunksize={USER_CHUNKSIZE}", N_BIG, USER_CHUNKSIZE
    ),
    Case("map1k", f"(4) map {N_SMALL:,} calls, default chunksize", N_SMALL, None),
    Case(
        "pool10k",
        f"(5) ProcessPoolExecutor(2).map, {N_BIG:,} calls (what clustrix replaces)",
        N_BIG,
        None,
        pool=True,
    ),
]


# ---------------------------------------------------------------------------- the child


def vm_rss_kb() -> int:
    """This process's resident set size now, in KB (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def count_jobs(ex: ClusterExecutor) -> list[int] | None:
    """A one-item counter of the jobs (array tasks) ``ex`` queues from now on, by wrapping
    its engine's ``enqueue`` on this instance (private: None if it moved)."""
    engine: Any = getattr(ex, "_engine", None)
    enqueue = getattr(engine, "enqueue", None)
    if enqueue is None:
        return None
    jobs = [0]

    def counting(tasks: list[Any]) -> None:
        jobs[0] += len(tasks)
        enqueue(tasks)

    engine.enqueue = counting
    return jobs


def child(case: Case, work_dir: str) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its measurements."""
    rss_imported = vm_rss_kb()
    ex = ClusterExecutor(Login.from_env().config(work_dir))
    try:
        jobs = count_jobs(ex)
        engine: Any = getattr(ex, "_engine", None)
        slots = engine.slots(ex.config.resources()) if engine is not None else None
        inputs = list(range(case.n))
        rss_ready = vm_rss_kb()
        before = ex.stats()
        t = time.perf_counter()
        if case.baseline:
            results = [square(x) for x in inputs]
        elif case.pool:
            with ProcessPoolExecutor(2) as pool:
                results = list(pool.map(square, inputs))
        else:
            results = list(ex.map(square, inputs, chunksize=case.chunksize))
        wall = time.perf_counter() - t
        after = ex.stats()
        # checked without building a second list (that would add to the peak)
        correct = len(results) == case.n and all(
            r == x * x for x, r in zip(inputs, results, strict=True)
        )
        rss_after = vm_rss_kb()
    finally:
        ex.shutdown(wait=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    stats = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    return {
        "key": case.key,
        "n": case.n,
        "chunksize": case.chunksize,
        "correct": correct,
        "peak_kb": peak,
        "rss_imported_kb": rss_imported,
        "rss_ready_kb": rss_ready,
        "rss_after_kb": rss_after,
        "wall_s": wall,
        "jobs": jobs[0] if jobs is not None else None,
        "slots": slots,
        "stats": stats,
    }


# --------------------------------------------------------------------------- the parent


def run_child(case: Case, work_dir: str) -> tuple[dict[str, Any] | None, str]:
    """Run ``case`` in a fresh interpreter; its result (None if it failed) and its errors."""
    argv = [sys.executable, __file__, "--child", case.key, "--work-dir", work_dir]
    errors = ""
    for attempt in range(1, CHILD_ATTEMPTS + 1):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            errors = f"{case.key}: timed out after {CHILD_TIMEOUT_S:.0f} s"
        else:
            for line in done.stdout.splitlines():
                if line.startswith(RESULT_TAG) and done.returncode == 0:
                    result: dict[str, Any] = json.loads(line.removeprefix(RESULT_TAG))
                    return result, errors
            errors = f"{case.key}: exit {done.returncode}: {done.stderr.strip()[-2000:]}"
        print(f"  [{case.key}] attempt {attempt} failed: {errors}", file=sys.stderr)
        time.sleep(10)
    return None, errors


def busy_jobs(raw: Raw) -> int:
    """Jobs pending or running on the cluster, reconnecting ``raw`` once if the shared
    test cluster's sshd was restarted under it."""
    try:
        if raw.conn.is_closed():
            raise ConnectionError("closed")
        return raw.busy_jobs()
    except (OSError, asyncssh.Error):
        raw.conn = raw.sync(raw._connect())
        return raw.busy_jobs()


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def parent(opts: argparse.Namespace) -> int:
    load_before = load_text()
    code = revision()
    rounds = 1 if opts.quick else 3
    login = Login.from_env()
    name = f".clustrix-bench-{secrets.token_hex(4)}"
    notes: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CASES}
    raw: Raw | None = None
    try:
        raw = Raw(login, scratch="")
        home = raw.run('printf %s "$HOME"')
        raw.scratch = f"{home}/{name}"
        raw.run(f"mkdir -p {shlex.quote(raw.scratch)}")
        work_dir = f"{raw.scratch}/clustrix"

        # warm: the work dir, worker runtime and the cluster-side environment exist before
        # any child runs (the children share the work dir), so no child pays for them
        for attempt in range(1, CHILD_ATTEMPTS + 1):
            try:
                with ClusterExecutor(login.config(work_dir)) as warm:
                    assert warm.submit(square, 3).result() == 9
                break
            except Exception as exc:  # the shared cluster restarted: try again
                if attempt == CHILD_ATTEMPTS:
                    raise
                print(f"  [warm-up] attempt {attempt} failed: {exc!r}", file=sys.stderr)
                time.sleep(10)

        for r in range(1, rounds + 1):
            for case in CASES:
                if not case.baseline and wait_for_idle(lambda: busy_jobs(raw), case.key) is None:
                    notes.append(f"{case.key}: no idle window within 10 minutes.")
                result, errors = run_child(case, work_dir)
                if result is None:
                    notes.append(f"round {r}: {errors}")
                    continue
                runs[case.key].append(result)
                print(
                    f"round {r} {case.key}: peak {mb(result['peak_kb'])}, "
                    f"ready {mb(result['rss_ready_kb'])}, wall {fmt_s(result['wall_s'])}, "
                    f"jobs {result['jobs']}, correct {result['correct']}, {result['stats']}"
                )
    finally:
        if raw is not None:
            raw.close()

    rows, diag = report(runs, notes)
    result_table = table(rows, "baseline")
    title = "Client memory of a map on SLURM over SSH, each case in a fresh process"
    print_report(result_table, diag, notes, title)
    if opts.write:
        cmd = " ".join(
            ["python benchmarks/bench_memory.py", *(["--quick"] * opts.quick), "--write"]
        )
        write_report(
            "bench_memory",
            "Client memory of a 10,000-call map on SLURM",
            [
                f"Machine (sshd, slurmctld, slurmd and the client all on it): {machine_facts()}",
                f"Code: {code}. Run: `{cmd}` ({rounds} round(s) of the five processes, "
                f"interleaved; medians). Cluster: single-node SLURM 22.05 on this machine over "
                f"{login.user}@{login.host}:{login.port}. Before the run: {load_before}; "
                f"after: {load_text()}.",
            ],
            [result_table],
            diag,
            notes,
        )
    complete = all(runs[c.key] for c in CASES)
    return 0 if complete else 1


def report(runs: dict[str, list[dict[str, Any]]], notes: list[str]) -> tuple[list[Row], list[str]]:
    """The table rows and diagnostics from every child's results."""
    rows: list[Row] = []
    diag: list[str] = []

    def peak(key: str) -> float | None:
        values = [r["peak_kb"] for r in runs[key]]
        return median(values) if values else None

    def growth(key: str) -> float | None:
        """Peak RSS above the RSS with the executor built and the inputs made."""
        values = [r["peak_kb"] - r["rss_ready_kb"] for r in runs[key]]
        return median(values) if values else None

    base = peak("baseline")
    for case in CASES:
        results = runs[case.key]
        if not results:
            rows.append(Row(case.label, "failed", "", ""))
            continue
        p = peak(case.key)
        assert p is not None
        if case.baseline:
            rows.append(Row(f"{case.label}: peak RSS (median of {len(results)})", mb(p), "", ""))
            continue
        jobs = {r["jobs"] for r in results}
        walls = [r["wall_s"] for r in results]
        correct = all(r["correct"] for r in results)
        rows.append(
            Row(
                f"{case.label} ({'/'.join(str(j) for j in sorted(jobs, key=str))} jobs; "
                f"map {fmt_s(median(walls))}): peak RSS (median of {len(results)})",
                mb(p),
                mb(base) if base else "",
                fmt_ratio(p / base) if base else "",
                "results correct, in order",
                verdict(correct),
            )
        )
    big, small = peak("map10k"), peak("map1k")
    if big and small:
        ratio = big / small
        rows.append(
            Row(
                f"(2) / (4): peak RSS of the {N_BIG:,}-call map / the {N_SMALL:,}-call map "
                "(default chunksize)",
                mb(big),
                f"{mb(small)} (the {N_SMALL:,}-call map)",
                fmt_ratio(ratio),
                "",
                "",
            )
        )
    g_big, g_small, g_base = growth("map10k"), growth("map1k"), growth("baseline")
    if g_big is not None and g_small is not None:
        rows.append(
            Row(
                "(2) / (4): peak RSS above the RSS before the map (executor built, inputs made)",
                mb(g_big),
                f"{mb(g_small)} (the {N_SMALL:,}-call map)",
                fmt_ratio(g_big / g_small) if g_small > 0 else "",
            )
        )
    g_pool = growth("pool10k")
    if g_big is not None and g_pool:
        # Both hold 10,000 futures and results: what a map of N calls needs grows with N
        # in either; the question is how much per call.
        rows.append(
            Row(
                f"(2) / (5): memory the {N_BIG:,}-call map adds (peak above the pre-map RSS), "
                "clustrix / ProcessPoolExecutor",
                mb(g_big),
                mb(g_pool),
                fmt_ratio(g_big / g_pool),
                f"≤ {TARGET_VS_POOL:g}x",
                verdict(g_big / g_pool <= TARGET_VS_POOL),
            )
        )
    status_ok = True
    parts = []
    for case in CASES:
        if case.baseline or case.pool or not runs[case.key]:
            continue
        cycles = [r["stats"].get("poll_cycles", 0) for r in runs[case.key]]
        squeues = [r["stats"].get("commands.squeue", 0) for r in runs[case.key]]
        status_ok &= all(0 < s <= c for s, c in zip(squeues, cycles, strict=True))
        parts.append(
            f"{case.key.removeprefix('map')}: "
            + ", ".join(f"{s}/{c}" for s, c in zip(squeues, cycles, strict=True))
        )
    rows.append(
        Row(
            "(2) to (4) status commands: squeue / poll cycles during each map (every run)",
            "; ".join(parts),
            "",
            "",
            "squeue ≤ poll cycles",
            verdict(status_ok and bool(parts)),
        )
    )

    for case in CASES:
        for i, r in enumerate(runs[case.key], 1):
            others = ", ".join(
                f"{k.removeprefix('commands.')} {v}"
                for k, v in sorted(r["stats"].items())
                if k != "poll_cycles"
            )
            diag.append(
                f"{case.key} #{i}: peak {mb(r['peak_kb'])}; RSS after imports "
                f"{mb(r['rss_imported_kb'])}, executor built + inputs "
                f"{mb(r['rss_ready_kb'])}, after the map {mb(r['rss_after_kb'])}; "
                f"{'map' if not case.baseline else 'local compute'} {fmt_s(r['wall_s'])}"
                + (
                    f"; {r['jobs']} jobs ({r['slots']} slots); poll cycles "
                    f"{r['stats'].get('poll_cycles', 0)}; commands: {others or 'none'}"
                    if not (case.baseline or case.pool)
                    else ""
                )
            )
    if g_big is not None and g_small is not None:
        per_call = (g_big - g_small) * 1024 / (N_BIG - N_SMALL)
        diag.append(
            f"growth per call between the {N_SMALL:,}- and {N_BIG:,}-call maps (peak above the "
            f"pre-map RSS): {per_call:.0f} bytes per call"
            + (
                f"; the baseline's own growth (local compute): {mb(g_base)} (RSS counters "
                "are approximate to a few hundred KB)"
                if g_base is not None
                else ""
            )
        )
    return rows, diag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    parser.add_argument("--child", choices=[c.key for c in CASES], help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        case = next(c for c in CASES if c.key == opts.child)
        print(RESULT_TAG + json.dumps(child(case, opts.work_dir)), flush=True)
        return 0
    return parent(opts)


if __name__ == "__main__":
    sys.exit(main())
