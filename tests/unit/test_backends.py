"""The backend registry: the one source of cluster_type names, and third-party backends
registered through the ``clustrix.backends`` entry point group (a real dist-info on sys.path,
found by importlib.metadata as any installed package's would be)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clustrix import ClusterConfig, ConfigError
from clustrix._factory import make_scheduler
from clustrix.backends import (
    BUILTIN_BACKENDS,
    ENTRY_POINT_GROUP,
    available_backends,
    check_cluster_type,
    registered_backends,
)
from clustrix.config import CLUSTER_TYPES
from clustrix.schedulers.local import LocalScheduler

PLUGIN_MODULE = """
from clustrix.schedulers.local import LocalScheduler


class PluginScheduler(LocalScheduler):
    name = "plugsched"


class NotAScheduler:
    pass
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Path]:
    """An installed distribution 'clustrix-plugin' with three entry points."""
    (tmp_path / "clustrix_test_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "clustrix_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clustrix-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "plugsched = clustrix_test_plugin:PluginScheduler\n"
        "pbs = clustrix_test_plugin:PluginScheduler\n"  # a planned name: may be provided
        "slurm = clustrix_test_plugin:PluginScheduler\n"  # a built-in one: must be refused
        "broken = clustrix_test_plugin:NotAScheduler\n"
        "missing = clustrix_no_such_module:Scheduler\n"
    )
    sys.path.insert(0, str(tmp_path))
    registered_backends.cache_clear()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("clustrix_test_plugin", None)
        registered_backends.cache_clear()


def test_config_accepts_exactly_the_available_backends() -> None:
    assert available_backends() == CLUSTER_TYPES
    assert available_backends()[:2] == ("local", "slurm")
    for name in available_backends():
        assert ClusterConfig(cluster_type=name).cluster_type == name
    assert check_cluster_type(" SLURM ") == "slurm"


def test_planned_and_unknown_backends_are_refused_with_the_choices() -> None:
    planned = [b.name for b in BUILTIN_BACKENDS if not b.available]
    assert planned, "every planned backend has landed: drop this test's premise"
    for name in planned:
        with pytest.raises(ValueError, match=f"'{name}' is planned") as info:
            check_cluster_type(name)
        assert ", ".join(available_backends()) in str(info.value)
    with pytest.raises(ValueError, match="did you mean 'slurm'"):
        check_cluster_type("slurn")


def test_scheduler_modules_are_imported_only_when_built() -> None:
    import subprocess

    code = (
        "import sys, clustrix.backends as b, clustrix.config as c; "
        "c.ClusterConfig(cluster_type='slurm'); "
        "print(any(m.startswith('clustrix.schedulers.slurm') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_entry_point_adds_a_backend(plugin: Path) -> None:
    assert "plugsched" in available_backends()
    config = ClusterConfig(cluster_type="plugsched")
    scheduler = make_scheduler(config)
    assert type(scheduler).__name__ == "PluginScheduler"
    assert isinstance(scheduler, LocalScheduler)
    assert registered_backends()["plugsched"].origin == "clustrix-plugin"


def test_an_entry_point_may_provide_a_planned_backend_but_not_replace_a_builtin(
    plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert registered_backends()["pbs"].available
    assert registered_backends()["slurm"].origin == "clustrix"
    assert "ignoring entry point 'slurm'" in caplog.text


def test_a_broken_entry_point_is_a_config_error_naming_it(plugin: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a clustrix\.schedulers\.base\.Scheduler subclass"):
        make_scheduler(ClusterConfig(cluster_type="broken"))
    with pytest.raises(ConfigError, match="cannot load clustrix_no_such_module:Scheduler"):
        make_scheduler(ClusterConfig(cluster_type="missing"))


def test_a_resource_the_backend_cannot_honour_is_refused_at_submission(tmp_path: Path) -> None:
    from clustrix import ClusterExecutor

    class NoQos(LocalScheduler):
        unsupported_resources = frozenset({"qos"})

    config = ClusterConfig(remote_work_dir=str(tmp_path / "work"), state_dir=tmp_path / "state")
    with ClusterExecutor(config, scheduler=NoQos()) as ex:
        assert ex.submit(abs, -3).result(timeout=60) == 3  # nothing asked: fine
        with pytest.raises(ConfigError, match=r"cannot honour qos: leave it unset"):
            ex.options(qos="high").submit(abs, -3)


def test_cli_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from clustrix.cli import main

    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(registered_backends())
    assert [r["name"] for r in rows if r["available"]] == list(available_backends())
    assert main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "pbs" in text and "planned" in text


def test_the_local_jobs_engine_refuses_a_time_limit_the_pool_enforces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its jobs are plain processes that nothing stops at a time limit: refused, never
    # ignored; the default engine (warm workers) enforces it (tests/unit/test_localpool.py)
    from clustrix import ClusterExecutor

    config = ClusterConfig(remote_work_dir=str(tmp_path / "work"), state_dir=tmp_path / "state")
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")
    with ClusterExecutor(config) as ex:
        before = ex.stats()
        with pytest.raises(ConfigError, match=r"cannot honour time_limit_min.*cluster_type='ssh'"):
            ex.options(time_limit_min=5).submit(abs, -3)
        assert ex.stats() == before  # nothing was started
        assert ex.submit(abs, -3).result(timeout=60) == 3
        assert ex.stats() != before
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "pool")
    with ClusterExecutor(config) as ex:
        assert ex.options(time_limit_min=5).submit(abs, -3).result(timeout=60) == 3
