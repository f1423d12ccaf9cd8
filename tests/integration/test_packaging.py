"""The dependency packager against the real cluster, as its unprivileged test user.

A temporary project (a local package of two modules, one importing the other, and a script
whose ``__main__`` function uses it and a small PyPI package the test user does not have)
runs on SLURM over SSH, where the node has nothing but Debian's python3. So do calls whose
functions travel inside their arguments (``arglab``, client-only), and user code that uses
clustrix itself on the node (``clustrixuser``).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argcallers
import arglab
import clustrixuser
import pytest
from clustertools import require_cluster, ssh_run

from clustrix import ClusterExecutor, PackagingError
from clustrix._serialize import dumps_call
from clustrix.packaging import EnvironmentPlan

pytestmark = pytest.mark.cluster

SCRIPT = """
import json, sys
from clustrix import ClusterConfig, ClusterExecutor

def analyse(x):
    from mylab.stats import summary
    import annotated_types
    return summary(x), annotated_types.Gt(x).gt

if __name__ == "__main__":
    with ClusterExecutor(ClusterConfig.load()) as ex:
        results = list(ex.map(analyse, [1, 2, 3]))
        print(json.dumps({"results": results, "stats": ex.stats()}))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "mylab").mkdir(parents=True)
    (root / "mylab" / "__init__.py").write_text('"""A lab package nobody published."""\n')
    (root / "mylab" / "core.py").write_text("def scale(x):\n    return 2 * x\n")
    (root / "mylab" / "stats.py").write_text(
        "from .core import scale\n\ndef summary(x):\n    return scale(x) + 1\n"
    )
    (root / "analysis.py").write_text(textwrap.dedent(SCRIPT))
    return root


@pytest.fixture
def work_dir() -> Iterator[str]:
    require_cluster(ssh=True, slurm=False)
    path = f".clustrix-pkg-{uuid.uuid4().hex[:8]}"
    yield f"~/{path}"
    ssh_run(f"rm -rf ~/{path}")


