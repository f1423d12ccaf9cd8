"""clustrix on SLURM over a slow link vs raw sbatch/squeue over one multiplexed OpenSSH
connection through the same link, same run.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_wan.py              # full run (about 6 minutes)
    python benchmarks/bench_wan.py --quick      # fewer samples, 100-call arrays
    python benchmarks/bench_wan.py --only-call  # part (1) alone (and one command's cost)
    python benchmarks/bench_wan.py --write      # also rewrite the "bench_wan" README section
    python benchmarks/bench_wan.py --quick --cold-only   # part (4) only (about 30 s)

The link: ``latency_proxy.py`` in front of the test sshd, 25 ms each way (``--delay-ms``),
so a 50 ms round trip; both sides connect through it. Measured, each part after waiting
for an idle cluster:

(1) one no-op call, submit to result, on a warm executor, vs raw ``sbatch --parsable`` +
    ``squeue`` until done + ``cat`` of its result file (samples interleaved, each started
    at its own phase of the wall-clock second: slurmctld starts jobs at whole seconds);
(2) ``map(noop, range(300), chunksize=1)`` (one 300-task array) vs ONE raw 300-task
    ``sbatch --array`` + ``squeue`` until done + one ``cat`` of all result files, in 5
    pairs run back to back (which side goes first alternates); the ratio is the median of
    the pairs' ratios (such an array swings by a third from one run to the next);
(3) the default 1,000-call map (absolute);
(4) cold start to first result, each in a fresh process: ``ClusterExecutor(config)``
    (connect, checks, runtime upload, discovery) + ``submit(noop).result()``, with a new
    work dir, then again with that work dir (what a second executor reuses), and once
    more without the proxy (the difference is what the link costs); vs the raw cold start,
    a fresh ``ssh`` whose one command runs ``sbatch``, ``squeue`` every 50 ms on the
    cluster until the job is gone, and ``cat`` (the samples of each kind started at the
    same n phases of the wall-clock second, spread over it).
    And with ``connection_persist_s`` (the shared connection started by an earlier
    process, work dir there) vs the same raw command through an OpenSSH master that an
    earlier command left (``ControlPersist``): no login on either side.

Round trips per operation: ``executor.stats()`` (commands by program, poll cycles), the
transport's SFTP operations, and the proxy's count of client-to-server flights ("turns").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from _common import (
    Row,
    delta,
    fmt_ratio,
    fmt_s,
    load_text,
    local_cluster_jobs,
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
from bench_slurm import UNFINISHED, EngineProbe, Login, stage_times
from latency_proxy import ProxyProcess, read_totals

from clustrix import ClusterConfig, ClusterExecutor
from clustrix._engine import engine as engine_module
from clustrix.transports.shared import SharedSSHTransport
from clustrix.transports.ssh import SSHTransport

T = TypeVar("T")

#: The test sshd's pid file (scripts/testcluster.sh): a restart shows as a new pid.
SSHD_PID_FILE = (
    Path(os.environ.get("CLUSTRIX_TEST_STATE", "/tmp/clustrix-testcluster")) / "sshd" / "sshd.pid"
)
#: Targets from the issue.
TARGET_CALL = 1.1
TARGET_MAP = 1.2
TARGET_DEFAULT_S = 3.5
TARGET_COLD_S = 1.0
ARRAY_POLL_S = 0.05  # the raw array loop's pause between two squeue
RESULT_TAG = "BENCH-WAN-RESULT "
CHILD_TIMEOUT_S = 300
#: Transport methods timed (class-wide, so a child's transport is seen from its dial on).
TRANSPORT_OPS = ("connect", "run", "home", "read_bytes", "write_bytes", "read_tail", "stat")


def os_release() -> str:
    """The distribution, from /etc/os-release (``Debian GNU/Linux 12 (bookworm)``)."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip('"')
    except OSError:
        pass
    return "OS n/a"


def noop(x: Any = None) -> Any:
    """Nothing at all (sent by value: the cluster has no copy of this module)."""
    return x


# ------------------------------------------------------------------ what the transport did
@dataclass(frozen=True)
class Op:
    """One transport call: when (perf_counter), what, and a label."""

    start: float
    end: float
    kind: str  # connect, command, sftp, local
    label: str


def command_label(argv: list[str]) -> str:
    """What one of clustrix's commands is for (from its text: for the timelines only)."""
    text = " ".join(argv)
    for needle, label in (
        ("sbatch", "job dir + sbatch"),
        ("squeue", "poll"),
        ("scontrol show config", "discovery"),
        ("CLUSTRIX-PY", "python + work dir check"),
        ("test -f", "code dir check"),
    ):
        if needle in text:
            return label
    return posixpath.basename(argv[0])


