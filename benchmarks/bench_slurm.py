"""clustrix on SLURM over SSH vs raw sbatch over one asyncssh connection, same run.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_slurm.py            # full run (about 12 minutes)
    python benchmarks/bench_slurm.py --quick    # 3 latency samples, 200-call arrays
    python benchmarks/bench_slurm.py --write    # also rewrite the results in README.md
    python benchmarks/bench_slurm.py --floor    # also time raw arrays of the worker's start

Measured, each part after waiting for an idle cluster (``squeue -h -t PD,R`` empty):

(a) submit-to-result latency of a no-op call vs the faster raw baseline: ``sbatch --wait
    --wrap true`` or ``sbatch --parsable`` + a tight ``squeue`` loop (samples interleaved,
    each started at its own phase of the wall-clock second: slurmctld starts jobs at whole
    seconds);
(b) ``map(noop, range(1000), chunksize=1)`` vs ONE raw ``sbatch --array=0-999 --wrap true``
    (``--wait``, or ``--parsable`` + ``squeue`` every 50 ms: the faster), with the
    scheduler-side makespan of both from ``scontrol show job``;
(c) the same map with default chunking (absolute time);
(d) ``executor.stats()`` during (b).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import posixpath
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
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
    sleep_to_phase,
    table,
    tick_phases,
    verdict,
    wait_for_idle,
    write_report,
)

from clustrix import ClusterConfig, ClusterExecutor
from clustrix._bundle import worker_bundle

T = TypeVar("T")

TARGET_LATENCY = 1.25
TARGET_MAP_CS1 = 1.5
TARGET_DEFAULT_S = 5.0
ARRAY_POLL_S = 0.05  # the raw array loop polls as often as clustrix's fastest poll
#: squeue states of a job that has not finished (COMPLETING counts as finished, as for
#: ``sbatch --wait``).
UNFINISHED = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"}


def noop(x: Any = None) -> Any:
    """Nothing at all (sent by value: the cluster has no copy of this module)."""
    return x


@dataclass(frozen=True)
class Login:
    """The test cluster's sshd, as tests/clustertools.py finds it."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str

    @classmethod
    def from_env(cls) -> Login:
        state = Path(os.environ.get("CLUSTRIX_TEST_STATE", "/tmp/clustrix-testcluster"))
        return cls(
            host=os.environ.get("CLUSTRIX_TEST_SSH_HOST", "127.0.0.1"),
            port=int(os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222")),
            user=os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix"),
            key_file=os.environ.get("CLUSTRIX_TEST_SSH_KEY", str(state / "keys" / "id_ed25519")),
            known_hosts=os.environ.get(
                "CLUSTRIX_TEST_KNOWN_HOSTS", str(state / "keys" / "known_hosts")
            ),
        )

    def config(self, work_dir: str, **overrides: Any) -> ClusterConfig:
        """A SLURM-over-SSH config for this login (clustrix's defaults otherwise)."""
        return ClusterConfig(
            cluster_type="slurm",
            cluster_host=self.host,
            cluster_port=self.port,
            username=self.user,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
            remote_work_dir=work_dir,
            **overrides,
        )


class Raw:
    """Raw commands over ONE asyncssh connection, on a private event loop (blocking API)."""

    def __init__(self, login: Login, scratch: str) -> None:
        self.login = login
        self.loop = asyncio.new_event_loop()
        self.conn: asyncssh.SSHClientConnection = self.sync(self._connect())
        self.scratch = scratch  # absolute path, created by the caller
        self.outstanding: set[str] = set()

    async def _connect(self, patience_s: float = 60.0) -> asyncssh.SSHClientConnection:
        """Connect, retrying for a while (the test cluster's sshd may be restarting)."""
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
        return await self.conn.run(command, check=False)

    def run(self, command: str) -> str:
        return str(self.sync(self._run(command)).stdout or "")

    def busy_jobs(self) -> int:
        out = self.run("squeue -h -t PD,R")
        return len([line for line in out.splitlines() if line.strip()])

    def _sbatch(self, extra: str, wrap: str = "true") -> str:
        scratch = shlex.quote(self.scratch)
        return (
            f"sbatch --chdir={scratch} -o /dev/null -e /dev/null {extra} --wrap {shlex.quote(wrap)}"
        )

    async def _wait_job(self, array: int | None) -> float:
        t = time.perf_counter()
        flag = f"--array=0-{array - 1}" if array else ""
        done = await self._run(self._sbatch(f"--wait {flag}"))
        elapsed = time.perf_counter() - t
        if done.exit_status != 0:
            raise RuntimeError(f"sbatch --wait failed: {done.stderr!r}")
        return elapsed

    async def _poll_job(self, array: int | None, wrap: str) -> tuple[float, str]:
        t = time.perf_counter()
        flag = f"--array=0-{array - 1}" if array else ""
        done = await self._run(self._sbatch(f"--parsable {flag}", wrap))
        job_id = str(done.stdout).strip().split(";")[0]
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch --parsable printed {done.stdout!r} {done.stderr!r}")
        self.outstanding.add(job_id)
        if array:
            # any task not finished yet? (-r: one line per task; empty: all done)
            query = f"squeue -h -r -j {job_id} -t PD,CF,R,S -o %i | head -n 1"
        else:
            query = f"squeue -h -j {job_id} -t all -o %T"
        while True:
            out = await self._run(query)
            text = str(out.stdout).strip()
            if array:
                if not text:
                    break
                await asyncio.sleep(ARRAY_POLL_S)
            elif "Invalid job id" in str(out.stderr) or (text and text not in UNFINISHED):
                break
        elapsed = time.perf_counter() - t
        self.outstanding.discard(job_id)
        return elapsed, job_id

    def wait_job(self, array: int | None = None) -> float:
        """Wall time of ``sbatch --wait`` (sbatch polls by itself: 2 s, then 8 s, ...)."""
        return self.sync(self._wait_job(array))

    def poll_job(self, array: int | None = None, wrap: str = "true") -> tuple[float, str]:
        """Wall time of ``sbatch --parsable`` + ``squeue`` until done, and the job ID."""
        return self.sync(self._poll_job(array, wrap))

    def put(self, path: str, data: bytes) -> None:
        """Write a file over SFTP."""

        async def write() -> None:
            async with self.conn.start_sftp_client() as sftp, sftp.open(path, "wb") as fh:
                await fh.write(data)

        self.sync(write())

    def job_span(self, job_id: str) -> tuple[float, float, float] | None:
        """(first SubmitTime, first StartTime, last EndTime), epoch seconds, of a job or all
        tasks of an array, from ``scontrol -o show job`` (slurmctld keeps finished jobs for
        MinJobAge; whole seconds). Waits a little for tasks still completing."""
        for _ in range(40):
            spans = []
            for line in self.run(f"scontrol -o show job {job_id}").splitlines():
                fields = dict(token.partition("=")[::2] for token in line.split() if "=" in token)
                times = [fields.get(k, "") for k in ("SubmitTime", "StartTime", "EndTime")]
                if all(t[:1].isdigit() for t in times):
                    spans.append([dt.datetime.fromisoformat(t).timestamp() for t in times])
                else:
                    spans.clear()
                    break
            if spans:
                return (
                    min(s[0] for s in spans),
                    min(s[1] for s in spans),
                    max(s[2] for s in spans),
                )
            time.sleep(0.25)
        return None

    def job_id_named(self, name: str) -> str | None:
        """The (array) job ID of the recent job called ``name``."""
        out = self.run(f"squeue -h -t all -r -n {shlex.quote(name)} -o %F | head -n 1").strip()
        return out if out.isdigit() else None

    def close(self) -> None:
        """Cancel our unfinished raw jobs, remove the scratch dir, disconnect."""
        if self.conn.is_closed():  # dropped mid-run: reconnect to clean up
            self.conn = self.sync(self._connect())
        if self.outstanding:
            self.run("scancel " + " ".join(sorted(self.outstanding)))
        if self.scratch:
            self.run(f"rm -rf -- {shlex.quote(self.scratch)}")
        self.conn.close()
        self.sync(self.conn.wait_closed())
        self.loop.close()


@dataclass
class EngineProbe:
    """When clustrix ran its poll cycles and sbatch (epoch seconds), from its engine's
    ``_poll_once`` and ``_run`` wrapped on this one instance (private: if they moved, the
    probe is None and the benchmark runs without these diagnostics)."""

    polls: list[tuple[float, float]]
    sbatches: list[tuple[float, float]]

    @classmethod
    def attach(cls, ex: ClusterExecutor) -> EngineProbe | None:
        engine: Any = getattr(ex, "_engine", None)
        monitor, core = getattr(engine, "_monitor", None), getattr(engine, "_core", None)
        poll: Callable[..., Coroutine[Any, Any, bool]] | None = getattr(monitor, "poll_once", None)
        run: Callable[..., Coroutine[Any, Any, Any]] | None = getattr(core, "run", None)
        if poll is None or run is None:
            return None
        probe = cls([], [])

        async def poll_once(*args: Any, **kwargs: Any) -> bool:
            t = time.time()
            try:
                return await poll(*args, **kwargs)
            finally:
                probe.polls.append((t, time.time()))

        async def run_command(argv: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.time()
            try:
                return await run(argv, *args, **kwargs)
            finally:
                # over SSH sbatch runs inside one "unpack and submit" sh -c command
                if argv and "sbatch" in (argv[0], kwargs.get("counts_as")):
                    probe.sbatches.append((t, time.time()))

        monitor.poll_once, core.run = poll_once, run_command
        return probe

    def polls_between(self, start: float, end: float) -> list[float]:
        """Durations of the poll cycles that started in [start, end]."""
        return [b - a for a, b in self.polls if start <= a <= end]


def stage_times(
    raw: Raw,
    probe: EngineProbe,
    future: Any,
    t0: float,
    t1: float,
    stages: dict[str, list[float]],
) -> None:
    """Add one call's submit / queue / run / detect times to ``stages`` (see the caller)."""
    sbatch_ends = [end for start, end in probe.sbatches if start >= t0]
    err = future.stderr_path
    if not sbatch_ends or not err:
        return
    job_dir = posixpath.dirname(posixpath.dirname(err))
    exit_file = posixpath.join(job_dir, "exit", "0")
    out = raw.run(f"stat -c %.9Y {shlex.quote(err)} {shlex.quote(exit_file)}").split()
    if len(out) != 2:
        return
    began, ended = float(out[0]), float(out[1])
    stages["submit"].append(sbatch_ends[0] - t0)
    stages["queue"].append(began - sbatch_ends[0])
    stages["run"].append(ended - began)
    stages["detect"].append(t1 - ended)
    starts = [start for start, _ in probe.polls if t0 <= start <= t1]
    if len(starts) >= 2:
        stages["last poll gap"].append(starts[-1] - starts[-2])


def python_floor(raw: Raw, n: int, python: str) -> list[str]:
    """Raw arrays of ``n`` tasks that each do only what a clustrix task does before it
    runs a call: start ``python`` and import the worker runtime from the bundle zip (as
    shipped: sources only; and rebuilt on the node with bytecode, for comparison)."""
    bundle = worker_bundle()
    src = f"{raw.scratch}/{bundle.filename}"
    pyc = f"{raw.scratch}/worker-pyc.zip"
    raw.put(src, bundle.data)
    build = (
        "import sys, zipfile; d = sys.argv[1]; zipfile.ZipFile(sys.argv[2]).extractall(d); "
        "z = zipfile.PyZipFile(sys.argv[3], 'w')\n"
        "for p in ('clustrix', 'cloudpickle'): z.writepy(d + '/' + p)\nz.close()"
    )
    extract_dir = f"{raw.scratch}/worker-src"
    raw.run(shlex.join([python, "-c", build, extract_dir, src, pyc]))
    imports = "import clustrix.worker, cloudpickle"
    variants = [
        ("`true`", "true"),
        (f"`{python} -c pass`", f"{python} -c pass"),
        (
            "worker imports, bundle as shipped (.py)",
            f"PYTHONSAFEPATH=1 PYTHONPATH={src} {python} -c {shlex.quote(imports)}",
        ),
        (
            "worker imports, bundle with .pyc",
            f"PYTHONSAFEPATH=1 PYTHONPATH={pyc} {python} -c {shlex.quote(imports)}",
        ),
    ]
    lines = []
    for label, wrap in variants:
        if wait_for_idle(raw.busy_jobs, "floor") is None:
            lines.append("(floor: cluster busy, measured anyway)")
        elapsed, _ = raw.poll_job(array=n, wrap=wrap)
        lines.append(f"{label} {fmt_s(elapsed)}")
        print(f"floor: {lines[-1]}")
    return [
        f"(b) floor: raw {n}-task arrays (squeue loop) whose tasks only start Python and "
        "import the worker runtime, as a clustrix task does before its call: " + "; ".join(lines)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, 200-call arrays")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time raw arrays that only start the worker's Python (about 4 more minutes)",
    )
    opts = parser.parse_args()
    load_before = load_text()
    code = revision()
    n_latency = 3 if opts.quick else 9
    n_map = 200 if opts.quick else 1000
    n_default = 1000
    repeats_default = 1 if opts.quick else 3
    repeats_map = 1 if opts.quick else 3

    login = Login.from_env()
    name = f".clustrix-bench-{secrets.token_hex(4)}"
    notes: list[str] = []
    rows: list[Row] = []
    diag: list[str] = []
    config = login.config(f"~/{name}/clustrix")
    raw: Raw | None = None
    ex: ClusterExecutor | None = None
    try:
        # the scratch dir, made over a throwaway connection so Raw can know its full path
        raw = Raw(login, scratch="")
        home = raw.run('printf %s "$HOME"')
        raw.scratch = f"{home}/{name}"
        raw.run(f"mkdir -p {shlex.quote(raw.scratch)}")

        def idle(part: str) -> None:
            assert raw is not None
            if wait_for_idle(raw.busy_jobs, part) is None:
                notes.append(f"{part}: no idle window within 10 minutes; measured anyway.")

        ex = ClusterExecutor(config)
        ex.submit(noop).result()  # warm: connection, work dir, worker bundle, discovery
        probe = EngineProbe.attach(ex)
        stages: dict[str, list[float]] = {
            "submit": [],
            "queue": [],
            "run": [],
            "detect": [],
            "last poll gap": [],
        }
        polls_per_call: list[int] = []

        # ------------------------------------------------------------------ (a)
        idle("(a)")
        lat_cx: list[float] = []
        lat_wait: list[float] = []
        lat_poll: list[float] = []
        # slurmctld starts pending jobs at whole seconds of the wall clock, so a job's queue
        # time depends on the phase of its submission: sample i of each side starts at
        # phase i, spread over the second (a fixed order would bias one side; random
        # pauses spread the samples by chance).
        phases = tick_phases(n_latency, seed=1)
        for i in range(n_latency):
            idle("(a)")
            sleep_to_phase(phases[i])
            lat_wait.append(raw.wait_job())
            idle("(a)")
            sleep_to_phase(phases[i])
            lat_poll.append(raw.poll_job()[0])
            idle("(a)")
            sleep_to_phase(phases[i])
            t0, t = time.time(), time.perf_counter()
            future = ex.submit(noop, 1)
            future.result()
            lat_cx.append(time.perf_counter() - t)
            t1 = time.time()
            if probe is not None:
                polls_per_call.append(len(probe.polls_between(t0, t1)))
                stage_times(raw, probe, future, t0, t1, stages)
        a_cx, a_wait, a_poll = median(lat_cx), median(lat_wait), median(lat_poll)
        a_raw = min(a_wait, a_poll)
        a_ratio = a_cx / a_raw
        rows.append(
            Row(
                f"(a) submit→result, no-op (median of {n_latency})",
                fmt_s(a_cx),
                f"{fmt_s(a_raw)} (squeue loop {fmt_s(a_poll)}; --wait {fmt_s(a_wait)})",
                fmt_ratio(a_ratio),
                f"≤ {TARGET_LATENCY}x",
                verdict(a_ratio <= TARGET_LATENCY),
            )
        )
        print(rows[-1])
        if stages["run"]:
            diag.append(
                "(a) where a clustrix call's time goes, median of the samples: "
                + ", ".join(f"{k} {fmt_s(median(v))}" for k, v in stages.items())
                + f"; {median(polls_per_call):.0f} poll cycles per call. (submit: submit() → "
                "sbatch returned, incl. the job dir upload; queue: → the job's log file created "
                "on the node; run: → exit file written after the worker exited; detect: → "
                "result() returned; last poll gap: between the last two poll cycles' starts, i.e. "
                "the backoff in effect. From the files' mtimes on the node, same clock.)"
            )
            print(diag[-1])

        # ------------------------------------------------------------------ (b)
        # sbatch --wait sleeps 2 s, then 8 s, then 32 s between its checks: far behind the
        # squeue loop on an array, so it runs once; the loop and clustrix alternate.
        idle("(b) raw --wait")
        b_wait = raw.wait_job(array=n_map)
        print(f"raw array --wait: {fmt_s(b_wait)}")
        b_polls: list[float] = []
        b_cxs: list[float] = []
        raw_makes: list[float] = []
        cx_makes: list[float] = []
        b_stats: list[dict[str, int]] = []
        for _ in range(repeats_map):
            idle("(b) raw poll")
            elapsed, raw_id = raw.poll_job(array=n_map)
            b_polls.append(elapsed)
            print(f"raw array + squeue loop: {fmt_s(elapsed)}")
            raw_span = raw.job_span(raw_id)

            idle("(b) clustrix")
            job_name = f"bench-{secrets.token_hex(4)}"
            view = ex.options(job_name=job_name)
            before = ex.stats()
            t0 = time.time()
            t = time.perf_counter()
            results = list(view.map(noop, range(n_map), chunksize=1))
            b_cxs.append(time.perf_counter() - t)
            t1 = time.time()
            b_stats.append(delta(ex.stats(), before))
            assert results == list(range(n_map))
            print(f"clustrix map chunksize=1: {fmt_s(b_cxs[-1])}")
            cx_id = raw.job_id_named(job_name)
            cx_span = raw.job_span(cx_id) if cx_id else None
            if cx_span and raw_span:
                raw_makes.append(raw_span[2] - raw_span[0])
                cx_makes.append(cx_span[2] - cx_span[0])
                diag.append(
                    f"(b) clustrix map #{len(b_cxs)} on the wall clock: map() called → array "
                    f"submitted {cx_span[0] - t0:+.1f} s; first task started "
                    f"{cx_span[1] - t0:+.1f} s; last task ended {cx_span[2] - t0:+.1f} s; map "
                    f"returned {t1 - t0:+.1f} s (SLURM's times are whole seconds)"
                )
            durations = probe.polls_between(t0, t1) if probe is not None else []
            if durations:
                total = sum(durations)
                diag.append(
                    f"(b) clustrix map #{len(b_cxs)}: {len(durations)} poll cycles, median "
                    f"{fmt_s(median(durations))}, max {fmt_s(max(durations))}; "
                    f"{total / b_cxs[-1]:.0%} of the wall time inside a poll cycle (its command "
                    "plus reading new results over SFTP)"
                )
        b_cx, b_poll = median(b_cxs), median(b_polls)
        b_raw = min(b_wait, b_poll)
        b_ratio = b_cx / b_raw
        pairs = ", ".join(f"{c / r:.2f}x" for c, r in zip(b_cxs, b_polls, strict=True))
        rows.append(
            Row(
                f"(b) map {n_map} no-op calls, chunksize=1 (one {n_map}-task array; median "
                f"of {repeats_map}; each pair: {pairs})",
                fmt_s(b_cx),
                f"{fmt_s(b_raw)} (squeue loop {fmt_s(b_poll)}; --wait {fmt_s(b_wait)}, once)",
                fmt_ratio(b_ratio),
                f"≤ {TARGET_MAP_CS1}x",
                verdict(b_ratio <= TARGET_MAP_CS1),
            )
        )
        print(rows[-1])
        if cx_makes and raw_makes:
            cx_make, raw_make = median(cx_makes), median(raw_makes)
            rows.append(
                Row(
                    "(b) of which inside SLURM: first SubmitTime → last EndTime (scontrol, "
                    "whole seconds; median)",
                    f"{cx_make:.0f} s",
                    f"{raw_make:.0f} s (squeue loop runs)",
                    fmt_ratio(cx_make / raw_make) if raw_make else "",
                )
            )

        # ------------------------------------------------------------------ (d)
        rows.append(commands_row(b_stats, submit="sbatch", status="squeue", status_label="squeue"))
        print(rows[-1])

        # ------------------------------------------------------------------ (c)
        row, line = default_map_part(
            ex, noop, n_default, repeats_default, idle, submit="sbatch", target_s=TARGET_DEFAULT_S
        )
        rows.append(row)
        diag.append(line)
        print(rows[-1])

        if opts.floor:
            diag += python_floor(raw, n_map, ex.config.python_executable or "python3")
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        if raw is not None:
            raw.close()

    result_table = table(rows, "raw sbatch (best)")
    print_report(
        result_table, diag, notes, "SLURM over SSH vs raw sbatch over one asyncssh connection"
    )
    if opts.write:
        flags = [f for f, on in (("--quick", opts.quick), ("--floor", opts.floor)) if on]
        cmd = " ".join(["python benchmarks/bench_slurm.py", *flags, "--write"])
        write_report(
            "bench_slurm",
            "SLURM over SSH vs raw sbatch",
            [
                f"Machine (sshd, slurmctld, slurmd and the client all on it): {machine_facts()}",
                f"Code: {code}. Run: `{cmd}`. Cluster: single-node SLURM 22.05 on this "
                f"machine over {login.user}@{login.host}:{login.port}. Before the run: "
                f"{load_before}; after: {load_text()}.",
            ],
            [result_table],
            diag,
            notes,
            quiet="Every part started with an idle cluster (no foreign jobs).",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
