"""The work directory check (clustrix/_dircheck.py) as the cluster runs it: this Python with
``-c BOOTSTRAP`` and the module's source as its argument, here on this machine as this user.
The refusals (other users' directories) are tested with a real second user in
tests/integration/test_shared_cluster.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from clustrix import _dircheck
from clustrix._remote_env import _facts, dircheck_argument
from clustrix.packaging import EnvironmentPlan

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
ARG = dircheck_argument()


def check(work: Path, version: str = HERE) -> tuple[int, dict[str, object]]:
    argv = [sys.executable, "-c", _dircheck.BOOTSTRAP, version, ARG, str(work)]
    argv += [f"{work}/rt.zip", "-"]
    result = subprocess.run(argv, capture_output=True, timeout=60)  # no stdin: not read
    assert result.stderr == b"", result.stderr
    return result.returncode, _facts(result.stdout.decode())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_nothing_runs_on_another_python_version(tmp_path: Path) -> None:
    returncode, facts = check(tmp_path / "work", version="2.7")
    assert (returncode, facts) == (0, {"PY": HERE})
    assert not (tmp_path / "work").exists()


def test_missing_directories_are_made_private_and_one_key_is_kept(tmp_path: Path) -> None:
    work = tmp_path / "a" / "work"
    returncode, first = check(work)
    assert returncode == 0 and "DIRS-OK" in first and "RUNTIME-OK" not in first
    made = [tmp_path / "a", work, *(work / d for d in _dircheck.SUBDIRS)]
    assert {mode(p) for p in made} == {0o700}
    key = work / _dircheck.KEY_FILE
    assert mode(key) == 0o600 and len(str(first["KEY"])) == 64
    assert check(work)[1]["KEY"] == first["KEY"]  # the same key every time


def test_a_key_others_could_read_is_replaced(tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = check(work)[1]["KEY"]
    (work / _dircheck.KEY_FILE).chmod(0o644)
    again = check(work)[1]["KEY"]
    assert again != first and mode(work / _dircheck.KEY_FILE) == 0o600


def test_the_runtime_counts_only_if_others_cannot_write_it(tmp_path: Path) -> None:
    work = tmp_path / "work"
    check(work)
    (work / "rt.zip").write_bytes(b"zip")
    (work / "rt.zip").chmod(0o644)
    assert "RUNTIME-OK" in check(work)[1]
    (work / "rt.zip").chmod(0o666)
    assert "RUNTIME-OK" not in check(work)[1]


def test_a_file_on_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    returncode, facts = check(tmp_path / "file" / "work")
    assert returncode == _dircheck.EXIT_UNSAFE
    unsafe = facts["UNSAFE"]
    assert isinstance(unsafe, dict) and unsafe["kind"] == "not-dir"
    assert unsafe["path"] == str(tmp_path / "file")
    json.dumps(facts)  # plain data


def test_environment_names_are_keyed() -> None:
    plan = EnvironmentPlan("3.11", ("annotated_types==0.7.0",), (), (), "")
    setup = ["export TOKEN=hunter2"]
    plain = plan.env_hash("python3", setup)
    keyed = [plan.env_hash("python3", setup, key=k) for k in (b"k" * 32, b"j" * 32)]
    assert len({plain, *keyed}) == 3  # no key, no guess of the value to test
    assert keyed[0] == plan.env_hash("python3", setup, key=b"k" * 32)


def test_the_discovery_command_runs_meanwhile_and_home_is_resolved(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    discovery = ["sh", "-c", 'echo "one $1"; echo two >&2; exit 5', "label", "a b"]
    argv = [sys.executable, "-c", _dircheck.BOOTSTRAP, HERE, ARG, "~/w"]
    argv += ["runtime/rt.zip", "-", *discovery]
    env = {**os.environ, "HOME": str(home)}
    result = subprocess.run(argv, input=b"", capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    facts = _facts(result.stdout.decode())
    work = os.path.realpath(home) + "/w"
    assert facts["WORKDIR"] == {"path": work} and "DIRS-OK" in facts
    assert facts["DISCOVERY"] == {"rc": 5, "out": "one a b\n", "err": "two\n"}
    assert mode(Path(work)) == 0o700 and "RUNTIME-OK" not in facts


def test_the_discovery_answer_comes_also_when_the_work_dir_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "shared"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    argv = [sys.executable, "-c", _dircheck.BOOTSTRAP, HERE, ARG, str(work)]
    argv += ["", "-", "echo", "hi"]
    result = subprocess.run(argv, input=b"", capture_output=True, timeout=60)
    facts = _facts(result.stdout.decode())
    assert result.returncode == _dircheck.EXIT_UNSAFE and "UNSAFE" in facts
    assert facts["DISCOVERY"]["out"] == "hi\n"


def test_a_runtime_sent_along_is_written_only_where_it_is_missing(tmp_path: Path) -> None:
    def along(work: Path, data: bytes) -> dict[str, object]:
        argv = [sys.executable, "-c", _dircheck.BOOTSTRAP, HERE, ARG, str(work)]
        argv += ["runtime/rt.zip", "along"]
        result = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        return _facts(result.stdout.decode())

    work = tmp_path / "work"
    facts = along(work, b"zip-1")
    assert "RUNTIME-WRITTEN" in facts and "RUNTIME-OK" in facts
    runtime = work / "runtime" / "rt.zip"
    assert runtime.read_bytes() == b"zip-1" and mode(runtime) == 0o600
    facts = along(work, b"zip-2")
    assert "RUNTIME-OK" in facts and "RUNTIME-WRITTEN" not in facts
    assert runtime.read_bytes() == b"zip-1"  # there already: kept
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    facts = along(shared, b"zip-3")
    assert "UNSAFE" in facts and "RUNTIME-OK" not in facts
    assert list(shared.iterdir()) == []  # nothing written into a refused directory


def test_without_a_runtime_along_stdin_is_not_read(tmp_path: Path) -> None:
    # its EOF would leave the client only once the command has started: waiting for it
    # would cost the start-up a round trip; here stdin never ends, and the answer comes
    read_end, write_end = os.pipe()
    try:
        argv = [sys.executable, "-c", _dircheck.BOOTSTRAP, HERE, ARG, str(tmp_path / "w")]
        argv += ["runtime/rt.zip", "-", "echo", "hi"]
        result = subprocess.run(argv, stdin=read_end, capture_output=True, timeout=60)
    finally:
        os.close(read_end)
        os.close(write_end)
    facts = _facts(result.stdout.decode())
    assert result.returncode == 0 and "DIRS-OK" in facts and "RUNTIME-OK" not in facts
    assert facts["DISCOVERY"]["out"] == "hi\n"
