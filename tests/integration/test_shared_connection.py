"""The shared SSH connection (``connection_persist_s``) against the test cluster's real sshd.

Each test has a HOME of its own, so its shared process and socket are its own; every shared
process a test started is stopped, and seen gone, when the test ends.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cliclient import clustrix, write_config
from clustertools import LoginServers, require_cluster, require_login_servers
from fakes import wait_until

from clustrix import ClusterExecutor
from clustrix._factory import ssh_options as config_ssh_options
from clustrix.errors import CommandTimeoutError, ConnectionLostError, TransportError
from clustrix.transports._ssh_prompt import PromptUnavailable
from clustrix.transports.shared import SharedSSHTransport, shared_transport

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME and an XDG_RUNTIME_DIR of the test's own (a short path: a Unix socket's
    must be), so its own shared processes; no SSH agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    runtime = Path(tempfile.mkdtemp(prefix="cx-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in os.environ:
        if name.startswith("CLUSTRIX_") and not name.startswith("CLUSTRIX_TEST_"):
            monkeypatch.delenv(name)
    yield runtime / "clustrix"
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def servers() -> LoginServers:
    return require_login_servers()


def ssh_options(servers: LoginServers, **overrides: Any) -> dict[str, Any]:
    cluster = servers.cluster
    options: dict[str, Any] = {
        "host": cluster.host,
        "port": cluster.port,
        "username": cluster.user,
        "key_file": str(cluster.key_file),
        "known_hosts": str(servers.known_hosts),
    }
    options.update(overrides)
    return options


def never(question: str) -> str:
    raise AssertionError(f"asked {question!r} although nothing needs asking")


def gone(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (it is reaped by init, not by us).
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest_asyncio.fixture
async def make(servers: LoginServers) -> AsyncIterator[Callable[..., SharedSSHTransport]]:
    """``make(persist_s=, auth_prompt=, **ssh_overrides)``: a client of the shared
    connection; the shared processes seen are stopped after the test, and seen gone."""
    made: list[SharedSSHTransport] = []

    def build(
        *, persist_s: float = 60.0, auth_prompt: Any = never, **overrides: Any
    ) -> SharedSSHTransport:
        transport = shared_transport(
            ssh_options(servers, **overrides), persist_s=persist_s, auth_prompt=auth_prompt
        )
        assert transport is not None
        made.append(transport)
        return transport

    yield build
    pids = {t.server_pid for t in made if t.server_pid is not None}
    for transport in made:
        await transport.close()
        await transport.stop_server()
    for pid in pids:
        await asyncio.to_thread(wait_until, functools.partial(gone, pid), f"{pid} to end")


async def client_port(transport: Any) -> int:
    """The client port of the TCP connection sshd got (``$SSH_CONNECTION``)."""
    result = await transport.run(["sh", "-c", "echo $SSH_CONNECTION"])
    return int(result.stdout.split()[1])


# -- the transport's behaviour through the shared process --------------------------------


@pytest.mark.asyncio
async def test_commands_and_errors_come_back_as_from_a_connection_of_ones_own(
    make: Callable[..., SharedSSHTransport],
) -> None:
    transport = make()
    weird = "a b 'q' \"d\" ; $(echo pwned) \\ *\nline two\tü€"
    result = await transport.run(["printf", "%s", weird])
    assert (result.returncode, result.stdout, result.stderr) == (0, weird, "")
    echoed = await transport.run(["sh", "-c", "cat; exit 3"], stdin=b"given\n")
    assert (echoed.returncode, echoed.stdout) == (3, "given\n")
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        await transport.stat("nonexistent-" + os.urandom(4).hex())
    with pytest.raises(PermissionError):
        await transport.read_bytes("/etc/shadow")
    with pytest.raises(CommandTimeoutError):
        await transport.run(["sleep", "30"], timeout_s=0.5)


@pytest.mark.asyncio
async def test_files_handles_and_copies_through_the_shared_process(
    make: Callable[..., SharedSSHTransport], tmp_path: Path
) -> None:
    transport = make()
    work = f"{await transport.home()}/clustrix-shared-{os.urandom(4).hex()}"
    await transport.makedirs(f"{work}/sub")
    try:
        await transport.write_bytes(f"{work}/a.bin", b"0123456789", mode=0o640)
        assert (await transport.stat(f"{work}/a.bin")).permissions == 0o640
        assert await transport.read_tail(f"{work}/a.bin", 3) == b"789"
        handle = await transport.open(f"{work}/sub/h.bin", "wb")
        await handle.write(b"written by handle", 0)
        assert (await handle.stat()).size == len(b"written by handle")
        await handle.close()
        local = tmp_path / "local.bin"
        local.write_bytes(os.urandom(1 << 20))
        os.chdir(tmp_path)  # a relative local path is the client's, not the server's (cwd /)
        await transport.put("local.bin", f"{work}/put.bin")
        await transport.get(f"{work}/put.bin", "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
        names = {entry.path for entry in await transport.scan_tree(work)}
        assert names == {"a.bin", "sub", "sub/h.bin", "put.bin"}
        sizes = await asyncio.gather(*(transport.stat(f"{work}/a.bin") for _ in range(200)))
        assert {s.size for s in sizes} == {10}
    finally:
        await transport.remove_tree(work)
    assert not await transport.exists(work)


# -- one login for many processes ----------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from clustrix.transports.shared import shared_transport

    async def main():
        options = json.loads(sys.argv[1])
        t = shared_transport(options, persist_s=float(sys.argv[2]))
        r = await t.run(["sh", "-c", "echo $SSH_CONNECTION"])
        print(json.dumps({"port": int(r.stdout.split()[1]), "pid": t.server_pid,
                          "asyncssh": "asyncssh" in sys.modules}))
        await t.close()

    asyncio.run(main())
    """
)


