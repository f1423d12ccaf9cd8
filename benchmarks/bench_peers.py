"""clustrix vs submitit and dask-jobqueue on the same test SLURM, same run.

    pip install -e '.[bench-peers]'             # submitit, dask-jobqueue (benchmark only)
    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_peers.py            # full run (about 10 minutes)
    python benchmarks/bench_peers.py --quick    # fewer samples, 200-call one-job-per-call maps
    python benchmarks/bench_peers.py --write    # also rewrite the "bench_peers" README section

The peers run where they must: on the submit host (this machine runs slurmctld and the
node), with the job files in a local directory that the jobs see (submitit needs a shared
filesystem; dask-jobqueue's workers connect back to a scheduler in this process). So
clustrix runs there too (``cluster_type="slurm"``, no host: sbatch here, files here), and,
as its users mostly run it, over SSH to the test sshd on loopback. Every job runs this
machine's Python (``sys.executable``), which imports submitit and distributed.

(1) one no-op call, submit to result, everything already started: clustrix (warm
    executor), submitit (``AutoExecutor.submit(...).result()``: one SLURM job), dask
    (``client.submit(...).result()`` on a worker that is already up: no SLURM job);
    clustrix and submitit interleaved, each after a random 0-1 s pause;
(1b) the same call including the start: ``ClusterExecutor(config)`` + the call vs
    ``SLURMCluster`` + one worker job up + the call;
(2) a 1,000-call map, each library's own way: clustrix's default ``map`` (one array of
    one task per slot, each taking the next call), submitit's ``map_array`` (one array
    task per call: it has no chunking), dask's ``client.map`` + ``gather`` on 16 running
    workers (as many as clustrix's slots) and on one per CPU;
(3) one SLURM job per call, like for like: clustrix ``map(..., chunksize=1)`` vs
    submitit's ``map_array`` (the same as (2) for submitit).

The test cluster is shared: a measurement that fails (another test cancelled its jobs or
restarted a daemon) is measured again, up to 3 times, and noted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    wait_for_idle,
    write_report,
)
from bench_slurm import Login
from bench_wan import os_release

from clustrix import ClusterConfig, ClusterExecutor

#: dask workers for the map: as many as clustrix's slots here (2 CPUs x OverSubscribe 8);
#: and, as a dask user might choose, one per CPU
DASK_WORKERS = 16
CPUS = os.cpu_count() or 2
WORKER_START_TIMEOUT_S = 300


def noop(x: Any = None) -> Any:
    """Nothing at all (sent by value by all three: the jobs cannot import this script)."""
    return x


@dataclass
class Side:
    """The samples of one library in one measurement."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.times)

    def add(self, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        self.times.append(time.perf_counter() - t)
        return value


def missing_peers() -> list[str]:
    """The peer packages that cannot be imported here."""
    missing = []
    for module, package in (("submitit", "submitit"), ("dask_jobqueue", "dask-jobqueue")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    return missing


class Peers:
    """What one run holds: the local scratch dir, the executors, the notes."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="clustrix-peers-"))
        self.tmp.chmod(0o755)
        self.login = Login.from_env()
        self.notes: list[str] = []
        self.closers: list[Callable[[], None]] = []

    def idle(self, part: str) -> None:
        def count() -> int | None:
            return local_cluster_jobs()

        if wait_for_idle(count, part) is None:
            self.notes.append(f"{part}: no idle window within 10 minutes; measured anyway.")

    def measure(self, part: str, side: Side, fn: Callable[[], Any]) -> Any:
        """``side.add(fn)``, again (up to 3 times) when it failed: the test cluster is
        shared, and other tests cancel jobs or restart daemons under a run."""
        for attempt in range(3):
            try:
                return side.add(fn)
            except Exception as exc:
                if attempt == 2:
                    raise
                self.notes.append(
                    f"{part}: {side.name} failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]}); measured again"
                )
                self.idle(part)
        return None

    # -------------------------------------------------------------- the three libraries
    def clustrix_local(self) -> ClusterExecutor:
        ex = ClusterExecutor(
            ClusterConfig(cluster_type="slurm", remote_work_dir=str(self.tmp / "cx-local"))
        )
        self.closers.append(lambda: ex.shutdown(wait=True, cancel_futures=True))
        ex.submit(noop).result()  # warm: work dir, runtime, discovery
        return ex

    def clustrix_ssh(self, work_dir: str) -> ClusterExecutor:
        ex = ClusterExecutor(self.login.config(work_dir))

        def close() -> None:
            ex.shutdown(wait=True, cancel_futures=True)
            # the work dir is the run's scratch (an executor refuses to remove its own)
            login = self.login
            ssh = [
                "ssh",
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={login.known_hosts}",
            ]
            ssh += ["-p", str(login.port), "-i", login.key_file, f"{login.user}@{login.host}"]
            subprocess.run([*ssh, f"rm -rf {work_dir}"], capture_output=True, timeout=60)

        self.closers.append(close)
        ex.submit(noop).result()
        return ex

    def submitit(self) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=self.tmp / "submitit" / "%j", cluster="slurm")
        executor.update_parameters(timeout_min=30, cpus_per_task=1, mem_gb=1)
        return executor

    def dask_cluster(self, workers: int) -> tuple[Any, Any]:
        """A started SLURMCluster with ``workers`` single-thread worker jobs up, its Client."""
        from dask.distributed import Client
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(
            cores=1,
            processes=1,
            memory="1GB",
            walltime="00:30:00",
            python=sys.executable,
            log_directory=str(self.tmp / "dask-logs"),
            local_directory=str(self.tmp / "dask-local"),
            scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
            worker_extra_args=["--host", "127.0.0.1"],
        )
        client = Client(cluster)
        cluster.scale(jobs=workers)
        client.wait_for_workers(workers, timeout=WORKER_START_TIMEOUT_S)
        return cluster, client


def map_clustrix(ex: ClusterExecutor, n: int, chunksize: int | None) -> None:
    assert list(ex.map(noop, range(n), chunksize=chunksize)) == list(range(n))


def map_submitit(executor: Any, n: int) -> None:
    jobs = executor.map_array(noop, range(n))
    assert [job.result() for job in jobs] == list(range(n))


def map_dask(client: Any, n: int) -> None:
    assert client.gather(client.map(noop, range(n), pure=False)) == list(range(n))


def call_submitit(executor: Any) -> None:
    assert executor.submit(noop, 1).result() == 1


def call_clustrix(ex: ClusterExecutor) -> None:
    assert ex.submit(noop, 1).result() == 1


def cx_cell(local: Side, ssh: Side | None) -> str:
    """clustrix's cell: here (like the peers), and over SSH when measured."""
    if ssh is None or not ssh.times:
        return fmt_s(local.median)
    return f"{fmt_s(local.median)} (over SSH {fmt_s(ssh.median)})"


def ratio_text(ratio: float) -> str:
    """``fmt_ratio``, with enough digits below 0.1 (``0.010x (1/101)``)."""
    return f"{ratio:.3f}x (1/{1 / ratio:.0f})" if ratio < 0.1 else fmt_ratio(ratio)


def ratio_cell(local: Side, ssh: Side | None, peer: Side) -> str:
    text = ratio_text(local.median / peer.median)
    if ssh is not None and ssh.times:
        text += f" (SSH {ratio_text(ssh.median / peer.median)})"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller arrays")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    opts = parser.parse_args()
    missing = missing_peers()
    if missing:
        print(
            f"not installed: {', '.join(missing)}; pip install -e '.[bench-peers]' (benchmark "
            "extras, never runtime dependencies)",
            file=sys.stderr,
        )
        return 2
    load_before, code = load_text(), revision()
    n_call = 3 if opts.quick else 7
    reps = 1 if opts.quick else 3
    n_map = 1000
    n_per_job = 200 if opts.quick else 1000
    run = Peers(opts.quick)
    rows: list[Row] = []
    diag: list[str] = []
    name = f".clustrix-bench-peers-{random.randrange(16**8):08x}"
    try:
        cx_local = run.clustrix_local()
        cx_ssh = run.clustrix_ssh(f"~/{name}")
        sub = run.submitit()
        run.idle("warm-up")
        call_submitit(sub)  # the first submitit job pays for nothing the others do not

        # ---------------------------------------------------------- (1) one call, warm
        one = {k: Side(k) for k in ("local", "ssh", "submitit")}
        rng = random.Random(1)
        for _ in range(n_call):
            for key, fn in (
                ("local", lambda: call_clustrix(cx_local)),
                ("ssh", lambda: call_clustrix(cx_ssh)),
                ("submitit", lambda: call_submitit(sub)),
            ):
                run.idle("(1)")
                time.sleep(rng.random())
                run.measure("(1)", one[key], fn)
        print({k: fmt_s(v.median) for k, v in one.items()})

        # ---------------------------------------------------------- (2) default maps
        maps = {k: Side(k) for k in ("local", "ssh", "submitit")}
        for _ in range(reps):
            for key, fn in (
                ("local", lambda: map_clustrix(cx_local, n_map, None)),
                ("ssh", lambda: map_clustrix(cx_ssh, n_map, None)),
            ):
                run.idle("(2)")
                run.measure("(2)", maps[key], fn)
        print({k: fmt_s(v.median) for k, v in maps.items() if v.times})

        # ---------------------------------------------------------- (3) one job per call
        per_job = {k: Side(k) for k in ("local", "submitit")}
        run.idle("(3) submitit")
        run.measure("(3)", per_job["submitit"], lambda: map_submitit(sub, n_per_job))
        run.idle("(3) clustrix")
        run.measure("(3)", per_job["local"], lambda: map_clustrix(cx_local, n_per_job, 1))
        print({k: fmt_s(v.median) for k, v in per_job.items()})
        if n_per_job == n_map:
            maps["submitit"].times = list(per_job["submitit"].times)

        # ---------------------------------------------------------- (1b) including the start
        cold = {k: Side(k) for k in ("local", "dask")}
        for i in range(reps):
            run.idle("(1b) clustrix")
            config = ClusterConfig(
                cluster_type="slurm", remote_work_dir=str(run.tmp / f"cx-cold-{i}")
            )

            def clustrix_cold(config: ClusterConfig = config) -> None:
                with ClusterExecutor(config) as ex:
                    call_clustrix(ex)

            run.measure("(1b)", cold["local"], clustrix_cold)
            run.idle("(1b) dask")

            def dask_cold() -> None:
                cluster, client = run.dask_cluster(1)
                try:
                    assert client.submit(noop, 1, pure=False).result() == 1
                finally:
                    client.close()
                    cluster.close()

            run.measure("(1b)", cold["dask"], dask_cold)
        print({k: fmt_s(v.median) for k, v in cold.items()})

        # ---------------------------------------------------------- dask, warm
        one["dask"] = Side("dask")
        for workers in (DASK_WORKERS, CPUS):
            run.idle("dask")
            start = Side("dask start")
            cluster, client = run.measure(
                "dask", start, lambda workers=workers: run.dask_cluster(workers)
            )
            run.closers += [cluster.close, client.close]
            assert client.submit(noop, 0, pure=False).result() == 0  # the first one
            if workers == DASK_WORKERS:
                for _ in range(n_call):
                    one["dask"].add(
                        lambda client=client: client.submit(noop, 1, pure=False).result()
                    )
            maps[f"dask-{workers}"] = Side(f"dask, {workers} workers")
            for _ in range(reps):
                run.measure(
                    "(2)", maps[f"dask-{workers}"], lambda client=client: map_dask(client, n_map)
                )
            client.close()
            cluster.close()
            diag.append(
                f"dask: SLURMCluster start to {workers} workers connected: "
                f"{fmt_s(start.median)} ({workers} SLURM jobs, each a worker process that "
                "stays up, holding its slot, until the cluster closes)"
            )
    finally:
        for close in reversed(run.closers):
            try:
                close()
            except Exception as exc:  # cleanup must go on
                print(f"cleanup: {exc!r}", file=sys.stderr)
        shutil.rmtree(run.tmp, ignore_errors=True)

    slots = cx_local._engine.slots(cx_local.config.resources())
    rows += [
        Row(
            f"(1) one no-op call, submit→result, warm: submitit, one SLURM job (median of "
            f"{n_call})",
            cx_cell(one["local"], one["ssh"]),
            fmt_s(one["submitit"].median),
            ratio_cell(one["local"], one["ssh"], one["submitit"]),
        ),
        Row(
            f"(1) the same: dask-jobqueue, a worker already up, no SLURM job (median of {n_call})",
            cx_cell(one["local"], one["ssh"]),
            fmt_s(one["dask"].median),
            ratio_cell(one["local"], one["ssh"], one["dask"]),
        ),
        Row(
            f"(1b) the same call including the start: ClusterExecutor() + call vs "
            f"SLURMCluster + 1 worker job up + call (median of {reps})",
            fmt_s(cold["local"].median),
            fmt_s(cold["dask"].median),
            ratio_text(cold["local"].median / cold["dask"].median),
        ),
        Row(
            f"(2) map {n_map} no-op calls, each library's way: clustrix default ({slots} array "
            f"tasks) vs submitit map_array ({n_map} array tasks; once)",
            cx_cell(maps["local"], maps["ssh"]),
            fmt_s(maps["submitit"].median) if maps["submitit"].times else "n/a (--quick)",
            ratio_cell(maps["local"], maps["ssh"], maps["submitit"])
            if maps["submitit"].times
            else "",
        ),
        *(
            Row(
                f"(2) the same: dask-jobqueue client.map + gather on {workers} running "
                f"single-thread workers (median of {reps})",
                cx_cell(maps["local"], maps["ssh"]),
                fmt_s(maps[f"dask-{workers}"].median),
                ratio_cell(maps["local"], maps["ssh"], maps[f"dask-{workers}"]),
            )
            for workers in (DASK_WORKERS, CPUS)
        ),
        Row(
            f"(3) one SLURM job per call, {n_per_job} calls: clustrix chunksize=1 vs "
            "submitit map_array (once each)",
            fmt_s(per_job["local"].median),
            fmt_s(per_job["submitit"].median),
            ratio_text(per_job["local"].median / per_job["submitit"].median),
        ),
    ]
    for key, sides in (("(1)", one), ("(2)", maps), ("(1b)", cold)):
        diag.append(
            f"{key} all samples: "
            + "; ".join(
                f"{side.name}: " + ", ".join(fmt_s(t) for t in side.times)
                for side in sides.values()
                if side.times
            )
        )
    result_table = table(rows, "peer")
    title = "clustrix vs submitit and dask-jobqueue on the test SLURM"
    print_report(result_table, diag, run.notes, title)
    if opts.write:
        import dask_jobqueue
        import distributed
        import submitit

        cmd = " ".join(
            ["python benchmarks/bench_peers.py", *(["--quick"] if opts.quick else []), "--write"]
        )
        write_report(
            "bench_peers",
            title,
            [
                f"Machine (slurmctld, slurmd, sshd and the client all on it): {os_release()}; "
                f"{machine_facts()}",
                f"Code: {code}; submitit {submitit.__version__}, dask-jobqueue "
                f"{dask_jobqueue.__version__}, distributed {distributed.__version__}. Run: "
                f"`{cmd}`. clustrix: SLURM on this host (as the peers: sbatch here, job files "
                f"in a local directory) and, in brackets, over SSH to {run.login.user}@"
                f"{run.login.host}:{run.login.port}. Before the run: {load_before}; after: "
                f"{load_text()}.",
            ],
            [result_table],
            diag,
            run.notes,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
