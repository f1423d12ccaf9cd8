"""The SSH transport's file operations: SFTP over the session's one client.

:class:`SFTPFiles` holds every operation on files and directories that SFTP answers (the
transport delegates to it), each within the command timeout and its errors translated by
the session; :class:`SFTPFile` is an open file of it. Paths given here are absolute
(the transport expands them). Knows nothing of commands, schedulers or jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import secrets
import stat as stat_module
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, cast

import asyncssh

from ._ssh_session import SSHSession
from .base import DirEntry, FileHandle, FileStat

__all__ = ["SFTPFile", "SFTPFiles", "file_stat"]

T = TypeVar("T")

_SFTP_TYPES = {
    asyncssh.FILEXFER_TYPE_REGULAR: stat_module.S_IFREG,
    asyncssh.FILEXFER_TYPE_DIRECTORY: stat_module.S_IFDIR,
    asyncssh.FILEXFER_TYPE_SYMLINK: stat_module.S_IFLNK,
    asyncssh.FILEXFER_TYPE_SOCKET: stat_module.S_IFSOCK,
    asyncssh.FILEXFER_TYPE_CHAR_DEVICE: stat_module.S_IFCHR,
    asyncssh.FILEXFER_TYPE_BLOCK_DEVICE: stat_module.S_IFBLK,
    asyncssh.FILEXFER_TYPE_FIFO: stat_module.S_IFIFO,
}


class SFTPFiles:
    """File operations of one :class:`SSHSession`, at most ``max_ops`` at once (see
    :class:`clustrix.transports.ssh.SSHTransport` for the limits)."""

    def __init__(
        self, session: SSHSession, *, max_ops: int, max_transfers: int, chunk_bytes: int
    ) -> None:
        self._session = session
        self._ops = asyncio.Semaphore(max_ops)
        self._transfers = asyncio.Semaphore(max_transfers)
        self._chunk_bytes = chunk_bytes

    async def _op(
        self, what: str, path: str, op: Callable[[asyncssh.SFTPClient, str], Awaitable[T]]
    ) -> T:
        """``op(sftp, path)`` within the command timeout, its errors translated."""
        conn, sftp = await self._session.sftp_client()
        return await self.op_on(conn, what, path, op(sftp, path))

    async def op_on(
        self, conn: asyncssh.SSHClientConnection, what: str, path: str, op: Awaitable[T]
    ) -> T:
        """Like :meth:`_op`, for an operation on an open file of connection ``conn``."""
        with self._session.translated(conn, f"{what} {path}", path):
            async with self._ops:
                return await asyncio.wait_for(op, self._session.command_timeout_s)

    async def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""

        async def op(sftp: asyncssh.SFTPClient, path: str) -> bytes:
            async with sftp.open(path, "rb") as fh:
                return cast(bytes, await fh.read())

        return await self._op("read", path, op)

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a file."""

        async def op(sftp: asyncssh.SFTPClient, path: str) -> bytes:
            async with sftp.open(path, "rb") as fh:
                size = (await fh.stat()).size or 0
                return cast(bytes, await fh.read(-1, max(0, size - max_bytes)))

        return await self._op("read tail of", path, op)

    async def write_bytes(self, path: str, data: bytes, *, mode: int) -> None:
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

        await self._op("write", path, op)

    async def makedirs(self, path: str, *, mode: int, exist_ok: bool) -> None:
        """Create a directory and its missing parents, each with ``mode`` (less the umask)."""
        # SFTPv3 (OpenSSH) reports "exists" as a generic failure: ask first.
        if not exist_ok and await self.exists(path):
            raise FileExistsError(errno.EEXIST, "File exists", path)
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        await self._op(
            "makedirs", path, lambda sftp, path: sftp.makedirs(path, attrs, exist_ok=True)
        )

    async def exists(self, path: str) -> bool:
        """True if ``path`` exists (following symlinks); other errors propagate."""
        try:
            await self._op("stat", path, lambda sftp, path: sftp.stat(path))
        except FileNotFoundError:
            return False
        return True

    async def stat(self, path: str) -> FileStat:
        """SFTP ``stat`` (follows symlinks; a dangling one or a loop is "not found")."""
        return file_stat(await self._op("stat", path, lambda sftp, path: sftp.stat(path)))

    async def lstat(self, path: str) -> FileStat:
        """SFTP ``lstat``."""
        return file_stat(await self._op("lstat", path, lambda sftp, path: sftp.lstat(path)))

    async def scandir(self, path: str) -> list[DirEntry]:
        """SFTP ``readdir``: about 100 entries per round trip with OpenSSH, attributes included
        (as ``lstat`` gives them)."""
        names = await self._op("readdir", path, lambda sftp, path: sftp.readdir(path))
        return [
            DirEntry(cast(str, n.filename), file_stat(n.attrs))
            for n in names
            if n.filename not in (".", "..")
        ]

    async def readlink(self, path: str) -> str:
        """SFTP ``readlink``."""
        return await self._op("readlink", path, lambda sftp, path: sftp.readlink(path))

    async def symlink(self, target: str, path: str) -> None:
        """SFTP ``symlink`` (asyncssh swaps the arguments for OpenSSH's reversed order)."""
        await self._op("symlink", path, lambda sftp, path: sftp.symlink(target, path))

    async def mkdir(self, path: str, *, mode: int) -> None:
        """SFTP ``mkdir`` (OpenSSH reports an existing path as a generic failure)."""
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        await self._op("mkdir", path, lambda sftp, path: sftp.mkdir(path, attrs))

    async def remove(self, path: str) -> None:
        """SFTP ``remove``."""
        await self._op("remove", path, lambda sftp, path: sftp.remove(path))

    async def rmdir(self, path: str) -> None:
        """SFTP ``rmdir``."""
        await self._op("rmdir", path, lambda sftp, path: sftp.rmdir(path))

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> SFTPFile:
        """SFTP ``open``; reads and writes of more than one packet go out in parallel."""
        conn, sftp = await self._session.sftp_client()
        fh = await self.op_on(conn, "open", path, sftp.open(path, mode))
        return SFTPFile(self, conn, fh, path)

    async def put(self, local_path: str, path: str) -> None:
        """Stream ``local_path`` up in chunks of parallel SFTP writes; then its mode."""
        mode = stat_module.S_IMODE(os.stat(local_path).st_mode)
        async with self._transfers:
            with open(local_path, "rb") as source:
                handle = await self.open(path, "wb")
                try:
                    offset = 0
                    while chunk := await asyncio.to_thread(source.read, self._chunk_bytes):
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
                    offset, size = 0, self._chunk_bytes
                    while True:
                        chunk = await handle.read(size, offset)
                        await asyncio.to_thread(target.write, chunk)
                        offset += len(chunk)
                        if len(chunk) < size:  # a short read of a regular file: its end
                            break
            finally:
                await handle.close()
        os.chmod(local_path, mode)


