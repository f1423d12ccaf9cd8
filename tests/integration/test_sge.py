"""Grid Engine specifics against the real test cluster (Debian 12's gridengine 8.1.9, started
by ``scripts/testcluster.sh``): task arrays, the one status command per cycle, resources, bad
input, jobs that end behind clustrix's back (qdel, error state, time limit, a killed worker),
the submit host without ``SGE_ROOT``, and faults of the real daemons (the SSH connection
dropped, sge_execd restarted, a job lost with it).

Most tests share one executor over SSH as the test user (``sge``); the tests marked
``disruptive`` take a daemon down or change the cluster's configuration and run alone
(scripts/test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_sge, ssh_run, wait_running

from clustrix import (
    ClusterExecutor,
    ConfigError,
    JobFailedError,
    PackagingError,
    SubmissionError,
)
from clustrix.lifecycle import JobState
from clustrix.schedulers.sge import SgeScheduler

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"
SGE_ENV = {**os.environ, "SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
MakeExecutor = Callable[..., ClusterExecutor]


@pytest.fixture(scope="module")
def sge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterExecutor]:
    """One executor over SSH for the tests that need no executor of their own."""
    executor = ClusterExecutor(backend_config("sge-ssh", tmp_path_factory.mktemp("sge")))
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def root_sge(*argv: str) -> subprocess.CompletedProcess[str]:
    """A Grid Engine command as root (a manager: any user's jobs, the configuration)."""
    return subprocess.run(argv, capture_output=True, text=True, env=SGE_ENV, timeout=60)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} needs root")
        pytest.skip(f"{what} needs root (as scripts/testcluster.sh start does)")


def queued_job_numbers() -> set[str]:
    """Job numbers of every user's jobs Grid Engine still has."""
    out = root_sge("qstat", "-u", "*").stdout.splitlines()[2:]
    return {line.split()[0] for line in out if line.split()}


