"""SSHTransport against the real OpenSSH server of the test cluster (scripts/testcluster.sh).

Every test gets a transport of its own on its own event loop and, where it touches files, a
fresh directory under the remote home that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import pytest_asyncio

from clustrix.errors import CommandTimeoutError, TransportError
from clustrix.transports.ssh import SSHTransport

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

HOST = os.environ.get("CLUSTRIX_TEST_SSH_HOST", "127.0.0.1")
PORT = int(os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222"))
USER = os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix")
KEY = os.environ.get("CLUSTRIX_TEST_SSH_KEY", "/tmp/clustrix-testcluster/keys/id_ed25519")
KNOWN_HOSTS = os.environ.get(
    "CLUSTRIX_TEST_SSH_KNOWN_HOSTS", "/tmp/clustrix-testcluster/keys/known_hosts"
)
WEIRD = "a b 'single' \"double\" ; $(echo pwned) `echo pwned` \\ *\nline two\tü€ 🐍"


@pytest.fixture(scope="module")
def options() -> dict[str, Any]:
    """Keyword arguments of SSHTransport for the test cluster; skips (fails on CI) without it."""
    try:
        socket.create_connection((HOST, PORT), timeout=3).close()
    except OSError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"test cluster at {HOST}:{PORT} unreachable on CI: {exc}")
        pytest.skip("test cluster not running: start it with sudo scripts/testcluster.sh start")
    return {"host": HOST, "port": PORT, "username": USER, "key_file": KEY,
            "known_hosts": KNOWN_HOSTS}  # fmt: skip


@pytest_asyncio.fixture
async def transport(options: dict[str, Any]) -> AsyncIterator[SSHTransport]:
    t = SSHTransport(**options)
    yield t
    await t.close()


@pytest_asyncio.fixture
async def workdir(transport: SSHTransport) -> AsyncIterator[str]:
    """A fresh remote directory (absolute path), removed after the test."""
    path = f"{await transport.home()}/clustrix-test-{secrets.token_hex(4)}"
    await transport.makedirs(path)
    yield path
    await transport.remove_tree(path)


@pytest.fixture
def tmp_key(tmp_path: Path) -> Path:
    """A freshly generated private key that no authorized_keys knows."""
    path = tmp_path / "id_ed25519"
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    path.chmod(0o600)
    return path


async def ssh_connection(t: SSHTransport) -> str:
    """``$SSH_CONNECTION`` on the server: same value, same TCP connection."""
    return (await t.run(["sh", "-c", "echo $SSH_CONNECTION"])).stdout.strip()


async def stat_mode(t: SSHTransport, path: str) -> str:
    return (await t.run(["stat", "-c", "%a", path])).stdout.strip()


# -- commands ------------------------------------------------------------------------------


async def test_run_passes_argv_verbatim(transport: SSHTransport) -> None:
    result = await transport.run(["printf", "%s", WEIRD])
    assert result.ok and result.stdout == WEIRD and result.stderr == ""
    assert result.argv == ["printf", "%s", WEIRD]
    assert transport.location == f"{USER}@{HOST}:{PORT}"


async def test_run_nonzero_exit_is_a_result(transport: SSHTransport) -> None:
    result = await transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok


async def test_a_command_that_ends_before_reading_its_stdin_is_a_result(
    transport: SSHTransport,
) -> None:
    # A missing program ends at once: the stdin written after it (on a channel of its
    # own: the command line is too long for a spare) must not turn into a lost connection.
    # (Whether the end beats the write is a race; the start-up error tests of
    # test_packaging.py lost it about one run in three before the transport wrote stdin
    # itself.)
    padding = "z" * (transport.max_spare_command_bytes + 1)
    for _ in range(20):
        result = await transport.run(["/no/such/program", padding], stdin=b"x" * 3_000_000)
        assert result.returncode == 127 and "/no/such/program" in result.stderr


async def test_run_killed_by_signal_is_128_plus_signal(transport: SSHTransport) -> None:
    assert (await transport.run(["sh", "-c", "kill -TERM $$"])).returncode == 143


async def test_run_stdin_and_eof(transport: SSHTransport) -> None:
    data = "line 1\nü\n".encode()
    assert (await transport.run(["cat"], stdin=data)).stdout == data.decode()
    # Without stdin the command sees EOF at once instead of waiting for us.
    assert (await transport.run(["cat"], timeout_s=10)).stdout == ""
    assert (await transport.run(["cat"], stdin=b"", timeout_s=10)).stdout == ""


async def test_run_undecodable_output_is_replaced(transport: SSHTransport) -> None:
    assert (await transport.run(["printf", "\\377ok"])).stdout == "\ufffdok"


async def test_run_timeout_raises_and_kills_the_command(transport: SSHTransport) -> None:
    marker = f"{31 + secrets.randbelow(1000) / 1000:.3f}"
    with pytest.raises(CommandTimeoutError, match=r"within 0\.5 s"):
        await transport.run(["sleep", marker], timeout_s=0.5)
    for _ in range(20):  # the KILL signal request is asynchronous
        if (await transport.run(["pgrep", "-f", f"sleep {marker}"])).returncode == 1:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the timed-out command is still running")


async def spares_ready(t: SSHTransport, n: int = 2) -> None:
    """Until ``n`` spare channels wait for a command (they start in the background)."""
    for _ in range(100):
        if t._spares.ready() >= n:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"no {n} spare channels after 5 s")


async def test_commands_after_the_first_run_on_spare_channels(transport: SSHTransport) -> None:
    """A spare reads its command line from stdin, then becomes it: argv, stdin, exit status,
    stderr and the parent (sshd) are what a channel of its own gives."""
    assert (await transport.run(["true"])).ok
    await spares_ready(transport)
    taken = transport._spares.taken
    data = f"{WEIRD}\n{transport._spares._spares[0].marker}\nend".encode()
    script = 'cat; printf "|%s|" "$0"; echo err >&2; exit 3'
    result = await transport.run(["sh", "-c", script, WEIRD], stdin=data)
    assert result.returncode == 3
    assert result.stdout == f"{data.decode()}|{WEIRD}|"
    assert result.stderr == "err\n"
    # no stdin: EOF at once, as for a channel of its own
    assert (await transport.run(["cat"], timeout_s=10)).stdout == ""
    assert transport._spares.taken == taken + 2
    # the command is the spare's process itself (exec): a signal request or a close ends it
    parent = (await transport.run(["sh", "-c", "ps -o comm= -p $PPID"])).stdout.strip()
    assert parent.startswith("sshd")


async def test_a_command_naming_a_spares_marker_or_too_long_gets_its_own_channel(
    transport: SSHTransport,
) -> None:
    await transport.run(["true"])
    await spares_ready(transport)
    taken = transport._spares.taken
    marker = transport._spares._spares[0].marker
    result = await transport.run(["sh", "-c", 'printf "%s" "$0"', f"x\n{marker}\ny"])
    assert result.stdout == f"x\n{marker}\ny"
    long = "z" * (transport.max_spare_command_bytes + 1)
    assert (await transport.run(["printf", "%s", long])).stdout == long
    assert transport._spares.taken == taken


async def test_a_spare_that_died_is_passed_over(transport: SSHTransport) -> None:
    await transport.run(["true"])
    await spares_ready(transport)
    for marker in [spare.marker for spare in transport._spares._spares]:
        await transport.run(["pkill", "-KILL", "-f", marker])
    for _ in range(50):  # the channels close a moment later
        if transport._spares.ready() == 0:
            break
        await asyncio.sleep(0.05)
    assert (await transport.run(["echo", "still here"])).stdout == "still here\n"
    await spares_ready(transport)  # and new ones start
    assert (await transport.run(["echo", "again"])).stdout == "again\n"


# -- files ---------------------------------------------------------------------------------


async def test_write_read_round_trip_with_permissions(
    transport: SSHTransport, workdir: str
) -> None:
    data = bytes(range(256)) * 1000
    path = f"{workdir}/payload.bin"
    await transport.write_bytes(path, data)
    assert await transport.read_bytes(path) == data
    assert await stat_mode(transport, path) == "600"
    await transport.write_bytes(path, b"new", mode=0o640)  # replaces the file atomically
    assert await transport.read_bytes(path) == b"new"
    assert await stat_mode(transport, path) == "640"
    listing = await transport.run(["ls", "-A", workdir])
    assert listing.stdout.split() == ["payload.bin"], "temp files left behind"


async def test_relative_and_tilde_paths_resolve_against_home(
    transport: SSHTransport, workdir: str
) -> None:
    home = (await transport.run(["sh", "-c", "echo $HOME"])).stdout.strip()
    assert await transport.home() == home
    name = workdir.rsplit("/", 1)[1]
    await transport.write_bytes(f"{name}/rel", b"relative")
    assert await transport.read_bytes(f"~/{name}/rel") == b"relative"
    assert await transport.read_bytes(f"{workdir}/rel") == b"relative"


async def test_read_tail(transport: SSHTransport, workdir: str) -> None:
    data = bytes(range(256)) * 10
    await transport.write_bytes(f"{workdir}/log", data)
    assert await transport.read_tail(f"{workdir}/log", 100) == data[-100:]
    assert await transport.read_tail(f"{workdir}/log", 10**6) == data
    assert await transport.read_tail(f"{workdir}/log", 0) == b""


async def test_makedirs_mode_and_exist_ok(transport: SSHTransport, workdir: str) -> None:
    await transport.makedirs(f"{workdir}/a/b/c")
    for sub in ("a", "a/b", "a/b/c"):
        assert await stat_mode(transport, f"{workdir}/{sub}") == "700"
    await transport.makedirs(f"{workdir}/a/b/c")  # exist_ok=True by default
    with pytest.raises(FileExistsError):
        await transport.makedirs(f"{workdir}/a/b", exist_ok=False)


async def test_exists_and_remove_tree(transport: SSHTransport, workdir: str) -> None:
    tree = f"{workdir}/tree"
    await transport.makedirs(f"{tree}/x/y")
    await asyncio.gather(*(transport.write_bytes(f"{tree}/x/y/{i}", b"z") for i in range(50)))
    assert await transport.exists(tree) and await transport.exists(f"{tree}/x/y/7")
    await transport.remove_tree(tree)
    assert not await transport.exists(tree)
    await transport.remove_tree(tree)  # a missing tree is fine
    await transport.remove_tree(f"{workdir}/{WEIRD}")  # and no shell sees the name


async def test_missing_file_is_file_not_found(transport: SSHTransport, workdir: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await transport.read_bytes(f"{workdir}/missing")
    assert info.value.filename == f"{workdir}/missing"
    with pytest.raises(FileNotFoundError):
        await transport.read_tail(f"{workdir}/missing", 10)
    with pytest.raises(FileNotFoundError):
        await transport.write_bytes(f"{workdir}/no/such/dir/file", b"")
    assert not await transport.exists(f"{workdir}/missing")


async def test_refused_path_is_permission_error(transport: SSHTransport) -> None:
    with pytest.raises(PermissionError) as info:
        await transport.read_bytes("/root/x")
    assert info.value.filename == "/root/x"
    with pytest.raises(PermissionError):
        await transport.write_bytes("/root/x", b"nope")
    with pytest.raises(PermissionError):
        await transport.makedirs("/root/clustrix/sub")
    with pytest.raises(PermissionError):  # exists() turns only "not found" into False
        await transport.exists("/root/x")


# -- one connection, many callers ----------------------------------------------------------


async def test_concurrent_first_calls_share_one_connection(options: dict[str, Any]) -> None:
    t = SSHTransport(**options)
    try:
        seen = await asyncio.gather(*(ssh_connection(t) for _ in range(30)))
        assert len(set(seen)) == 1, "concurrent callers opened more than one connection"
    finally:
        await t.close()


async def test_200_concurrent_reads_over_one_connection(
    transport: SSHTransport, workdir: str
) -> None:
    before = await ssh_connection(transport)
    contents = [f"file {i} ".encode() * (i + 1) for i in range(200)]
    await asyncio.gather(
        *(transport.write_bytes(f"{workdir}/{i}", c) for i, c in enumerate(contents))
    )
    read = await asyncio.gather(*(transport.read_bytes(f"{workdir}/{i}") for i in range(200)))
    assert read == contents
    echoed = await asyncio.gather(*(transport.run(["echo", str(i)]) for i in range(40)))
    assert [r.stdout for r in echoed] == [f"{i}\n" for i in range(40)]
    assert await ssh_connection(transport) == before


async def test_close_is_idempotent_and_next_call_reconnects(transport: SSHTransport) -> None:
    first = await ssh_connection(transport)
    await transport.close()
    await transport.close()
    assert await ssh_connection(transport) != first
    await transport.connect()
    await transport.connect()  # no-op while connected


async def test_connection_killed_during_a_command(transport: SSHTransport) -> None:
    first = await ssh_connection(transport)
    slow = asyncio.ensure_future(transport.run(["sleep", "30"]))
    await asyncio.sleep(0.3)
    # Kill the sshd process serving this very connection (the parent of our shell), which
    # spares the connections of other tests using the cluster at the same time.
    killer = transport.run(["sh", "-c", "kill -KILL $PPID"])
    outcomes = await asyncio.wait_for(asyncio.gather(killer, slow, return_exceptions=True), 10)
    assert isinstance(outcomes[1], TransportError)
    assert not isinstance(outcomes[1], CommandTimeoutError)
    assert "lost" in str(outcomes[1])
    assert (await transport.run(["echo", "back"])).stdout == "back\n"
    assert await ssh_connection(transport) != first


async def test_connection_killed_while_idle(transport: SSHTransport) -> None:
    first = await ssh_connection(transport)
    await transport.run(["sh", "-c", "(sleep 0.3; kill -KILL $PPID) >/dev/null 2>&1 &"])
    await asyncio.sleep(1.5)
    assert await ssh_connection(transport) != first  # reconnected without an error


# -- connection errors ---------------------------------------------------------------------


async def test_connection_refused_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:1 refused"):
        await SSHTransport(host="127.0.0.1", port=1, key_file=KEY).run(["true"])


async def test_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP but never says a word of SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        t = SSHTransport(host="127.0.0.1", port=port, key_file=KEY, connect_timeout_s=0.5)
        with pytest.raises(TransportError, match=r"timed out after 0\.5 s"):
            await t.connect()


async def test_unknown_host_key_is_refused(options: dict[str, Any], tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{HOST}]:{PORT} {other}")
    t = SSHTransport(**{**options, "known_hosts": known_hosts})
    with pytest.raises(TransportError, match=f"host key of {re.escape(HOST)}:{PORT} .*known_hosts"):
        await t.run(["true"])


async def test_unverified_host_keys_are_logged(
    options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    t = SSHTransport(**{**options, "known_hosts": None, "strict_host_key_checking": False})
    with caplog.at_level(logging.WARNING, logger="clustrix.ssh"):
        try:
            assert (await t.run(["true"])).ok
        finally:
            await t.close()
    assert "not verified" in caplog.text


async def test_missing_key_file_is_named(options: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_key"
    with pytest.raises(TransportError, match=f"key_file {re.escape(str(missing))}"):
        await SSHTransport(**{**options, "key_file": missing}).connect()


async def test_unknown_key_is_refused(options: dict[str, Any], tmp_key: Path) -> None:
    with pytest.raises(
        TransportError, match=re.escape(f"authentication as {USER}@{HOST}:{PORT} refused")
    ):
        await SSHTransport(**{**options, "key_file": tmp_key}).connect()