def run_script(
    project: Path, work_dir: str, cluster_type: str = "slurm", **extra: str
) -> dict[str, object]:
    cluster = require_cluster(ssh=True, slurm=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTRIX_") or "TEST" in k}
    env.update(
        CLUSTRIX_CLUSTER_TYPE=cluster_type,
        CLUSTRIX_CLUSTER_HOST=cluster.host,
        CLUSTRIX_CLUSTER_PORT=str(cluster.port),
        CLUSTRIX_USERNAME=cluster.user,
        CLUSTRIX_KEY_FILE=str(cluster.key_file),
        CLUSTRIX_KNOWN_HOSTS=str(cluster.known_hosts),
        CLUSTRIX_REMOTE_WORK_DIR=work_dir,
        CLUSTRIX_POLL_INTERVAL_MAX_S="0.5",
        **extra,
    )
    result = subprocess.run(
        [sys.executable, "analysis.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def builds(work_dir: str) -> list[str]:
    out = ssh_run(f"cat {work_dir.replace('~', '$HOME', 1)}/envs/*.builds 2>/dev/null || true")
    return [line for line in out.splitlines() if line.strip()]


#: The backends reached over SSH as the test user that the packager's main test runs on.
SSH_CLUSTER_TYPES = ["slurm", "ssh", "sge"]


@pytest.mark.parametrize("cluster_type", SSH_CLUSTER_TYPES)
def test_script_runs_remotely_then_reuses_env_and_code(
    project: Path, work_dir: str, cluster_type: str
) -> None:
    first = run_script(project, work_dir, cluster_type)
    assert first["results"] == [[3, 1], [5, 2], [7, 3]]
    stats = first["stats"]
    assert isinstance(stats, dict)
    assert stats["packaging.env_builds"] == 1
    assert stats["packaging.code_uploads"] == 1
    second = run_script(project, work_dir, cluster_type)
    assert second["results"] == first["results"]
    stats = second["stats"]
    assert isinstance(stats, dict)
    assert stats.get("packaging.env_builds", 0) == 0
    assert stats.get("packaging.code_uploads", 0) == 0
    assert stats.get("commands.sh:env-build", 0) == 0  # no pip call at all
    assert len(builds(work_dir)) == 1


def test_one_changed_byte_ships_new_code_only(project: Path, work_dir: str) -> None:
    run_script(project, work_dir)
    core = project / "mylab" / "core.py"
    core.write_text(core.read_text().replace("2 * x", "3 * x"))
    again = run_script(project, work_dir)
    assert again["results"] == [[4, 1], [7, 2], [10, 3]]
    stats = again["stats"]
    assert isinstance(stats, dict)
    assert stats["packaging.code_uploads"] == 1
    assert stats.get("packaging.env_builds", 0) == 0
    assert len(builds(work_dir)) == 1


def test_two_executors_at_once_build_the_environment_once(project: Path, work_dir: str) -> None:
    cluster = require_cluster(ssh=True, slurm=False)
    del cluster
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: run_script(project, work_dir), range(2)))
    assert all(o["results"] == [[3, 1], [5, 2], [7, 3]] for o in outcomes)
    built = [o["stats"].get("packaging.env_builds", 0) for o in outcomes]  # type: ignore[union-attr]
    assert sorted(built) == [0, 1]
    assert len(builds(work_dir)) == 1


def test_python_version_mismatch_is_a_clear_error(work_dir: str, tmp_path: Path) -> None:
    cluster = require_cluster(ssh=True, slurm=False)
    fake = f"{work_dir}/python3.9"
    remote = fake.replace("~", "$HOME", 1)
    ssh_run(
        f"mkdir -p $(dirname {remote}) && printf '#!/bin/sh\\necho CLUSTRIX-PY 3.9\\n' "
        f"> {remote} && chmod +x {remote}"
    )
    home = ssh_run("echo $HOME").strip()
    config = cluster.ssh_config(
        cluster_type="slurm",
        remote_work_dir=work_dir,
        python_executable=fake.replace("~", home, 1),
    )
    with pytest.raises(PackagingError) as info:
        ClusterExecutor(config)
    message = str(info.value)
    assert "3.9" in message and f"{sys.version_info.major}.{sys.version_info.minor}" in message
    assert "python_executable" in message


def test_missing_remote_python_is_a_clear_error(work_dir: str) -> None:
    cluster = require_cluster(ssh=True, slurm=False)
    config = cluster.ssh_config(
        cluster_type="slurm", remote_work_dir=work_dir, python_executable="/no/such/python3"
    )
    with pytest.raises(PackagingError, match="python_executable '/no/such/python3'"):
        ClusterExecutor(config)


def test_uninstallable_requirement_reports_pip_output(work_dir: str) -> None:
    import jobfuncs as jf

    cluster = require_cluster(ssh=True, slurm=False)
    config = cluster.ssh_config(
        cluster_type="slurm",
        remote_work_dir=work_dir,
        extra_requirements=["clustrix-no-such-package-zz==1.0"],
    )
    with ClusterExecutor(config) as executor:
        future = executor.submit(jf.add, 1, 2)
        with pytest.raises(PackagingError) as info:
            future.result(timeout=600)
    message = str(info.value)
    assert "clustrix-no-such-package-zz" in message
    assert "No matching distribution" in message or "Could not find a version" in message


def test_plan_lists_local_code_and_pinned_requirements(project: Path) -> None:
    probe = textwrap.dedent(
        """
        import runpy, sys
        sys.argv = ["analysis.py"]
        ns = runpy.run_path("analysis.py", run_name="not_main")
        from clustrix import ClusterExecutor
        from clustrix.packaging import Packager
        plan = Packager().plan(ns["analyse"])
        print(plan.summary())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "mylab" in result.stdout
    assert "annotated_types==" in result.stdout.replace("-", "_")


# --------------------------------------------------------------------------- inside arguments
def tasks_of(*xs: int) -> collections.deque[Any]:
    """Work for ``argcallers.call_each``: partials of a client-only function and an object of
    a client-only class, in a container the walk over live objects does not open."""
    return collections.deque(
        [*(functools.partial(arglab.tenfold, x) for x in xs), arglab.Offset(1)]
    )


def scan_payloads(executor: ClusterExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """What executor.py does once wired (Packager.add_payloads after pickling), by hand."""
    packager = executor._packager
    assert packager is not None
    walk = executor._plan

    def plan(fn: Any, calls: list[tuple[Any, ...]], kwargs: dict[str, Any]) -> EnvironmentPlan:
        walked = walk(fn, calls, kwargs)
        assert walked is not None
        return packager.add_payloads(walked, [dumps_call(fn, tuple(a), kwargs) for a in calls])

    monkeypatch.setattr(executor, "_plan", plan)


def shipped(plan: EnvironmentPlan | None) -> list[str]:
    assert plan is not None
    return [m.name for m in plan.local_modules]


def test_function_inside_an_argument_runs_remotely(
    make: Callable[..., ClusterExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = make("slurm-ssh")
    packager = executor._packager
    assert packager is not None
    tasks = tasks_of(3, 4)
    assert shipped(packager.plan(argcallers.call_each, [tasks])) == ["argcallers"]  # the walk
    scan_payloads(executor, monkeypatch)
    plan = executor._plan(argcallers.call_each, [(tasks,)], {})
    assert shipped(plan) == ["argcallers", "arglab"]  # the walk, then the payload's scan
    assert executor.submit(argcallers.call_each, tasks).result(timeout=300) == [30, 40, 2]
    results = executor.map(argcallers.call_each, [tasks_of(1), tasks_of(2, 5)], timeout=300)
    assert list(results) == [[10, 2], [20, 50, 2]]


def test_function_inside_an_argument_through_the_executor(
    make: Callable[..., ClusterExecutor],
) -> None:
    """Unwired, the call fails on the node: ModuleNotFoundError: No module named 'arglab'."""
    executor = make("slurm-ssh")
    assert executor.submit(argcallers.call_each, tasks_of(5)).result(timeout=300) == [50, 2]
    results = executor.map(argcallers.call_each, [tasks_of(6), tasks_of(7)], timeout=300)
    assert list(results) == [[60, 2], [70, 2]]
    assert "arglab" in shipped(executor.plan_environment(argcallers.call_each, tasks_of(5)))


# --------------------------------------------------------------------------- clustrix on the node
@pytest.mark.timeout(1500)
def test_user_code_importing_clustrix_finds_its_dependencies_on_the_node(
    make: Callable[..., ClusterExecutor],
) -> None:
    executor = make("slurm-ssh", env_build_timeout_s=1200)
    plan = executor.plan_environment(clustrixuser.config_on_the_node, 3)
    pinned = {re.sub(r"[-_.]+", "-", r.partition("==")[0]).lower() for r in plan.requirements}
    assert {"pydantic", "pydantic-settings", "asyncssh", "pyyaml"} <= pinned
    assert "clustrix" not in pinned and "cloudpickle" not in pinned  # in the runtime zip
    found = executor.submit(clustrixuser.config_on_the_node, 3).result(timeout=1200)
    assert (found["cores"], found["cluster_type"]) == (3, "local")
    assert ".zip" in str(found["clustrix_from"])  # the worker runtime's clustrix
    assert "/envs/" in str(found["pydantic_settings_from"])  # installed in the environment
