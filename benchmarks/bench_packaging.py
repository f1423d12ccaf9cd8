"""What the dependency packager costs, on the test cluster over SSH, in one run.

Rows (each a ratio to a submission with ``packaging=False`` measured in the same run):

- first submission of a function that needs a local package and a PyPI package, in a fresh
  remote work dir: code upload + venv build (pip install) + the job;
- the same function from a NEW executor once the environment exists (cache hit): one
  check round trip, then the job;
- the same function again in the SAME executor: nothing to check at all;
- the number of remote commands a cache hit adds over packaging off (target: at most one).

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_packaging.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Row, fmt_ratio, fmt_s, machine_facts, median, now_text, table, verdict
from _common import write_readme_section as write_section
from bench_slurm import Login

from clustrix import ClusterConfig, ClusterExecutor


def noop() -> int:
    """Standard library only: needs nothing shipped."""
    return 1


def uses_deps() -> int:
    """Needs the local package ``benchpkg`` and the PyPI package ``annotated_types``."""
    import annotated_types
    import benchpkg

    return int(benchpkg.one() + annotated_types.Gt(0).gt)


def make_local_package() -> Path:
    root = Path(tempfile.mkdtemp(prefix="clustrix-bench-pkg-"))
    (root / "benchpkg").mkdir()
    (root / "benchpkg" / "__init__.py").write_text(
        textwrap.dedent(
            f'''
            """A local package the cluster does not have ({uuid.uuid4().hex})."""
            def one():
                return 1
            '''
        )
    )
    sys.path.insert(0, str(root))
    return root


def submit_to_result(executor: ClusterExecutor, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    executor.submit(fn).result(timeout=900)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args()
    samples = 3 if args.quick else 5
    login = Login.from_env()
    work_dir = f"~/.clustrix-bench-pkg-{uuid.uuid4().hex[:8]}"
    make_local_package()

    def config(**overrides: Any) -> ClusterConfig:
        return login.config(work_dir, **overrides)

    with ClusterExecutor(config(packaging=False)) as plain:
        submit_to_result(plain, noop)  # warm: runtime upload, first poll
        baseline = median([submit_to_result(plain, noop) for _ in range(samples)])
        plain_setup = plain.stats().get("commands.setup", 0)

    with ClusterExecutor(config()) as first:
        first_s = submit_to_result(first, uses_deps)
        built = first.stats().get("packaging.env_builds", 0)

    hits: list[float] = []
    extra_commands: list[int] = []
    for _ in range(samples):
        with ClusterExecutor(config()) as fresh:
            hits.append(submit_to_result(fresh, uses_deps))
            stats = fresh.stats()
            assert stats.get("packaging.env_builds", 0) == 0, stats
            extra_commands.append(stats.get("commands.setup", 0) - plain_setup)
    cache_hit = median(hits)

    with ClusterExecutor(config()) as warm:
        submit_to_result(warm, uses_deps)
        warm_s = median([submit_to_result(warm, uses_deps) for _ in range(samples)])

    extra = max(extra_commands)
    rows = [
        Row(
            f"first submission: code upload + venv build ({built} build)",
            fmt_s(first_s),
            fmt_s(baseline),
            fmt_ratio(first_s / baseline),
        ),
        Row(
            f"cache hit from a new executor (median of {samples})",
            fmt_s(cache_hit),
            fmt_s(baseline),
            fmt_ratio(cache_hit / baseline),
        ),
        Row(
            f"same function again, same executor (median of {samples})",
            fmt_s(warm_s),
            fmt_s(baseline),
            fmt_ratio(warm_s / baseline),
        ),
        Row(
            "remote commands a cache hit adds over packaging off",
            str(extra),
            "0",
            "",
            "<= 1",
            verdict(extra <= 1),
        ),
    ]
    body = (
        f"### Packaging cost over SSH — {now_text()}\n\n"
        f"Machine: {machine_facts()}\n\n"
        "Run: `python benchmarks/bench_packaging.py --write`. The function needs a local "
        "package and `annotated_types` (from PyPI, pinned from this environment); the "
        "baseline is a standard-library function with `packaging=False`.\n\n"
        + table(rows, "packaging off")
    )
    print(body)
    if args.write:
        write_section("bench_packaging", body)


if __name__ == "__main__":
    main()
