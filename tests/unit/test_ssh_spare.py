"""Spare channels (``transports/_ssh_spare.py``): the reader under the local shells runs
exactly the command line it was sent, and the command gets exactly the rest of stdin; a
server with too few sessions for them (an asyncssh server on loopback) gets none."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from clustrix.transports._ssh_spare import SPARE_READER
from clustrix.transports.ssh import SSHTransport

WEIRD = "a b 'single' \"double\" ; $(echo pwned) `echo pwned` \\ *\nline two\tü€ 🐍"
SHELLS = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]


def spare(shell: str, marker: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    return subprocess.run([*argv, "-c", SPARE_READER, marker], input=stdin, capture_output=True)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_reader_runs_its_command_with_the_rest_of_stdin(shell: str) -> None:
    marker = "clustrix-end-0123456789abcdef"
    line = shlex.join(["sh", "-c", 'cat; printf "|%s|" "$0"; exit 3', WEIRD])
    data = f"{WEIRD}\n{marker}\n\\ tail without newline".encode()
    done = spare(shell, marker, f"{line}\n{marker}\n".encode() + data)
    assert done.returncode == 3
    assert done.stdout == data + f"|{WEIRD}|".encode()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_reader_whose_stdin_ends_without_a_command_runs_nothing(shell: str) -> None:
    done = spare(shell, "clustrix-end-x", b"touch /nonexistent/never\n")
    assert done.returncode == 255 and done.stderr == b""


# ------------------------------------------------------- a server with few sessions to give
class FewSessions(asyncssh.SSHServer):
    """Refuses a session beyond ``limit`` open at once (OpenSSH's ``MaxSessions``)."""

    limit = 1
    open = 0

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication needed

    def session_requested(self) -> Any:
        if FewSessions.open >= FewSessions.limit:
            return False
        FewSessions.open += 1
        return asyncssh.SSHServerProcess(run_locally, None, 3, False)


async def run_locally(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """The command in the local ``sh``, as sshd runs it in the login shell."""
    try:
        local = await asyncio.create_subprocess_exec(
            "sh", "-c", process.command or "", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        assert local.stdin and local.stdout and local.stderr

        async def feed() -> None:
            assert local.stdin is not None
            while data := await process.stdin.read(65536):
                local.stdin.write(data)
            local.stdin.close()

        async def copy(source: asyncio.StreamReader, target: Any) -> None:
            while data := await source.read(65536):
                target.write(data)

        feeding = asyncio.ensure_future(feed())
        await asyncio.gather(copy(local.stdout, process.stdout), copy(local.stderr, process.stderr))
        feeding.cancel()
        process.exit(await local.wait())
    finally:
        FewSessions.open -= 1


@pytest.mark.asyncio
async def test_a_server_with_too_few_sessions_for_the_spares_gets_none(tmp_path: Path) -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        FewSessions,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    transport = SSHTransport(
        host="127.0.0.1", port=port, username="me", strict_host_key_checking=False
    )
    try:
        # the first command opens its channel while the spares open theirs: whichever is
        # refused, the command runs all the same, now and after
        for i in range(6):
            result = await transport.run(["sh", "-c", 'echo "$0"', str(i)], stdin=b"x")
            assert (result.returncode, result.stdout) == (0, f"{i}\n")
        assert transport._spares.ready() == 0
    finally:
        await transport.close()
        server.close()
