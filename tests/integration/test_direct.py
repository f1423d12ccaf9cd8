"""The ``ssh`` backend on the real test host: the unprivileged user ``clustrix`` through the
real sshd on 127.0.0.1:2222, no scheduler.

What is asserted is what the host shows (its process table, run records, marker files) and
what the futures say, in the order things happen; never how long they took. The contract
suite (``tests/contract``, backend ``ssh-host``) runs the rest of the Executor contract here.
Calls are shell snippets run by ``subprocess.check_output`` (a function of the standard
library: nothing to ship), so the tests control when a job ends by creating a file.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, ssh_run, wait_running

from clustrix import (
    ClusterExecutor,
    ClusterFuture,
    ConfigError,
    JobFailedError,
    PackagingError,
)
from clustrix.schedulers.direct import parse_job_id

pytestmark = pytest.mark.cluster

Make = Callable[..., ClusterExecutor]
FreshDir = Callable[[ClusterExecutor], str]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"

#: Marks $1 started, waits for $2 (or for "abort" beside it: a failed test's clean-up),
#: prints the GPUs it was given.
WAIT = (
    'echo started > "$1"; while [ ! -e "$2" ] && [ ! -e "${2%/*}/abort" ]; do sleep 0.05; '
    'done; printf %s "${CUDA_VISIBLE_DEVICES-unset}"'
)
#: Appends $1 to the log $2 (one line per run of the call), prints $1 squared.
NOTE = 'echo "$1" >> "$2"; sleep "${3:-0}"; echo $(($1 * $1))'


def sh(ex: Any, script: str, *args: str) -> ClusterFuture[str]:
    """Run ``script`` with ``args`` as a job of ``ex`` (an executor or a view)."""
    future: ClusterFuture[str] = ex.submit(
        subprocess.check_output, ["sh", "-c", script, "sh", *args], text=True
    )
    return future


@pytest.fixture
def fresh_dir() -> Iterator[FreshDir]:
    """``fresh_dir(ex)``: a new, empty directory in the executor's work dir on the host
    (absolute path) for one test's marker files. At the end of the test (before its
    executors shut down, which waits for their jobs) every job waiting in it is let go."""
    made: list[str] = []

    def make_dir(ex: ClusterExecutor) -> str:
        name = f"t-{secrets.token_hex(4)}"
        ex.makedirs(name)
        made.append(ex.stat(name).path)
        return made[-1]

    yield make_dir
    if made:
        ssh_run(" ".join(f"touch {path}/abort;" for path in made))


def wait_until(what: str, condition: Callable[[], object], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def run_record(future: ClusterFuture[Any]) -> list[str]:
    """pid, start time, boot id of the job running ``future``, as the host recorded them."""
    assert future.job_dir is not None and future.job_id is not None
    task = parse_job_id(future.job_id)[1].rpartition("_")[2]
    return ssh_run(f"cat {future.job_dir}/logs/{task}.run").split()


def session_members(sid: str) -> list[str]:
    """The test user's live processes in session ``sid`` (zombies are not alive)."""
    out = ssh_run(f"ps -o pid=,stat= -s {sid} || true")
    return [line.split()[0] for line in out.splitlines() if not line.split()[1].startswith("Z")]


@pytest.fixture
def ex(make: Make, fresh_dir: FreshDir) -> ClusterExecutor:
    # (fresh_dir first: its clean-up runs before the executor's shutdown)
    return make("ssh-host")


def test_a_job_is_a_detached_process_group_named_by_host_and_run(
    ex: ClusterExecutor, fresh_dir: FreshDir
) -> None:
    d = fresh_dir(ex)
    release = f"{d}/release"
    future = sh(ex, WAIT, f"{d}/started", release)
    wait_running(future)
    assert future.job_id is not None and future.job_dir is not None
    host, run_id = parse_job_id(future.job_id)
    assert host == "127.0.0.1" and run_id == f"{posixpath.basename(future.job_dir)}_0"
    pid, start, boot = run_record(future)
    pgid, sid, stat = ssh_run(f"ps -o pgid=,sid= -p {pid}; cut -d' ' -f22 /proc/{pid}/stat").split()
    assert pgid == sid == pid  # its own session: the SSH connection that started it is gone
    assert stat == start and boot == ssh_run("cat /proc/sys/kernel/random/boot_id").strip()
    ssh_run(f"touch {release}")
    assert future.result(timeout=120) == "unset"


