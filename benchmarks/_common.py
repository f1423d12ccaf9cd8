"""Helpers shared by the benchmark scripts: timing, markdown tables, machine facts, README."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"
#: An idle window is waited for this long at most, polling every IDLE_POLL_S.
IDLE_TIMEOUT_S = 600.0
IDLE_POLL_S = 10.0


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    return statistics.median(values)


def tick_phases(n: int, seed: int) -> list[float]:
    """``n`` start phases within the wall-clock second, one in each n-th of it (jittered
    inside it), in a shuffled order: for :func:`sleep_to_phase` before each sample.

    slurmctld's scheduling loop wakes at whole wall-clock seconds (it waits until
    ``time(NULL) + 1``; with ``batch_sched_delay=0`` it starts pending jobs each time), so
    a job waits for the rest of the second it was submitted in. Random pauses spread the
    samples over that second by chance (medians of 7 then moved by ±0.25 s from run to
    run); these phases spread them evenly, and two series that use the same phases meet
    the tick alike."""
    rng = random.Random(seed)
    phases = [(k + rng.random()) / n for k in range(n)]
    rng.shuffle(phases)
    return phases


def sleep_to_phase(phase: float) -> None:
    """Sleep until the wall clock is ``phase`` (0-1) of a second past a whole second."""
    time.sleep((phase - time.time() % 1.0) % 1.0)


def fmt_s(seconds: float) -> str:
    """Seconds with a precision that suits their size."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: float) -> str:
    """A ratio such as ``1.23x`` or ``1234x``."""
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"


@dataclass
class Row:
    """One line of a results table."""

    what: str
    clustrix: str
    baseline: str
    ratio: str
    target: str = ""
    met: str = ""


def table(rows: Sequence[Row], baseline_name: str) -> str:
    """The rows as a markdown table."""
    head = f"| measurement | clustrix | {baseline_name} | ratio | target | met |"
    lines = [head, "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.what} | {r.clustrix} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |"
        )
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    """How a target shows in the table."""
    return "yes" if ok else "**no**"


