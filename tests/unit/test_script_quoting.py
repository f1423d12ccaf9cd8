"""Every user-supplied value in a job script reaches its target byte for byte.

``render_body`` output is run with ``bash``: ``module`` is a shell function recording its
arguments, and ``JobSpec.python`` points at a stub interpreter recording its argv and the
values of the exported variables. Values are drawn from text full of shell syntax.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustrix import _wire
from clustrix.config import Resources
from clustrix.schedulers.base import JobSpec, render_body
from clustrix.worker import BOOTSTRAP

#: how the job script starts the worker, before the job dir and the task index
WORKER_ARGS = ["-c", BOOTSTRAP, "clustrix.worker", "run"]

MODULE_STUB = """module() { printf '%s\\0' "$@" >> "$MODULE_OUT"; }\n"""

# Records argv and each variable named in $STUB_VARS (NUL-separated) as raw bytes.
PYTHON_STUB = """\
import os, sys
out = os.environb[b"STUB_OUT"]
with open(out + b".argv", "wb") as fh:
    fh.write(b"".join(os.fsencode(a) + b"\\0" for a in sys.argv[1:]))
with open(out + b".env", "wb") as fh:
    for name in os.environb[b"STUB_VARS"].split(b","):
        fh.write(os.environb.get(name, b"<unset>") + b"\\0")
    fh.write(os.environb.get(b"PYTHONPATH", b"<unset>") + b"\\0")
    fh.write(os.environb.get(b"PYTHONSAFEPATH", b"<unset>") + b"\\0")
"""

SHELL_SYNTAX = list("'\"`$();&|<>\\ \t\n\r*?![]{}~#=%:,.-/")
FRAGMENTS = ["$(touch pwned)", "`touch pwned`", "${HOME}", "'\\''", '"$@"', "\\n", "$'x'"]
ANY_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")

weird_text = st.lists(
    st.one_of(st.sampled_from(SHELL_SYNTAX), st.sampled_from(FRAGMENTS), ANY_CHAR),
    max_size=12,
).map("".join)

# The config refuses quotes, '%' and newlines in remote_work_dir (sbatch directives cannot
# carry them); '/' and NUL cannot be in one path component.
FORBIDDEN_IN_DIR = set("\"'%\n\r/\x00")
dir_name = (
    st.lists(
        st.one_of(
            st.sampled_from([c for c in SHELL_SYNTAX if c not in FORBIDDEN_IN_DIR]),
            st.sampled_from(["$(touch pwned)", "`touch pwned`", "${HOME}", " -n ", "é", "日本"]),
            ANY_CHAR.filter(lambda c: c not in FORBIDDEN_IN_DIR),
        ),
        min_size=1,
        max_size=10,
    )
    .map("".join)
    .filter(lambda s: s not in (".", "..") and len(s.encode()) <= 200)
)


@dataclass(frozen=True)
class Stub:
    python: str
    root: Path


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    root = Path(tempfile.mkdtemp(prefix="clustrix-quoting-"))
    python = root / "stub-python"
    python.write_text(f"#!{sys.executable} -IS\n{PYTHON_STUB}", encoding="utf-8")
    python.chmod(0o755)
    yield Stub(str(python), root)
    shutil.rmtree(root, ignore_errors=True)


def run_body(stub: Stub, spec: JobSpec, workdir: Path, *, task: str = "0") -> dict[str, bytes]:
    """Run the rendered body of ``spec`` with bash; return what the stubs recorded."""
    script = MODULE_STUB + render_body(spec, task)
    out = workdir / "stub"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "MODULE_OUT": str(workdir / "modules"),
        "STUB_OUT": str(out),
        "STUB_VARS": ",".join(spec.environment),
    }
    proc = subprocess.run(
        ["bash", "-c", script, "job.sh"],
        env=env,
        cwd=workdir,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    recorded = {}
    for name, path in (
        ("modules", workdir / "modules"),
        ("argv", Path(f"{out}.argv")),
        ("env", Path(f"{out}.env")),
    ):
        recorded[name] = path.read_bytes() if path.exists() else b""
    return recorded


def nul_joined(values: list[str]) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    job_dir_name=dir_name,
    modules=st.lists(weird_text, max_size=3),
    values=st.lists(weird_text, min_size=1, max_size=3),
    worker_name=weird_text,
)
def test_values_arrive_byte_for_byte(
    stub: Stub, job_dir_name: str, modules: list[str], values: list[str], worker_name: str
) -> None:
    workdir = Path(tempfile.mkdtemp(dir=stub.root))
    try:
        job_dir = workdir / job_dir_name
        (job_dir / _wire.EXIT_DIR).mkdir(parents=True)
        assert job_dir.is_absolute()
        environment = {f"CLUSTRIX_TEST_V{i}": v for i, v in enumerate(values)}
        worker_path = f"/no/such dir/{worker_name}"
        spec = JobSpec(
            job_dir=str(job_dir),
            n_tasks=1,
            resources=Resources(),
            job_name="clustrix-quoting",
            python=stub.python,
            worker_path=worker_path,
            module_loads=modules,
            environment=environment,
        )
        recorded = run_body(stub, spec, workdir)

        assert recorded["modules"] == nul_joined([x for m in modules for x in ("load", m)])
        assert recorded["argv"] == nul_joined([*WORKER_ARGS, str(job_dir), "0"])
        assert recorded["env"] == nul_joined([*values, worker_path, "1"])
        assert (job_dir / _wire.EXIT_DIR / "0").read_bytes() == b"0\n"
        assert sorted(os.listdir(job_dir / _wire.EXIT_DIR)) == ["0"]
        # nothing was executed by accident (e.g. "$(touch pwned)" in a value)
        assert not (workdir / "pwned").exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_exit_status_of_worker_is_recorded(stub: Stub, tmp_path: Path) -> None:
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\nexit 7\n", encoding="utf-8")
    failing.chmod(0o755)
    job_dir = tmp_path / "job dir $(x)"
    (job_dir / _wire.EXIT_DIR).mkdir(parents=True)
    spec = JobSpec(
        job_dir=str(job_dir),
        n_tasks=3,
        resources=Resources(),
        job_name="j",
        python=str(failing),
        worker_path="/w.zip",
    )
    script = render_body(spec, '"$1"')
    proc = subprocess.run(["bash", "-c", script, "job.sh", "2"], capture_output=True)
    assert proc.returncode == 7
    assert (job_dir / _wire.EXIT_DIR / "2").read_text() == "7\n"
    assert sorted(os.listdir(job_dir / _wire.EXIT_DIR)) == ["2"]  # no temp file left


def test_user_variables_named_like_script_variables_keep_their_values(
    stub: Stub, tmp_path: Path
) -> None:
    job_dir = tmp_path / "job"
    (job_dir / _wire.EXIT_DIR).mkdir(parents=True)
    environment = {"task": "train", "job_dir": "/data/in"}
    spec = JobSpec(
        job_dir=str(job_dir),
        n_tasks=1,
        resources=Resources(),
        job_name="j",
        python=stub.python,
        worker_path="/w.zip",
        environment=environment,
    )
    recorded = run_body(stub, spec, tmp_path)
    assert recorded["argv"] == nul_joined([*WORKER_ARGS, str(job_dir), "0"])
    assert recorded["env"] == nul_joined(["train", "/data/in", "/w.zip", "1"])
