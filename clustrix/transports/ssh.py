"""SSH transport: commands and files on a cluster's login node over one asyncssh connection.

Commands are channels of that one connection, files go through one SFTP client on it; both
are opened lazily and reopened on the next call after the connection drops. asyncssh's
exceptions are translated here, once, into builtin ``OSError`` subclasses and
:class:`clustrix.errors.TransportError`. Knows nothing of schedulers or jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
import posixpath
import secrets
import shlex
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import asyncssh

from ..errors import CommandTimeoutError, TransportError
from .base import CommandResult, Transport

__all__ = ["SSHTransport"]

logger = logging.getLogger("clustrix.ssh")
T = TypeVar("T")


class SSHTransport(Transport):
    """One asyncssh connection to ``host``; safe to use from many coroutines of one loop."""

    #: Commands at once, each a channel: OpenSSH's default MaxSessions is 10 and SFTP holds one.
    max_channels = 8
    #: SFTP operations at once, so that a gather of thousands stays under the server's open
    #: file limit (every open file is a descriptor of sftp-server); 64 keeps the pipe full.
    max_sftp_ops = 64

    def __init__(
        self,
        *,
        host: str,
        port: int = 22,
        username: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        password: str | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        strict_host_key_checking: bool = True,
        connect_timeout_s: float = 15.0,
        command_timeout_s: float = 120.0,
        keepalive_interval_s: float = 30.0,
    ) -> None:
        self._host, self._port, self._username, self._password = host, port, username, password
        self._key_file = os.path.expanduser(os.fspath(key_file)) if key_file else None
        self._known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self._strict = strict_host_key_checking
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        self._where = f"{host}:{port}"
        self.location = f"{username or getpass.getuser()}@{self._where}"
        self._lock = asyncio.Lock()  # one (re)connection at a time, however many callers
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._home: str | None = None
        self._channels = asyncio.Semaphore(self.max_channels)
        self._sftp_ops = asyncio.Semaphore(self.max_sftp_ops)

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection unless one is alive; reconnects after a drop."""
        async with self._lock:
            await self._connection()

    async def close(self) -> None:
        """Close SFTP and the connection; idempotent, and the next call reconnects."""
        async with self._lock:
            conn, sftp = self._conn, self._sftp
            self._conn, self._sftp, self._home = None, None, None
        with contextlib.suppress(asyncssh.Error, OSError):
            if sftp is not None:
                sftp.exit()
                await sftp.wait_closed()
            if conn is not None:
                conn.close()
                await conn.wait_closed()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, dialled if needed. Caller holds ``self._lock``."""
        if self._conn is None or self._conn.is_closed():
            self._drop(self._conn)
            self._conn = await self._dial()
            self.location = f"{self._conn.get_extra_info('username')}@{self._where}"
        return self._conn

    async def _sftp_client(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        async with self._lock:
            conn = await self._connection()
            if self._sftp is None:
                with self._translated(conn, "starting SFTP"):
                    self._sftp = await asyncio.wait_for(
                        conn.start_sftp_client(), self._command_timeout_s
                    )
            return conn, self._sftp

    def _drop(self, conn: asyncssh.SSHClientConnection | None) -> None:
        """Forget ``conn`` if it is still the current one, so that the next call reconnects."""
        if conn is not None and conn is self._conn:
            conn.abort()
            self._conn, self._sftp, self._home = None, None, None

    async def _dial(self) -> asyncssh.SSHClientConnection:
        # Not passing `config` makes asyncssh read ~/.ssh/config; no client_keys means the
        # agent and the default keys (~/.ssh/id_*); no known_hosts means ~/.ssh/known_hosts.
        options: dict[str, Any] = {
            "port": self._port,
            "connect_timeout": self._connect_timeout_s,
            "keepalive_interval": self._keepalive_interval_s,
        }
        for name, file in (("key_file", self._key_file), ("known_hosts", self._known_hosts)):
            if file is not None and not os.path.isfile(file):
                raise TransportError(
                    f"{name} {file} for {self._where} does not exist: fix the path"
                )
        if self._key_file is not None:
            options["client_keys"] = [self._key_file]
        if self._username is not None:  # None (asyncssh's default is ()) would break it
            options["username"] = self._username
        if self._password is not None:
            options["password"] = self._password
        if not self._strict:
            logger.warning(
                "host keys of %s are not verified: strict_host_key_checking=False", self._where
            )
            options["known_hosts"] = None
        elif self._known_hosts is not None:
            options["known_hosts"] = self._known_hosts
        try:
            return await asyncssh.connect(self._host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            known = self._known_hosts or "~/.ssh/known_hosts"
            raise TransportError(
                f"host key of {self._where} does not match known_hosts {known} ({exc.reason}): "
                "check the host or update known_hosts"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise TransportError(
                f"authentication as {self.location} refused ({exc.reason}): "
                "check username/key_file/agent"
            ) from exc
        except asyncio.TimeoutError as exc:  # before OSError: it is one on Python >= 3.11
            raise TransportError(
                f"connection to {self._where} timed out after {self._connect_timeout_s} s: "
                "check the host, port and network (VPN, firewall)"
            ) from exc
        except socket.gaierror as exc:
            raise TransportError(
                f"cannot resolve host {self._host!r} ({exc.strerror}): check the host name"
            ) from exc
        except ConnectionRefusedError as exc:
            raise TransportError(
                f"connection to {self._where} refused: check the port and that sshd runs there"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"cannot reach {self._where} ({exc.strerror or exc}): check the host and network"
            ) from exc
        except (asyncssh.Error, ValueError) as exc:  # disconnects, unreadable keys, bad config
            raise TransportError(f"cannot connect to {self.location}: {exc}") from exc

    @contextlib.contextmanager
    def _translated(
        self,
        conn: asyncssh.SSHClientConnection,
        what: str,
        path: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[None]:
        """Turn asyncssh's exceptions from one operation into ours (see the base module)."""
        try:
            yield
        except asyncssh.SFTPNoSuchFile as exc:
            raise FileNotFoundError(errno.ENOENT, f"{exc.reason} on {self.location}", path) from exc
        except asyncssh.SFTPPermissionDenied as exc:
            raise PermissionError(errno.EACCES, f"{exc.reason} on {self.location}", path) from exc
        except (
            asyncssh.DisconnectError,
            asyncssh.SFTPConnectionLost,
            asyncssh.SFTPNoConnection,
            ConnectionError,
        ) as exc:
            self._drop(conn)
            raise TransportError(f"connection to {self.location} lost: {what}: {exc}") from exc
        except asyncio.TimeoutError:
            timeout_s = self._command_timeout_s if timeout_s is None else timeout_s
            raise CommandTimeoutError(
                f"{what} on {self.location} did not finish within {timeout_s} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            if conn.is_closed():  # e.g. ChannelOpenError("SSH connection closed")
                self._drop(conn)
                raise TransportError(f"connection to {self.location} lost: {what}: {exc}") from exc
            raise TransportError(f"{what} on {self.location} failed: {exc}") from exc

    # -- commands --------------------------------------------------------------------------

    async def run(
        self, argv: Sequence[str], *, timeout_s: float | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run ``argv`` as one ``shlex.join``-quoted command line in a channel of its own."""
        args = list(argv)
        timeout = self._command_timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            conn = await self._connection()

        async def start_and_wait() -> asyncssh.SSHCompletedProcess:
            # DEVNULL sends EOF at once, so a command reading stdin cannot wait for us forever.
            proc = await conn.create_process(
                shlex.join(args), input=stdin or None, stdin=asyncssh.DEVNULL, encoding=None
            )
            try:
                return await proc.wait()
            except asyncio.CancelledError:
                # conn.run(timeout=) would leave the command and its channel running: OpenSSH
                # (>= 7.9) kills the command on a "signal" request, closing frees the channel.
                with contextlib.suppress(asyncssh.Error, OSError):
                    proc.send_signal("KILL")
                proc.close()
                raise

        with self._translated(conn, f"command {args[0]!r}", timeout_s=timeout):
            async with self._channels:
                done = await asyncio.wait_for(start_and_wait(), timeout)
            if done.exit_status is None and done.exit_signal is None and conn.is_closed():
                # asyncssh ends the process quietly, without an exit status, when the
                # connection drops under it: that must not look like the command's own failure.
                raise asyncssh.ConnectionLost("closed before the command exited")
        return CommandResult(
            args,
            _returncode(done.exit_status, done.exit_signal),
            cast(bytes, done.stdout).decode(errors="replace"),
            cast(bytes, done.stderr).decode(errors="replace"),
        )

    # -- files -----------------------------------------------------------------------------

    async def _sftp_op(
        self, what: str, path: str, op: Callable[[asyncssh.SFTPClient, str], Awaitable[T]]
    ) -> T:
        """``op(sftp, absolute path)`` within the command timeout, its errors translated."""
        path = await self.expand(path)
        conn, sftp = await self._sftp_client()
        with self._translated(conn, f"{what} {path}", path):
            async with self._sftp_ops:
                return await asyncio.wait_for(op(sftp, path), self._command_timeout_s)

    async def home(self) -> str:
        """The login directory, as the SFTP server resolves ``.``; cached per connection."""
        if self._home is None:
            conn, sftp = await self._sftp_client()
            with self._translated(conn, "realpath ."):
                self._home = await asyncio.wait_for(sftp.realpath("."), self._command_timeout_s)
        return self._home

    async def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""

        async def op(sftp: asyncssh.SFTPClient, path: str) -> bytes:
            async with sftp.open(path, "rb") as fh:
                return cast(bytes, await fh.read())

        return await self._sftp_op("read", path, op)

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a file."""

        async def op(sftp: asyncssh.SFTPClient, path: str) -> bytes:
            async with sftp.open(path, "rb") as fh:
                size = (await fh.stat()).size or 0
                return cast(bytes, await fh.read(-1, max(0, size - max_bytes)))

        return await self._sftp_op("read tail of", path, op)

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write to a temp name beside ``path`` created with ``mode``, then rename over it."""

        async def op(sftp: asyncssh.SFTPClient, path: str) -> None:
            directory, name = posixpath.split(path)
            tmp = posixpath.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
            try:
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
                    await fh.write(data)
                try:
                    await sftp.posix_rename(tmp, path)
                except asyncssh.SFTPOpUnsupported:  # no OpenSSH extension: not atomic
                    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(path)
                    await sftp.rename(tmp, path)
            except BaseException:
                with contextlib.suppress(asyncssh.Error):
                    await sftp.remove(tmp)
                raise

        await self._sftp_op("write", path, op)

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """Create a directory and its missing parents, each with ``mode`` (less the umask)."""
        # SFTPv3 (OpenSSH) reports "exists" as a generic failure: ask first.
        if not exist_ok and await self.exists(path):
            raise FileExistsError(errno.EEXIST, "File exists", await self.expand(path))
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        await self._sftp_op(
            "makedirs", path, lambda sftp, path: sftp.makedirs(path, attrs, exist_ok=True)
        )

    async def exists(self, path: str) -> bool:
        """True if ``path`` exists (following symlinks); other errors propagate."""
        try:
            await self._sftp_op("stat", path, lambda sftp, path: sftp.stat(path))
        except FileNotFoundError:
            return False
        return True

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


def _returncode(exit_status: int | None, exit_signal: tuple[str, bool, str, str] | None) -> int:
    """The exit status, or 128 + signal number like a shell; 255 when neither is known."""
    if exit_status is not None and exit_status >= 0:  # asyncssh says -1 beside a signal
        return exit_status
    if exit_signal is not None:
        with contextlib.suppress(KeyError):
            return 128 + signal.Signals[f"SIG{exit_signal[0]}"].value
    return 255
