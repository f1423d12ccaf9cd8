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
import stat as stat_module
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar, cast

import asyncssh

from ..errors import CommandTimeoutError, ConnectionLostError, TransportError
from .base import (
    CommandResult,
    DirEntry,
    FileHandle,
    FileStat,
    OnError,
    Transport,
    TreeUsage,
)

__all__ = ["SSHTransport"]

logger = logging.getLogger("clustrix.ssh")
T = TypeVar("T")


class SSHTransport(Transport):
    """One asyncssh connection to ``host``; safe to use from many coroutines of one loop."""

    round_trips_are_costly = True

    #: Commands at once, each a channel: OpenSSH's default MaxSessions is 10 and SFTP holds one.
    max_channels = 8
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
    ) -> None:
        self._host, self._port, self._username, self._password = host, port, username, password
        self._key_file = os.path.expanduser(os.fspath(key_file)) if key_file else None
        self._known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self._strict = strict_host_key_checking
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        # port None: ~/.ssh/config's Port for this host, else 22
        self._where = f"{host}:{port}" if port is not None else host
        self.location = f"{username or getpass.getuser()}@{self._where}"
        self._lock = asyncio.Lock()  # one (re)connection at a time, however many callers
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._home: str | None = None
        self._channels = asyncio.Semaphore(self.max_channels)
        self._sftp_ops = asyncio.Semaphore(self.max_sftp_ops)
        self._transfers = asyncio.Semaphore(self.max_transfers)

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
                    # surrogateescape: a name that is not UTF-8 comes back as os.fsdecode
                    # would give it, and goes out as the same bytes, instead of failing.
                    self._sftp = await asyncio.wait_for(
                        conn.start_sftp_client(path_errors="surrogateescape"),
                        self._command_timeout_s,
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
            "connect_timeout": self._connect_timeout_s,
            "keepalive_interval": self._keepalive_interval_s,
        }
        for name, file in (("key_file", self._key_file), ("known_hosts", self._known_hosts)):
            if file is not None and not os.path.isfile(file):
                raise TransportError(
                    f"{name} {file} for {self._where} does not exist: fix the path"
                )
        if self._port is not None:
            options["port"] = self._port
        if self._key_file is not None:
            if os.path.isdir(self._key_file):
                raise TransportError(
                    f"key_file {self._key_file} is a directory: give the private key file"
                )
            try:
                options["client_keys"] = [asyncssh.read_private_key(self._key_file)]
            except (asyncssh.KeyImportError, OSError, ValueError) as exc:
                raise TransportError(
                    f"key_file {self._key_file} is not a usable private key ({exc}): give "
                    "an unencrypted OpenSSH/PEM private key, or load it into an SSH agent"
                ) from exc
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
                "check username, key_file, password or the SSH agent"
            ) from exc
        except asyncio.TimeoutError as exc:  # before OSError: it is one on Python >= 3.11
            raise ConnectionLostError(
                f"connection to {self._where} timed out after {self._connect_timeout_s} s: "
                "check the host, port and network (VPN, firewall)"
            ) from exc
        except socket.gaierror as exc:
            raise TransportError(
                f"cannot resolve host {self._host!r} ({exc.strerror}): check the host name"
            ) from exc
        except ConnectionRefusedError as exc:
            raise ConnectionLostError(
                f"connection to {self._where} refused: check the port and that sshd runs there"
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(
                f"cannot reach {self._where} ({exc.strerror or exc}): check the host and network"
            ) from exc
        except asyncssh.ConnectionLost as exc:  # dropped during the handshake
            raise ConnectionLostError(f"cannot connect to {self.location}: {exc}") from exc
        except (asyncssh.Error, ValueError) as exc:  # unreadable keys, bad config, ...
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
            raise ConnectionLostError(f"connection to {self.location} lost: {what}: {exc}") from exc
        except asyncio.TimeoutError:
            timeout_s = self._command_timeout_s if timeout_s is None else timeout_s
            raise CommandTimeoutError(
                f"{what} on {self.location} did not finish within {timeout_s} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            if conn.is_closed():  # e.g. ChannelOpenError("SSH connection closed")
                self._drop(conn)
                raise ConnectionLostError(
                    f"connection to {self.location} lost: {what}: {exc}"
                ) from exc
            raise TransportError(f"{what} on {self.location} failed: {exc}") from exc

    # -- commands --------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
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
            cast(bytes, done.stdout).decode(errors=errors),
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

    async def _sftp_op_on(
        self, conn: asyncssh.SSHClientConnection, what: str, path: str, op: Awaitable[T]
    ) -> T:
        """Like :meth:`_sftp_op`, for an operation on an open file of connection ``conn``."""
        with self._translated(conn, f"{what} {path}", path):
            async with self._sftp_ops:
                return await asyncio.wait_for(op, self._command_timeout_s)

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

    # -- filesystem core -------------------------------------------------------------------

    async def stat(self, path: str) -> FileStat:
        """SFTP ``stat`` (follows symlinks; a dangling one or a loop is "not found")."""
        attrs = await self._sftp_op("stat", path, lambda sftp, path: sftp.stat(path))
        return _file_stat(attrs)

    async def lstat(self, path: str) -> FileStat:
        """SFTP ``lstat``."""
        attrs = await self._sftp_op("lstat", path, lambda sftp, path: sftp.lstat(path))
        return _file_stat(attrs)

    async def scandir(self, path: str) -> list[DirEntry]:
        """SFTP ``readdir``: about 100 entries per round trip with OpenSSH, attributes included
        (as ``lstat`` gives them)."""
        names = await self._sftp_op("readdir", path, lambda sftp, path: sftp.readdir(path))
        return [
            DirEntry(cast(str, n.filename), _file_stat(n.attrs))
            for n in names
            if n.filename not in (".", "..")
        ]

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        """The whole tree in ONE command (``find -H path -printf …``, argv-quoted) where GNU
        find is there; otherwise, or if that command fails for a reason other than the tree
        itself, SFTP ``readdir`` one tree level at a time (the base implementation)."""
        root = await self.expand(path)
        records = await self._find(root, FIND_DETAIL if detail else FIND_TYPES, on_error)
        if records is not None:
            return parse_find_entries(records, detail=detail)
        return await super().scan_tree(root, on_error=on_error)

    async def disk_usage(self, path: str, *, on_error: OnError = "raise") -> TreeUsage:
        """Totals from ONE ``find -printf '%y %s'`` (no names: it is about as fast as
        ``du -sb``), or from the SFTP scan."""
        root = await self.expand(path)
        records = await self._find(root, FIND_SIZES, on_error)
        if records is not None:
            return parse_find_usage(records)
        return await super().disk_usage(root, on_error=on_error)

    async def _find(self, root: str, fmt: str, on_error: OnError) -> list[str] | None:
        """The records (``-printf fmt``) of every entry below ``root``, from one command;
        None when SFTP should answer instead (no usable find, or an error it explains
        better). The root's own record, which find prints first, is checked and dropped."""
        program = self.find_program
        if program is None or not _encodable(root):
            return None
        argv = ["env", "LC_ALL=C", program, "-H", root, "-printf", fmt]
        result = await self.run(argv, errors="surrogateescape")
        lines = result.stderr.splitlines()
        usable = result.returncode in (0, 1) and all(
            line.startswith(f"{program}: ") and line.endswith(TREE_ERRORS) for line in lines
        )
        try:
            records = split_find_output(result.stdout) if usable else []
        except ValueError as exc:
            logger.warning("unexpected output of %s on %s: %s", program, self.location, exc)
            usable = False
        if not usable:
            # Not GNU find (no -printf: BusyBox, BSD), or no find at all: SFTP from now on.
            logger.info(
                "%s on %s cannot scan trees (exit %s: %s); using SFTP",
                program,
                self.location,
                result.returncode,
                result.stderr.strip()[:200],
            )
            self.find_program = None
            return None
        if not records:
            return None  # the root is missing (or vanished): SFTP says so exactly
        kind = records[0][0]
        if kind == "l":  # -H prints a dangling (or looping) root link itself
            raise FileNotFoundError(errno.ENOENT, f"No such file on {self.location}", root)
        if kind != "d":
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", root)
        if result.ok:
            return records[1:]
        denied = [line for line in lines if line.endswith(DENIED)]
        if denied:
            # find prints every directory before it tries to read it: if the root is the
            # only record, the root is what it could not read (refused even with "omit").
            if on_error == "raise" or len(records) == 1:
                raise PermissionError(errno.EACCES, f"{denied[0]} on {self.location}", root)
            if len(denied) == len(lines):
                return records[1:]
        return None  # entries vanished during the scan: SFTP tells exactly

    async def readlink(self, path: str) -> str:
        """SFTP ``readlink``."""
        return await self._sftp_op("readlink", path, lambda sftp, path: sftp.readlink(path))

    async def symlink(self, target: str, path: str) -> None:
        """SFTP ``symlink`` (asyncssh swaps the arguments for OpenSSH's reversed order)."""
        await self._sftp_op("symlink", path, lambda sftp, path: sftp.symlink(target, path))

    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        """SFTP ``mkdir`` (OpenSSH reports an existing path as a generic failure)."""
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        await self._sftp_op("mkdir", path, lambda sftp, path: sftp.mkdir(path, attrs))

    async def remove(self, path: str) -> None:
        """SFTP ``remove``."""
        await self._sftp_op("remove", path, lambda sftp, path: sftp.remove(path))

    async def rmdir(self, path: str) -> None:
        """SFTP ``rmdir``."""
        await self._sftp_op("rmdir", path, lambda sftp, path: sftp.rmdir(path))

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        """SFTP ``open``; reads and writes of more than one packet go out in parallel."""
        path = await self.expand(path)
        conn, sftp = await self._sftp_client()
        fh = await self._sftp_op_on(conn, "open", path, sftp.open(path, mode))
        return _SFTPFile(self, conn, fh, path)

    async def put(self, local_path: str, path: str) -> None:
        """Stream ``local_path`` up in chunks of parallel SFTP writes; then its mode."""
        mode = stat_module.S_IMODE(os.stat(local_path).st_mode)
        async with self._transfers:
            with open(local_path, "rb") as source:
                handle = cast(_SFTPFile, await self.open(path, "wb"))
                try:
                    offset = 0
                    while chunk := await asyncio.to_thread(source.read, self.transfer_chunk_bytes):
                        await handle.write(chunk, offset)
                        offset += len(chunk)
                    await handle.chmod(mode)
                finally:
                    await handle.close()

    async def get(self, path: str, local_path: str) -> None:
        """Stream ``path`` down in chunks of parallel SFTP reads; then its mode."""
        async with self._transfers:
            handle = await self.open(path, "rb")
            try:
                mode = (await handle.stat()).permissions
                with open(local_path, "wb") as target:
                    offset, size = 0, self.transfer_chunk_bytes
                    while True:
                        chunk = await handle.read(size, offset)
                        await asyncio.to_thread(target.write, chunk)
                        offset += len(chunk)
                        if len(chunk) < size:  # a short read of a regular file: its end
                            break
            finally:
                await handle.close()
        os.chmod(local_path, mode)


class _SFTPFile(FileHandle):
    """An open SFTP file of one connection; every operation within the command timeout."""

    def __init__(
        self,
        transport: SSHTransport,
        conn: asyncssh.SSHClientConnection,
        fh: asyncssh.SFTPClientFile,
        path: str,
    ) -> None:
        self._transport, self._conn, self._path = transport, conn, path
        self._fh: asyncssh.SFTPClientFile | None = fh

    def _open_fh(self) -> asyncssh.SFTPClientFile:
        if self._fh is None:
            raise ValueError("I/O operation on closed file")
        return self._fh

    async def read(self, size: int, offset: int) -> bytes:
        op = self._open_fh().read(size, offset)
        return cast(bytes, await self._transport._sftp_op_on(self._conn, "read", self._path, op))

    async def write(self, data: bytes, offset: int) -> None:
        op = self._open_fh().write(data, offset)
        await self._transport._sftp_op_on(self._conn, "write", self._path, op)

    async def stat(self) -> FileStat:
        op = self._open_fh().stat()
        return _file_stat(await self._transport._sftp_op_on(self._conn, "fstat", self._path, op))

    async def chmod(self, mode: int) -> None:
        op = self._open_fh().chmod(mode)
        await self._transport._sftp_op_on(self._conn, "fchmod", self._path, op)

    async def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None and not self._conn.is_closed():
            await self._transport._sftp_op_on(self._conn, "close", self._path, fh.close())


# find -printf formats: NUL-terminated records that start with the entry's type letter.
# %P is the path relative to the starting point (empty for the starting point, printed
# first); it comes last, so that spaces in names need no escaping.
#: Type, size, mtime, permission bits (octal), path: needs a stat of every entry.
FIND_DETAIL = "%y %s %T@ %m %P\\0"
#: Type and path: find takes types from the directory listing, no stat per entry.
FIND_TYPES = "%y %P\\0"
#: Type and size, no names: all du needs.
FIND_SIZES = "%y %s\\0"
DENIED = ": Permission denied"
#: What find (LC_ALL=C) says about the tree itself; anything else means find is not usable.
TREE_ERRORS = (DENIED, ": No such file or directory", ": Too many levels of symbolic links")
_FIND_TYPES = {
    "f": stat_module.S_IFREG,
    "d": stat_module.S_IFDIR,
    "l": stat_module.S_IFLNK,
    "p": stat_module.S_IFIFO,
    "s": stat_module.S_IFSOCK,
    "b": stat_module.S_IFBLK,
    "c": stat_module.S_IFCHR,
}
#: The FileStat of a type-only record, one per type letter (shared: they are immutable).
_TYPE_ONLY = {kind: FileStat(mode, 0, 0.0) for kind, mode in _FIND_TYPES.items()}
_SFTP_TYPES = {
    asyncssh.FILEXFER_TYPE_REGULAR: stat_module.S_IFREG,
    asyncssh.FILEXFER_TYPE_DIRECTORY: stat_module.S_IFDIR,
    asyncssh.FILEXFER_TYPE_SYMLINK: stat_module.S_IFLNK,
    asyncssh.FILEXFER_TYPE_SOCKET: stat_module.S_IFSOCK,
    asyncssh.FILEXFER_TYPE_CHAR_DEVICE: stat_module.S_IFCHR,
    asyncssh.FILEXFER_TYPE_BLOCK_DEVICE: stat_module.S_IFBLK,
    asyncssh.FILEXFER_TYPE_FIFO: stat_module.S_IFIFO,
}


def split_find_output(output: str) -> list[str]:
    """The NUL-terminated records of ``find -printf`` output, each ``<type letter> …``.

    Raises ValueError if the output is not that (a find that ignored the format).
    """
    records = output.split("\0")
    if records.pop() != "":
        raise ValueError(f"output does not end with a NUL: {output[-80:]!r}")
    for record in records:
        if len(record) < 2 or record[1] != " ":
            raise ValueError(f"not a record of the format: {record[:80]!r}")
    return records


def parse_find_entries(records: list[str], *, detail: bool) -> list[DirEntry]:
    """Entries from records of :data:`FIND_DETAIL` (``detail``) or :data:`FIND_TYPES`."""
    if not detail:
        other = FileStat(0, 0, 0.0)
        return [DirEntry(r[2:], _TYPE_ONLY.get(r[0], other)) for r in records]
    entries = []
    for record in records:
        kind, size, mtime, perms, rel = record.split(" ", 4)
        mode = _FIND_TYPES.get(kind, 0) | int(perms, 8)
        entries.append(DirEntry(rel, FileStat(mode, int(size), float(mtime))))
    return entries


def parse_find_usage(records: list[str]) -> TreeUsage:
    """Totals from records of :data:`FIND_SIZES`."""
    total = dirs = 0
    for record in records:
        if record[0] == "d":
            dirs += 1
        else:
            total += int(record[2:])
    return TreeUsage(total, len(records) - dirs, dirs)


def _file_stat(attrs: asyncssh.SFTPAttrs) -> FileStat:
    mode = attrs.permissions or 0
    if not stat_module.S_IFMT(mode):  # servers that send only permission bits
        mode |= _SFTP_TYPES.get(attrs.type, 0)
    mtime = attrs.mtime_ns / 1e9 if attrs.mtime_ns is not None else float(attrs.mtime or 0)
    return FileStat(mode, attrs.size or 0, mtime)


def _encodable(path: str) -> bool:
    """True if ``path`` can go into a command line (asyncssh sends commands as UTF-8)."""
    try:
        path.encode()
    except UnicodeEncodeError:  # a surrogate-escaped, non-UTF-8 name: SFTP handles those
        return False
    return True


def _returncode(exit_status: int | None, exit_signal: tuple[str, bool, str, str] | None) -> int:
    """The exit status, or 128 + signal number like a shell; 255 when neither is known."""
    if exit_status is not None and exit_status >= 0:  # asyncssh says -1 beside a signal
        return exit_status
    if exit_signal is not None:
        with contextlib.suppress(KeyError):
            return 128 + signal.Signals[f"SIG{exit_signal[0]}"].value
    return 255