def record_transport_ops() -> list[Op]:
    """Time every call of :data:`TRANSPORT_OPS` on every SSH transport (own or shared) of
    this process, and the build of the worker runtime zip (private names: for the
    diagnostics only)."""
    ops: list[Op] = []
    for cls, name in [
        (cls, name) for cls in (SSHTransport, SharedSSHTransport) for name in TRANSPORT_OPS
    ]:
        original = getattr(cls, name)

        def timed(original: Any = original, name: str = name) -> Any:
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await original(self, *args, **kwargs)
                finally:
                    if name == "run":
                        kind, label = "command", command_label(list(args[0]))
                    elif name == "connect":
                        kind, label = "connect", "connect"
                    else:
                        kind, label = "sftp", name
                    ops.append(Op(t, time.perf_counter(), kind, label))

            return call

        setattr(cls, name, timed())
    # the worker runtime zip, built (CPU) once per process when an engine starts
    build: Callable[[], Any] | None = getattr(engine_module, "worker_bundle", None)
    if build is not None:

        def bundle() -> Any:
            t = time.perf_counter()
            try:
                return build()
            finally:
                if time.perf_counter() - t > 0.001:  # not the cached one
                    ops.append(Op(t, time.perf_counter(), "local", "runtime zip built"))

        engine_module.worker_bundle = bundle
    return ops


def ops_between(ops: list[Op], start: float, end: float) -> list[Op]:
    return [op for op in ops if start <= op.start <= end]


def count_ops(ops: list[Op]) -> str:
    """``commands: poll 3, job dir + sbatch 1; SFTP: none``."""
    commands = Counter(op.label for op in ops if op.kind == "command")
    sftp = Counter(op.label for op in ops if op.kind == "sftp")
    text = ", ".join(f"{k} {v}" for k, v in commands.most_common()) or "none"
    files = ", ".join(f"{k} {v}" for k, v in sftp.most_common()) or "none"
    return f"commands: {text}; SFTP: {files}"


def timeline(ops: list[Op], t0: float, t1: float) -> str:
    """The transport calls from t0 to t1 in order, with the gaps between them (local work,
    or waiting between polls) when longer than 20 ms."""
    parts, at = [], t0
    for op in sorted(ops, key=lambda o: o.start):
        if op.start - at > 0.02:
            parts.append(f"(gap {fmt_s(op.start - at)})")
        parts.append(f"{op.label} {fmt_s(op.end - op.start)}")
        at = max(at, op.end)
    if t1 - at > 0.02:
        parts.append(f"(to the result {fmt_s(t1 - at)})")
    return " → ".join(parts)


def stats_text(stats: dict[str, int]) -> str:
    return ", ".join(f"{k.removeprefix('commands.')} {v}" for k, v in sorted(stats.items()))


# ------------------------------------------------------------------ the link and the raw side
def proxy_known_hosts(source: str, host: str, port: int, target: Path) -> str:
    """A known_hosts file for ``host:port`` with the keys ``source`` has for the test sshd
    (OpenSSH keeps host keys per port: the proxy's port needs a line of its own)."""
    login_port = os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222")
    lines = []
    for line in Path(source).read_text().splitlines():
        hosts, _, key = line.partition(" ")
        if hosts in (f"[{host}]:{login_port}", host):
            lines.append(f"[{host}]:{port} {key}")
    if not lines:
        raise RuntimeError(f"no host key for {host} in {source}")
    target.write_text("\n".join(lines) + "\n")
    return str(target)


