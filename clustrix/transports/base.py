"""The transport interface: run commands and move files on the cluster.

A transport knows nothing of schedulers, jobs or pickles. Its methods read like the standard
library (``subprocess``/``os``/``pathlib``) and asyncssh's SFTP client. Paths are POSIX strings;
relative ones resolve against the login directory (home) of the account the transport acts
as. Errors are translated once, here at the boundary: a missing path raises the builtin
:class:`FileNotFoundError`, a refused one :class:`PermissionError`, and everything else about
reaching the cluster a :class:`clustrix.errors.TransportError` (its subclass
:class:`clustrix.errors.ConnectionLostError` when the connection dropped or could not be made,
which may pass).

The filesystem core (:meth:`Transport.stat`, :meth:`Transport.lstat`, :meth:`Transport.scandir`,
:meth:`Transport.scan_tree`, file handles from :meth:`Transport.open`, single-file
:meth:`Transport.put`/:meth:`Transport.get`) is what :mod:`clustrix.filesystem` builds
``ls``/``find``/``glob``/``du``/… on, the way fsspec backends implement ``ls``/``info`` and
inherit the rest. Names are ``str`` decoded as :func:`os.fsdecode` does (UTF-8 with
``surrogateescape``), so a name that is not valid UTF-8 still round-trips.
"""

from __future__ import annotations

import asyncio
import errno
import posixpath
import stat as stat_module
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

__all__ = [
    "CommandResult",
    "DirEntry",
    "FileHandle",
    "FileStat",
    "OnError",
    "Transport",
    "TreeUsage",
    "gather_all",
]

T = TypeVar("T")

#: What a tree scan does about a directory it may not read: raise ``PermissionError``, or
#: leave the directory's contents out.
OnError = Literal["raise", "omit"]


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``aws`` concurrently, in order; on the first failure cancel the rest and raise.

    ``asyncio.gather`` would leave the others running (a ``TaskGroup``, on Python 3.10).
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind, like :class:`subprocess.CompletedProcess`."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0


class FileStat(NamedTuple):
    """What ``os.stat``/``os.lstat`` (or an SFTP ``stat``/``lstat``) says about one path.

    A named tuple, not a dataclass: a tree scan makes one per entry, and tens of thousands of
    frozen dataclasses cost more to build than the scan costs the server.
    """

    #: ``st_mode``: file type bits and permission bits.
    mode: int
    #: Size in bytes (of the link itself, for an ``lstat`` of a symlink).
    size: int
    #: Modification time, seconds since the epoch (whole seconds over SFTP protocol 3).
    mtime: float

    @property
    def is_dir(self) -> bool:
        return stat_module.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat_module.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat_module.S_ISLNK(self.mode)

    @property
    def permissions(self) -> int:
        """The permission bits (``stat.S_IMODE``), e.g. ``0o644``."""
        return stat_module.S_IMODE(self.mode)


class DirEntry(NamedTuple):
    """One entry of a directory listing or tree scan, with its ``lstat`` attributes."""

    #: Relative to the directory listed or scanned: a bare name from :meth:`Transport.scandir`,
    #: ``sub/dir/name`` from :meth:`Transport.scan_tree`.
    path: str
    #: Attributes of the entry itself (symlinks are not followed).
    stat: FileStat

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


class TreeUsage(NamedTuple):
    """Totals of a tree (see :meth:`Transport.disk_usage`)."""

    #: Apparent size of every entry that is not a directory (symlinks: their own size).
    total_bytes: int
    #: Entries that are not directories.
    file_count: int
    #: Directories below the root (not the root).
    dir_count: int

    @classmethod
    def of(cls, entries: Iterable[DirEntry]) -> TreeUsage:
        total = files = dirs = 0
        for entry in entries:
            if entry.stat.is_dir:
                dirs += 1
            else:
                files += 1
                total += entry.stat.size
        return cls(total, files, dirs)


class FileHandle(ABC):
    """An open file, read and written at explicit offsets (``os.pread``/``os.pwrite``, SFTP).

    Positional I/O keeps the file position on the caller's side: a blocking file object
    (:mod:`clustrix.filesystem`) wraps a handle and costs one round trip per buffer, not
    per ``seek``.
    """

    @abstractmethod
    async def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (``b""`` at end of file)."""

    @abstractmethod
    async def write(self, data: bytes, offset: int) -> None:
        """All of ``data`` at ``offset`` (at the end, for a handle opened to append)."""

    @abstractmethod
    async def stat(self) -> FileStat:
        """The open file's attributes (``os.fstat``): its current size, its type."""

    @abstractmethod
    async def close(self) -> None:
        """Release the handle; idempotent."""