def run_client(options: dict[str, Any], persist_s: float) -> dict[str, Any]:
    """Run CLIENT in a new process; what it saw."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(options), str(persist_s)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.mark.asyncio
async def test_new_processes_use_the_first_ones_connection_without_logging_in(
    servers: LoginServers, make: Callable[..., SharedSSHTransport], runtime_dir: Path
) -> None:
    options = ssh_options(servers)
    first = await asyncio.to_thread(run_client, options, 60)
    second = await asyncio.to_thread(run_client, options, 60)
    assert first["pid"] == second["pid"] and alive(first["pid"])
    # One TCP connection for both, and no SSH code at all in the second process.
    assert first["port"] == second["port"]
    assert not first["asyncssh"] and not second["asyncssh"]
    here = make()
    assert await client_port(here) == first["port"] and here.server_pid == first["pid"]
    directory = runtime_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    sockets = list(directory.glob("*.sock"))
    assert len(sockets) == 1 and sockets[0].stat().st_uid == os.geteuid()
    assert stat.S_IMODE(sockets[0].stat().st_mode) & 0o077 == 0


@pytest.mark.asyncio
async def test_another_login_gets_a_shared_process_of_its_own(
    make: Callable[..., SharedSSHTransport], tmp_path: Path, servers: LoginServers
) -> None:
    copied = tmp_path / "known_hosts_copy"
    copied.write_bytes(servers.known_hosts.read_bytes())
    one, other = make(), make(known_hosts=str(copied))
    assert await client_port(one) != await client_port(other)
    assert one.server_pid != other.server_pid


@pytest.mark.asyncio
async def test_it_outlives_its_last_client_by_persist_s_then_ends(
    make: Callable[..., SharedSSHTransport], runtime_dir: Path
) -> None:
    transport = make(persist_s=1.0)
    await transport.connect()
    pid = transport.server_pid
    assert pid is not None
    await transport.close()
    assert alive(pid)  # 1 s: well after this
    await asyncio.to_thread(wait_until, lambda: not alive(pid), "the idle shared process to end")
    assert not list(runtime_dir.glob("*.sock"))
    # The next client starts another one.
    assert (await transport.run(["true"])).ok and transport.server_pid != pid


@pytest.mark.asyncio
async def test_a_call_that_failed_after_the_login_keeps_it_for_the_next_process(
    make: Callable[..., SharedSSHTransport],
) -> None:
    first = make()
    with pytest.raises(FileNotFoundError):  # the only call: an error, but the login worked
        await first.stat(f"missing-{os.urandom(4).hex()}")
    await first.close()
    second = make()
    await second.connect()
    assert second.server_pid == first.server_pid


@pytest.mark.asyncio
async def test_a_login_that_fails_is_the_callers_error_and_leaves_nothing_running(
    make: Callable[..., SharedSSHTransport], tmp_path: Path
) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    transport = make(key_file=str(stranger))
    with pytest.raises(TransportError, match="refused"):
        await transport.connect()
    pid = transport.server_pid
    assert pid is not None
    await transport.close()
    # Nothing to keep: no login worked, so it does not wait persist_s (60 s here).
    await asyncio.to_thread(wait_until, lambda: not alive(pid), "the shared process to end")


@pytest.mark.asyncio
async def test_a_one_time_code_is_asked_of_the_first_process_only(
    make: Callable[..., SharedSSHTransport], servers: LoginServers
) -> None:
    asked: list[str] = []

    def code(question: str) -> str:
        asked.append(question)
        return servers.totp()

    first = make(port=servers.two_factor_port, auth_prompt=code)
    assert (await first.run(["id", "-un"])).stdout.strip() == servers.cluster.user
    assert asked == [f"[clustrix@127.0.0.1:{servers.two_factor_port}] Verification code: "]
    await first.close()
    second = make(port=servers.two_factor_port, auth_prompt=never)
    assert (await second.run(["id", "-un"])).stdout.strip() == servers.cluster.user
    assert second.server_pid == first.server_pid and len(asked) == 1


@pytest.mark.asyncio
async def test_a_code_the_process_that_started_the_login_cannot_give_is_asked_of_another(
    make: Callable[..., SharedSSHTransport], servers: LoginServers
) -> None:
    """A process with no one at its prompt (a batch job) starts the login; one that waits
    for the same login and can ask its user answers it, and both calls go through."""
    other_waits = threading.Event()
    asked: list[str] = []

    def nobody(question: str) -> str:
        assert other_waits.wait(timeout=30)
        asked.append(f"nobody: {question}")
        raise PromptUnavailable("no terminal")

    def user(question: str) -> str:
        asked.append(f"user: {question}")
        return servers.totp()

    batch = make(port=servers.two_factor_port, auth_prompt=nobody)
    interactive = make(port=servers.two_factor_port, auth_prompt=user)
    first = asyncio.create_task(batch.run(["echo", "batch"]))
    await asyncio.to_thread(wait_until, lambda: batch.server_pid is not None, "the link")
    second = asyncio.create_task(interactive.run(["echo", "interactive"]))
    await asyncio.to_thread(
        wait_until, lambda: interactive.server_pid is not None, "the second link"
    )
    await asyncio.sleep(0.2)  # its call is in the shared process, waiting for the login
    other_waits.set()
    assert (await first).stdout == "batch\n"
    assert (await second).stdout == "interactive\n"
    question = f"[clustrix@127.0.0.1:{servers.two_factor_port}] Verification code: "
    assert asked == [f"nobody: {question}", f"user: {question}"]
    assert batch.server_pid == interactive.server_pid


@pytest.mark.asyncio
async def test_a_killed_shared_process_fails_the_calls_in_flight_and_the_next_starts_one(
    make: Callable[..., SharedSSHTransport],
) -> None:
    transport = make()
    await transport.connect()
    pid = transport.server_pid
    assert pid is not None
    running = asyncio.create_task(transport.run(["sleep", "30"]))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ConnectionLostError):
        await running
    assert (await transport.run(["echo", "again"])).stdout == "again\n"
    assert transport.server_pid not in (None, pid)


@pytest.mark.asyncio
async def test_a_cancelled_call_and_a_client_that_leaves_kill_their_commands(
    make: Callable[..., SharedSSHTransport],
) -> None:
    transport, leaving = make(), make()
    # Unique durations name the two commands (a sleep's argv is all pgrep can see).
    cancelled, left = (f"{301 + int.from_bytes(os.urandom(2), 'big') / 1e5:.5f}" for _ in "ab")
    running = asyncio.create_task(transport.run(["sleep", cancelled]))
    abandoned = asyncio.create_task(leaving.run(["sleep", left]))

    async def count(duration: str) -> int:
        found = await transport.run(["pgrep", "-fc", f"^sleep {duration}$"])
        return int(found.stdout.strip() or 0)

    for _ in range(100):
        if await count(cancelled) and await count(left):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the commands did not start")
    running.cancel()
    await leaving.close()  # its calls in flight end with it
    with pytest.raises(asyncio.CancelledError):
        await running
    with pytest.raises(ConnectionLostError):
        await abandoned
    for _ in range(100):  # the KILL signal request is asynchronous
        if not await count(cancelled) and not await count(left):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a command is still running")


def test_clustrix_disconnect_ends_the_shared_connection_of_the_config(
    servers: LoginServers, tmp_path: Path
) -> None:
    config = servers.cluster.ssh_config(cluster_type="slurm", connection_persist_s=60)
    path = write_config(tmp_path / "cluster.yml", config)
    holder = shared_transport(config_ssh_options(config), persist_s=60)
    assert holder is not None

    async def start() -> int:
        await holder.connect()
        await holder.close()  # leaves it running for persist_s
        assert holder.server_pid is not None
        return holder.server_pid

    pid = asyncio.run(start())
    assert alive(pid)
    ran = clustrix("disconnect", "--config", path, "--json")
    assert ran.status == 0, ran.stderr
    assert ran.json == {"location": holder.location, "pid": pid, "ended": True}
    assert gone(pid)
    again = clustrix("disconnect", "--config", path)
    assert again.status == 0, again.stderr
    assert again.stdout == f"no shared connection to {holder.location} is open\n"


# -- the executor --------------------------------------------------------------------------


@pytest.fixture
def slurm_ready() -> Iterator[None]:
    require_cluster(ssh=True, slurm=True)
    yield


def test_an_executor_over_the_shared_connection_runs_calls_and_leaves_it_for_the_next(
    slurm_ready: None, servers: LoginServers, tmp_path: Path
) -> None:
    config = servers.cluster.ssh_config(
        cluster_type="slurm",
        connection_persist_s=60,
        remote_work_dir=f"~/.clustrix-tests-shared/{os.urandom(4).hex()}",
        packaging=False,
        python_executable="python3",
    )
    with ClusterExecutor(config) as first:
        assert first.submit(pow, 2, 10).result(timeout=120) == 1024
        transport = first._engine.transport
        assert isinstance(transport, SharedSSHTransport)
        pid = transport.server_pid
    assert pid is not None and alive(pid)
    try:
        with ClusterExecutor(config) as second:
            assert list(second.map(abs, [-1, -2, -3], timeout=120)) == [1, 2, 3]
            assert second._engine.transport.server_pid == pid  # type: ignore[attr-defined]
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), "the shared process to end")