class Mux:
    """Raw commands over ONE multiplexed OpenSSH connection through the proxy: what a
    careful user scripts with ``ssh`` (a ControlMaster started once, each command a
    session of it). A command that fails for the connection (exit status 255: the shared
    test sshd restarted by someone's test) restarts the master and runs again."""

    def __init__(self, login: Login, port: int, known_hosts: str, local_dir: str) -> None:
        #: ``ssh`` options without the multiplexing (ssh takes an option's first value)
        self.plain = [
            "-q",
            *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
            *("-o", f"UserKnownHostsFile={known_hosts}", "-p", str(port), "-i", login.key_file),
        ]
        self.options = [*self.plain, "-o", f"ControlPath={local_dir}/cm"]
        self.target = f"{login.user}@{login.host}"
        self.scratch = ""
        self.outstanding: set[str] = set()
        self.restarts = 0
        self.start_master()

    def start_master(self) -> None:
        # -f: in the background once logged in; stdio to /dev/null, or the master would
        # hold our pipes open (and a captured command would never see EOF)
        master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=900", "-fN"]
        subprocess.run(
            ["ssh", *self.options, *master, self.target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def call(self, command: str) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self.options, "-o", "ControlMaster=no", self.target, command]
        for _ in range(60):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if done.returncode != 255:
                return done
            self.restarts += 1
            time.sleep(1)
            self.start_master()
        raise RuntimeError(f"ssh through the proxy keeps failing: {done.stderr.strip()}")

    def run(self, command: str) -> str:
        return self.call(command).stdout

    def sbatch(self, options: str, wrap: str) -> str:
        """Submit; the job ID."""
        done = self.call(
            f"sbatch --parsable --chdir={shlex.quote(self.scratch)} {options} "
            f"--wrap {shlex.quote(wrap)}"
        )
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch printed {done.stdout!r} {done.stderr!r}")
        self.outstanding.add(job_id)
        return job_id

    def one_call(self) -> tuple[float, int]:
        """sbatch + squeue until done + cat of the result: wall time, squeue polls."""
        out = f"{self.scratch}/r"
        t = time.perf_counter()
        job_id = self.sbatch("-o /dev/null -e /dev/null", f"echo 1 > {out}/$SLURM_JOB_ID")
        polls = 0
        while True:
            done = self.call(f"squeue -h -j {job_id} -t all -o %T")
            polls += 1
            state = done.stdout.strip()
            if "Invalid job id" in done.stderr or not state or state not in UNFINISHED:
                break
        result = self.run(f"cat {out}/{job_id}")
        elapsed = time.perf_counter() - t
        self.outstanding.discard(job_id)
        if result.strip() != "1":
            raise RuntimeError(f"raw job {job_id} left {result!r}")
        return elapsed, polls

    def array(self, n: int, before: str = "") -> tuple[float, int, str]:
        """An n-task array (each task: ``before``, then ``echo`` its index) + squeue until
        done + one cat of all n results: wall time, squeue polls, job ID."""
        out = f"{self.scratch}/a"
        t = time.perf_counter()
        wrap = f"{before} && echo $SLURM_ARRAY_TASK_ID" if before else "echo $SLURM_ARRAY_TASK_ID"
        job_id = self.sbatch(f"--array=0-{n - 1} -o {out}/%A_%a -e /dev/null", wrap)
        polls = 0
        while True:
            polls += 1
            if not self.run(f"squeue -h -r -j {job_id} -t PD,CF,R,S -o %i | head -n 1").strip():
                break
            time.sleep(ARRAY_POLL_S)
        results = self.run(f"cat {out}/{job_id}_*").split()
        elapsed = time.perf_counter() - t
        self.outstanding.discard(job_id)
        if sorted(map(int, results)) != list(range(n)):
            raise RuntimeError(f"raw array {job_id}: {len(results)} results of {n}")
        return elapsed, polls, job_id

    def close(self) -> None:
        """Cancel our unfinished raw jobs, remove the scratch dir, end the master."""
        if self.outstanding:
            self.run("scancel " + " ".join(sorted(self.outstanding)))
        if self.scratch:
            self.run(f"rm -rf -- {shlex.quote(self.scratch)}")
        subprocess.run(["ssh", *self.options, "-O", "exit", self.target], capture_output=True)


def job_span(run: Callable[[str], str], job_id: str) -> tuple[float, float] | None:
    """(first SubmitTime, last EndTime), epoch seconds, of all tasks of an array, from
    ``scontrol -o show job`` (whole seconds); waits a little for tasks still completing."""
    import datetime as dt

    for _ in range(40):
        spans = []
        for line in run(f"scontrol -o show job {job_id}").splitlines():
            fields = dict(token.partition("=")[::2] for token in line.split() if "=" in token)
            times = [fields.get("SubmitTime", ""), fields.get("EndTime", "")]
            if not all(t[:1].isdigit() for t in times):
                break
            spans.append([dt.datetime.fromisoformat(t).timestamp() for t in times])
        else:
            if spans:
                return min(s[0] for s in spans), max(s[1] for s in spans)
        time.sleep(0.25)
    return None


# ------------------------------------------------------------------ cold start: a child
def wan_config(
    login: Login, port: int, known_hosts: str, work_dir: str, persist_s: float = 0.0
) -> ClusterConfig:
    """SLURM over SSH to ``port`` (the proxy, or the sshd itself); defaults otherwise."""
    return ClusterConfig(
        connection_persist_s=persist_s,
        cluster_type="slurm",
        cluster_host=login.host,
        cluster_port=port,
        username=login.user,
        key_file=login.key_file,
        known_hosts=known_hosts,
        remote_work_dir=work_dir,
    )


def child(
    port: int,
    control: int,
    known_hosts: str,
    work_dir: str,
    second_phase: float | None,
    persist_s: float,
) -> dict[str, Any]:
    """A fresh process: build an executor, get one result; with ``second_phase``, then
    build another one in this process (its runtime zip is built already) at that phase of
    the second and do the same."""
    ops = record_transport_ops()
    config = wan_config(Login.from_env(), port, known_hosts, work_dir, persist_s)

    def turns() -> int:
        return read_totals(control).turns if control else 0

    def one() -> dict[str, Any]:
        turns0, t0 = turns(), time.perf_counter()
        ex = ClusterExecutor(config)
        t_built, turns_built = time.perf_counter(), turns()
        assert ex.submit(noop, 1).result() == 1
        t1, turns1 = time.perf_counter(), turns()
        stats = ex.stats()
        shared_pid = getattr(ex._engine.transport, "server_pid", None)
        ex.shutdown(wait=True)
        mine = ops_between(ops, t0, t1)
        return {
            "shared_pid": shared_pid,
            "built_s": t_built - t0,
            "first_s": t1 - t0,
            "turns_built": turns_built - turns0,
            "turns_first": turns1 - turns0,
            "stats": stats,
            "ops": count_ops(mine),
            "timeline": timeline(mine, t0, t1),
            "local_s": sum(op.end - op.start for op in mine if op.kind == "local"),
        }

    runs = [one()]
    if second_phase is not None:
        # at a phase of its own, as every sample: right after the first executor's job,
        # the second's sbatch would meet slurmctld's tick at one phase every time
        # (0.87-0.90 s in 7 of 7 samples without it)
        sleep_to_phase(second_phase)
        runs.append(one())
    return {"runs": runs}


def run_child(
    port: int,
    control: int,
    known_hosts: str,
    work_dir: str,
    second_phase: float | None = None,
    persist_s: float = 0.0,
) -> list[dict[str, Any]]:
    argv = [sys.executable, __file__, "--child", "--port", str(port), "--control", str(control)]
    argv += ["--known-hosts", known_hosts, "--work-dir", work_dir, "--persist", str(persist_s)]
    argv += ["--second-phase", str(second_phase)] if second_phase is not None else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            runs: list[dict[str, Any]] = json.loads(line[len(RESULT_TAG) :])["runs"]
            return runs
    raise RuntimeError(f"cold-start child failed ({done.returncode}): {done.stderr[-2000:]}")


# ------------------------------------------------------------------ the parent
def wait_for_sshd(login: Login, patience_s: float = 120.0) -> None:
    """Until the test sshd accepts connections (it may be down for someone's test)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            socket.create_connection((login.host, login.port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def call_once(ex: ClusterExecutor) -> Any:
    """One call, submit to result; its future."""
    future = ex.submit(noop, 1)
    assert future.result() == 1
    return future


def map_once(ex: ClusterExecutor, n: int, chunksize: int | None) -> list[Any]:
    """``map(noop, range(n))`` as ``Executor.map`` does it (submit_map, then the results in
    order), checked; the futures (their job IDs)."""
    futures = ex.submit_map(noop, range(n), chunksize=chunksize)
    assert [f.result() for f in futures] == list(range(n))
    return futures


@dataclass
class Measured:
    """Samples of one side of one measurement, and what they cost in round trips."""

    times: list[float] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.times)

    def turns_text(self) -> str:
        return f"{median(self.turns):.0f}" if self.turns else "?"


class Bench:
    """Everything one run holds: the proxy, the raw connection, the warm executor."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.quick = opts.quick
        self.login = Login.from_env()
        self.local_dir = tempfile.mkdtemp(prefix="clustrix-wan-")
        self.proxy = ProxyProcess(self.login.port, opts.delay_ms)
        self.known_hosts = proxy_known_hosts(
            self.login.known_hosts,
            self.login.host,
            self.proxy.port,
            Path(self.local_dir) / "known_hosts",
        )
        self.mux = Mux(self.login, self.proxy.port, self.known_hosts, self.local_dir)
        self.name = f".clustrix-bench-wan-{secrets.token_hex(4)}"
        self.home = self.mux.run('printf %s "$HOME"')
        self.mux.scratch = f"{self.home}/{self.name}"
        self.mux.run(
            f"mkdir -p {shlex.quote(self.mux.scratch)}/r {shlex.quote(self.mux.scratch)}/a"
        )
        self.ops = record_transport_ops()
        self.ex: ClusterExecutor | None = None
        self.shared_pid: int | None = None
        self.notes: list[str] = []

    def idle(self, part: str) -> None:
        def count() -> int | None:
            local = local_cluster_jobs()
            if local is not None:
                return local
            return len(self.mux.run("squeue -h -t PD,R").split("\n")) - 1

        if wait_for_idle(count, part) is None:
            self.notes.append(f"{part}: no idle window within 10 minutes; measured anyway.")

    def turns(self) -> int:
        return self.proxy.totals().turns

    def epoch(self, connections: bool) -> tuple[int, ...]:
        """What changes when the shared test sshd restarts (someone's test does that): its
        pid, our raw master's restarts, and (on a warm executor) the proxy's connections."""
        try:
            pid = int(SSHD_PID_FILE.read_text())
        except (OSError, ValueError):
            pid = 0
        count = self.proxy.totals().connections if connections else 0
        return pid, self.mux.restarts, count

    def sample(self, into: Measured, what: str, fn: Callable[[], T], connections: bool = True) -> T:
        """``fn()``, its wall time and wire turns added to ``into``; measured again (up to
        3 times) when it failed or the sshd restarted meanwhile (``connections``: a new
        connection through the proxy counts as that too): the test cluster is shared."""
        for attempt in range(3):
            epoch = self.epoch(connections)
            turns0, t0 = self.turns(), time.perf_counter()
            try:
                value = fn()
            except Exception as exc:  # a job cancelled or a daemon restarted by another test
                if attempt == 2:
                    raise
                self.notes.append(
                    f"{what}: failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); measured again"
                )
                self.idle(what)
                continue
            elapsed, turns = time.perf_counter() - t0, self.turns() - turns0
            if self.epoch(connections) == epoch:
                break
            self.notes.append(
                f"{what}: the connection was dropped during a sample (sshd restarted by "
                f"another test): {'measured again' if attempt < 2 else 'kept'}"
            )
        into.times.append(elapsed)
        into.turns.append(turns)
        return value

    def close(self) -> None:
        try:
            self.stop_shared()
            if self.ex is not None:
                self.ex.shutdown(wait=True, cancel_futures=True)
            self.mux.close()
        finally:
            self.proxy.close()
            shutil.rmtree(self.local_dir, ignore_errors=True)

    # -------------------------------------------------------------- (4) cold start
    def child_runs(
        self,
        port: int,
        control: int,
        known_hosts: str,
        work_dir: str,
        second_phase: float | None = None,
        persist_s: float = 0.0,
    ) -> list[dict[str, Any]]:
        """:func:`run_child`, again (up to 3 times) if it failed or the sshd restarted
        (someone's test takes the shared sshd down for a few seconds now and then)."""
        for attempt in range(3):
            wait_for_sshd(self.login)
            epoch = self.epoch(connections=False)
            try:
                runs = run_child(port, control, known_hosts, work_dir, second_phase, persist_s)
            except RuntimeError as exc:
                if attempt == 2:
                    raise
                self.notes.append(f"(4) a cold-start child failed, run again: {exc}"[:300])
                continue
            if self.epoch(connections=False) == epoch:
                return runs
            self.notes.append("(4) sshd restarted during a cold-start child: run again")
        return runs

    def cold(self, n: int, rows: list[Row], diag: list[str], trips: list[str]) -> None:
        fresh: list[dict[str, Any]] = []
        second: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        direct: list[dict[str, Any]] = []
        shared: list[dict[str, Any]] = []
        floor = Measured()
        raw = Measured()
        raw_master = Measured()
        plain_ssh = ["ssh", *self.mux.plain, "-o", "ControlMaster=no", "-o", "ControlPath=none"]
        master_ssh = ["ssh", *self.mux.options, "-o", "ControlMaster=no"]
        port, control, known = self.proxy.port, self.proxy.control_port, self.known_hosts
        # slurmctld starts jobs at whole seconds of the wall clock: samples one after another
        # at steady intervals would all meet it at one phase (raw samples of 1.38-1.44 s in
        # a row), random pauses spread them by chance (medians of 7 moved by ±0.25 s from
        # run to run). Sample i of every kind starts at phase i: each kind meets the tick
        # at the same n phases, spread over the second.
        phases = tick_phases(n, seed=4)

        def idle(i: int) -> None:
            self.idle("(4)")
            sleep_to_phase(phases[i])

        # the shared connection, started by a process before the samples (as the master of
        # the raw side was); stopped when this part ends
        warm = self.child_runs(port, control, known, f"{self.mux.scratch}/cold-warm", persist_s=900)
        self.shared_pid = warm[0]["shared_pid"]
        for i in range(n):
            work = f"{self.mux.scratch}/cold-{i}"
            idle(i)
            first, other = self.child_runs(port, control, known, work, second_phase=phases[i])
            fresh.append(first)
            second.append(other)
            idle(i)
            again.append(self.child_runs(port, control, known, work)[0])
            idle(i)
            direct.append(
                self.child_runs(self.login.port, 0, self.login.known_hosts, f"{work}-direct")[0]
            )
            self.sample(
                floor,
                "(4) fresh ssh",
                lambda: subprocess.run(
                    [*plain_ssh, self.mux.target, "true"], capture_output=True, timeout=60
                ),
                connections=False,
            )
            idle(i)
            self.sample(
                raw, "(4) raw cold start", lambda: self.raw_cold(plain_ssh), connections=False
            )
            idle(i)
            shared.append(self.child_runs(port, control, known, work, persist_s=900)[0])
            idle(i)
            self.sample(
                raw_master,
                "(4) raw cold start through the master",
                lambda: self.raw_cold(master_ssh),
                connections=False,
            )
        if {r["shared_pid"] for r in shared} != {self.shared_pid}:
            self.notes.append("(4) the shared connection process was started again meanwhile")
        self.stop_shared()
        kinds = [
            ("new process, new work dir (runtime uploaded)", fresh),
            ("new process, work dir there (a second executor on this host)", again),
            ("second executor in the same process", second),
            ("new process, new work dir, no proxy (port 2222)", direct),
            ("new process, shared connection there (connection_persist_s), work dir there", shared),
        ]
        for what, runs in kinds:
            first_s = median([r["first_s"] for r in runs])
            built_s = median([r["built_s"] for r in runs])
            base, base_name = (
                (raw_master, "raw through a master") if runs is shared else (raw, "raw cold start")
            )
            rows.append(
                Row(
                    f"(4) cold start to first result: {what}; of which executor built "
                    f"{fmt_s(built_s)} (median of {len(runs)})",
                    fmt_s(first_s),
                    f"{base_name} {fmt_s(base.median)}",
                    fmt_ratio(first_s / base.median),
                    f"≤ {TARGET_COLD_S:g} s" if runs is not direct else "",
                    verdict(first_s <= TARGET_COLD_S) if runs is not direct else "",
                )
            )
            print(rows[-1])
            if runs is not direct:
                r = runs[0]
                trips.append(
                    f"| (4) cold start, {what} | {stats_text(r['stats'])}; {r['ops']} | "
                    f"{median([x['turns_built'] for x in runs]):.0f} to built, "
                    f"{median([x['turns_first'] for x in runs]):.0f} to the result | "
                    f"fresh `ssh true`: {floor.turns_text()}; raw cold start: "
                    f"{(raw_master if runs is shared else raw).turns_text()} |"
                )
            diag.append(f"(4) {what}, first run: {runs[0]['timeline']}")
            diag.append(
                f"(4) {what}, each sample (s): to the result "
                + ", ".join(f"{r['first_s']:.2f}" for r in runs)
                + "; built "
                + ", ".join(f"{r['built_s']:.2f}" for r in runs)
            )
        for what, measured, base_name, base in (
            (
                "(4) raw cold start: a fresh `ssh` (no master) running `sbatch`, `squeue` "
                "every 50 ms there until the job is gone, `cat` (median of {n})",
                raw,
                "fresh `ssh host true`",
                floor,
            ),
            (
                "(4) raw cold start through an OpenSSH master an earlier command left "
                "(ControlPersist; median of {n})",
                raw_master,
                "raw cold start",
                raw,
            ),
        ):
            rows.append(
                Row(
                    what.format(n=len(measured.times)),
                    fmt_s(measured.median),
                    f"{base_name} {fmt_s(base.median)}",
                    fmt_ratio(measured.median / base.median),
                    f"≤ {TARGET_COLD_S:g} s",
                    verdict(measured.median <= TARGET_COLD_S),
                )
            )
            print(rows[-1])
        diag.append(
            "(4) raw cold start, each sample (s): "
            + ", ".join(f"{t:.2f}" for t in raw.times)
            + "; through the master: "
            + ", ".join(f"{t:.2f}" for t in raw_master.times)
            + "; fresh `ssh host true` (s): "
            + ", ".join(f"{t:.2f}" for t in floor.times)
        )

        # the runtime zip is built on this machine's (shared, busy) CPUs: left out here
        def net(runs: list[dict[str, Any]]) -> float:
            return median([r["built_s"] - r["local_s"] for r in runs])

        link_s = net(fresh) - net(direct)
        diag.append(
            f"(4) building an executor (new work dir) without the local zip build: "
            f"{fmt_s(net(fresh))} through the proxy, {fmt_s(net(direct))} without: the link "
            f"adds {fmt_s(link_s)} = {link_s / (2 * self.proxy.delay_ms / 1000):.1f} round "
            f"trips of {2 * self.proxy.delay_ms:g} ms; the zip build itself: "
            + ", ".join(fmt_s(r["local_s"]) for r in fresh + direct)
        )

    def stop_shared(self) -> None:
        """End the shared connection process that part (4) started, if it runs."""
        if self.shared_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.shared_pid, signal.SIGTERM)
            self.shared_pid = None

    def raw_cold(self, plain_ssh: list[str]) -> None:
        """The least a cold start to a first result can cost: one fresh login, whose one
        command submits, polls ``squeue`` on the cluster (no round trip per poll) and
        prints the job's result."""
        out = shlex.quote(f"{self.mux.scratch}/r")
        script = (
            f"id=$(sbatch --parsable --chdir={out} -o /dev/null -e /dev/null "
            f'--wrap "echo 1 > {out}/\\$SLURM_JOB_ID") || exit 1; id=${{id%%;*}}; echo $id; '
            f'while [ -n "$(squeue -h -j $id -o %i 2>/dev/null)" ]; do sleep {ARRAY_POLL_S:g}; '
            f"done; cat {out}/$id"
        )
        done = subprocess.run(
            [*plain_ssh, self.mux.target, script], capture_output=True, text=True, timeout=120
        )
        lines = done.stdout.split()
        if done.returncode != 0 or len(lines) != 2 or lines[1] != "1":
            raise RuntimeError(f"raw cold start: {done.returncode} {done.stdout!r} {done.stderr!r}")

    # -------------------------------------------------------------- (1) one call
    def one_call(self, n: int, rows: list[Row], diag: list[str], trips: list[str]) -> None:
        ex = self.warm_executor()
        probe = EngineProbe.attach(ex)
        stages: dict[str, list[float]] = {k: [] for k in ("submit", "queue", "run", "detect")}
        stages["last poll gap"] = []
        raw, cx = Measured(), Measured()
        raw_polls: list[int] = []
        cx_stats: list[dict[str, int]] = []
        cx_ops: list[str] = []
        # sample i of both sides at phase i of the wall-clock second (slurmctld's tick)
        phases = tick_phases(n, seed=1)
        for i in range(n):
            self.idle("(1)")
            sleep_to_phase(phases[i])
            raw_polls.append(self.sample(raw, "(1) raw", lambda: self.mux.one_call()[1]))
            self.idle("(1)")
            sleep_to_phase(phases[i])
            before = ex.stats()
            t0, p0 = time.time(), time.perf_counter()
            future = self.sample(cx, "(1) clustrix", lambda: call_once(ex))
            t1, p1 = time.time(), time.perf_counter()
            cx_stats.append(delta(ex.stats(), before))
            cx_ops.append(count_ops(ops_between(self.ops, p0, p1)))
            if probe is not None:
                # duck-typed: stage_times needs only .run(command) -> stdout
                stage_times(self.mux, probe, future, t0, t1, stages)  # type: ignore[arg-type]
        ratio = cx.median / raw.median
        rows.append(
            Row(
                f"(1) one no-op call, submit→result, warm (median of {n})",
                fmt_s(cx.median),
                fmt_s(raw.median),
                fmt_ratio(ratio),
                f"≤ {TARGET_CALL}x",
                verdict(ratio <= TARGET_CALL),
            )
        )
        print(rows[-1])
        trips.append(
            f"| (1) one call | {stats_text(cx_stats[0])}; {cx_ops[0]} (first sample; poll "
            f"cycles per call: median {median([s.get('poll_cycles', 0) for s in cx_stats]):.0f}) "
            f"| {cx.turns_text()} | sbatch 1, squeue {median(raw_polls):.0f}, cat 1: "
            f"{raw.turns_text()} |"
        )
        if stages["run"]:
            diag.append(
                "(1) where a clustrix call's time goes (medians): "
                + ", ".join(f"{k} {fmt_s(median(v))}" for k, v in stages.items() if v)
                + " (submit: → sbatch returned, the job dir sent with it; queue: → the job's "
                "log created on the node (slurmctld's scheduling tick); run: → exit file "
                "written (the worker's Python); detect: → result() returned; last poll gap: "
                "between the last two poll cycles' starts)"
            )
        diag.append(
            "(1) all samples, clustrix / raw: "
            + ", ".join(
                f"{fmt_s(c)} / {fmt_s(r)}" for c, r in zip(cx.times, raw.times, strict=True)
            )
        )

    # -------------------------------------------------------------- (2) 300-call map
    def map_cs1(
        self, n: int, reps: int, rows: list[Row], diag: list[str], trips: list[str]
    ) -> None:
        ex = self.warm_executor()
        raw, cx = Measured(), Measured()
        raw_make: list[float] = []
        cx_make: list[float] = []
        raw_polls: list[int] = []
        cx_stats: list[dict[str, int]] = []
        cx_ops: list[str] = []
        for rep in range(reps):
            raw_span = cx_span = None
            # the pair's order alternates, so that neither side always meets the machine as
            # the other one left it (a backlog of slurmd's work, a busier moment)
            for side in ("raw", "clustrix") if rep % 2 == 0 else ("clustrix", "raw"):
                self.idle(f"(2) {side}")
                if side == "raw":
                    _, polls, raw_id = self.sample(raw, "(2) raw", lambda: self.mux.array(n))
                    raw_polls.append(polls)
                    raw_span = job_span(self.mux.run, raw_id)
                    continue
                before, p0 = ex.stats(), time.perf_counter()
                futures = self.sample(cx, "(2) clustrix", lambda: map_once(ex, n, chunksize=1))
                cx_stats.append(delta(ex.stats(), before))
                cx_ops.append(count_ops(ops_between(self.ops, p0, time.perf_counter())))
                cx_span = job_span(self.mux.run, str(futures[0].job_id).split("_")[0])
            if raw_span and cx_span:
                raw_make.append(raw_span[1] - raw_span[0])
                cx_make.append(cx_span[1] - cx_span[0])
            print(f"(2) raw {fmt_s(raw.times[-1])}, clustrix {fmt_s(cx.times[-1])}")
        # The ratio of each pair, then their median: a 300-task array on 2 shared cores
        # swings by a third from one run to the next (slurmd's own work per task), and the
        # pairs, run back to back, share the machine's moment.
        pair_ratios = [c / r for c, r in zip(cx.times, raw.times, strict=True)]
        ratio = median(pair_ratios)
        pairs = ", ".join(f"{x:.2f}x" for x in pair_ratios)
        rows.append(
            Row(
                f"(2) map {n} no-op calls, chunksize=1 (one {n}-task array; medians of {reps}; "
                f"ratio: the median of the pairs' {pairs})",
                fmt_s(cx.median),
                fmt_s(raw.median),
                fmt_ratio(ratio),
                f"≤ {TARGET_MAP}x",
                verdict(ratio <= TARGET_MAP),
            )
        )
        print(rows[-1])
        if raw_make and cx_make:
            rows.append(
                Row(
                    "(2) of which inside SLURM: first SubmitTime → last EndTime (scontrol, "
                    "whole seconds; median)",
                    f"{median(cx_make):.0f} s",
                    f"{median(raw_make):.0f} s",
                    fmt_ratio(median(cx_make) / median(raw_make)) if median(raw_make) else "",
                )
            )
        # the node's share: what every clustrix task does before its call
        python = ex.config.python_executable or "python3"
        imports = shlex.quote("import clustrix.worker")  # cloudpickle: only for a class by value
        start = f"PYTHONSAFEPATH=1 PYTHONPATH={shlex.quote(ex._engine.worker_path)} {python}"
        self.idle("(2) floor")
        floor = Measured()
        self.sample(floor, "(2) floor", lambda: self.mux.array(n, f"{start} -c {imports}"))
        diag.append(
            f"(2) the node's share: the same raw {n}-task array whose tasks first start the "
            f"worker's Python and import it from the runtime zip (as every clustrix task does "
            f"before its call): {fmt_s(floor.median)}, against {fmt_s(raw.median)} for `echo` "
            f"alone and {fmt_s(cx.median)} for clustrix (once, after the pairs)"
        )
        print(diag[-1])
        trips.append(
            f"| (2) map {n}, chunksize=1 | {stats_text(cx_stats[0])}; {cx_ops[0]} (first map) | "
            f"{cx.turns_text()} | sbatch 1, squeue {median(raw_polls):.0f}, cat 1: "
            f"{raw.turns_text()} |"
        )

    # -------------------------------------------------------------- (3) default map
    def default_map(
        self, n: int, reps: int, rows: list[Row], diag: list[str], trips: list[str]
    ) -> None:
        ex = self.warm_executor()
        cx = Measured()
        stats: list[dict[str, int]] = []
        ops: list[str] = []
        for rep in range(reps):
            self.idle("(3)")
            before, p0 = ex.stats(), time.perf_counter()
            futures = self.sample(cx, "(3) clustrix", lambda: map_once(ex, n, chunksize=None))
            p1 = time.perf_counter()
            stats.append(delta(ex.stats(), before))
            ops.append(count_ops(ops_between(self.ops, p0, p1)))
            if rep == 0:
                job_id = str(futures[0].job_id or "").split("_")[0]
                span = job_span(self.mux.run, job_id) if job_id.isdigit() else None
                inside = (
                    f"; inside SLURM (scontrol, whole seconds): {span[1] - span[0]:.0f} s"
                    if span
                    else ""
                )
                diag.append(
                    f"(3) the first map ({fmt_s(p1 - p0)}{inside}): "
                    + timeline(ops_between(self.ops, p0, p1), p0, p1)
                )
        slots = ex._engine.slots(ex.config.resources())
        rows.append(
            Row(
                f"(3) map {n} no-op calls, default chunking ({slots} slots; median of {reps})",
                fmt_s(cx.median),
                "",
                "",
                f"≤ {TARGET_DEFAULT_S:g} s",
                verdict(cx.median <= TARGET_DEFAULT_S),
            )
        )
        print(rows[-1])
        trips.append(
            f"| (3) map {n}, default chunking | {stats_text(stats[0])}; {ops[0]} (first map) | "
            f"{cx.turns_text()} | |"
        )
        diag.append("(3) all runs: " + ", ".join(fmt_s(t) for t in cx.times))

    # -------------------------------------------------------------- helpers
    def warm_executor(self) -> ClusterExecutor:
        """The executor of parts (1)-(3): built, one call done (work dir, runtime there)."""
        if self.ex is None:
            config = wan_config(
                self.login, self.proxy.port, self.known_hosts, f"{self.mux.scratch}/warm"
            )
            self.ex = ClusterExecutor(config)
            self.ex.submit(noop).result()
        return self.ex

    def command_cost(self, diag: list[str]) -> None:
        """One ``true`` over each side's connection: the floor of one command."""
        ex = self.warm_executor()
        mux, cx = Measured(), Measured()
        for _ in range(5):
            self.sample(mux, "true", lambda: self.mux.run("true"))
            self.sample(cx, "true", lambda: ex._loop.run(ex._engine.transport.run(["true"])))
        diag.append(
            f"one command (`true`) over the link: OpenSSH mux {fmt_s(mux.median)} "
            f"({mux.turns_text()} turns), clustrix's asyncssh channel {fmt_s(cx.median)} "
            f"({cx.turns_text()} turns); round trip {2 * self.proxy.delay_ms:g} ms (medians of 5)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, 100-call arrays")
    parser.add_argument("--cold-only", action="store_true", help="only part (4), cold start")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    parser.add_argument(
        "--only-call", action="store_true", help="only part (1) and the cost of one command"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--known-hosts", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("--second-phase", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--persist", type=float, default=0.0, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        runs = child(
            opts.port,
            opts.control,
            opts.known_hosts,
            opts.work_dir,
            opts.second_phase,
            opts.persist,
        )
        print(RESULT_TAG + json.dumps(runs), flush=True)
        return 0

    load_before, code = load_text(), revision()
    n_call, n_map, reps_map, n_cold = (3, 100, 1, 1) if opts.quick else (9, 300, 5, 7)
    n_default, reps_default = 1000, (1 if opts.quick else 3)
    rows: list[Row] = []
    diag: list[str] = []
    trips: list[str] = []
    bench = Bench(opts)
    try:
        if not opts.only_call:
            bench.cold(n_cold, rows, diag, trips)
        if not opts.cold_only:
            bench.one_call(n_call, rows, diag, trips)
            if not opts.only_call:
                bench.map_cs1(n_map, reps_map, rows, diag, trips)
                bench.default_map(n_default, reps_default, rows, diag, trips)
            bench.command_cost(diag)
    finally:
        bench.close()
    # the table in the order: one call, the 300-call map, the default map, cold start
    rows.sort(key=lambda r: r.what[:3])  # stable: the rows of one part keep their order
    rtt = 2 * opts.delay_ms
    result_table = table(rows, "raw sbatch/squeue over one OpenSSH mux")
    trips_table = "\n".join(
        [
            "| operation | clustrix: ex.stats() delta; transport calls | clustrix wire turns "
            "(median) | raw: commands: wire turns (median) |",
            "|---|---|---:|---|",
            *sorted(trips),
        ]
    )
    title = f"SLURM over a {rtt:g} ms round-trip link vs raw sbatch over one OpenSSH mux"
    print_report(
        result_table + "\n\nRound trips per operation:\n\n" + trips_table, diag, bench.notes, title
    )
    if opts.write and not opts.only_call and not opts.cold_only:
        cmd = " ".join(
            ["python benchmarks/bench_wan.py", *(["--quick"] if opts.quick else []), "--write"]
        )
        write_report(
            "bench_wan",
            title,
            [
                f"Machine (sshd, slurmctld, slurmd, the proxy and the client all on it, "
                f"over loopback + the proxy): {os_release()}; {machine_facts()}",
                f"Code: {code}. Run: `{cmd}`. Link: `benchmarks/latency_proxy.py`, "
                f"{opts.delay_ms:g} ms each way, in front of {bench.login.user}@"
                f"{bench.login.host}:{bench.login.port} (single-node SLURM 22.05 on this "
                f"machine). Before the run: {load_before}; after: {load_text()}.",
            ],
            [
                result_table,
                "Round trips per operation (wire turns: client-to-server flights counted by "
                "the proxy, i.e. round trips on the critical path; a command on a new SSH "
                "channel costs 2):",
                trips_table,
            ],
            diag,
            bench.notes,
            quiet="Every part started with an idle cluster (no foreign jobs).",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
