"""The one-round-trip submission: the job directory travels as a tar on the submit
command's stdin. Run here with the local ``sh`` and ``tar`` (the same commands a cluster
login node has)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from clustrix import _wire
from clustrix._engine import _jobdir


def unpack_and_run(
    job_dir: Path, files: dict[str, bytes], *command: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["sh", "-c", _jobdir.UNPACK_AND_SUBMIT, "clustrix-submit", str(job_dir), *command],
        input=_jobdir.tar(files),
        capture_output=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_files_arrive_private_and_the_command_runs_from_the_login_directory(
    tmp_path: Path,
) -> None:
    job_dir = tmp_path / "work dir" / "jobs" / "abc"  # missing parents, a space
    files = {
        _wire.SECRET_FILE: bytes(range(256)),
        _wire.SCRIPT_FILE: b"#!/bin/bash\necho hi\n",
        f"{_wire.TASKS_DIR}/0{_wire.SUFFIX}": b"\x00task",
    }
    done = unpack_and_run(job_dir, files, "sh", "-c", 'pwd; echo "$1"', "sh", "arg with space")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(Path.cwd()), "arg with space"]
    for name, data in files.items():
        path = job_dir / name
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for sub in (_wire.TASKS_DIR, _wire.RESULTS_DIR, _wire.LOGS_DIR, _wire.EXIT_DIR):
        assert stat.S_IMODE((job_dir / sub).stat().st_mode) == 0o700


def test_the_submit_commands_status_and_output_come_back(tmp_path: Path) -> None:
    done = unpack_and_run(tmp_path / "j", {"secret": b"x"}, "sh", "-c", "echo 12345; exit 3")
    assert (done.returncode, done.stdout) == (3, "12345\n")


def test_an_unwritable_job_directory_is_told_apart_from_a_refused_job(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = unpack_and_run(blocker / "jobs" / "j", {"secret": b"x"}, "echo", "never run")
    assert done.returncode == _jobdir.UNPACK_FAILED
    assert "never run" not in done.stdout