def wait_gone(number: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while number in queued_job_numbers():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def delta(ex: ClusterExecutor, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in ex.stats().items()}


def qacct_category(job_number: str) -> str:
    """The resource requests qacct recorded for a finished job (``category``)."""
    for _ in range(50):
        out = root_sge("qacct", "-j", job_number).stdout
        for line in out.splitlines():
            if line.startswith("category"):
                return line.partition(" ")[2].strip()
        time.sleep(0.2)
    raise AssertionError(f"no accounting record of job {job_number}")


# --------------------------------------------------------------------------- arrays, polls
def test_a_burst_of_submits_becomes_one_task_array(sge: ClusterExecutor) -> None:
    before = sge.stats()
    futures = [sge.submit(jf.square, i) for i in range(10)]
    assert [f.result(timeout=120) for f in futures] == [i * i for i in range(10)]
    # One task array; two at most when the loaded machine paused the submitting thread for
    # longer than the burst window (5 ms) once: never one job per call.
    numbers = sorted({(f.job_id or "").split(".")[0] for f in futures}, key=int)
    assert 1 <= len(numbers) <= 2
    assert delta(sge, before)["commands.qsub"] == len(numbers)
    ids = [f.job_id for f in futures]
    first = sum(1 for f in futures if (f.job_id or "").startswith(f"{numbers[0]}."))
    assert ids == [f"{numbers[0]}.{t}" for t in range(1, first + 1)] + [
        f"{numbers[-1]}.{t}" for t in range(1, 10 - first + 1)
    ]


def test_one_status_command_per_poll_cycle(sge: ClusterExecutor) -> None:
    before = sge.stats()
    assert list(sge.map(jf.square, range(60), chunksize=1)) == [i * i for i in range(60)]
    stats = delta(sge, before)
    assert stats["commands.qsub"] == 1
    assert stats["poll_cycles"] >= 1
    # the status script (qstat -xml, error reasons) is the poll's one scheduler command
    assert stats["commands.sh"] == stats["poll_cycles"]
    assert stats.get("commands.sh:clustrix-sge-qacct", 0) == 0  # nothing ended badly


def test_default_chunking_uses_the_queue_slots(sge: ClusterExecutor) -> None:
    assert sge._engine.scheduler.slots(sge.config.resources()) == 16  # all.q: 16 slots
    before = sge.stats()
    pids = list(sge.map(jf.pid_of, range(100)))
    # one array of at most 16 tasks (a task may take many calls: they claim them in turn)
    assert len(pids) == 100 and len(set(pids)) <= 16
    assert delta(sge, before)["commands.qsub"] == 1


def test_resources_reach_the_job(tmp_path: Path) -> None:
    config = backend_config(
        "sge-ssh", tmp_path, environment_variables={"CLUSTRIX_PROBE": "a b'c\"$d"}
    )
    with ClusterExecutor(config) as ex:
        view = ex.options(
            cores=2,
            job_name="probe job",
            account="clustrix-test",
            partition="all.q",
            mem_gb=2,
            time_limit_min=5,
        )
        future = view.submit(jf.env_values, ["NSLOTS", "PE", "JOB_NAME", "QUEUE", "CLUSTRIX_PROBE"])
        env = future.result(timeout=120)
    assert env == {
        "NSLOTS": "2",
        "PE": "smp",
        "JOB_NAME": "probe_job",
        "QUEUE": "all.q",
        "CLUSTRIX_PROBE": "a b'c\"$d",
    }
    assert future.job_id is not None
    category = qacct_category(future.job_id)
    assert "h_rt=300" in category and "h_vmem=1024M" in category  # 2 GB over 2 slots
    assert "-pe smp 2" in category and "-q all.q" in category
    project = root_sge("qacct", "-j", future.job_id).stdout
    assert "clustrix-test" in project


def test_unknown_queue_or_parallel_environment_is_a_submission_error(
    sge: ClusterExecutor,
) -> None:
    future = sge.options(partition="nosuchq").submit(jf.square, 3)
    with pytest.raises(SubmissionError, match='unknown queue "nosuchq"') as info:
        future.result(timeout=60)
    assert "partition" in str(info.value)  # the field to change
    future = sge.options(cores=2, extra_directives=["-pe nosuchpe 2"]).submit(jf.square, 3)
    with pytest.raises(SubmissionError, match='parallel environment "nosuchpe" does not exist'):
        future.result(timeout=60)
    assert sge.submit(jf.square, 3).result(timeout=120) == 9


def test_gpus_and_qos_are_refused_naming_the_fix(sge: ClusterExecutor) -> None:
    with pytest.raises(ConfigError, match=r"cannot honour gpus.*extra_directives"):
        sge.options(gpus=1).submit(jf.square, 3)


# --------------------------------------------------------------------------- jobs that end badly
def test_job_in_error_state_fails_promptly_with_the_reason_and_is_deleted(
    sge: ClusterExecutor,
) -> None:
    view = sge.options(extra_directives=["-wd /no/such/dir"])
    future = view.submit(jf.square, 3)
    with pytest.raises(JobFailedError) as info:  # ends; the timeout only guards a hang
        future.result(timeout=120)
    assert info.value.state == "Eqw"
    assert "can't chdir to /no/such/dir" in info.value.reason
    assert future.job_id is not None and future.job_id in str(info.value)
    assert wait_gone(future.job_id), "a job in error state was left in the queue"
    # the tasks of an array too, each with its reason
    futures = [view.submit(jf.square, i) for i in range(3)]
    for f in futures:
        with pytest.raises(JobFailedError, match="can't chdir"):
            f.result(timeout=60)
    assert wait_gone((futures[0].job_id or "").split(".")[0])


def test_time_limit_fails_the_future_as_timed_out(sge: ClusterExecutor) -> None:
    # h_rt is enforced within seconds: a 3 s limit (time_limit_min has minutes; its mapping
    # to h_rt is pinned by the golden files and test_resources_reach_the_job)
    future = sge.options(extra_directives=["-l h_rt=0:0:3"]).submit(jf.sleep_then, 120)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=90)
    assert info.value.state == "failed 37"
    assert SgeScheduler().lifecycle(info.value.state) is JobState.TIMED_OUT
    assert info.value.exit_code == 137 and "time limit" in info.value.reason


def test_crashed_worker_fails_with_its_exit_status(sge: ClusterExecutor) -> None:
    future = sge.submit(jf.kill_self, "going down")
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=120)
    assert info.value.exit_code == 137
    assert "going down" in info.value.stderr_tail


def test_external_qdel_of_a_running_job_cancels_it(sge: ClusterExecutor) -> None:
    require_root("deleting the test user's job as a manager")
    future = sge.submit(jf.sleep_then, 120)
    wait_running(future)
    assert future.job_id is not None
    root_sge("qdel", future.job_id)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert SgeScheduler().lifecycle(info.value.state) is JobState.CANCELLED
    assert info.value.job_id == future.job_id


