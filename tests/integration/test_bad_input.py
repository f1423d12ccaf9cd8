"""Bad input: a clear error, and nothing half-done (issue 6).

For each bad input, the exception TYPE, a message that names the problem AND the fix (the
field to change, or what to do), and no leftovers: no executor thread still running after a
constructor failed, nothing submitted after a call failed to pickle, no job directory left
behind after sbatch refused a job, and never a hung future (every wait has a timeout).

What "missing host" means today: ``cluster_type="slurm"`` without ``cluster_host`` is the
documented login-node mode (scheduler commands run locally). Settings that only an SSH
connection uses (``username``, ``key_file``, ``password``, ``cluster_port``) given without a
``cluster_host`` would run the jobs on this machine, as this user: almost certainly a
forgotten ``cluster_host`` (or an empty ``$CLUSTRIX_CLUSTER_HOST``), so they are a
ConfigError.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jobfuncs as jf
import pytest
from clustertools import backend_config, require_cluster, ssh_run

from clustrix import (
    ClusterConfig,
    ClusterError,
    ClusterExecutor,
    ConfigError,
    PackagingError,
    SerializationError,
    SubmissionError,
    TransportError,
)

#: Every wait has a deadline: a hang fails the test. Generous: the test cluster is shared.
JOB_TIMEOUT_S = 240

#: What counts a submission, per backend: sbatch for SLURM, the launcher for local's jobs
#: engine, the submit/map calls the local pool took.
SUBMIT_COMMANDS = ("commands.sbatch", "commands.sh:clustrix-launch", "pool.submissions")


# ---------------------------------------------------------------------------------- helpers
def executor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("clustrix-executor-")}


def construct_fails(
    expected: type[BaseException], config: ClusterConfig | None = None, **overrides: Any
) -> BaseException:
    """``ClusterExecutor(config, **overrides)`` raises ``expected`` and leaves no thread."""
    before = executor_threads()
    with pytest.raises(expected) as info:
        ClusterExecutor(config, **overrides)
    assert executor_threads() <= before, "a failed constructor left its event-loop thread"
    return info.value


def submissions(executor: ClusterExecutor) -> int:
    stats = executor.stats()
    return sum(stats.get(name, 0) for name in SUBMIT_COMMANDS)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def remote_exists(path: str) -> bool:
    return ssh_run(f"test -e {shlex.quote(path)} && echo yes || echo no").strip() == "yes"


@pytest.fixture
def fresh_key(tmp_path: Path) -> Path:
    """A newly generated ed25519 key that no authorized_keys lists."""
    key = tmp_path / "fresh_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "not-authorized", "-f", str(key)],
        check=True,
    )
    return key


# ------------------------------------------------------------------------- configuration
def test_unknown_cluster_type_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(cluster_type="slurmm")
    message = str(info.value)
    assert "cluster_type" in message and "'slurmm'" in message
    assert "did you mean 'slurm'" in message
    assert "local" in message and "slurm" in message  # what is allowed

    error = construct_fails(ConfigError, cluster_type="kubernets")
    assert "cluster_type" in str(error) and "did you mean 'kubernetes'" in str(error)


def test_planned_cluster_type_says_it_is_not_available_yet() -> None:
    with pytest.raises(ConfigError, match=r"cluster_type 'pbs' is planned") as info:
        ClusterConfig(cluster_type="pbs")
    assert "use one of local, slurm" in str(info.value)


def test_slurm_without_any_ssh_setting_is_the_login_node_mode() -> None:
    config = ClusterConfig(cluster_type="slurm")
    assert config.cluster_host is None and not config.is_remote


@pytest.mark.parametrize(
    "ssh_settings",
    [
        pytest.param({"username": "me", "key_file": "~/.ssh/id_ed25519"}, id="username+key_file"),
        pytest.param({"password": "hunter2-secret"}, id="password"),
        pytest.param({"cluster_port": 2222}, id="cluster_port"),
    ],
)
def test_ssh_settings_without_cluster_host_are_a_config_error(
    ssh_settings: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(cluster_type="slurm", **ssh_settings)
    message = str(info.value)
    assert "cluster_host" in message  # the fix: set it (or drop the SSH settings)
    assert any(name in message for name in ssh_settings)
    assert "hunter2-secret" not in message


@pytest.mark.parametrize("host", ["", "   "])
def test_empty_cluster_host_is_a_config_error(host: str) -> None:
    with pytest.raises(ConfigError, match="cluster_host"):
        ClusterConfig(cluster_type="slurm", cluster_host=host)


def test_max_workers_zero_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(max_workers=0)
    assert isinstance(info.value, ValueError)  # as ProcessPoolExecutor(max_workers=0)
    assert "max_workers" in str(info.value) and "at least 1" in str(info.value)
    error = construct_fails(ConfigError, remote_work_dir=str(tmp_path / "w"), max_workers=0)
    assert "max_workers" in str(error)


@pytest.mark.parametrize("chunksize", [0, -1])
def test_chunksize_below_one_is_refused_and_submits_nothing(
    make: Callable[..., ClusterExecutor], chunksize: int
) -> None:
    executor = make("local")
    with pytest.raises(ValueError, match=rf"chunksize must be >= 1 .*got {chunksize}"):
        executor.map(jf.square, range(3), chunksize=chunksize)
    with pytest.raises(ValueError, match="chunksize"):
        executor.submit_map(jf.square, range(3), chunksize=chunksize)
    assert submissions(executor) == 0
    assert list(executor.map(jf.square, range(3), chunksize=1, timeout=JOB_TIMEOUT_S)) == [0, 1, 4]


def test_negative_map_timeout_times_out_at_the_first_result_like_the_stdlib(
    make: Callable[..., ClusterExecutor],
) -> None:
    # Executor.map accepts any timeout; a deadline already past raises TimeoutError when
    # the first result is asked for (as ProcessPoolExecutor does), not a ValueError.
    results = make("local").map(jf.square, range(2), timeout=-1)
    with pytest.raises(TimeoutError):
        next(results)


def test_a_timed_out_map_cancels_the_call_it_was_waiting_for(
    make: Callable[..., ClusterExecutor], tmp_path: Path
) -> None:
    executor = make("local")
    markers = [tmp_path / f"ran-{i}" for i in range(2)]
    results = executor.map(jf.sleep_and_touch, [2, 2], [str(m) for m in markers], timeout=-1)
    with pytest.raises(TimeoutError):
        next(results)
    executor.shutdown(wait=True)
    assert [m.exists() for m in markers] == [False, False]


# ---------------------------------------------------------------------------- pickling
@pytest.mark.parametrize(
    "backend", ["local", pytest.param("slurm-local", marks=pytest.mark.cluster)]
)
def test_unpicklable_function_or_argument_fails_at_submit_naming_it(
    make: Callable[..., ClusterExecutor], backend: str
) -> None:
    executor = make(backend)
    lock = threading.Lock()
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("the function", lambda: executor.submit(lambda: lock)),
        ("positional argument 1", lambda: executor.submit(jf.add, 1, lock)),
        ("keyword argument 'x'", lambda: executor.submit(jf.echo_kwargs, x=lock)),
    ]
    for label, submit in cases:
        with pytest.raises(SerializationError) as info:
            submit()
        message = str(info.value)
        assert isinstance(info.value, TypeError)  # what pickle itself raises
        assert label in message and "_thread.lock" in message, message
        assert "Pass data that pickles" in message  # the fix
    assert submissions(executor) == 0
    assert executor.submit(jf.square, 3).result(timeout=JOB_TIMEOUT_S) == 9
    assert submissions(executor) == 1


@pytest.mark.parametrize(
    "backend", ["local", pytest.param("slurm-local", marks=pytest.mark.cluster)]
)
def test_one_unpicklable_map_argument_submits_none_of_the_calls(
    make: Callable[..., ClusterExecutor], backend: str
) -> None:
    executor = make(backend)
    with pytest.raises(SerializationError, match=r"_thread\.lock"):
        executor.map(jf.identity, [1, 2, threading.Lock()])
    assert submissions(executor) == 0
    assert list(executor.map(jf.identity, [1, 2, 3], timeout=JOB_TIMEOUT_S)) == [1, 2, 3]
    assert submissions(executor) == 1  # the calls before the bad one were never queued


def test_unpicklable_map_argument_names_which_call(make: Callable[..., ClusterExecutor]) -> None:
    executor = make("local")
    with pytest.raises(SerializationError) as info:
        executor.map(jf.identity, [1, 2, threading.Lock()])
    assert re.search(r"\b(call|item|element|index) 2\b", str(info.value)), str(info.value)


def test_unpicklable_result_is_a_serialization_error_naming_the_result(
    make: Callable[..., ClusterExecutor],
) -> None:
    future = make("local").submit(jf.unpicklable_result)
    with pytest.raises(SerializationError, match=r"result.*_thread\.lock|_thread\.lock.*result"):
        future.result(timeout=JOB_TIMEOUT_S)


def test_result_larger_than_the_configured_limit_fails_naming_the_limit(tmp_path: Path) -> None:
    config = backend_config("local", tmp_path, max_result_mb=1)
    with ClusterExecutor(config) as executor:
        small = executor.submit(jf.make_bytes, 1000)
        big = executor.submit(jf.make_bytes, 3_000_000)
        assert small.result(timeout=JOB_TIMEOUT_S) == b"x" * 1000
        with pytest.raises(ClusterError) as info:
            big.result(timeout=JOB_TIMEOUT_S)
    assert "max_result_mb" in str(info.value)


# ------------------------------------------------------------------------- connection
def test_connection_refused_fails_without_hanging() -> None:
    config = ClusterConfig(
        cluster_type="slurm", cluster_host="127.0.0.1", cluster_port=1, connect_timeout_s=5
    )
    error = construct_fails(TransportError, config)
    message = str(error)
    assert "127.0.0.1:1" in message and "refused" in message
    assert "check the port" in message


def test_a_server_that_never_answers_times_out_at_connect_timeout() -> None:
    # A TCP listener that accepts (the kernel does) but never sends an SSH banner.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        config = ClusterConfig(
            cluster_type="slurm", cluster_host="127.0.0.1", cluster_port=port, connect_timeout_s=1
        )
        error = construct_fails(TransportError, config)
    assert f"127.0.0.1:{port}" in str(error) and "timed out" in str(error)
    assert "check the host, port and network" in str(error)


@pytest.mark.cluster
def test_missing_key_file_names_the_path() -> None:
    cluster = require_cluster(slurm=False)
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", key_file="/no/such/id_ed25519")
    )
    assert "key_file" in str(error) and "/no/such/id_ed25519" in str(error)
    assert "fix the path" in str(error)


@pytest.mark.cluster
def test_key_file_that_is_a_directory_names_the_path(tmp_path: Path) -> None:
    cluster = require_cluster(slurm=False)
    directory = tmp_path / "key-is-a-dir"
    directory.mkdir()
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", key_file=directory)
    )
    assert "key_file" in str(error) and str(directory) in str(error)


@pytest.mark.cluster
def test_key_file_with_invalid_content_names_the_path(tmp_path: Path) -> None:
    cluster = require_cluster(slurm=False)
    garbage = tmp_path / "garbage_key"
    garbage.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", key_file=garbage)
    )
    assert "key_file" in str(error) and str(garbage) in str(error), str(error)


@pytest.mark.cluster
def test_authentication_refused_names_the_user_and_the_fix(fresh_key: Path) -> None:
    cluster = require_cluster(slurm=False)
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", key_file=fresh_key)
    )
    message = str(error)
    assert "authentication" in message and "refused" in message
    assert f"{cluster.user}@{cluster.host}:{cluster.port}" in message
    assert "username" in message and "key_file" in message


@pytest.mark.cluster
def test_host_key_mismatch_names_known_hosts(tmp_path: Path, fresh_key: Path) -> None:
    cluster = require_cluster(slurm=False)
    key_type, key_data = Path(f"{fresh_key}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{cluster.host}]:{cluster.port} {key_type} {key_data}\n")
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", known_hosts=known_hosts)
    )
    message = str(error)
    assert "host key" in message and str(known_hosts) in message
    assert "update known_hosts" in message


# --------------------------------------------------------------------- remote environment
@pytest.mark.cluster
@pytest.mark.parametrize(
    ("work_dir", "why"),
    [("/root/clustrix-x", "Permission denied"), ("/proc/forbidden", "No such file")],
)
def test_remote_work_dir_not_writable_names_it(work_dir: str, why: str) -> None:
    cluster = require_cluster(slurm=False)
    error = construct_fails(
        TransportError, cluster.ssh_config(cluster_type="slurm", remote_work_dir=work_dir)
    )
    message = str(error)
    assert f"remote_work_dir {work_dir!r}" in message and why in message
    assert "choose a writable remote_work_dir" in message
    assert not remote_exists(work_dir)


def test_missing_python_on_the_local_backend_names_python_executable(tmp_path: Path) -> None:
    error = construct_fails(
        PackagingError, remote_work_dir=str(tmp_path / "w"), python_executable="/no/python3"
    )
    assert "python_executable '/no/python3'" in str(error)
    assert "set python_executable" in str(error)


@pytest.mark.cluster
def test_missing_remote_python_names_python_executable() -> None:
    cluster = require_cluster(slurm=False)
    config = cluster.ssh_config(
        cluster_type="slurm", remote_work_dir="~/.clustrix-tests", python_executable="/no/python3"
    )
    error = construct_fails(PackagingError, config)
    message = str(error)
    assert "python_executable '/no/python3'" in message and "not found" in message
    assert "set python_executable" in message and "3.11" in message


@pytest.mark.cluster
def test_missing_remote_python_message_has_no_internal_markers() -> None:
    cluster = require_cluster(slurm=False)
    work_dir = "~/.clustrix-tests"
    # Make sure the worker runtime is already uploaded there (the marker's condition).
    ClusterExecutor(cluster.ssh_config(cluster_type="slurm", remote_work_dir=work_dir)).shutdown()
    config = cluster.ssh_config(
        cluster_type="slurm", remote_work_dir=work_dir, python_executable="/no/python3"
    )
    error = construct_fails(PackagingError, config)
    assert "CLUSTRIX-" not in str(error), str(error)


# ------------------------------------------------------------------------ sbatch refusals
SLURM_BACKENDS = ["slurm-local", "slurm-ssh"]


def assert_refused_cleanly(future: Any, backend: str) -> SubmissionError:
    with pytest.raises(SubmissionError) as info:
        future.result(timeout=JOB_TIMEOUT_S)
    error = info.value
    assert error.argv and error.argv[0] == "sbatch"
    assert future.job_id is None  # never reached the queue
    job_dir = future.job_dir
    assert job_dir is not None
    if backend == "slurm-ssh":
        assert wait_until(lambda: not remote_exists(job_dir)), f"{job_dir} left behind"
    else:
        assert wait_until(lambda: not Path(job_dir).exists()), f"{job_dir} left behind"
    return error


@pytest.mark.cluster
@pytest.mark.parametrize("backend", SLURM_BACKENDS)
def test_invalid_partition_is_a_submission_error_carrying_sbatch_stderr(
    make: Callable[..., ClusterExecutor], backend: str
) -> None:
    executor = make(backend)
    future = executor.options(partition="nosuchpart").submit(jf.square, 3)
    error = assert_refused_cleanly(future, backend)
    assert "invalid partition" in error.stderr and "nosuchpart" in error.stderr
    assert "sbatch refused the job" in str(error) and "nosuchpart" in str(error)
    assert (
        executor.submit(jf.square, 4).result(timeout=JOB_TIMEOUT_S) == 16
    )  # the executor still works


@pytest.mark.cluster
@pytest.mark.parametrize("backend", SLURM_BACKENDS)
def test_too_large_memory_request_is_a_submission_error_carrying_sbatch_stderr(
    make: Callable[..., ClusterExecutor], backend: str
) -> None:
    executor = make(backend)
    future = executor.options(mem_gb=100000).submit(jf.square, 3)
    error = assert_refused_cleanly(future, backend)
    assert "Memory specification can not be satisfied" in error.stderr
    assert "Memory specification" in str(error)
    assert executor.submit(jf.square, 4).result(timeout=JOB_TIMEOUT_S) == 16


@pytest.mark.cluster
def test_refused_resource_request_names_the_field_to_change(
    make: Callable[..., ClusterExecutor],
) -> None:
    future = make("slurm-local").options(mem_gb=100000).submit(jf.square, 3)
    with pytest.raises(SubmissionError) as info:
        future.result(timeout=JOB_TIMEOUT_S)
    assert "mem_gb" in str(info.value), str(info.value)
