"""clustrix on Grid Engine over SSH vs raw qsub over one asyncssh connection, same run.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_sge.py            # full run (about 12 minutes)
    python benchmarks/bench_sge.py --quick    # 3 latency samples, 200-call arrays
    python benchmarks/bench_sge.py --write    # also rewrite the results in README.md

Measured, each part after waiting for an idle Grid Engine (``qstat -u '*'`` empty):

(a) submit-to-result latency of a no-op call vs the faster raw baseline: ``qsub -sync y -b y
    true`` (qsub waits for the job's end itself) or ``qsub -terse`` + a tight ``qstat -j``
    loop (samples interleaved, each after a random 0-1 s pause: the scheduler runs once a
    second here);
(b) ``map(noop, range(1000), chunksize=1)`` vs ONE raw ``qsub -t 1-1000 -b y true``
    (``-sync y``, or ``-terse`` + ``qstat`` every 50 ms: the faster), with Grid Engine's own
    makespan of both (first submission to last end, from ``qacct``);
(c) the same map with default chunking (absolute time);
(d) ``executor.stats()`` during (b): qsub once, one status command per poll cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import secrets
import shlex
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncssh
from _common import (
    Row,
    commands_row,
    default_map_part,
    delta,
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
from bench_slurm import Login

from clustrix import ClusterConfig, ClusterExecutor

T = TypeVar("T")

TARGET_LATENCY = 1.25
TARGET_MAP_CS1 = 1.5
TARGET_DEFAULT_S = 5.0
ARRAY_POLL_S = 0.05  # the raw array loop polls as often as clustrix's fastest poll
_QACCT_TIME = "%a %b %d %H:%M:%S %Y"


def noop(x: Any = None) -> Any:
    """Nothing at all (sent by value: the cluster has no copy of this module)."""
    return x


def sge_config(login: Login, work_dir: str, **overrides: Any) -> ClusterConfig:
    """A Grid-Engine-over-SSH config for this login (clustrix's defaults otherwise)."""
    return ClusterConfig(
        cluster_type="sge",
        cluster_host=login.host,
        cluster_port=login.port,
        username=login.user,
        key_file=login.key_file,
        known_hosts=login.known_hosts,
        remote_work_dir=work_dir,
        **overrides,
    )


class RawSge:
    """Raw Grid Engine commands over ONE asyncssh connection, on a private event loop."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self.loop = asyncio.new_event_loop()
        self.conn: asyncssh.SSHClientConnection = self.sync(self._connect())
        self.scratch = ""
        self.outstanding: set[str] = set()

    async def _connect(self, patience_s: float = 60.0) -> asyncssh.SSHClientConnection:
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return await asyncssh.connect(
                    self.login.host,
                    port=self.login.port,
                    username=self.login.user,
                    client_keys=[self.login.key_file],
                    known_hosts=self.login.known_hosts,
                )
            except (OSError, asyncssh.Error):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)

    def sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _run(self, command: str) -> asyncssh.SSHCompletedProcess:
        try:
            return await self.conn.run(command, check=False)
        except (OSError, asyncssh.Error):
            # the test cluster's sshd was restarted (another test's fault injection):
            # connect again and run the command once more
            self.conn = await self._connect()
            return await self.conn.run(command, check=False)

    def run(self, command: str) -> str:
        return str(self.sync(self._run(command)).stdout or "")

    def busy_jobs(self) -> int:
        out = self.run("qstat -u '*' | tail -n +3")
        return len([line for line in out.splitlines() if line.strip()])

    def _qsub(self, extra: str) -> str:
        cwd = f"-wd {shlex.quote(self.scratch)}"
        return f"qsub {cwd} -N rawbench -b y -o /dev/null -e /dev/null {extra} true"

    def sync_job(self, array: int | None = None) -> float:
        """Wall time of ``qsub -sync y`` (qsub waits for the end of the job or array)."""

        async def go() -> float:
            t = time.perf_counter()
            flag = f"-t 1-{array}" if array else ""
            done = await self._run(self._qsub(f"-sync y {flag}"))
            if done.exit_status != 0:
                raise RuntimeError(f"qsub -sync y failed: {done.stdout!r} {done.stderr!r}")
            return time.perf_counter() - t

        return self.sync(go())

    def poll_job(self, array: int | None = None) -> tuple[float, str]:
        """Wall time of ``qsub -terse`` + ``qstat`` until the job has left, and its number."""

        async def go() -> tuple[float, str]:
            t = time.perf_counter()
            flag = f"-t 1-{array}" if array else ""
            done = await self._run(self._qsub(f"-terse {flag}"))
            number = str(done.stdout).strip().split(".")[0]
            if not number.isdigit():
                raise RuntimeError(f"qsub printed {done.stdout!r} {done.stderr!r}")
            self.outstanding.add(number)
            while True:
                out = await self._run(f"qstat -j {number} >/dev/null 2>&1; echo $?")
                if str(out.stdout).strip() != "0":
                    break
                if array:
                    await asyncio.sleep(ARRAY_POLL_S)
            self.outstanding.discard(number)
            return time.perf_counter() - t, number

        return self.sync(go())

    def makespan(self, number: str, tasks: int) -> float | None:
        """First submission to last end of a job's tasks, from qacct (whole seconds)."""
        for _ in range(50):
            out = self.run(f"qacct -j {number} 2>/dev/null | grep -E '^(qsub_time|end_time) '")
            submits, ends = [], []
            for line in out.splitlines():
                key, _, value = line.partition(" ")
                try:
                    stamp = dt.datetime.strptime(value.strip(), _QACCT_TIME).timestamp()
                except ValueError:
                    continue
                (submits if key == "qsub_time" else ends).append(stamp)
            if len(ends) >= tasks and submits:
                return max(ends) - min(submits)
            time.sleep(0.2)
        return None

    def close(self) -> None:
        if self.conn.is_closed():
            self.conn = self.sync(self._connect())
        if self.outstanding:
            self.run("qdel " + " ".join(sorted(self.outstanding)))
        if self.scratch:
            self.run(f"rm -rf -- {shlex.quote(self.scratch)}")
        self.conn.close()
        self.sync(self.conn.wait_closed())
        self.loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, 200-call arrays")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    opts = parser.parse_args()
    load_before, code = load_text(), revision()
    n_latency = 3 if opts.quick else 9
    n_map = 200 if opts.quick else 1000
    repeats = 1 if opts.quick else 2

    login = Login.from_env()
    name = f".clustrix-bench-sge-{secrets.token_hex(4)}"
    notes: list[str] = []
    rows: list[Row] = []
    diag: list[str] = []
    raw: RawSge | None = None
    ex: ClusterExecutor | None = None
    try:
        raw = RawSge(login)
        home = raw.run('printf %s "$HOME"')
        raw.scratch = f"{home}/{name}"
        raw.run(f"mkdir -p {shlex.quote(raw.scratch)}")

        def idle(part: str) -> None:
            assert raw is not None
            if wait_for_idle(raw.busy_jobs, part) is None:
                notes.append(f"{part}: no idle window within 10 minutes; measured anyway.")

        ex = ClusterExecutor(sge_config(login, f"~/{name}/clustrix"))
        ex.submit(noop).result()  # warm: connection, work dir, worker bundle, discovery

        # ------------------------------------------------------------------ (a)
        lat_cx: list[float] = []
        lat_sync: list[float] = []
        lat_poll: list[float] = []
        polls_per_call: list[int] = []
        rng = random.Random(1)  # the scheduler's 1 s tick: decorrelate the samples from it
        for _ in range(n_latency):
            idle("(a)")
            time.sleep(rng.random())
            lat_sync.append(raw.sync_job())
            idle("(a)")
            time.sleep(rng.random())
            lat_poll.append(raw.poll_job()[0])
            idle("(a)")
            time.sleep(rng.random())
            before = ex.stats()
            t = time.perf_counter()
            ex.submit(noop, 1).result()
            lat_cx.append(time.perf_counter() - t)
            polls_per_call.append(delta(ex.stats(), before).get("poll_cycles", 0))
        a_cx, a_sync, a_poll = median(lat_cx), median(lat_sync), median(lat_poll)
        a_raw = min(a_sync, a_poll)
        rows.append(
            Row(
                f"(a) submit→result, no-op (median of {n_latency})",
                fmt_s(a_cx),
                f"{fmt_s(a_raw)} (qstat loop {fmt_s(a_poll)}; -sync y {fmt_s(a_sync)})",
                fmt_ratio(a_cx / a_raw),
                f"≤ {TARGET_LATENCY}x",
                verdict(a_cx / a_raw <= TARGET_LATENCY),
            )
        )
        diag.append(
            f"(a) {median(polls_per_call):.0f} poll cycles per call (median); all samples: "
            f"clustrix {', '.join(fmt_s(x) for x in lat_cx)}; -sync y "
            f"{', '.join(fmt_s(x) for x in lat_sync)}; qstat loop "
            f"{', '.join(fmt_s(x) for x in lat_poll)}"
        )
        print(rows[-1])

        # ------------------------------------------------------------------ (b), (d)
        b_cx: list[float] = []
        b_poll: list[float] = []
        b_sync: list[float] = []
        makes: list[tuple[float, float]] = []
        b_stats: list[dict[str, int]] = []
        # qsub -sync y waits about as long as the qstat loop: once, the loop and clustrix
        # alternate (a 1,000-task array takes about two minutes on 16 slots here)
        idle("(b) raw -sync y")
        b_sync.append(raw.sync_job(array=n_map))
        for _ in range(repeats):
            idle("(b) raw qstat loop")
            elapsed, raw_number = raw.poll_job(array=n_map)
            b_poll.append(elapsed)
            idle("(b) clustrix")
            before = ex.stats()
            t = time.perf_counter()
            futures = ex.submit_map(noop, range(n_map), chunksize=1)
            results = [f.result() for f in futures]
            b_cx.append(time.perf_counter() - t)
            b_stats.append(delta(ex.stats(), before))
            assert results == list(range(n_map))
            print(f"(b) clustrix {fmt_s(b_cx[-1])}, raw qstat loop {fmt_s(b_poll[-1])}")
            cx_number = (futures[0].job_id or "").split(".")[0]
            cx_tasks = len({f.job_id for f in futures})  # a task may run several calls
            raw_make = raw.makespan(raw_number, n_map)
            cx_make = raw.makespan(cx_number, cx_tasks) if cx_number.isdigit() else None
            diag.append(
                f"(b) clustrix map #{len(b_cx)}: one array of {cx_tasks} tasks, "
                f"{b_stats[-1].get('poll_cycles', 0)} poll cycles"
            )
            if raw_make is not None and cx_make is not None:
                makes.append((cx_make, raw_make))
        bc, bp, bs = median(b_cx), median(b_poll), median(b_sync)
        b_raw = min(bp, bs)
        pairs = ", ".join(f"{c / p:.2f}x" for c, p in zip(b_cx, b_poll, strict=True))
        rows.append(
            Row(
                f"(b) map {n_map} no-op calls, chunksize=1 (one task array; median of "
                f"{repeats}; each run vs its qstat loop: {pairs})",
                fmt_s(bc),
                f"{fmt_s(b_raw)} (qstat loop {fmt_s(bp)}; -sync y {fmt_s(bs)}, once)",
                fmt_ratio(bc / b_raw),
                f"≤ {TARGET_MAP_CS1}x",
                verdict(bc / b_raw <= TARGET_MAP_CS1),
            )
        )
        print(rows[-1])
        if makes:
            cx_m, raw_m = median([m[0] for m in makes]), median([m[1] for m in makes])
            rows.append(
                Row(
                    "(b) of which inside Grid Engine: first qsub_time → last end_time (qacct, "
                    "whole seconds; median)",
                    f"{cx_m:.0f} s",
                    f"{raw_m:.0f} s (qstat loop runs)",
                    fmt_ratio(cx_m / raw_m) if raw_m else "",
                )
            )
        rows.append(
            commands_row(b_stats, submit="qsub", status="sh", status_label="status script (sh)")
        )
        print(rows[-1])

        # ------------------------------------------------------------------ (c)
        row, line = default_map_part(
            ex, noop, n_map, repeats, idle, submit="qsub", target_s=TARGET_DEFAULT_S
        )
        rows.append(row)
        diag.append(line)
        print(rows[-1])
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        if raw is not None:
            raw.close()

    result_table = table(rows, "raw qsub (best)")
    title = "Grid Engine over SSH vs raw qsub over one asyncssh connection"
    print_report(result_table, diag, notes, title)
    if opts.write:
        flags = ["--quick"] if opts.quick else []
        cmd = " ".join(["python benchmarks/bench_sge.py", *flags, "--write"])
        write_report(
            "bench_sge",
            title,
            [
                f"Machine (sshd, sge_qmaster, sge_execd and the client all on it): "
                f"{machine_facts()}",
                f"Code: {code}. Run: `{cmd}`. Cluster: single-host Grid Engine 8.1.9 (Debian "
                f"12), queue all.q with 16 slots, scheduler every second, on this machine over "
                f"{login.user}@{login.host}:{login.port}. Before the run: {load_before}; "
                f"after: {load_text()}.",
            ],
            [result_table],
            diag,
            notes,
            quiet="Every part started with an idle Grid Engine (no foreign jobs).",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