def _run(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts() -> str:
    """``nproc``, the CPU model and a few ``lscpu`` lines, Python and OS, as one paragraph."""
    nproc = _run(["nproc"]).strip() or str(os.cpu_count())
    wanted = ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L3 cache")
    facts = []
    for line in _run(["lscpu"]).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in wanted:
            facts.append(f"{key.strip()}: {value.strip()}")
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if match:
            mem = f"; RAM {int(match.group(1)) / 2**20:.1f} GiB"
    return (
        f"`nproc` = {nproc}; `lscpu`: {'; '.join(facts) or 'n/a'}{mem}; "
        f"Python {platform.python_version()} ({sys.executable}); {platform.platform()}"
    )


def load_text() -> str:
    """The load averages (1, 5, 15 min): how busy the machine was around a run."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average n/a"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}"


def revision() -> str:
    """The clustrix code measured: HEAD's short hash, and whether clustrix/ had uncommitted
    changes (other work in progress) at the time of the run."""
    root = README.parent.parent
    head = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]).strip() or "unknown"
    dirty = _run(["git", "-C", str(root), "status", "--porcelain", "--", "clustrix"]).strip()
    return f"clustrix at {head}" + (" + uncommitted changes in clustrix/" if dirty else "")


def now_text() -> str:
    """The date and time of the run."""
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def local_cluster_jobs() -> int | None:
    """Jobs pending or running on the test cluster (it shares this machine's CPUs), if any
    SLURM client is installed here; None otherwise."""
    if shutil.which("squeue") is None:
        return None
    out = subprocess.run(
        ["squeue", "-h", "-t", "PD,R"], capture_output=True, text=True, timeout=30
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def wait_for_idle(
    count_jobs: Callable[[], int | None],
    what: str,
    *,
    timeout_s: float = IDLE_TIMEOUT_S,
    poll_s: float = IDLE_POLL_S,
) -> float | None:
    """Wait until ``count_jobs()`` is 0 (or None: nothing to check).

    Our own last job may still be leaving the queue, so the first seconds are polled fast;
    after that, every ``poll_s`` up to ``timeout_s``. Returns the seconds waited, or None if
    the cluster never went idle (the caller notes that in the results).
    """
    start = time.monotonic()
    fast_until = start + 5.0
    announced = False
    while True:
        n = count_jobs()
        if not n:
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited >= timeout_s:
            print(f"  [{what}] cluster still busy ({n} jobs) after {waited:.0f} s: measuring")
            return None
        if time.monotonic() >= fast_until and not announced:
            print(f"  [{what}] {n} other job(s) on the cluster: waiting for an idle window")
            announced = True
        time.sleep(0.25 if time.monotonic() < fast_until else poll_s)


def print_report(
    result_table: str, diag: Sequence[str], notes: Sequence[str], title: str = ""
) -> None:
    """Print a benchmark's table, then its diagnostics and notes."""
    print()
    if title:
        print(f"{title}\n")
    print(result_table)
    print()
    for line in diag:
        print(f"- {line}")
    for note in notes:
        print(f"NOTE: {note}")


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What changed between two ``executor.stats()``."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def commands_row(
    maps: Sequence[dict[str, int]], *, submit: str, status: str, status_label: str
) -> Row:
    """(d): the commands during part (b)'s maps (``delta`` of ``ex.stats()`` each), with the
    check that a poll cycle asks the scheduler (``commands.<status>``) at most once: a
    cycle the poll budget has no query for only lists the job dirs (``commands.poll``)."""
    ok = all(
        m.get(f"commands.{status}", 0) + m.get("commands.poll", 0) == m.get("poll_cycles", 0)
        and m.get(f"commands.{status}", 0) > 0
        for m in maps
    )
    first = maps[0]
    others = ", ".join(
        f"{k.removeprefix('commands.')} {v}"
        for k, v in sorted(first.items())
        if k.startswith("commands.")
        and k not in (f"commands.{status}", f"commands.{submit}", "commands.poll")
    )
    return Row(
        f"(d) commands during (b) (first of {len(maps)} maps; the check: all)",
        f"{submit} {first.get(f'commands.{submit}', 0)}, {status_label} "
        f"{first.get(f'commands.{status}', 0)}, poll cycles {first.get('poll_cycles', 0)} "
        f"({first.get('commands.poll', 0)} listing only)"
        + (f"; other: {others}" if others else ""),
        "",
        "",
        f"one {status_label} at most per poll cycle",
        verdict(ok),
    )


def default_map_part(
    ex: Any,
    fn: Callable[[Any], Any],
    n: int,
    repeats: int,
    idle: Callable[[str], None],
    *,
    submit: str,
    target_s: float,
) -> tuple[Row, str]:
    """(c): ``list(ex.map(fn, range(n)))`` with the default chunking, ``repeats`` times
    (``fn`` returns its argument; each run after ``idle``): its row and a diagnostic."""
    times: list[float] = []
    stats: dict[str, int] = {}
    for _ in range(repeats):
        idle("(c)")
        before = ex.stats()
        t = time.perf_counter()
        results = list(ex.map(fn, range(n)))
        times.append(time.perf_counter() - t)
        stats = delta(ex.stats(), before)
        assert results == list(range(n))
    slots = ex._engine.slots(ex.config.resources())
    row = Row(
        f"(c) map {n} no-op calls, default chunking ({slots} slots; median of {repeats})",
        fmt_s(median(times)),
        "",
        "",
        f"< {target_s:g} s",
        verdict(median(times) < target_s),
    )
    diagnostic = (
        f"(c) one default-chunked map: {stats.get(f'commands.{submit}', 0)} {submit}, "
        f"{stats.get('poll_cycles', 0)} poll cycles; all runs: "
        + ", ".join(fmt_s(x) for x in times)
    )
    return row, diagnostic


def write_report(
    key: str,
    heading: str,
    paragraphs: Sequence[str],
    tables: Sequence[str],
    diag: Sequence[str],
    notes: Sequence[str],
    *,
    quiet: str = "",
) -> None:
    """Write one benchmark's README section (:func:`write_readme_section`): ``### heading —
    <time>``, the paragraphs (the machine, how it ran), the tables, the diagnostics, then
    the notes (or ``quiet``, if given, when there are none)."""
    lines = [f"### {heading} — {now_text()}", ""]
    for block in [*paragraphs, *tables]:
        lines += [block, ""]
    lines += ["Diagnostics:", "", *[f"- {line}" for line in diag]]
    if notes:
        lines += ["", *[f"**Note:** {n}" for n in notes]]
    elif quiet:
        lines += ["", quiet]
    write_readme_section(key, "\n".join(lines))


def write_readme_section(key: str, body: str) -> None:
    """Replace the text between ``<!-- key:begin -->`` and ``<!-- key:end -->`` in the
    benchmarks README (appending the markers if they are missing)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)
    print(f"wrote {README}")