def test_external_qdel_of_a_queued_job_ends_it(sge: ClusterExecutor) -> None:
    require_root("deleting the test user's job as a manager")
    future = sge.options(extra_directives=["-h"]).submit(jf.square, 2)  # held: stays queued
    deadline = time.monotonic() + 30
    while future.job_state != "hqw" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert future.job_state == "hqw" and future.job_id is not None
    root_sge("qdel", future.job_id)
    with pytest.raises(JobFailedError, match="without a result"):
        future.result(timeout=60)  # never ran: no accounting record, gone without a trace


def worker_pids(job_dir: str) -> list[int]:
    """This machine's clustrix worker processes of ``job_dir``."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"clustrix.worker" in argv and job_dir.encode() in argv:
            pids.append(int(pid))
    return pids


def test_killed_worker_process_fails_its_call(sge: ClusterExecutor) -> None:
    require_root("killing the test user's process")
    future = sge.submit(jf.sleep_then, 120)
    wait_running(future)
    assert future.job_dir is not None
    deadline = time.monotonic() + 30
    while not (pids := worker_pids(future.job_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.exit_code == 137  # the job script recorded the worker's status
    assert "SIGKILL" in str(info.value)


def test_shutdown_cancel_futures_leaves_nothing_in_qstat(tmp_path: Path) -> None:
    executor = ClusterExecutor(backend_config("sge-ssh", tmp_path))
    # one submission whatever the load (a loop of submit() may become two arrays)
    futures = executor.submit_map(jf.sleep_then, [4] * 24, range(24), chunksize=1)  # 8 wait
    wait_running(futures[0])
    executor.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futures)
    assert all(f.result() == futures.index(f) for f in futures if not f.cancelled())
    (number,) = {(f.job_id or "").split(".")[0] for f in futures if f.job_id}
    # nothing waits in the queue; tasks whose results came in may still be exiting (a
    # result is collected when its file appears, before the job script ends)
    left = [line.split() for line in root_sge("qstat", "-u", "*").stdout.splitlines()[2:]]
    assert not [cols for cols in left if cols[0] == number and "q" in cols[4]], left
    assert wait_gone(number, timeout_s=20)
    assert executor.stats()["commands.qdel"] == 1


# --------------------------------------------------------------------------- submit host, bad input
def test_submit_host_without_sge_root_or_qsub_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a site's non-interactive shell often is: no settings.sh sourced. Discovery finds
    Grid Engine under its install root and runs its commands from there."""
    require_sge()
    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for name in os.listdir(directory):
            if not name.startswith("q") and not (tools / name).exists():
                (tools / name).symlink_to(f"{directory}/{name}")
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.delenv("SGE_ROOT", raising=False)
    monkeypatch.delenv("SGE_CELL", raising=False)
    with ClusterExecutor(backend_config("sge-local", tmp_path)) as ex:
        scheduler = ex._engine.scheduler
        assert isinstance(scheduler, SgeScheduler)
        assert scheduler.binary_dir == "/var/lib/gridengine/bin/lx-amd64"
        assert scheduler.env["SGE_ROOT"] == "/var/lib/gridengine"
        assert list(ex.map(jf.square, range(5))) == [0, 1, 4, 9, 16]
        future = ex.submit(jf.sleep_then, 60)
        wait_running(future)
        assert future.kill()  # qdel through the same discovered path
        with pytest.raises(JobFailedError):
            future.result(timeout=60)


@pytest.mark.parametrize("backend", ["sge-local", "sge-ssh"])
def test_grid_engine_not_found_names_the_fix(tmp_path: Path, backend: str) -> None:
    config = backend_config(backend, tmp_path, environment_variables={"SGE_ROOT": "/no/sge"})
    with pytest.raises(ConfigError) as info:
        ClusterExecutor(config)
    message = str(info.value)
    assert "Grid Engine not found" in message and "SGE_ROOT=/no/sge" in message
    assert "settings.sh" in message and "environment_variables" in message


def test_host_without_a_usable_python_is_a_clear_error(tmp_path: Path) -> None:
    config = backend_config("sge-ssh", tmp_path, python_executable="/no/such/python3")
    with pytest.raises(PackagingError, match="python_executable '/no/such/python3'"):
        ClusterExecutor(config)


