"""SSH transport: commands and files on a cluster's login node over one asyncssh connection.

Commands are channels of that one connection, files go through one SFTP client on it; both
are opened lazily and reopened on the next call after the connection drops. The pieces:

- :mod:`._ssh_session`: the connection, dialling (through jump hosts), and the one
  translation of asyncssh's exceptions into builtin ``OSError`` subclasses and
  :class:`clustrix.errors.TransportError`;
- :mod:`._ssh_auth` and :mod:`._ssh_prompt`: the login (keys, passphrases, passwords,
  keyboard-interactive answers such as one-time codes) and the prompts that ask a person;
- :mod:`._sftp`: every file operation SFTP answers (this transport delegates to it);
- :mod:`._find`: the ``find -printf`` formats and parsers of the one-command tree scan;
- :mod:`._ssh_spare`: channels started ahead of need, so that a command costs one round
  trip (stdin included) instead of two or three;
- here: :class:`SSHTransport`, commands, and the choice between ``find`` and SFTP.

Knows nothing of schedulers or jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shlex
import signal
from collections.abc import Sequence
from typing import Literal, cast

import asyncssh

from ..errors import TransportError
from ._find import (
    DENIED,
    FIND_DETAIL,
    FIND_SIZES,
    FIND_TYPES,
    TREE_ERRORS,
    encodable,
    parse_find_entries,
    parse_find_usage,
    split_find_output,
)
from ._sftp import SFTPFiles
from ._ssh_prompt import AuthPrompt, default_prompt, no_prompt, notebook_prompt, terminal_prompt
from ._ssh_session import SSHSession
from ._ssh_spare import SparePool
from .base import CommandResult, DirEntry, FileHandle, FileStat, OnError, Transport, TreeUsage

__all__ = [
    "FIND_DETAIL",
    "FIND_SIZES",
    "FIND_TYPES",
    "AuthPrompt",
    "SSHTransport",
    "default_prompt",
    "no_prompt",
    "notebook_prompt",
    "parse_find_entries",
    "parse_find_usage",
    "split_find_output",
    "terminal_prompt",
]

logger = logging.getLogger("clustrix.ssh")


class SSHTransport(Transport):
    """One asyncssh connection to ``host``; safe to use from many coroutines of one loop."""

    round_trips_are_costly = True

    #: Commands at once, each a channel: OpenSSH's default MaxSessions is 10, SFTP holds one
    #: and the spares two.
    max_channels = 7
    #: Channels kept started, each waiting for its command (:mod:`._ssh_spare`): two, so
    #: that a poll and a submission at once both find one.
    spare_channels = 2
    #: Longer command lines take a channel of their own: a spare reads its command one
    #: byte at a time (the shell's ``read``), a round trip is worth a few KiB of that.
    max_spare_command_bytes = 16 << 10
    #: SFTP operations at once, so that a gather of thousands stays under the server's open
    #: file limit (every open file is a descriptor of sftp-server); 64 keeps the pipe full.
    max_sftp_ops = 64
    #: Files copied at once by put/get: each holds a handle open across several operations.
    max_transfers = 16
    #: Bytes per read or write of put/get; asyncssh splits them into parallel SFTP requests.
    transfer_chunk_bytes = 4 << 20
    #: GNU find, which scans a whole tree in one command (see scan_tree); None: SFTP only.
    #: Set to None once a find here turns out not to understand ``-printf``.
    find_program: str | None = "find"

    def __init__(
        self,
        *,
        host: str,
        port: int | None = None,
        username: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        password: str | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        strict_host_key_checking: bool = True,
        connect_timeout_s: float = 15.0,
        command_timeout_s: float = 120.0,
        keepalive_interval_s: float = 30.0,
        key_passphrase: str | None = None,
        jump_host: str | None = None,
        keyring_service: str | None = None,
        auth_prompt: AuthPrompt | None = None,
    ) -> None:
        """``auth_prompt`` asks a person for what the login needs and nothing else gives: a
        key's passphrase, a password, a keyboard-interactive answer such as a one-time code
        (called with the whole question, returns the answer; see :mod:`._ssh_prompt`).
        None: :func:`~._ssh_prompt.default_prompt` (the notebook in Jupyter, else the
        terminal when stdin is one, else nobody: the login fails saying what was asked)."""
        self._session = SSHSession(
            host=host,
            port=port,
            username=username,
            key_file=key_file,
            password=password,
            known_hosts=known_hosts,
            strict_host_key_checking=strict_host_key_checking,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
            keepalive_interval_s=keepalive_interval_s,
            key_passphrase=key_passphrase,
            jump_host=jump_host,
            keyring_service=keyring_service,
            auth_prompt=auth_prompt,
        )
        self._files = SFTPFiles(
            self._session,
            max_ops=self.max_sftp_ops,
            max_transfers=self.max_transfers,
            chunk_bytes=self.transfer_chunk_bytes,
        )
        self._channels = asyncio.Semaphore(self.max_channels)
        self._spares = SparePool(self.spare_channels)

    @property
    def location(self) -> str:
        """``user@host:port``: the user the server logged us in as, once connected."""
        return self._session.location

    @location.setter
    def location(self, value: str) -> None:
        self._session.location = value

    @property
    def connected(self) -> bool:
        """True while a logged-in connection is open."""
        return self._session.connected

    async def connect(self) -> None:
        """Open the connection unless one is alive; reconnects after a drop."""
        await self._session.connection()

    async def close(self) -> None:
        """Close SFTP and the connection; idempotent, and the next call reconnects."""
        await self._spares.close()
        await self._session.close()

    async def home(self) -> str:
        """The login directory, as the SFTP server resolves ``.``; cached per connection."""
        return await self._session.home()

    # -- commands --------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        """Run ``argv`` as one ``shlex.join``-quoted command line, on a spare channel
        (:mod:`._ssh_spare`) or in a channel of its own."""
        args = list(argv)
        line = shlex.join(args)
        timeout = self._session.command_timeout_s if timeout_s is None else timeout_s
        conn = await self._session.connection()

        async def start() -> asyncssh.SSHClientProcess[bytes]:
            spare = None
            if len(line) <= self.max_spare_command_bytes:
                spare = self._spares.take(conn, line)
            if spare is not None:
                spare.start(line, stdin)
                return spare.process
            try:
                process = await own_channel()
            except asyncssh.ChannelOpenError:
                if conn.is_closed():
                    raise
                # The server may allow fewer sessions than we hold: give the spares' back.
                await self._spares.give_back(conn)
                process = await own_channel()
            if stdin:
                _write_stdin(process, stdin)
            return process

        async def own_channel() -> asyncssh.SSHClientProcess[bytes]:
            # DEVNULL sends EOF at once: a command reading stdin cannot wait for us. Given
            # stdin is written above, not with create_process(input=), which raises when
            # the command has ended before the write, losing its exit status and output.
            return await conn.create_process(
                line, stdin=asyncssh.PIPE if stdin else asyncssh.DEVNULL, encoding=None
            )

        async def start_and_wait() -> asyncssh.SSHCompletedProcess:
            proc = await start()
            try:
                return await proc.wait()
            except asyncio.CancelledError:
                # conn.run(timeout=) would leave the command and its channel running: OpenSSH
                # (>= 7.9) kills the command on a "signal" request, closing frees the channel.
                with contextlib.suppress(asyncssh.Error, OSError):
                    proc.send_signal("KILL")
                proc.close()
                raise

        with self._session.translated(conn, f"command {args[0]!r}", timeout_s=timeout):
            async with self._channels:
                done = await asyncio.wait_for(start_and_wait(), timeout)
            if done.exit_status is None and done.exit_signal is None and conn.is_closed():
                # asyncssh ends the process quietly, without an exit status, when the
                # connection drops under it: that must not look like the command's own failure.
                raise asyncssh.ConnectionLost("closed before the command exited")
        return CommandResult(
            args,
            _returncode(done.exit_status, done.exit_signal),
            cast(bytes, done.stdout).decode(errors=errors),
            cast(bytes, done.stderr).decode(errors="replace"),
        )

    async def remove_tree(self, path: str) -> None:
        """Delete a directory tree; a missing one is not an error."""
        path = await self.expand(path)
        if path in ("/", await self.home()):
            raise ValueError(f"refusing to remove {path!r} on {self.location}")
        # One `rm -rf` round trip instead of sftp.rmtree, which lists every directory and
        # removes every file with requests of its own: thousands for a big job tree.
        result = await self.run(["rm", "-rf", "--", path])
        if not result.ok:
            message = f"rm -rf {path} on {self.location}: {result.stderr.strip()}"
            if "Permission denied" in result.stderr:
                raise PermissionError(errno.EACCES, message, path)
            raise TransportError(message)

    # -- trees: one find command where it can, SFTP otherwise --------------------------------

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        """The whole tree in ONE command (``find -H path -printf …``, argv-quoted) where GNU
        find is there; otherwise, or if that command fails for a reason other than the tree
        itself, SFTP ``readdir`` one tree level at a time (the base implementation)."""
        root = await self.expand(path)
        records = await _find(self, root, FIND_DETAIL if detail else FIND_TYPES, on_error)
        if records is not None:
            return parse_find_entries(records, detail=detail)
        return await super().scan_tree(root, on_error=on_error)

    async def disk_usage(self, path: str, *, on_error: OnError = "raise") -> TreeUsage:
        """Totals from ONE ``find -printf '%y %s'`` (no names: it is about as fast as
        ``du -sb``), or from the SFTP scan."""
        root = await self.expand(path)
        records = await _find(self, root, FIND_SIZES, on_error)
        if records is not None:
            return parse_find_usage(records)
        return await super().disk_usage(root, on_error=on_error)

    # -- files: SFTP (see _sftp.py), paths made absolute here ---------------------------------

    async def read_bytes(self, path: str) -> bytes:
        return await self._files.read_bytes(await self.expand(path))

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        return await self._files.read_tail(await self.expand(path), max_bytes)

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await self._files.write_bytes(await self.expand(path), data, mode=mode)

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        await self._files.makedirs(await self.expand(path), mode=mode, exist_ok=exist_ok)

    async def exists(self, path: str) -> bool:
        return await self._files.exists(await self.expand(path))

    async def stat(self, path: str) -> FileStat:
        return await self._files.stat(await self.expand(path))

    async def lstat(self, path: str) -> FileStat:
        return await self._files.lstat(await self.expand(path))

    async def scandir(self, path: str) -> list[DirEntry]:
        return await self._files.scandir(await self.expand(path))

    async def readlink(self, path: str) -> str:
        return await self._files.readlink(await self.expand(path))

    async def symlink(self, target: str, path: str) -> None:
        await self._files.symlink(target, await self.expand(path))

    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        await self._files.mkdir(await self.expand(path), mode=mode)

    async def remove(self, path: str) -> None:
        await self._files.remove(await self.expand(path))

    async def rmdir(self, path: str) -> None:
        await self._files.rmdir(await self.expand(path))

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        return await self._files.open(await self.expand(path), mode)

    async def put(self, local_path: str, path: str) -> None:
        await self._files.put(local_path, await self.expand(path))

    async def get(self, path: str, local_path: str) -> None:
        await self._files.get(await self.expand(path), local_path)


async def _find(
    transport: SSHTransport, root: str, fmt: str, on_error: OnError
) -> list[str] | None:
    """The records (``-printf fmt``) of every entry below ``root``, from one command;
    None when SFTP should answer instead (no usable find, or an error it explains
    better). The root's own record, which find prints first, is checked and dropped."""
    program = transport.find_program
    if program is None or not encodable(root):
        return None
    argv = ["env", "LC_ALL=C", program, "-H", root, "-printf", fmt]
    result = await transport.run(argv, errors="surrogateescape")
    lines = result.stderr.splitlines()
    usable = result.returncode in (0, 1) and all(
        line.startswith(f"{program}: ") and line.endswith(TREE_ERRORS) for line in lines
    )
    try:
        records = split_find_output(result.stdout) if usable else []
    except ValueError as exc:
        logger.warning("unexpected output of %s on %s: %s", program, transport.location, exc)
        usable = False
    if not usable:
        # Not GNU find (no -printf: BusyBox, BSD), or no find at all: SFTP from now on.
        logger.info(
            "%s on %s cannot scan trees (exit %s: %s); using SFTP",
            program,
            transport.location,
            result.returncode,
            result.stderr.strip()[:200],
        )
        transport.find_program = None
        return None
    if not records:
        return None  # the root is missing (or vanished): SFTP says so exactly
    kind = records[0][0]
    if kind == "l":  # -H prints a dangling (or looping) root link itself
        raise FileNotFoundError(errno.ENOENT, f"No such file on {transport.location}", root)
    if kind != "d":
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", root)
    if result.ok:
        return records[1:]
    denied = [line for line in lines if line.endswith(DENIED)]
    if denied:
        # find prints every directory before it tries to read it: if the root is the
        # only record, the root is what it could not read (refused even with "omit").
        if on_error == "raise" or len(records) == 1:
            raise PermissionError(errno.EACCES, f"{denied[0]} on {transport.location}", root)
        if len(denied) == len(lines):
            return records[1:]
    return None  # entries vanished during the scan: SFTP tells exactly


def _write_stdin(process: asyncssh.SSHClientProcess[bytes], data: bytes) -> None:
    """Write ``data`` and EOF to a command of its own channel."""
    try:
        process.stdin.write(data)
        process.stdin.write_eof()
    except BrokenPipeError:
        # The command ended (or closed its stdin) before reading all of it, as a missing
        # program does: its exit status says how, as subprocess.run treats EPIPE. A dropped
        # connection is told apart after the wait.
        pass


def _returncode(exit_status: int | None, exit_signal: tuple[str, bool, str, str] | None) -> int:
    """The exit status, or 128 + signal number like a shell; 255 when neither is known."""
    if exit_status is not None and exit_status >= 0:  # asyncssh says -1 beside a signal
        return exit_status
    if exit_signal is not None:
        with contextlib.suppress(KeyError):
            return 128 + signal.Signals[f"SIG{exit_signal[0]}"].value
    return 255