def test_max_workers_is_the_hosts_cpus_and_the_rest_wait_on_the_client(
    ex: ClusterExecutor, make: Make, fresh_dir: FreshDir
) -> None:
    assert ex.max_workers == int(ssh_run("nproc"))
    two = make("ssh-host", max_workers=2)
    d = fresh_dir(two)
    marks = [f"{d}/started-{i}" for i in range(4)]
    releases = [f"{d}/release-{i}" for i in range(4)]
    futures = [sh(two, WAIT, m, r) for m, r in zip(marks, releases, strict=True)]
    wait_running(futures[0])
    wait_running(futures[1])
    # (running: the job is; its call may still be starting)
    wait_until("both calls started", lambda: len(two.ls(d)) >= 2)
    # two slots, both taken: the others are held on the client, not started on the host
    assert [f.running() or f.done() for f in futures[2:]] == [False, False]
    assert [f.job_id for f in futures[2:]] == [None, None]
    assert sorted(two.ls(d)) == ["started-0", "started-1"]
    ssh_run(f"touch {releases[0]}")
    assert futures[0].result(timeout=120) == "unset"
    wait_running(futures[2])  # the freed slot went to the next one
    assert futures[3].job_id is None
    ssh_run(f"touch {' '.join(releases)}")
    assert [f.result(timeout=120) for f in futures] == ["unset"] * 4
    stats = two.stats()  # every job's status, exit and results: one command per poll cycle
    assert stats["commands.sh"] == stats["poll_cycles"] > 0


def test_kill_stops_every_process_of_the_job(ex: ClusterExecutor, fresh_dir: FreshDir) -> None:
    child = f"{fresh_dir(ex)}/child"
    future = sh(ex, 'sleep 300 & echo $! > "$1"; wait', child)
    wait_running(future)
    wait_until("the child runs", lambda: ex.exists(child))
    pid = run_record(future)[0]
    assert len(session_members(pid)) >= 4  # job script, worker, sh, sleep
    assert future.kill()
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.state == "CANCELLED" and info.value.job_id == future.job_id
    wait_until("the job's session is empty", lambda: not session_members(pid))
    sleeper = ex.read_bytes(child).decode().strip()
    assert ssh_run(f"ps -o stat= -p {sleeper} || true").strip() in ("", "Z")  # gone, or a zombie


def test_the_time_limit_is_enforced_on_the_host(ex: ClusterExecutor) -> None:
    future = ex.options(time_limit_min=1).submit(jf.sleep_then, 600, "too late")
    wait_running(future)
    pid = run_record(future)[0]
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=240)
    assert info.value.state == "TIMEOUT"
    assert "time limit (1 min) reached" in info.value.stderr_tail
    wait_until("the job's session is empty", lambda: not session_members(pid))


def test_gpus_per_call_are_claimed_from_the_hosts_devices(make: Make, fresh_dir: FreshDir) -> None:
    # the test host has no GPU: the config names the devices clustrix may hand out
    # 4 workers although the host has 2 CPUs: GPU jobs beyond the free GPUs reach the host
    ex = make("ssh-host", max_workers=4, environment_variables={"CUDA_VISIBLE_DEVICES": "0,1"})
    one = ex.options(gpus=1)
    d = fresh_dir(ex)
    marks = [f"{d}/started-{i}" for i in range(3)]
    releases = [f"{d}/release-{i}" for i in range(3)]
    futures = [sh(one, WAIT, m, r) for m, r in zip(marks, releases, strict=True)]
    # the three start together: whichever two come first get the devices
    wait_until("two run", lambda: sum(f.running() for f in futures) == 2)
    (waiting,) = [f for f in futures if not f.running()]
    wait_until("the third waits for a GPU", lambda: waiting.job_state == "WAITING")
    w = futures.index(waiting)
    assert not waiting.running() and not ex.exists(marks[w])  # its call has not started
    first = next(i for i, f in enumerate(futures) if f is not waiting)
    ssh_run(f"touch {releases[first]}")
    given_back = futures[first].result(timeout=120)
    wait_running(waiting)
    ssh_run(f"touch {' '.join(releases)}")
    devices = [f.result(timeout=120) for f in futures]
    assert sorted(devices[i] for i in range(3) if i != w) == ["0", "1"]
    assert devices[w] == given_back  # the device the first gave back
    assert sh(ex.options(gpus=2), WAIT, marks[0], releases[0]).result(timeout=120) == "0,1"
    assert sh(ex.options(gpus=0), WAIT, marks[0], releases[0]).result(timeout=120) == ""
    assert sh(ex, WAIT, marks[0], releases[0]).result(timeout=120) == "0,1"  # as configured
    too_many = sh(ex.options(gpus=3), WAIT, marks[0], releases[0])
    with pytest.raises(ConfigError, match=r"gpus=3: 127\.0\.0\.1 has only 0, 1"):
        too_many.result(timeout=120)


def test_a_host_without_a_usable_python_is_a_clear_error(make: Make) -> None:
    with pytest.raises(PackagingError, match=r"python_executable '/no/such/python3'.*set"):
        make("ssh-host", python_executable="/no/such/python3")


