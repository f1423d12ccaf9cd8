"""The worker runtime shipped to the node: self-contained, lean, content-addressed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
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


#: What a job's worker must not import for a call that needs none of it (pickled by
#: reference, here ``eval``): each costs every task of every array on the node. The pickle
#: module (its pure-Python twin imports re, enum, struct: ``_pickle`` is the pickler),
#: OpenSSL (small files are sealed with the interpreter's own SHA-256), runpy (``-m``).
NOT_NEEDED = (
    *HEAVY,
    "pickle",
    "re",
    "enum",
    "struct",
    "hashlib",
    "_hashlib",
    "hmac",
    "contextlib",
    "runpy",
    "importlib.util",
    "typing",
    "warnings",
    "traceback",
    "cloudpickle",
)
PACKAGES = tuple(f"{name}." for name in NOT_NEEDED)
#: Evaluated by the job (a call of the builtin eval, which unpickles without an import):
#: the modules the worker process holds when the call runs.
LOADED = "sorted(__import__('sys').modules)"
#: The same for a bare interpreter started by the job with the job's environment (the
#: worker's own changes to it undone): what the interpreter and its site imports anyway.
AT_START = (
    "__import__('subprocess').run([__import__('sys').executable, '-c', "
    "'import sys; print(*sys.modules)'], capture_output=True, text=True).stdout.split()"
)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("local", id="local-jobs"),
        pytest.param("slurm-ssh", marks=pytest.mark.cluster),
        pytest.param("sge-ssh", marks=pytest.mark.cluster),
    ],
)
def test_a_jobs_worker_imports_only_what_the_call_needs(
    backend: str, make: Callable[..., ClusterExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTRIX_LOCAL_ENGINE", "jobs")  # local: the job script, not the pool
    executor = make(backend)
    loaded = executor.submit(eval, LOADED).result(timeout=180)
    at_start = executor.submit(eval, AT_START).result(timeout=180)
    assert "clustrix.worker" in loaded and "_pickle" in loaded
    added = set(loaded) - set(at_start)
    assert sorted(m for m in added if m in NOT_NEEDED or m.startswith(PACKAGES)) == []
    # a function pickled by value (a lambda) is rebuilt without importing cloudpickle
    # (clustrix._unpickle), nor OpenSSL, nor runpy
    by_value = executor.submit(lambda: eval(LOADED)).result(timeout=180)
    added = set(by_value) - set(at_start)
    assert sorted(m for m in added if m in NOT_NEEDED or m.startswith(PACKAGES)) == []
    # a class by value needs cloudpickle itself: it is imported then, and the call works
    Point = type("Point", (), {"__module__": "__main__", "loaded": lambda self: eval(LOADED)})
    assert "cloudpickle.cloudpickle" in executor.submit(Point().loaded).result(timeout=180)


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
    # only what a job loads is compiled (the build is on a cold start's path)
    assert "clustrix/executor.pyc" not in compiled


def test_worker_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    bundle = worker_bundle()
    zip_path = tmp_path / bundle.filename
    zip_path.write_bytes(bundle.data)
    probe = (
        "import sys, clustrix.worker, cloudpickle; "
        "print(clustrix.worker.__file__); print('\\n'.join(sorted(sys.modules)))"
    )
    files = (
        "import sys, clustrix.worker, cloudpickle; print('\\n'.join(m.__file__ for n, m in "
        "sys.modules.items() if n.split('.')[0] in ('clustrix', 'cloudpickle')))"
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
    # and each of its modules comes compiled (zipimport cannot cache bytecode: a module
    # there as source alone is compiled again by every job)
    from_zip = subprocess.run(
        [sys.executable, "-s", "-c", files],
        env={"PYTHONPATH": str(zip_path), "PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert from_zip and [f for f in from_zip if not f.endswith(".pyc")] == []


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
