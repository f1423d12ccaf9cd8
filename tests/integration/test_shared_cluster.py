"""Safe on a shared cluster (issue 18), tried with a second unprivileged user, the neighbour.

On the local backend the tests run as root (the suite's user), over SSH as the unprivileged
test user: the work directory is checked before anything is written (a directory another
user could change is refused, the user's own readable one made private), everything
clustrix creates is private, and no value of ``environment_variables`` shows in any
process's command line while an environment is built and jobs run.

The neighbour (``clustertools.NEIGHBOUR``) is created when missing, and directories are
given to it, which needs root: without root these tests skip (fail under ``CI=true``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jobfuncs as jf
import pytest
from clustertools import NEIGHBOUR, require_cluster, require_neighbour, ssh_run

from clustrix import ClusterConfig, ClusterExecutor, ConfigError

#: Every wait has a deadline: a hang fails the test. Generous: the test cluster is shared.
JOB_TIMEOUT_S = 600
FAST: dict[str, Any] = {
    "poll_interval_min_s": 0.05,
    "poll_interval_max_s": 0.5,
    "poll_rate_max_per_s": 20.0,
}
BACKENDS = [
    pytest.param("local", id="local-as-root"),
    pytest.param("slurm-ssh", id="slurm-ssh", marks=pytest.mark.cluster),
]
FIX = "$SCRATCH/$USER/clustrix"


def config_for(backend: str, work_dir: str, **overrides: Any) -> ClusterConfig:
    if backend == "local":
        return ClusterConfig(remote_work_dir=work_dir, **FAST, **overrides)
    cluster = require_cluster(ssh=True, slurm=False)
    return cluster.ssh_config(cluster_type="slurm", remote_work_dir=work_dir, **FAST, **overrides)


def job_user(backend: str) -> str:
    """Who the jobs of ``backend`` run as."""
    if backend == "local":
        return pwd.getpwuid(os.geteuid()).pw_name
    return require_cluster(ssh=True, slurm=False).user


@pytest.fixture
def make_dir() -> Iterator[Callable[..., str]]:
    """``make_dir(owner, mode, parent="/tmp")``: a new directory of user ``owner`` with
    exactly ``mode`` (as root); removed after the test."""
    require_neighbour()
    made: list[str] = []

    def make(owner: str, mode: int, parent: str = "/tmp") -> str:
        path = os.path.join(parent, f"clustrix-shared-{uuid.uuid4().hex[:8]}")
        os.mkdir(path)
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, mode)
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        shutil.rmtree(path, ignore_errors=True)


def tree(root: str) -> list[tuple[str, int, int]]:
    """Every entry below ``root`` (itself included): path, owner uid, ``lstat`` mode."""
    found = []
    for directory, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.normpath(os.path.join(directory, name))
            if name == "." and directory != root:
                continue
            st = os.lstat(path)
            found.append((path, st.st_uid, st.st_mode))
    return sorted(found)


def mode_of(path: str) -> str:
    return f"{stat.S_IMODE(os.lstat(path).st_mode):04o}"


# ----------------------------------------------------------------- refused before writing
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_neighbours_shared_directory_is_refused_and_nothing_is_written(
    backend: str, make_dir: Callable[..., str]
) -> None:
    shared = make_dir(NEIGHBOUR, 0o777)  # a shared scratch folder: everyone may write
    with pytest.raises(ConfigError) as info:
        ClusterExecutor(config_for(backend, shared))
    message = str(info.value)
    assert f"remote_work_dir {shared!r}" in message
    assert f"owner {NEIGHBOUR}, mode 0777, drwxrwxrwx" in message, message
    assert "Nothing was written" in message and FIX in message
    assert os.listdir(shared) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_directory_others_may_write_is_refused_not_repaired(
    backend: str, make_dir: Callable[..., str]
) -> None:
    own = make_dir(job_user(backend), 0o777)
    with pytest.raises(ConfigError) as info:
        ClusterExecutor(config_for(backend, own))
    message = str(info.value)
    assert f"{own} (owner {job_user(backend)}, mode 0777" in message, message
    assert "may be written by group or others" in message and f"chmod 700 {own}" in message
    assert os.listdir(own) == [] and mode_of(own) == "0777"  # left for the user to judge


def test_own_directory_others_may_read_is_made_private(
    make_dir: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    own = make_dir(job_user("local"), 0o755)
    caplog.set_level(logging.WARNING, logger="clustrix")
    ClusterExecutor(config_for("local", own)).shutdown()
    assert mode_of(own) == "0700"
    assert {mode_of(os.path.join(own, d)) for d in ("jobs", "runtime", "code", "envs")} == {"0700"}
    assert any(own in r.getMessage() and "0755" in r.getMessage() for r in caplog.records)


# Each layout: (remote_work_dir, how the refusal names the culprit, the tree to watch).
def _parent_of_the_neighbour(make_dir: Callable[..., str]) -> tuple[str, str, str]:
    parent = make_dir(NEIGHBOUR, 0o755)
    os.mkdir(f"{parent}/work", 0o700)
    return f"{parent}/work", f"{parent} (owner {NEIGHBOUR}", parent


def _parent_others_may_write(make_dir: Callable[..., str]) -> tuple[str, str, str]:
    parent = make_dir("root", 0o777)  # no sticky bit: anyone may rename what is in it
    return f"{parent}/work", f"{parent} (owner root, mode 0777", parent


def _symlink_of_the_neighbour(make_dir: Callable[..., str]) -> tuple[str, str, str]:
    target = make_dir("root", 0o700)
    link = f"{target}.link"
    os.symlink(target, link)
    os.lchown(link, pwd.getpwnam(NEIGHBOUR).pw_uid, -1)  # it could point it elsewhere
    return link, f"{link} (owner {NEIGHBOUR}", target


def _subdirectory_of_the_neighbour(make_dir: Callable[..., str]) -> tuple[str, str, str]:
    work = make_dir("root", 0o700)
    os.mkdir(f"{work}/jobs", 0o700)
    os.chown(f"{work}/jobs", pwd.getpwnam(NEIGHBOUR).pw_uid, -1)
    return work, f"{work}/jobs (owner {NEIGHBOUR}", work


@pytest.mark.parametrize(
    "layout",
    [
        _parent_of_the_neighbour,
        _parent_others_may_write,
        _symlink_of_the_neighbour,
        _subdirectory_of_the_neighbour,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_directory_on_the_way_that_another_user_controls_is_refused(
    layout: Callable[[Callable[..., str]], tuple[str, str, str]], make_dir: Callable[..., str]
) -> None:
    work, named, watched = layout(make_dir)
    before = tree(watched)
    try:
        with pytest.raises(ConfigError, match="is not safe to run code from") as info:
            ClusterExecutor(config_for("local", work))
        assert named in str(info.value), str(info.value)
        assert tree(watched) == before  # nothing written
    finally:
        if os.path.islink(work):
            os.unlink(work)


def test_a_private_directory_below_a_sticky_scratch_is_the_fix(
    make_dir: Callable[..., str],
) -> None:
    scratch = make_dir("root", 0o1777)  # what a cluster's $SCRATCH looks like
    work = f"{scratch}/{job_user('local')}/clustrix"
    with ClusterExecutor(config_for("local", work)) as executor:
        assert executor.submit(jf.square, 6).result(timeout=JOB_TIMEOUT_S) == 36
    assert mode_of(f"{scratch}/{job_user('local')}") == mode_of(work) == "0700"


# ------------------------------------------------------------ private files, no secrets
class CmdlineWatcher(threading.Thread):
    """Reads every ``/proc/*/cmdline`` over and over, noting the ones holding a needle."""

    def __init__(self, needles: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.needles = needles
        self.seen: dict[str, list[bytes]] = {name: [] for name in needles}
        self.scans = 0
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        cmdline = fh.read()
                except OSError:
                    continue  # ended meanwhile
                for name, needle in self.needles.items():
                    if needle in cmdline:
                        self.seen[name].append(cmdline)
            self.scans += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._finished.set()
        self.join(timeout=30)


def remote_tree(work_dir: str) -> list[tuple[str, str, int]]:
    """Every entry below the test user's ``work_dir``: path, owner, ``lstat`` mode."""
    out = ssh_run(f"find {work_dir} -printf '%U %m %y %p\\n'")
    type_bits = {"d": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK, "p": stat.S_IFIFO}
    found = []
    for line in out.splitlines():
        uid, mode, kind, path = line.split(" ", 3)
        found.append((path, pwd.getpwuid(int(uid)).pw_name, type_bits[kind] | int(mode, 8)))
    return found


PROBE = """\
import os


def token(name):
    return os.environ.get(name)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_everything_created_is_private_and_no_secret_is_on_a_command_line(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_neighbour()  # reads the processes of every user: root
    # A module of the user's own: shipped as code, imported on the node (its __pycache__).
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "clustrix_probe_mod.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # local jobs inherit it
    probe = importlib.import_module("clustrix_probe_mod")
    secret = f"tok-{uuid.uuid4().hex}"
    control = f"control-{uuid.uuid4().hex}"
    watcher = CmdlineWatcher({"secret": secret.encode(), "control": control.encode()})
    watcher.start()
    # The control: a process with the marker in its command line is seen.
    marked = subprocess.Popen(["sh", "-c", "sleep 60", control])
    deadline = time.monotonic() + 60
    while not watcher.seen["control"] and time.monotonic() < deadline:
        time.sleep(0.01)
    marked.kill()
    marked.wait()
    assert watcher.seen["control"], "the watcher does not see command lines"
    if backend == "local":
        work_dir = str(tmp_path / "work")
    else:
        work_dir = f"~/.clustrix-private-{uuid.uuid4().hex[:8]}"
    version = importlib.metadata.version("annotated_types")
    config = config_for(
        backend,
        work_dir,
        environment_variables={"CLUSTRIX_TEST_TOKEN": secret},
        extra_requirements=[f"annotated_types=={version}"],  # an environment is built
        build_environment=True,
        cleanup="never",  # keep the job directories to look at
    )
    caplog.set_level(logging.DEBUG)
    try:
        with ClusterExecutor(config) as executor:
            values = list(executor.map(probe.token, ["CLUSTRIX_TEST_TOKEN"] * 3))
            stats = executor.stats()
        watcher.stop()
        assert values == [secret] * 3  # the jobs had the secret...
        assert stats.get("packaging.env_builds") == 1, stats
        assert watcher.seen["secret"] == []  # ...no command line ever did
        assert watcher.scans > 10
        assert secret not in caplog.text
        if backend == "local":
            entries = [(p, pwd.getpwuid(uid).pw_name, mode) for p, uid, mode in tree(work_dir)]
        else:
            entries = remote_tree(work_dir.replace("~", "$HOME", 1))
        assert len(entries) > 100  # the environment is in there
        assert any("/code/" in p and p.endswith("/__pycache__") for p, _, _ in entries)
        assert {owner for _, owner, _ in entries} == {job_user(backend)}
        loose_dirs = [p for p, _, m in entries if stat.S_ISDIR(m) and m & 0o077]
        writable = [p for p, _, m in entries if not stat.S_ISLNK(m) and m & 0o022]
        assert loose_dirs == [] and writable == []
        secrets = [(p, m) for p, _, m in entries if p.endswith(("/secret", "/.hash-key"))]
        assert secrets and all(stat.S_IMODE(m) == 0o600 for _, m in secrets), secrets
    finally:
        watcher.stop()
        if backend != "local":
            ssh_run(f"rm -rf {shlex.quote(work_dir[2:])}")
