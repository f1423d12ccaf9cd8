"""Local transport: commands as subprocesses of this machine, files through ``os``.

Used by the ``local`` backend and by scheduler backends run on a login node (no
``cluster_host``). Knows nothing of schedulers or jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import stat as stat_module
from collections.abc import Iterator, Sequence
from typing import Literal

from .._wire import write_atomic
from ..errors import CommandTimeoutError, TransportError
from .base import CommandResult, DirEntry, FileHandle, FileStat, OnError, Transport

__all__ = ["LocalTransport"]


class LocalTransport(Transport):
    """Runs commands with :mod:`asyncio` subprocesses and touches files with :mod:`os`."""

    location = "local"

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        """Run ``argv`` in a new session, so a Ctrl-C in the user's terminal spares the jobs.

        With umask 077, as submissions over SSH have it (the engine unpacks and submits
        under umask 077 there): what the command and the jobs it starts create (logs, the
        ``__pycache__`` of shipped code) is private."""
        args = list(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                umask=0o077,
            )
        except FileNotFoundError as exc:
            raise TransportError(f"command not found: {args[0]!r}") from exc
        except OSError as exc:
            raise TransportError(f"cannot run {args[0]!r}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
        except asyncio.CancelledError:
            # as a cancelled command over SSH is killed: nobody waits for its output
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise CommandTimeoutError(
                f"command {args[0]!r} did not finish within {timeout_s} s"
            ) from None
        assert proc.returncode is not None
        return CommandResult(
            args, proc.returncode, out.decode(errors=errors), err.decode(errors="replace")
        )

    async def home(self) -> str:
        """The current user's home directory."""
        return os.path.expanduser("~")

    async def read_bytes(self, path: str) -> bytes:
        """Read a whole file."""
        with open(await self.expand(path), "rb") as fh:
            return fh.read()

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """Read the last ``max_bytes`` of a file."""
        with open(await self.expand(path), "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            return fh.read()

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write atomically through a temp file."""
        write_atomic(await self.expand(path), data, mode)

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """``os.makedirs``."""
        os.makedirs(await self.expand(path), mode=mode, exist_ok=exist_ok)

    async def exists(self, path: str) -> bool:
        """``os.path.exists``, except that errors other than "not found" propagate."""
        try:
            os.stat(await self.expand(path))
        except FileNotFoundError:
            return False
        return True

    async def remove_tree(self, path: str) -> None:
        """``shutil.rmtree``, ignoring a missing tree."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(await self.expand(path))

    # -- filesystem core -------------------------------------------------------------------

    async def stat(self, path: str) -> FileStat:
        """``os.stat``; a dangling symlink or a loop is "not found", as over SFTP."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            return _file_stat(os.stat(path))

    async def lstat(self, path: str) -> FileStat:
        """``os.lstat``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            return _file_stat(os.lstat(path))

    async def scandir(self, path: str) -> list[DirEntry]:
        """``os.scandir`` with an ``lstat`` of every entry."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            return _scandir(path, "")

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        """Walk the tree with ``os.scandir`` in a worker thread (the loop keeps serving);
        ``detail=False`` takes types from the listing, without an ``lstat`` per entry."""
        root = await self.expand(path)
        return await asyncio.to_thread(_scan_tree, root, on_error, detail)

    async def readlink(self, path: str) -> str:
        """``os.readlink``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            return os.readlink(path)

    async def symlink(self, target: str, path: str) -> None:
        """``os.symlink``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            os.symlink(target, path)

    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        """``os.mkdir``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            os.mkdir(path, mode)

    async def remove(self, path: str) -> None:
        """``os.remove``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            os.remove(path)

    async def rmdir(self, path: str) -> None:
        """``os.rmdir``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            os.rmdir(path)

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        """``os.open``; reads and writes are ``os.pread``/``os.pwrite``."""
        path = await self.expand(path)
        with _as_sftp_would(path):
            return _LocalFile(os.open(path, _OPEN_FLAGS[mode], 0o666))

    async def put(self, local_path: str, path: str) -> None:
        """``shutil.copyfile`` and ``shutil.copymode``, in a worker thread."""
        await asyncio.to_thread(_copy, local_path, await self.expand(path))

    async def get(self, path: str, local_path: str) -> None:
        """``shutil.copyfile`` and ``shutil.copymode``, in a worker thread."""
        await asyncio.to_thread(_copy, await self.expand(path), local_path)


_OPEN_FLAGS = {
    "rb": os.O_RDONLY,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


class _LocalFile(FileHandle):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("I/O operation on closed file")
        return self._fd

    async def read(self, size: int, offset: int) -> bytes:
        return os.pread(self._open_fd(), size, offset)

    async def write(self, data: bytes, offset: int) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        while view:  # pwrite may write less than asked (a signal, a full pipe)
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    async def stat(self) -> FileStat:
        return _file_stat(os.fstat(self._open_fd()))

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _file_stat(st: os.stat_result) -> FileStat:
    return FileStat(st.st_mode, st.st_size, st.st_mtime)


@contextlib.contextmanager
def _as_sftp_would(path: str) -> Iterator[None]:
    """Report what OpenSSH's SFTP server reports as "no such file" the same way here: a
    symlink loop (ELOOP) and a path through a file (ENOTDIR). One suite, both transports."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileNotFoundError(errno.ENOENT, exc.strerror, path) from exc
        raise


#: The FileStat of an entry whose type alone is asked for (see scan_tree's ``detail``).
_TYPE_ONLY = {
    kind: FileStat(kind, 0, 0.0)
    for kind in (stat_module.S_IFDIR, stat_module.S_IFLNK, stat_module.S_IFREG)
}


def _scandir(directory: str, rel: str, detail: bool = True) -> list[DirEntry]:
    entries = []
    prefix = f"{rel}/" if rel else ""
    with os.scandir(directory) as it:
        for entry in it:
            try:
                if detail:
                    st = _file_stat(entry.stat(follow_symlinks=False))
                elif entry.is_symlink():
                    st = _TYPE_ONLY[stat_module.S_IFLNK]
                elif entry.is_dir(follow_symlinks=False):
                    st = _TYPE_ONLY[stat_module.S_IFDIR]
                elif entry.is_file(follow_symlinks=False):
                    st = _TYPE_ONLY[stat_module.S_IFREG]
                else:  # a FIFO, socket or device: its exact type needs the lstat
                    st = _file_stat(entry.stat(follow_symlinks=False))
            except FileNotFoundError:  # removed since the listing
                continue
            entries.append(DirEntry(prefix + entry.name, st))
    return entries


def _scan_tree(root: str, on_error: OnError, detail: bool) -> list[DirEntry]:
    if not os.path.isdir(root):  # follows a symlink root, like find -H
        with _as_sftp_would(root):
            os.stat(root)  # FileNotFoundError (or ELOOP) if missing; else it is no directory
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", root)
    found: list[DirEntry] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel) if rel else root
        try:
            with _as_sftp_would(directory):
                entries = _scandir(directory, rel, detail)
        except PermissionError:
            if on_error == "raise" or not rel:
                raise
            continue
        except FileNotFoundError:
            if not rel:
                raise
            continue  # removed (or replaced by a file) while we were scanning
        found.extend(entries)
        stack.extend(e.path for e in entries if e.stat.is_dir)
    return found


def _copy(source: str, destination: str) -> None:
    shutil.copyfile(source, destination)
    shutil.copymode(source, destination)