# --------------------------------------------------------------------------- daemon faults
def run_testcluster(*args: str) -> None:
    subprocess.run(["bash", str(SCRIPT), *args], check=True, capture_output=True, timeout=180)


def later(delay_s: float, *args: str) -> threading.Thread:
    def act() -> None:
        time.sleep(delay_s)
        run_testcluster(*args)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def runs_of(log: str) -> list[int]:
    """The calls of ``jf.note_then_sleep`` that started, once per run (the log is the test
    user's)."""
    return sorted(int(x) for x in ssh_run(f"cat {log} 2>/dev/null || true").split())


@pytest.mark.disruptive
def test_map_survives_a_dropped_ssh_connection(tmp_path: Path) -> None:
    require_root("cutting SSH connections")
    log = f"/tmp/clustrix-sge-drop-{uuid.uuid4().hex[:8]}.log"
    with ClusterExecutor(backend_config("sge-ssh", tmp_path)) as ex:
        dropper = later(1.5, "drop-ssh", "3")
        values = list(range(120))
        results = list(
            ex.map(jf.note_then_sleep, values, [log] * 120, [0.1] * 120, chunksize=4, timeout=300)
        )
        dropper.join()
    assert results == [10 * v for v in values]
    assert runs_of(log) == values  # each call ran once: nothing twice, nothing lost
    ssh_run(f"rm -f {log}")


@pytest.mark.disruptive
def test_running_jobs_survive_an_execd_restart(sge: ClusterExecutor) -> None:
    require_root("restarting sge_execd")
    log = f"/tmp/clustrix-sge-execd-{uuid.uuid4().hex[:8]}.log"
    futures = [sge.submit(jf.note_then_sleep, i, log, 6) for i in range(4)]
    for future in futures:
        wait_running(future)
    run_testcluster("restart-execd", "3")  # the jobs' shepherds go on without execd
    assert [f.result(timeout=120) for f in futures] == [0, 10, 20, 30]
    assert runs_of(log) == [0, 1, 2, 3]
    ssh_run(f"rm -f {log}")


@pytest.mark.disruptive
def test_job_lost_with_execd_is_retried_with_max_retries(tmp_path: Path) -> None:
    require_root("restarting sge_execd")
    with ClusterExecutor(backend_config("sge-ssh", tmp_path, max_retries=1)) as ex:
        future = ex.submit(jf.sleep_then, 6, "survived")
        wait_running(future)
        first = future.job_id
        assert first is not None
        run_testcluster("restart-execd", "2", first)  # its processes die with execd
        assert future.result(timeout=180) == "survived"
        assert future.job_id != first
        assert ex.stats()["retries"] == 1
    accounted = root_sge("qacct", "-j", first).stdout
    assert "before writing exit_status" in accounted  # failed 19: LOST, so retried


@pytest.mark.disruptive
def test_arrays_are_split_at_max_aj_tasks(tmp_path: Path) -> None:
    require_root("changing Grid Engine's configuration")
    set_max_aj_tasks(5)
    try:
        with ClusterExecutor(backend_config("sge-ssh", tmp_path)) as ex:
            assert ex._engine.scheduler.max_array_size == 5  # read by discovery
            before = ex.stats()
            futures = [ex.submit(jf.square, i) for i in range(12)]
            assert [f.result(timeout=120) for f in futures] == [i * i for i in range(12)]
            assert len({(f.job_id or "").split(".")[0] for f in futures}) == 3
            assert delta(ex, before)["commands.qsub"] == 3
            # a limit lowered after discovery: qsub refuses the array, it goes in pieces
            ex._engine.scheduler.max_array_size = 75000
            futures = [ex.submit(jf.square, i) for i in range(12)]
            assert [f.result(timeout=120) for f in futures] == [i * i for i in range(12)]
    finally:
        set_max_aj_tasks(75000)


def set_max_aj_tasks(n: int) -> None:
    conf = root_sge("qconf", "-sconf", "global").stdout
    lines = [
        f"max_aj_tasks {n}" if line.startswith("max_aj_tasks") else line
        for line in conf.splitlines()
        if not line.startswith("#")
    ]
    directory = Path(f"/tmp/clustrix-sge-conf-{uuid.uuid4().hex[:8]}")
    directory.mkdir()
    (directory / "global").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["qconf", "-Mconf", "global"], cwd=directory, capture_output=True, text=True, env=SGE_ENV
    )
    assert result.returncode == 0, result.stderr