class SFTPFile(FileHandle):
    """An open SFTP file of one connection; every operation within the command timeout."""

    def __init__(
        self,
        files: SFTPFiles,
        conn: asyncssh.SSHClientConnection,
        fh: asyncssh.SFTPClientFile,
        path: str,
    ) -> None:
        self._files, self._conn, self._path = files, conn, path
        self._fh: asyncssh.SFTPClientFile | None = fh

    def _open_fh(self) -> asyncssh.SFTPClientFile:
        if self._fh is None:
            raise ValueError("I/O operation on closed file")
        return self._fh

    async def read(self, size: int, offset: int) -> bytes:
        op = self._open_fh().read(size, offset)
        return cast(bytes, await self._files.op_on(self._conn, "read", self._path, op))

    async def write(self, data: bytes, offset: int) -> None:
        op = self._open_fh().write(data, offset)
        await self._files.op_on(self._conn, "write", self._path, op)

    async def stat(self) -> FileStat:
        op = self._open_fh().stat()
        return file_stat(await self._files.op_on(self._conn, "fstat", self._path, op))

    async def chmod(self, mode: int) -> None:
        op = self._open_fh().chmod(mode)
        await self._files.op_on(self._conn, "fchmod", self._path, op)

    async def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None and not self._conn.is_closed():
            await self._files.op_on(self._conn, "close", self._path, fh.close())


def file_stat(attrs: asyncssh.SFTPAttrs) -> FileStat:
    """A :class:`FileStat` from SFTP attributes."""
    mode = attrs.permissions or 0
    if not stat_module.S_IFMT(mode):  # servers that send only permission bits
        mode |= _SFTP_TYPES.get(attrs.type, 0)
    mtime = attrs.mtime_ns / 1e9 if attrs.mtime_ns is not None else float(attrs.mtime or 0)
    return FileStat(mode, attrs.size or 0, mtime)
