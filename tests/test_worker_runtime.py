"""The worker runtime shipped to the node: self-contained, lean, content-addressed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from clustrix import ClusterExecutor, ConfigError
from clustrix._bundle import worker_bundle

HEAVY = (
    "pydantic",
    "asyncssh",
    "yaml",
    "clustrix.executor",
    "clustrix._engine",
    "clustrix.transports",
    "clustrix.schedulers",
    "clustrix.config",
)


def test_bundle_is_named_by_its_sources_and_complete() -> None:
    bundle = worker_bundle()
    names = zipfile.ZipFile(BytesIO(bundle.data)).namelist()
    assert {"clustrix/__init__.py", "clustrix/worker.py", "clustrix/_wire.py"} <= set(names)
    assert "cloudpickle/__init__.py" in names
    assert "clustrix/executor.py" in names  # user modules may import clustrix on the node
    assert bundle.filename == f"clustrix-worker-{bundle.digest}.zip"
    worker_bundle.cache_clear()
    assert worker_bundle().digest == bundle.digest  # same sources, same name on the cluster
    compiled = [n for n in names if n.endswith(".pyc")]
    assert "clustrix/worker.pyc" in compiled and "cloudpickle/cloudpickle.pyc" in compiled


def test_worker_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    bundle = worker_bundle()
    zip_path = tmp_path / bundle.filename
    zip_path.write_bytes(bundle.data)
    probe = (
        "import sys, clustrix.worker, cloudpickle; "
        "print(clustrix.worker.__file__); print('\\n'.join(sorted(sys.modules)))"
    )
    # As the job script runs it: the zip on PYTHONPATH, PYTHONSAFEPATH so that a clustrix
    # checkout in the working directory (this repository!) cannot shadow it.
    out = subprocess.run(
        [sys.executable, "-s", "-c", probe],
        env={"PYTHONPATH": str(zip_path), "PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(zip_path)), "the worker must come from the shipped zip"
    loaded = set(out[1:])
    assert not [m for m in loaded if m.startswith(HEAVY)]


def test_worker_usage_error_exit_status(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clustrix.worker", "bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "usage" in result.stderr


@pytest.mark.parametrize("bad", [0, -3])
def test_max_workers_below_one_is_a_value_error(bad: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        ClusterExecutor(max_workers=bad, remote_work_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="max_workers"):
        ClusterExecutor(max_workers=bad, remote_work_dir=str(tmp_path))
