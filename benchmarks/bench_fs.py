"""clustrix's ``du``/``find`` over SSH vs ``du -sb``/``find`` run directly, same connection.

    eval "$(scripts/testcluster.sh env)"         # the test cluster (sshd on 127.0.0.1:2222)
    python benchmarks/bench_fs.py                # about 30 s
    python benchmarks/bench_fs.py --quick        # fewer samples
    python benchmarks/bench_fs.py --write        # also rewrite the "fs-bench" README section

One tree of 10,000 files in 100 directories is made on the cluster by one command. Then,
interleaved, over ONE asyncssh connection (the façade's own transport):

(a) ``fs.du(tree)`` vs the command ``du -sb <tree>``;
(b) ``fs.find("*", tree)`` (sorted relative paths, in Python) vs the command
    ``find <tree>`` (its output read back, not parsed);

medians of N, ratio clustrix / baseline, target within 2x. Diagnostics: the same calls with
the SFTP fallback (no ``find`` on the server: ``readdir`` one tree level at a time), and the
bare round trip of a command (``true``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import (
    Row,
    fmt_ratio,
    fmt_s,
    local_cluster_jobs,
    machine_facts,
    median,
    print_report,
    table,
    verdict,
    wait_for_idle,
    write_report,
)

from clustrix import ClusterConfig, DiskUsage
from clustrix.filesystem import ClusterFileSystem

TARGET = 2.0
N_DIRS, N_PER_DIR = 100, 100
STATE = os.environ.get("CLUSTRIX_TEST_STATE", "/tmp/clustrix-testcluster")
MAKE_TREE = """
import os, sys
root, dirs, per_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    os.makedirs("%s/d_%03d" % (root, d))
    for f in range(per_dir):
        i = d * per_dir + f
        with open("%s/d_%03d/f_%05d.dat" % (root, d, i), "wb") as fh:
            fh.write(b"x" * (i % 13))
"""


def cluster_config() -> ClusterConfig:
    """The test cluster's sshd, from the variables of ``scripts/testcluster.sh env``."""
    return ClusterConfig(
        cluster_type="slurm",
        cluster_host=os.environ.get("CLUSTRIX_TEST_SSH_HOST", "127.0.0.1"),
        cluster_port=int(os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222")),
        username=os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix"),
        key_file=os.environ.get("CLUSTRIX_TEST_SSH_KEY", f"{STATE}/keys/id_ed25519"),
        known_hosts=os.environ.get("CLUSTRIX_TEST_KNOWN_HOSTS", f"{STATE}/keys/known_hosts"),
    )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--write", action="store_true", help="rewrite the README results")
    opts = parser.parse_args()
    samples = 7 if opts.quick else 21
    notes: list[str] = []

    with ClusterFileSystem(cluster_config()) as fs:
        transport: Any = fs._afs.transport  # the façade's own connection, for the baselines

        def command(argv: list[str]) -> None:
            result = fs._loop.run(transport.run(argv))
            assert result.ok, result.stderr

        tree = f"{fs._loop.run(transport.home())}/.clustrix-bench-fs-{secrets.token_hex(4)}"
        print(f"making {N_DIRS * N_PER_DIR} files under {transport.location}:{tree} …")
        command(["python3", "-c", MAKE_TREE, tree, str(N_DIRS), str(N_PER_DIR)])
        expected = DiskUsage(
            sum(i % 13 for i in range(N_DIRS * N_PER_DIR)), N_DIRS * N_PER_DIR, N_DIRS
        )
        try:
            if wait_for_idle(local_cluster_jobs, "fs") is None:
                notes.append("The test cluster (same CPUs) was busy: timings may suffer.")
            # Warm: connection, SFTP session, home directory, the server's page cache.
            assert fs.du(tree) == expected and len(fs.find("*", tree)) == expected.file_count
            command(["du", "-sb", tree])
            command(["find", tree])

            cases = [
                ("(a) du, 10,000 files", lambda: fs.du(tree), ["du", "-sb", tree], "du -sb"),
                ("(b) find, 10,000 files", lambda: fs.find("*", tree), ["find", tree], "find"),
            ]
            rows: list[Row] = []
            for label, ours, argv, baseline_name in cases:
                mine: list[float] = []
                theirs: list[float] = []
                for _ in range(samples):
                    theirs.append(timed(lambda argv=argv: command(argv)))  # type: ignore[misc]
                    mine.append(timed(ours))
                m, t = median(mine), median(theirs)
                rows.append(
                    Row(
                        f"{label} (median of {samples}; baseline `{baseline_name}`)",
                        fmt_s(m),
                        fmt_s(t),
                        fmt_ratio(m / t),
                        f"≤ {TARGET:g}x",
                        verdict(m / t <= TARGET),
                    )
                )
                print(rows[-1])

            diag: list[str] = []
            rtt = median([timed(lambda: command(["true"])) for _ in range(samples)])
            diag.append(f"one command round trip (`true`, same connection): {fmt_s(rtt)}")
            transport.find_program = None  # as on a server without GNU find
            n = max(3, samples // 3)
            sftp_du = median([timed(lambda: fs.du(tree)) for _ in range(n)])
            sftp_find = median([timed(lambda: fs.find("*", tree)) for _ in range(n)])
            assert fs.du(tree) == expected
            diag.append(
                f"SFTP fallback (no `find` on the server; one `readdir` per directory, a "
                f"tree level at a time): du {fmt_s(sftp_du)}, find {fmt_s(sftp_find)} "
                f"(medians of {n})"
            )
        finally:
            command(["rm", "-rf", "--", tree])

    result_table = table(rows, "the command over the same connection")
    print_report(result_table, diag, notes)

    if opts.write:
        cmd = "python benchmarks/bench_fs.py" + (" --quick" if opts.quick else "") + " --write"
        write_report(
            "fs-bench",
            "Filesystem: du and find over SSH",
            [
                "`bench_fs.py`: a tree of 10,000 files in 100 directories on the test cluster; "
                "clustrix's `du`/`find` (one `find -printf` command, parsed in Python) against "
                "`du -sb`/`find` run directly over the same asyncssh connection, interleaved.",
                f"Machine: {machine_facts()}",
                f"Run: `{cmd}`.",
            ],
            [result_table],
            diag,
            notes,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