DYING_CLIENT = """
import json, os, sys, subprocess
from clustrix import ClusterConfig, ClusterExecutor

config = ClusterConfig.model_validate_json({config!r})
ex = ClusterExecutor(config)
argv = [["sh", "-c", {note!r}, "sh", str(i), {log!r}, "2"] for i in range(8)]
futures = ex.submit_map(subprocess.check_output, argv, chunksize=1)
while any(f.job_id is None for f in futures):
    pass
print(json.dumps([f.job_id for f in futures]), flush=True)
os._exit(1)  # the client dies: no shutdown, no results collected
"""


def test_a_new_client_recovers_the_jobs_of_one_that_died(tmp_path: Path) -> None:
    require_cluster(ssh=True, slurm=False)
    # every call out at once (8 > the host's CPUs): calls still held on the client when it
    # dies are gone with it, as on every backend
    config = backend_config(
        "ssh-host", tmp_path, max_workers=8, state_dir=tmp_path / "state", poll_interval_max_s=0.5
    )
    home = ssh_run("echo $HOME").strip()
    log = f"{config.remote_work_dir.replace('~', home, 1)}/recover-{os.getpid()}.log"
    script = DYING_CLIENT.format(config=config.model_dump_json(), note=NOTE, log=log)
    dead = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )
    assert dead.returncode == 1, dead.stderr
    job_ids = json.loads(dead.stdout.strip().splitlines()[-1])
    with ClusterExecutor(config) as ex:
        futures = ex.recover()
        assert [f.job_id for f in futures] == job_ids
        assert [f.result(timeout=120) for f in futures] == [f"{i * i}\n".encode() for i in range(8)]
        assert ex.stats().get("commands.sh:clustrix-submit", 0) == 0  # nothing was rerun
    assert sorted(ssh_run(f"cat {log}").split()) == sorted(str(i) for i in range(8))


# --- faults on the real host -------------------------------------------------------------


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        message = f"{what} needs root (as scripts/testcluster.sh start does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def drop_ssh_later(delay_s: float, down_s: float) -> threading.Thread:
    """Cut every SSH connection of the test user after ``delay_s``, sshd down ``down_s``."""
    require_root("cutting SSH connections")

    def drop() -> None:
        time.sleep(delay_s)
        subprocess.run(
            ["bash", str(SCRIPT), "drop-ssh", str(down_s)], check=True, capture_output=True
        )

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    return thread


@pytest.mark.disruptive  # cuts every SSH connection of the test user: runs alone
def test_map_survives_a_dropped_connection_and_runs_nothing_twice(
    make: Make, fresh_dir: FreshDir
) -> None:
    ex = make("ssh-host", max_workers=2)
    log = f"{fresh_dir(ex)}/drop.log"
    values = range(120)
    argv = [["sh", "-c", NOTE, "sh", str(v), log, "0.05"] for v in values]
    dropper = drop_ssh_later(delay_s=2.0, down_s=3.0)
    # one call per job through 2 slots: submissions go on all the time, so the drop usually
    # cuts one short (the engine then looks for the tasks its launcher claimed)
    results = list(ex.map(subprocess.check_output, argv, chunksize=1, timeout=600))
    assert not dropper.is_alive()  # the connection was cut (and came back) during the map
    assert results == [f"{v * v}\n".encode() for v in values]
    ran = ex.read_bytes(log).decode().split()
    assert sorted(ran, key=int) == [str(v) for v in values]  # each exactly once


def test_a_killed_worker_fails_its_call_truthfully_and_the_others_go_on(
    make: Make, fresh_dir: FreshDir
) -> None:
    ex = make("ssh-host", max_workers=3)
    d = fresh_dir(ex)
    log = f"{d}/killed.log"
    blocker = sh(ex, 'echo blocker >> "$1"; shift; ' + WAIT, log, f"{d}/m", f"{d}/release")
    others = [sh(ex, NOTE, str(v), log) for v in (2, 3)]
    wait_until("the blocking call runs", lambda: ex.exists(f"{d}/m"))  # in the worker
    assert blocker.job_dir is not None
    ssh_run(f"pkill -KILL -f -- 'clustrix.worker run {blocker.job_dir} 0$'")
    with pytest.raises(JobFailedError) as info:
        blocker.result(timeout=120)
    assert (info.value.state, info.value.exit_code) == ("FAILED", 137)
    assert [f.result(timeout=120) for f in others] == ["4\n", "9\n"]
    assert sorted(ex.read_bytes(log).decode().split()) == ["2", "3", "blocker"]


def test_a_job_killed_with_its_group_is_lost_and_retried(make: Make, fresh_dir: FreshDir) -> None:
    ex = make("ssh-host", max_retries=1)
    d = fresh_dir(ex)
    release = f"{d}/release"
    future = sh(ex, WAIT, f"{d}/m", release)
    wait_running(future)
    first = future.job_id
    pid = run_record(future)[0]
    ssh_run(f"kill -KILL -- -{pid}")  # everything of the job, its script included: no trace
    wait_until("it was resubmitted", lambda: future.job_id != first)
    ssh_run(f"touch {release}")
    assert future.result(timeout=120) == "unset"
    assert ex.stats()["retries"] == 1