class Transport(ABC):
    """Commands and files on one machine: this one (local) or a cluster's login node (SSH)."""

    #: Human-readable name of where commands run, e.g. ``"local"`` or ``"user@host:22"``.
    location: str = "local"
    #: True where every operation is a network round trip: then one command carrying its
    #: files on stdin beats several file operations (the engine submits that way).
    round_trips_are_costly: bool = False

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection (no-op for local). Safe to call again after a drop."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; later calls may reconnect."""

    @abstractmethod
    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        """Run ``argv`` (never through a shell of ours: quote with ``shlex.join`` if needed).

        A non-zero exit status is not an error here: callers read ``returncode``. Exceeding
        ``timeout_s`` raises :class:`clustrix.errors.CommandTimeoutError`. Output is decoded
        as UTF-8 with ``errors`` (``"surrogateescape"`` keeps undecodable file names exact).
        """

    @abstractmethod
    async def home(self) -> str:
        """Absolute path of the home directory, against which relative paths resolve."""

    async def expand(self, path: str) -> str:
        """``path`` made absolute: ``~`` and relative paths resolve against :meth:`home`."""
        if path == "~" or path.startswith("~/"):
            path = (await self.home()) + path[1:]
        if not posixpath.isabs(path):
            path = posixpath.join(await self.home(), path)
        return posixpath.normpath(path)

    @abstractmethod
    async def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""

    @abstractmethod
    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a file (all of it if smaller)."""

    @abstractmethod
    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write a file atomically (temp name, then rename), created with ``mode``."""

    @abstractmethod
    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """Create a directory and its missing parents."""

    @abstractmethod
    async def exists(self, path: str) -> bool:
        """True if ``path`` exists; only "not found" is False, other errors propagate."""

    @abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Delete a directory tree (a missing one is not an error)."""

    # -- filesystem core (see the module docstring) -----------------------------------------

    @abstractmethod
    async def stat(self, path: str) -> FileStat:
        """Attributes of ``path``, following symlinks (a dangling one is "not found")."""

    @abstractmethod
    async def lstat(self, path: str) -> FileStat:
        """Attributes of ``path`` itself: a symlink is not followed."""

    @abstractmethod
    async def scandir(self, path: str) -> list[DirEntry]:
        """The entries of directory ``path`` (without ``.`` and ``..``), in no order.

        A missing ``path`` raises :class:`FileNotFoundError`; one that is not a directory may
        raise :class:`NotADirectoryError` or, over SFTP, :class:`FileNotFoundError`.
        """

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        """Every entry below directory ``path``, its ``path`` relative to ``path``, in no order.

        ``detail=False`` asks for the entries' types only (their sizes, times and permissions
        may then be 0), which spares a server a ``stat`` of every entry where directory
        listings carry types.

        ``path`` itself is followed if it is a symlink; symlinks below it are listed, never
        followed (no loops, like ``find -H``). A root that is not a directory raises
        :class:`NotADirectoryError`, a missing one :class:`FileNotFoundError`. A directory
        below it that cannot be read raises :class:`PermissionError`, or is left out with
        ``on_error="omit"``; one that vanishes during the scan is left out.

        This default lists one level of the tree at a time, every directory of a level
        concurrently: round trips grow with the depth of the tree, not with its size.
        """
        del detail  # a listing carries every attribute anyway
        root = await self.expand(path)
        found: list[DirEntry] = []
        level = [""]
        while level:
            listings = await gather_all(self._scan_level(root, rel, on_error) for rel in level)
            level = [e.path for entries in listings for e in entries if e.stat.is_dir]
            found.extend(e for entries in listings for e in entries)
        return found

    async def disk_usage(self, path: str, *, on_error: OnError = "raise") -> TreeUsage:
        """Totals of the tree below directory ``path``: what :meth:`scan_tree` would list,
        summed (a transport may sum without listing names). Errors as for ``scan_tree``."""
        return TreeUsage.of(await self.scan_tree(path, on_error=on_error))

    async def _scan_level(self, root: str, rel: str, on_error: OnError) -> list[DirEntry]:
        try:
            entries = await self.scandir(posixpath.join(root, rel) if rel else root)
        except PermissionError:
            if on_error == "raise" or not rel:
                raise
            return []
        except (FileNotFoundError, NotADirectoryError):
            if not rel:
                # SFTP says "no such file" for a readdir of a file, too: ask which it is.
                if (await self.stat(root)).is_dir:
                    raise
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", root) from None
            return []  # removed (or replaced) while we were scanning
        if not rel:
            return entries
        return [DirEntry(f"{rel}/{e.path}", e.stat) for e in entries]

    @abstractmethod
    async def readlink(self, path: str) -> str:
        """The target of symlink ``path``, as stored."""

    @abstractmethod
    async def symlink(self, target: str, path: str) -> None:
        """Create symlink ``path`` pointing to ``target`` (stored as given, not resolved)."""

    @abstractmethod
    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        """Create one directory (its parent must exist) with ``mode`` less the umask; an
        existing ``path`` may raise :class:`FileExistsError` or, over SFTP,
        :class:`clustrix.errors.TransportError`."""

    @abstractmethod
    async def remove(self, path: str) -> None:
        """Delete a file or symlink (never a directory)."""

    @abstractmethod
    async def rmdir(self, path: str) -> None:
        """Delete an empty directory."""

    @abstractmethod
    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        """Open a file for positional I/O; new files get ``0o666`` less the umask."""

    @abstractmethod
    async def put(self, local_path: str, path: str) -> None:
        """Copy local file ``local_path`` to ``path``, with its permission bits (like
        :func:`shutil.copy`); no timeout applies, however big the file."""

    @abstractmethod
    async def get(self, path: str, local_path: str) -> None:
        """Copy file ``path`` to local ``local_path``, with its permission bits."""
