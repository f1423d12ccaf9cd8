"""Files on the cluster: ``ls``, ``find``, ``glob``, ``du``, ``open``, ``put``/``get``, ….

The same methods serve three front doors, over whichever :class:`~clustrix.transports.base.
Transport` the executor already has (``os`` locally, one asyncssh connection remotely):

- :class:`FileSystemMixin`: methods of :class:`clustrix.ClusterExecutor`
  (``ex.ls("results")``), sharing the executor's connection and event-loop thread;
- :class:`ClusterFileSystem`: the same methods without an executor (one connection, no jobs);
- the module-level ``cluster_ls(path, config)``, … of the original design, each a short-lived
  :class:`ClusterFileSystem`.

``ex.fs`` is an fsspec ``AbstractFileSystem`` over the same connection when fsspec is installed.

Conventions (fsspec's where they overlap): remote paths are POSIX strings on every client
OS (a :class:`pathlib.PurePath` is sent as ``as_posix()``; a ``str`` is sent as it is, so a
Windows client never sends a backslash it did not write); relative paths resolve against
the executor's ``remote_work_dir``, ``~`` against the remote home; results are sorted;
a missing path raises the builtin :class:`FileNotFoundError`, a refused one
:class:`PermissionError`; ``exists``/``isdir``/``isfile`` turn only "not found" into False.

How the work is spread over round trips: ``ls`` is one SFTP ``readdir`` (about 100 entries
per round trip with OpenSSH) plus one ``stat`` per symlink, concurrently; ``find``/``du``/
``count_files`` and ``**`` in ``glob`` scan the tree with
:meth:`~clustrix.transports.base.Transport.scan_tree`: ONE ``find -printf`` command over
SSH (argv-quoted, no path in any shell text), or, where GNU find is missing, SFTP ``readdir``
one tree level at a time with every directory of the level in flight at once. Never a round
trip per file.

This module knows the transport interface and :class:`~clustrix._loop.LoopThread`; it knows
nothing of schedulers, jobs or the concrete transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import fnmatch
import io
import logging
import os
import posixpath
import stat as stat_module
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._loop import LoopThread
from ..config import ClusterConfig
from ..errors import TransportError
from ..transports.base import DirEntry, FileHandle, FileStat, OnError, Transport, gather_all

if TYPE_CHECKING:
    from .._engine import Engine

__all__ = [
    "AsyncFileSystem",
    "ClusterFileSystem",
    "DiskUsage",
    "FileInfo",
    "FileSystemMixin",
    "cluster_count_files",
    "cluster_du",
    "cluster_exists",
    "cluster_find",
    "cluster_glob",
    "cluster_isdir",
    "cluster_isfile",
    "cluster_ls",
    "cluster_stat",
]

logger = logging.getLogger("clustrix.filesystem")
T = TypeVar("T")

#: A remote path: a POSIX string, or a PurePath (sent as ``as_posix()``).
RemotePath = str | PurePath
#: A path on this machine (for ``put``/``get``).
LocalPath = str | os.PathLike[str]
#: Buffer of the file objects from ``open``: one round trip per this many bytes.
DEFAULT_BLOCK_SIZE = 1 << 20
#: ``readall`` asks for this much per round trip (each within the command timeout).
_READALL_CHUNK = 16 << 20


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """What :meth:`stat` and ``ls(detail=True)`` say about one path.

    A symlink is followed for everything but ``is_symlink``; one whose target cannot be
    examined (dangling, a loop, or out of reach) is described by the link's own attributes,
    with ``is_dir`` and ``is_file`` both False.
    """

    #: The last component of ``path``.
    name: str
    #: Absolute POSIX path on the cluster.
    path: str
    #: Size in bytes.
    size: int
    #: Modification time, seconds since the epoch (whole seconds over SFTP protocol 3).
    modified: float
    is_dir: bool
    #: A regular file (or a symlink to one).
    is_file: bool
    is_symlink: bool
    #: Permission bits, e.g. ``0o644`` (``oct(info.permissions)``; ``info.filemode`` for
    #: ``-rw-r--r--``).
    permissions: int

    @property
    def modified_datetime(self) -> _dt.datetime:
        """``modified`` as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.modified, _dt.timezone.utc)

    @property
    def filemode(self) -> str:
        """``ls -l`` style: ``drwxr-xr-x``, ``-rw-r--r--``, ``lrwxrwxrwx`` (dangling link)."""
        kind = (
            stat_module.S_IFDIR
            if self.is_dir
            else stat_module.S_IFREG
            if self.is_file
            else stat_module.S_IFLNK
            if self.is_symlink
            else 0
        )
        return stat_module.filemode(kind | self.permissions)

    @classmethod
    def of(cls, path: str, lstat: FileStat, target: FileStat | None) -> FileInfo:
        """From an ``lstat`` and, for a symlink, the ``stat`` of its target (None: none)."""
        st = target if target is not None else lstat
        resolved = target is not None or not lstat.is_symlink
        return cls(
            name=posixpath.basename(path) or path,
            path=path,
            size=st.size,
            modified=st.mtime,
            is_dir=resolved and st.is_dir,
            is_file=resolved and st.is_file,
            is_symlink=lstat.is_symlink,
            permissions=st.permissions,
        )


@dataclass(frozen=True)
class DiskUsage:
    """What :meth:`du` found below a path.

    ``total_bytes`` is the apparent size (``du -b``, not blocks) of every non-directory entry:
    regular files, and symlinks as the length of their target (they are never followed).
    ``file_count`` counts those entries, ``dir_count`` the directories below the path (not
    the path itself). Hard links are counted once per name.
    """

    total_bytes: int
    file_count: int
    dir_count: int

    @property
    def total_mb(self) -> float:
        """``total_bytes`` in MiB (2**20 bytes)."""
        return self.total_bytes / 2**20

    @property
    def total_gb(self) -> float:
        """``total_bytes`` in GiB (2**30 bytes)."""
        return self.total_bytes / 2**30


# -- the async core ------------------------------------------------------------------------


def _posix(path: RemotePath) -> str:
    """A remote path as a POSIX string; never rewrites the characters of a ``str``."""
    if isinstance(path, PurePath):
        return path.as_posix()
    if not isinstance(path, str):
        raise TypeError(f"a remote path must be a str or PurePath, not {type(path).__name__}")
    return path


def _has_magic(component: str) -> bool:
    return any(c in component for c in "*?[")


def _matcher(pattern: str) -> Callable[[DirEntry], bool]:
    """``find -name`` for a pattern without ``/``, ``find -path`` (relative) for one with."""
    if pattern == "*":
        return lambda entry: True
    if "/" in pattern:
        return lambda entry: fnmatch.fnmatchcase(entry.path, pattern)
    return lambda entry: fnmatch.fnmatchcase(entry.name, pattern)


def _glob_match(parts: list[str], names: list[str]) -> bool:
    """True if the path components ``names`` match the glob components ``parts``: each by
    :func:`fnmatch.fnmatchcase`; ``**`` matches any number of directories, or, as the last
    component, every path below."""
    if not parts:
        return not names
    head, rest = parts[0], parts[1:]
    if head == "**":
        if not rest:
            return bool(names)
        return any(_glob_match(rest, names[i:]) for i in range(len(names)))
    return bool(names) and fnmatch.fnmatchcase(names[0], head) and _glob_match(rest, names[1:])


_BINARY_MODES: dict[str, Literal["rb", "wb", "ab", "xb"]] = {
    "r": "rb",
    "w": "wb",
    "a": "ab",
    "x": "xb",
}


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class AsyncFileSystem:
    """The filesystem methods as coroutines, over one transport.

    Everything the blocking front doors do happens here, on the transport's event loop.
    Relative paths resolve against ``work_dir`` (absolute), ``~`` against the home directory.
    """

    def __init__(self, transport: Transport, work_dir: str) -> None:
        self.transport = transport
        self.work_dir = work_dir

    async def abspath(self, path: RemotePath) -> str:
        """``path`` made absolute and normalized (``..`` is resolved lexically)."""
        p = _posix(path) or "."
        if not (p.startswith("/") or p == "~" or p.startswith("~/")):
            p = posixpath.join(self.work_dir, p)
        return await self.transport.expand(p)

    # -- queries ---------------------------------------------------------------------------

    async def listdir(self, path: RemotePath) -> tuple[str, list[DirEntry]]:
        """The absolute path and the entries (``lstat`` attributes) of a directory."""
        root = await self.abspath(path)
        try:
            return root, await self.transport.scandir(root)
        except (FileNotFoundError, NotADirectoryError):
            # SFTP answers "no such file" for a readdir of a file too: ask which it is.
            if (await self.transport.stat(root)).is_dir:
                raise
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", root) from None

    async def ls(self, path: RemotePath = ".", detail: bool = False) -> list[Any]:
        root, entries = await self.listdir(path)
        if not detail:
            return sorted(e.name for e in entries)
        infos = await gather_all(self._info(posixpath.join(root, e.name), e.stat) for e in entries)
        return sorted(infos, key=lambda info: info.name)

    async def _info(self, path: str, lstat: FileStat) -> FileInfo:
        target = None
        if lstat.is_symlink:
            # dangling, a loop, or out of reach: then describe the link itself
            with contextlib.suppress(FileNotFoundError, PermissionError):
                target = await self.transport.stat(path)
        return FileInfo.of(path, lstat, target)

    async def _lstat(self, path: str) -> FileStat:
        try:
            return await self.transport.lstat(path)
        except NotADirectoryError as exc:  # a file on the way: missing, as over SFTP
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from exc

    async def stat(self, path: RemotePath) -> FileInfo:
        p = await self.abspath(path)
        return await self._info(p, await self._lstat(p))

    async def _stat_or_none(self, path: str) -> FileStat | None:
        try:
            return await self.transport.stat(path)
        except FileNotFoundError:
            return None

    async def exists(self, path: RemotePath) -> bool:
        return await self._stat_or_none(await self.abspath(path)) is not None

    async def isdir(self, path: RemotePath) -> bool:
        st = await self._stat_or_none(await self.abspath(path))
        return st is not None and st.is_dir

    async def isfile(self, path: RemotePath) -> bool:
        st = await self._stat_or_none(await self.abspath(path))
        return st is not None and st.is_file

    async def find(
        self,
        pattern: str = "*",
        path: RemotePath = ".",
        *,
        withdirs: bool = False,
        on_error: OnError = "raise",
    ) -> list[str]:
        root = await self.abspath(path)
        entries = await self.transport.scan_tree(root, on_error=on_error, detail=False)
        match = _matcher(pattern)
        return sorted(e.path for e in entries if (withdirs or not e.stat.is_dir) and match(e))

    async def count_files(
        self, path: RemotePath = ".", pattern: str = "*", *, on_error: OnError = "raise"
    ) -> int:
        return len(await self.find(pattern, path, on_error=on_error))

    async def du(self, path: RemotePath = ".", *, on_error: OnError = "raise") -> DiskUsage:
        root = await self.abspath(path)
        try:
            usage = await self.transport.disk_usage(root, on_error=on_error)
        except NotADirectoryError:
            return DiskUsage((await self.transport.stat(root)).size, 1, 0)
        return DiskUsage(*usage)

    async def glob(
        self, pattern: str, path: RemotePath = ".", *, on_error: OnError = "raise"
    ) -> list[str]:
        pattern = _posix(pattern)
        absolute = pattern.startswith("/")
        root = "/" if absolute else await self.abspath(path)
        parts = [c for c in pattern.split("/") if c not in ("", ".")]
        matches: set[str] = {""}  # relative to root; every one a directory but at the end
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "**":  # the rest of the pattern, matched over ONE scan per match
                step = self._glob_tree(root, parts[i:], on_error)
            elif _has_magic(part):
                step = self._glob_pattern(root, part, last, on_error)
            elif last:
                step = self._glob_exists(root, part, on_error)
            else:
                matches = {_join(m, part) for m in matches}
                continue
            found = await gather_all(step(m) for m in sorted(matches))
            matches = {p for paths in found for p in paths}
            if part == "**" or not matches:
                break
        matches.discard("")
        return sorted(f"/{m}" for m in matches) if absolute else sorted(matches)

    def _glob_tree(
        self, root: str, parts: list[str], on_error: OnError
    ) -> Callable[[str], Coroutine[Any, Any, list[str]]]:
        """``**`` and what follows it: every path below the directory that matches, from one
        tree scan; symlinked directories are not entered (a loop ends)."""

        async def step(rel: str) -> list[str]:
            try:
                entries = await self.transport.scan_tree(
                    posixpath.join(root, rel), on_error=on_error, detail=False
                )
            except (FileNotFoundError, NotADirectoryError):
                return []
            return [_join(rel, e.path) for e in entries if _glob_match(parts, e.path.split("/"))]

        return step

    def _glob_pattern(
        self, root: str, part: str, last: bool, on_error: OnError
    ) -> Callable[[str], Coroutine[Any, Any, list[str]]]:
        """A component with wildcards: list the directory, keep the names that match (and,
        but for the last component, that are directories or symlinks to directories)."""

        async def step(rel: str) -> list[str]:
            directory = posixpath.join(root, rel)
            try:
                entries = await self.transport.scandir(directory)
            except (FileNotFoundError, NotADirectoryError):
                return []
            except PermissionError:
                if on_error == "raise":
                    raise
                return []
            hits = [e for e in entries if fnmatch.fnmatchcase(e.name, part)]
            if not last:
                resolved = await gather_all(self._dir_like(directory, e) for e in hits)
                hits = [e for e, is_dir in zip(hits, resolved) if is_dir]  # noqa: B905
            return [_join(rel, e.name) for e in hits]

        return step

    async def _dir_like(self, directory: str, entry: DirEntry) -> bool:
        if not entry.stat.is_symlink:
            return entry.stat.is_dir
        st = await self._stat_or_none(posixpath.join(directory, entry.name))
        return st is not None and st.is_dir

    def _glob_exists(
        self, root: str, part: str, on_error: OnError
    ) -> Callable[[str], Coroutine[Any, Any, list[str]]]:
        """A last component without wildcards: there if it ``lstat``s (as ``glob.glob``)."""

        async def step(rel: str) -> list[str]:
            candidate = _join(rel, part)
            try:
                await self._lstat(posixpath.join(root, candidate))
            except FileNotFoundError:
                return []
            except PermissionError:
                if on_error == "raise":
                    raise
                return []
            return [candidate]

        return step

    # -- changes ---------------------------------------------------------------------------

    async def makedirs(self, path: RemotePath, exist_ok: bool = False) -> None:
        p = await self.abspath(path)
        st = await self._stat_or_none(p)
        if st is not None:
            if st.is_dir and exist_ok:
                return
            raise FileExistsError(errno.EEXIST, "File exists", p)
        await self._makedirs(p)

    async def _makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents: a ``stat`` up to the first existing
        ancestor, then one ``mkdir`` per missing directory (asyncssh's ``makedirs`` tries
        every component from ``/``)."""
        missing = [path]
        while (parent := posixpath.dirname(missing[-1])) != missing[-1]:
            st = await self._stat_or_none(parent)
            if st is not None:
                if not st.is_dir:
                    raise NotADirectoryError(errno.ENOTDIR, "Not a directory", parent)
                break
            missing.append(parent)
        for directory in reversed(missing):
            await self._mkdir(directory)

    async def _refuse_to_remove(self, path: str) -> None:
        home = await self.transport.home()
        if path in ("/", home) or f"{self.work_dir}/".startswith(f"{path.rstrip('/')}/"):
            raise ValueError(
                f"refusing to remove {path!r}: it is / , the home directory, or holds the "
                f"work directory {self.work_dir!r} on {self.transport.location}"
            )

    async def rm(self, path: RemotePath, recursive: bool = False) -> None:
        p = await self.abspath(path)
        st = await self._lstat(p)
        if st.is_dir:
            if not recursive:
                raise IsADirectoryError(errno.EISDIR, "Is a directory (rm it recursive=True)", p)
            await self._refuse_to_remove(p)
            await self.transport.remove_tree(p)
        else:
            await self.transport.remove(p)

    async def rmdir(self, path: RemotePath) -> None:
        await self.transport.rmdir(await self.abspath(path))

    async def _explain(self, path: str, exc: TransportError, *, exclusive: bool = False) -> None:
        """Turn an SFTP "failure" about ``path`` into what ``os`` would have raised."""
        st = await self._stat_or_none(path)
        if st is not None and st.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path) from exc
        if exclusive and st is not None:
            raise FileExistsError(errno.EEXIST, "File exists", path) from exc
        raise exc

    async def read_bytes(self, path: RemotePath) -> bytes:
        p = await self.abspath(path)
        try:
            return await self.transport.read_bytes(p)
        except TransportError as exc:
            await self._explain(p, exc)
            raise  # pragma: no cover (_explain always raises)

    async def write_bytes(self, path: RemotePath, data: bytes) -> None:
        p = await self.abspath(path)
        try:
            await self.transport.write_bytes(p, bytes(data), mode=0o666)
        except TransportError as exc:
            await self._explain(p, exc)

    async def open_handle(
        self, path: RemotePath, mode: Literal["r", "w", "a", "x"]
    ) -> tuple[str, FileHandle, int]:
        """An open handle, its absolute path and the starting position (the size, to
        append). A directory raises :class:`IsADirectoryError`."""
        p = await self.abspath(path)
        try:
            handle = await self.transport.open(p, _BINARY_MODES[mode])
        except TransportError as exc:
            await self._explain(p, exc, exclusive=mode == "x")
            raise  # pragma: no cover (_explain always raises)
        if mode in ("w", "x"):
            return p, handle, 0
        try:
            st = await handle.stat()
            if st.is_dir:  # SFTP opens a directory for reading; its first read fails
                raise IsADirectoryError(errno.EISDIR, "Is a directory", p)
        except BaseException:
            await handle.close()
            raise
        return p, handle, st.size if mode == "a" else 0

    # -- moving data -----------------------------------------------------------------------

    async def _into(self, target: str, name: str, trailing_slash: bool) -> str:
        """``target/name`` if ``target`` is (or is to be) a directory, else ``target``."""
        if trailing_slash:
            return posixpath.join(target, name)
        st = await self._stat_or_none(target)
        return posixpath.join(target, name) if st is not None and st.is_dir else target

    async def _ensure_dir(self, path: str) -> None:
        st = await self._stat_or_none(path)
        if st is None:
            await self._makedirs(path)
        elif not st.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)

    async def _mkdir(self, path: str) -> None:
        """One directory whose parent exists; an existing directory is fine."""
        try:
            await self.transport.mkdir(path)
        except (FileExistsError, TransportError) as exc:  # SFTP: "failure", if it exists
            st = await self._stat_or_none(path)
            if st is None:
                raise
            if not st.is_dir:
                raise FileExistsError(errno.EEXIST, "File exists (not a directory)", path) from exc

    async def _replace_symlink(self, target: str, path: str) -> None:
        try:
            st: FileStat | None = await self.transport.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if st.is_dir:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            await self.transport.remove(path)
        await self.transport.symlink(target, path)

    async def put(self, local: LocalPath, remote: RemotePath, recursive: bool = False) -> None:
        source = os.fspath(local)
        info = os.stat(source)  # follows a symlink given as the source
        name = os.path.basename(os.path.normpath(source))
        remote_str = _posix(remote)
        target = await self._into(await self.abspath(remote_str), name, remote_str.endswith("/"))
        if not stat_module.S_ISDIR(info.st_mode):
            await self._ensure_dir(posixpath.dirname(target))
            await self.transport.put(source, target)
            return
        if not recursive:
            raise IsADirectoryError(errno.EISDIR, "Is a directory (put it recursive=True)", source)
        dirs, files, links = await asyncio.to_thread(_local_tree, source)
        await self._ensure_dir(posixpath.dirname(target))
        await self._mkdir(target)
        for depth in sorted({d.count("/") for d in dirs}):
            level = [d for d in dirs if d.count("/") == depth]
            await gather_all(self._mkdir(posixpath.join(target, d)) for d in level)
        await gather_all(
            self.transport.put(os.path.join(source, *rel.split("/")), posixpath.join(target, rel))
            for rel in files
        )
        await gather_all(
            self._replace_symlink(link_target, posixpath.join(target, rel))
            for rel, link_target in links
        )

    async def get(self, remote: RemotePath, local: LocalPath, recursive: bool = False) -> None:
        source = await self.abspath(remote)
        st = await self.transport.stat(source)
        destination = os.fspath(local)
        if destination.endswith(("/", os.sep)) or os.path.isdir(destination):
            destination = os.path.join(destination, posixpath.basename(source))
        if not st.is_dir:
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
            await self.transport.get(source, destination)
            return
        if not recursive:
            raise IsADirectoryError(errno.EISDIR, "Is a directory (get it recursive=True)", source)
        entries = await self.transport.scan_tree(source, detail=False)
        for entry in entries:  # names come from the server: none may climb out of the copy
            if any(part in ("", ".", "..") for part in entry.path.split("/")):
                raise TransportError(f"refusing the path {entry.path!r} listed by the server")

        def local_path(rel: str) -> str:
            return os.path.join(destination, *rel.split("/"))

        os.makedirs(destination, exist_ok=True)
        for entry in sorted((e for e in entries if e.stat.is_dir), key=lambda e: e.path):
            os.makedirs(local_path(entry.path), exist_ok=True)
        await gather_all(
            self.transport.get(posixpath.join(source, e.path), local_path(e.path))
            for e in entries
            if e.stat.is_file
        )
        links = [e.path for e in entries if e.stat.is_symlink]
        targets = await gather_all(
            self.transport.readlink(posixpath.join(source, rel)) for rel in links
        )
        # Links last, so that no file of this download is ever written through one of them.
        for rel, link_target in zip(links, targets):  # noqa: B905
            if os.path.lexists(local_path(rel)):
                os.remove(local_path(rel))
            os.symlink(link_target, local_path(rel))
        special = [e for e in entries if not (e.stat.is_dir or e.stat.is_file or e.stat.is_symlink)]
        if special:
            logger.info(
                "get %s: skipped %d special files (FIFOs, sockets, …)", source, len(special)
            )


def _local_tree(root: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Directories, regular files and (symlink, target) pairs below local ``root``, as
    relative POSIX paths; symlinks are not followed, special files are left out."""
    dirs: list[str] = []
    files: list[str] = []
    links: list[tuple[str, str]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, *rel.split("/")) if rel else root) as it:
            for entry in it:
                path = _join(rel, entry.name)
                if entry.is_symlink():
                    links.append((path, os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(path)
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(path)
                else:
                    logger.info("put %s: skipped special file %s", root, path)
    return dirs, files, links


# -- blocking file objects -----------------------------------------------------------------


class _RemoteRawFile(io.RawIOBase):
    """A raw binary file over a :class:`FileHandle`, each call a blocking trip to the loop.

    The position is kept here (positional reads and writes), so ``seek`` costs nothing; the
    buffered wrapper from :func:`open_file` makes one round trip per buffer.
    """

    def __init__(
        self, loop: LoopThread, handle: FileHandle, path: str, mode: str, position: int
    ) -> None:
        super().__init__()
        self._loop, self._handle, self._pos = loop, handle, position
        self.name = path
        self.mode = f"{mode}b"

    def readable(self) -> bool:
        return self.mode == "rb"

    def writable(self) -> bool:
        return self.mode != "rb"

    def seekable(self) -> bool:
        return True

    def _check(self, ok: bool, what: str) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not ok:
            raise io.UnsupportedOperation(f"file not open for {what}")

    def readinto(self, buffer: Any) -> int:
        self._check(self.readable(), "reading")
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        data = self._loop.run(self._handle.read(len(view), self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._check(self.readable(), "reading")
        chunks = []
        while True:
            data = self._loop.run(self._handle.read(_READALL_CHUNK, self._pos))
            chunks.append(data)
            self._pos += len(data)
            if len(data) < _READALL_CHUNK:
                return b"".join(chunks)

    def write(self, data: Any) -> int:
        self._check(self.writable(), "writing")
        payload = bytes(data)
        self._loop.run(self._handle.write(payload, self._pos))
        self._pos += len(payload)
        return len(payload)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check(True, "seeking")
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self._loop.run(self._handle.stat()).size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise OSError(errno.EINVAL, f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        self._check(True, "tell")
        return self._pos

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._loop.in_loop_thread:  # garbage collected on the loop's own thread
                self._loop.submit(self._handle.close())
            elif self._loop.running:
                self._loop.run(self._handle.close())
        finally:
            super().close()


def _parse_mode(mode: str) -> tuple[Literal["r", "w", "a", "x"], bool]:
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or len(set(mode)) != len(mode) or not set(mode) <= set("rwaxbt"):
        raise ValueError(f"invalid mode {mode!r}: one of r, w, a, x, optionally with b or t")
    if "b" in mode and "t" in mode:
        raise ValueError(f"invalid mode {mode!r}: binary and text at once")
    kind: Literal["r", "w", "a", "x"] = kinds[0]  # type: ignore[assignment]
    return kind, "b" in mode


def open_file(
    loop: LoopThread,
    afs: AsyncFileSystem,
    path: RemotePath,
    mode: str = "r",
    *,
    block_size: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> IO[Any]:
    """A blocking, buffered file object over ``afs`` (see :meth:`_FileSystemMethods.open`)."""
    kind, binary = _parse_mode(mode)
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode takes no encoding, errors or newline")
    p, handle, position = loop.run(afs.open_handle(path, kind))
    raw = _RemoteRawFile(loop, handle, p, kind, position)
    size = block_size or DEFAULT_BLOCK_SIZE
    buffered: io.BufferedReader | io.BufferedWriter = (
        io.BufferedReader(raw, size) if kind == "r" else io.BufferedWriter(raw, size)
    )
    if binary:
        return buffered
    # UTF-8, not the locale of this client: the file lives on the cluster.
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)


# -- blocking front doors ------------------------------------------------------------------


class _FileSystemMethods:
    """The blocking methods; a subclass says where the loop and the async core are.

    Every remote path may be relative: it resolves against ``remote_work_dir``; ``~`` and
    ``~/…`` resolve against the remote home directory.
    """

    def _fs_parts(self) -> tuple[LoopThread, AsyncFileSystem]:
        raise NotImplementedError

    def _fs_run(self, coro: Callable[[AsyncFileSystem], Coroutine[Any, Any, T]]) -> T:
        loop, afs = self._fs_parts()
        return loop.run(coro(afs))

    @overload
    def ls(self, path: RemotePath = ..., detail: Literal[False] = ...) -> list[str]: ...
    @overload
    def ls(self, path: RemotePath = ..., *, detail: Literal[True]) -> list[FileInfo]: ...
    @overload
    def ls(self, path: RemotePath, detail: Literal[True]) -> list[FileInfo]: ...
    def ls(self, path: RemotePath = ".", detail: bool = False) -> list[str] | list[FileInfo]:
        """The names in directory ``path``, sorted; ``detail=True``: :class:`FileInfo` s.

        Relative paths resolve against ``remote_work_dir``. A missing ``path`` raises
        :class:`FileNotFoundError`, a file :class:`NotADirectoryError`.
        """
        return self._fs_run(lambda afs: afs.ls(path, detail))

    def find(
        self,
        pattern: str = "*",
        path: RemotePath = ".",
        *,
        withdirs: bool = False,
        on_error: OnError = "raise",
    ) -> list[str]:
        """Everything below ``path`` whose name matches ``pattern``, like ``find path -name``.

        Returns sorted paths relative to ``path`` (``posixpath.join(path, p)`` addresses one).
        ``pattern`` is an :mod:`fnmatch` pattern, case-sensitive, whose ``*`` also matches a
        leading dot; with a ``/`` it is matched against the relative path (``find -path``).
        Directories are left out unless ``withdirs=True``; symlinks are listed, never
        followed (``path`` itself is followed). A directory that cannot be read raises
        :class:`PermissionError`, or is skipped with ``on_error="omit"``. Relative paths
        resolve against ``remote_work_dir``. One command over SSH, whatever the tree's size.
        """
        return self._fs_run(
            lambda afs: afs.find(pattern, path, withdirs=withdirs, on_error=on_error)
        )

    def count_files(
        self, path: RemotePath = ".", pattern: str = "*", *, on_error: OnError = "raise"
    ) -> int:
        """How many non-directory entries below ``path`` match: ``len(find(pattern, path))``.

        Relative paths resolve against ``remote_work_dir``; one command over SSH.
        """
        return self._fs_run(lambda afs: afs.count_files(path, pattern, on_error=on_error))

    def du(self, path: RemotePath = ".", *, on_error: OnError = "raise") -> DiskUsage:
        """Apparent size and counts of everything below ``path`` (see :class:`DiskUsage`).

        Symlinks below ``path`` are not followed; ``path`` may be a file. Relative paths
        resolve against ``remote_work_dir``. One command over SSH, whatever the tree's size.
        """
        return self._fs_run(lambda afs: afs.du(path, on_error=on_error))

    def glob(
        self, pattern: str, path: RemotePath = ".", *, on_error: OnError = "raise"
    ) -> list[str]:
        """Paths matching a shell pattern, sorted, like ``glob.glob(pattern, root_dir=path,
        recursive=True)``: relative to ``path`` for a relative pattern, absolute for an
        absolute one.

        ``*``, ``?`` and ``[…]`` match within one component (``*`` also matches a leading
        dot, as in fsspec); ``**`` matches any number of directories without entering
        symlinked ones. Relative ``path`` resolves against ``remote_work_dir``.
        """
        return self._fs_run(lambda afs: afs.glob(pattern, path, on_error=on_error))

    def stat(self, path: RemotePath) -> FileInfo:
        """:class:`FileInfo` of ``path`` (symlinks followed, see there). Relative paths
        resolve against ``remote_work_dir``; a missing one raises FileNotFoundError."""
        return self._fs_run(lambda afs: afs.stat(path))

    def exists(self, path: RemotePath) -> bool:
        """True if ``path`` exists (following symlinks, like ``os.path.exists``); only
        "not found" is False: permission and connection errors are raised. Relative paths
        resolve against ``remote_work_dir``."""
        return self._fs_run(lambda afs: afs.exists(path))

    def isdir(self, path: RemotePath) -> bool:
        """True if ``path`` is a directory (or a symlink to one); see :meth:`exists`."""
        return self._fs_run(lambda afs: afs.isdir(path))

    def isfile(self, path: RemotePath) -> bool:
        """True if ``path`` is a regular file (or a symlink to one); see :meth:`exists`."""
        return self._fs_run(lambda afs: afs.isfile(path))

    def makedirs(self, path: RemotePath, exist_ok: bool = False) -> None:
        """Create directory ``path`` and its missing parents (mode 0o777 less the umask).

        An existing ``path`` raises :class:`FileExistsError` unless it is a directory and
        ``exist_ok``. Relative paths resolve against ``remote_work_dir``.
        """
        self._fs_run(lambda afs: afs.makedirs(path, exist_ok))

    def rm(self, path: RemotePath, recursive: bool = False) -> None:
        """Delete a file or symlink; a directory (and everything in it) with ``recursive``.

        A directory without ``recursive`` raises :class:`IsADirectoryError`; ``/``, the home
        directory and the executor's own work directory (or a parent of it) are refused.
        Relative paths resolve against ``remote_work_dir``.
        """
        self._fs_run(lambda afs: afs.rm(path, recursive))

    def read_bytes(self, path: RemotePath) -> bytes:
        """The whole content of a file. Relative paths resolve against ``remote_work_dir``."""
        return self._fs_run(lambda afs: afs.read_bytes(path))

    def write_bytes(self, path: RemotePath, data: bytes) -> None:
        """Replace (or create) a file atomically: written under a temporary name, then
        renamed, so readers never see a part. The new file's mode is 0o666 less the umask.
        The parent must exist. Relative paths resolve against ``remote_work_dir``."""
        self._fs_run(lambda afs: afs.write_bytes(path, data))

    def put(self, local: LocalPath, remote: RemotePath, recursive: bool = False) -> None:
        """Copy a local file (or, with ``recursive``, a directory tree) to the cluster.

        Like ``cp``: if ``remote`` is an existing directory or ends with ``/``, the copy goes
        inside it under its own name, otherwise it is called ``remote``; missing parents are
        created. Files keep their permission bits (as :func:`shutil.copy`), not their times;
        existing files are replaced, existing directories merged. In a tree, symlinks are
        recreated as symlinks (targets unchanged) and special files skipped; ``local`` itself
        is followed. Files go up concurrently, each in parallel SFTP writes. A relative
        ``remote`` resolves against ``remote_work_dir``.
        """
        self._fs_run(lambda afs: afs.put(local, remote, recursive))

    def get(self, remote: RemotePath, local: LocalPath, recursive: bool = False) -> None:
        """Copy a file (or, with ``recursive``, a directory tree) from the cluster here.

        The mirror image of :meth:`put`: same placement rules, permission bits kept,
        symlinks recreated (after all files, so nothing is written through one), special
        files skipped. The tree is listed with one command; files come down concurrently.
        A relative ``remote`` resolves against ``remote_work_dir``.
        """
        self._fs_run(lambda afs: afs.get(remote, local, recursive))

    def open(
        self,
        path: RemotePath,
        mode: str = "r",
        *,
        block_size: int | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """A file object on the cluster, like the builtin :func:`open`.

        ``mode`` is ``r``, ``w``, ``a`` or ``x``, with ``b`` for bytes (``+`` is not
        supported). Text mode decodes UTF-8 unless ``encoding`` says otherwise (not this
        client's locale: the file lives on the cluster). Reads and writes are buffered,
        ``block_size`` bytes (default 1 MiB) per round trip; ``seek`` is free. Works with
        ``pandas.read_csv(ex.open("data.csv"))``. Use it in a ``with`` block: closing
        flushes. Relative paths resolve against ``remote_work_dir``.
        """
        loop, afs = self._fs_parts()
        return open_file(
            loop,
            afs,
            path,
            mode,
            block_size=block_size,
            encoding=encoding,
            errors=errors,
            newline=newline,
        )

    @property
    def fs(self) -> Any:
        """An fsspec ``AbstractFileSystem`` over the same connection (needs ``fsspec``).

        ``pandas.read_csv(ex.fs.open("data.csv"))``, ``ex.fs.find(...)``: fsspec's names
        and conventions (absolute paths in results), relative paths resolving against
        ``remote_work_dir``.
        """
        cached = self.__dict__.get("_fsspec_fs")
        if cached is None:
            cached = self.__dict__["_fsspec_fs"] = _fsspec_class()(self)
        return cached


class FileSystemMixin(_FileSystemMethods):
    """The filesystem methods of :class:`clustrix.ClusterExecutor`, over its connection."""

    _loop: LoopThread
    _engine: Engine
    _shutdown: bool

    def _fs_parts(self) -> tuple[LoopThread, AsyncFileSystem]:
        if self._shutdown:
            raise RuntimeError("cannot use the files of an executor that was shut down")
        afs = self.__dict__.get("_async_fs")
        if afs is None:
            afs = self.__dict__["_async_fs"] = AsyncFileSystem(
                self._engine.transport, self._engine.work_dir
            )
        return self._loop, afs


class ClusterFileSystem(_FileSystemMethods):
    """The filesystem methods without an executor: one connection, no jobs.

    ``with ClusterFileSystem(config) as fs: fs.ls("results")``. ``config`` as for
    :class:`clustrix.ClusterExecutor` (``None``: ``ClusterConfig.load()``); relative paths
    resolve against its ``remote_work_dir``, which need not exist.
    """

    def __init__(self, config: ClusterConfig | None = None, **overrides: Any) -> None:
        from .._factory import make_transport

        if config is None:
            config = ClusterConfig.load(**overrides)
        else:
            config = config.with_overrides(**overrides)
        self.config = config
        self._loop = LoopThread("clustrix-filesystem")
        transport = make_transport(config)

        async def start() -> AsyncFileSystem:
            await transport.connect()
            return AsyncFileSystem(transport, await transport.expand(config.remote_work_dir))

        try:
            self._afs = self._loop.run(start())
        except BaseException:
            self._loop.run(transport.close())
            self._loop.stop()
            raise

    def _fs_parts(self) -> tuple[LoopThread, AsyncFileSystem]:
        return self._loop, self._afs

    def close(self) -> None:
        """Close the connection and stop the loop thread; idempotent."""
        if self._loop.running:
            self._loop.run(self._afs.transport.close())
        self._loop.stop()

    def __enter__(self) -> ClusterFileSystem:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterFileSystem {self._afs.transport.location}:{self._afs.work_dir}>"


# -- the original module-level names -------------------------------------------------------


def cluster_ls(path: RemotePath = ".", config: ClusterConfig | None = None) -> list[str]:
    """:meth:`ClusterFileSystem.ls` over a connection of its own (closed on return)."""
    with ClusterFileSystem(config) as fs:
        return fs.ls(path)


def cluster_find(
    pattern: str, path: RemotePath = ".", config: ClusterConfig | None = None
) -> list[str]:
    """:meth:`ClusterFileSystem.find` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.find(pattern, path)


def cluster_stat(path: RemotePath, config: ClusterConfig | None = None) -> FileInfo:
    """:meth:`ClusterFileSystem.stat` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.stat(path)


def cluster_exists(path: RemotePath, config: ClusterConfig | None = None) -> bool:
    """:meth:`ClusterFileSystem.exists` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.exists(path)


def cluster_isdir(path: RemotePath, config: ClusterConfig | None = None) -> bool:
    """:meth:`ClusterFileSystem.isdir` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.isdir(path)


def cluster_isfile(path: RemotePath, config: ClusterConfig | None = None) -> bool:
    """:meth:`ClusterFileSystem.isfile` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.isfile(path)


def cluster_glob(
    pattern: str, path: RemotePath = ".", config: ClusterConfig | None = None
) -> list[str]:
    """:meth:`ClusterFileSystem.glob` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.glob(pattern, path)


def cluster_du(path: RemotePath = ".", config: ClusterConfig | None = None) -> DiskUsage:
    """:meth:`ClusterFileSystem.du` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.du(path)


def cluster_count_files(
    path: RemotePath = ".", pattern: str = "*", config: ClusterConfig | None = None
) -> int:
    """:meth:`ClusterFileSystem.count_files` over a connection of its own."""
    with ClusterFileSystem(config) as fs:
        return fs.count_files(path, pattern)


# -- fsspec --------------------------------------------------------------------------------

_FSSPEC_CLASS: type | None = None


def _fsspec_class() -> type:
    """The fsspec filesystem class, defined on first use (fsspec is optional)."""
    global _FSSPEC_CLASS
    if _FSSPEC_CLASS is None:
        try:
            from fsspec.spec import (  # type: ignore[import-untyped,unused-ignore]
                AbstractFileSystem,
            )
        except ImportError as exc:
            raise ImportError("ex.fs needs fsspec: pip install fsspec") from exc
        _FSSPEC_CLASS = _define_fsspec_class(AbstractFileSystem)
    return _FSSPEC_CLASS


def _define_fsspec_class(base: type) -> type:
    class ClusterFsspecFileSystem(base):  # type: ignore[misc]
        """fsspec over a clustrix executor's connection (``ex.fs``).

        fsspec's conventions: absolute paths in results, ``ls`` entries typed by what they
        are themselves (a symlink is ``"other"`` with ``islink``; ``info`` follows it), so
        fsspec's ``walk``/``find`` never loop. Relative paths resolve against
        ``remote_work_dir``.
        """

        protocol = "clustrix"
        root_marker = "/"
        cachable = False  # an instance holds a live connection: never reuse across owners

        def __init__(self, owner: _FileSystemMethods, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._owner = owner

        @classmethod
        def _strip_protocol(cls, path: Any) -> Any:
            if isinstance(path, list):
                return [cls._strip_protocol(p) for p in path]
            path = _posix(path) if isinstance(path, PurePath) else str(path)
            if path.startswith("clustrix://"):
                path = path[len("clustrix://") :]
            return path.rstrip("/") or ("/" if path.startswith("/") else "")

        def _run(self, coro: Callable[[AsyncFileSystem], Coroutine[Any, Any, T]]) -> T:
            return self._owner._fs_run(coro)

        @staticmethod
        def _entry(path: str, st: FileStat, *, islink: bool = False) -> dict[str, Any]:
            kind = "directory" if st.is_dir else "file" if st.is_file else "other"
            return {
                "name": path,
                "size": st.size,
                "type": kind,
                "mtime": st.mtime,
                "mode": st.mode,
                "islink": islink or st.is_symlink,
            }

        def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
            path = self._strip_protocol(path)
            try:
                root, entries = self._run(lambda afs: afs.listdir(path))
            except NotADirectoryError:
                info = self.info(path)
                return [info] if detail else [info["name"]]
            out = sorted(
                (self._entry(posixpath.join(root, e.name), e.stat) for e in entries),
                key=lambda d: d["name"],
            )
            return out if detail else [d["name"] for d in out]

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            fi = self._owner.stat(self._strip_protocol(path))
            kind = "directory" if fi.is_dir else "file" if fi.is_file else "other"
            return {
                "name": fi.path,
                "size": fi.size,
                "type": kind,
                "mtime": fi.modified,
                "mode": fi.permissions,
                "islink": fi.is_symlink,
            }

        def exists(self, path: str, **kwargs: Any) -> bool:
            return self._owner.exists(self._strip_protocol(path))

        def isdir(self, path: str) -> bool:
            return self._owner.isdir(self._strip_protocol(path))

        def isfile(self, path: str) -> bool:
            return self._owner.isfile(self._strip_protocol(path))

        def _open(
            self,
            path: str,
            mode: str = "rb",
            block_size: int | None = None,
            autocommit: bool = True,
            cache_options: Any = None,
            **kwargs: Any,
        ) -> IO[Any]:
            if not autocommit:
                raise NotImplementedError("transactions (autocommit=False) are not supported")
            bs = block_size if isinstance(block_size, int) and block_size > 0 else None
            return self._owner.open(self._strip_protocol(path), mode, block_size=bs)

        def cat_file(
            self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
        ) -> bytes:
            if start is None and end is None:
                return self._owner.read_bytes(self._strip_protocol(path))
            data: bytes = super().cat_file(path, start=start, end=end, **kwargs)
            return data

        def pipe_file(
            self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any
        ) -> None:
            if mode == "create" and self.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", path)
            self._owner.write_bytes(self._strip_protocol(path), value)

        def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
            path = self._strip_protocol(path)
            if not create_parents and not self.isdir(posixpath.dirname(path) or "."):
                parent = posixpath.dirname(path)
                raise FileNotFoundError(errno.ENOENT, "No such directory", parent)
            self._owner.makedirs(path, exist_ok=False)

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            self._owner.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

        def rmdir(self, path: str) -> None:
            self._run(lambda afs: afs.rmdir(self._strip_protocol(path)))

        def rm_file(self, path: str) -> None:
            self._owner.rm(self._strip_protocol(path))

        def _rm(self, path: str) -> None:
            # fsspec's rm(recursive=True) expands the tree and removes paths deepest first
            if self._run(lambda afs: afs.stat(self._strip_protocol(path))).is_dir:
                self.rmdir(path)
            else:
                self.rm_file(path)

        def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
            if isinstance(path, str) and maxdepth is None and not _has_magic(path):
                self._owner.rm(self._strip_protocol(path), recursive=recursive)  # one rm -rf
            else:
                for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
                    self._rm(p)

        def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
            if self.isdir(path1):
                self.makedirs(path2, exist_ok=True)
                return
            with self.open(path1, "rb") as source, self.open(path2, "wb") as target:
                while chunk := source.read(DEFAULT_BLOCK_SIZE):
                    target.write(chunk)

        def put_file(self, lpath: str, rpath: str, callback: Any = None, **kwargs: Any) -> None:
            rpath = self._strip_protocol(rpath)
            if os.path.isdir(lpath):
                self.makedirs(rpath, exist_ok=True)
                return

            async def put(afs: AsyncFileSystem) -> None:
                await afs.transport.put(os.fspath(lpath), await afs.abspath(rpath))

            self._run(put)

        def get_file(self, rpath: str, lpath: str, callback: Any = None, **kwargs: Any) -> None:
            rpath = self._strip_protocol(rpath)
            if self.isdir(rpath):
                os.makedirs(lpath, exist_ok=True)
                return

            async def get(afs: AsyncFileSystem) -> None:
                await afs.transport.get(await afs.abspath(rpath), os.fspath(lpath))

            self._run(get)

        def modified(self, path: str) -> _dt.datetime:
            return self._owner.stat(self._strip_protocol(path)).modified_datetime

    return ClusterFsspecFileSystem
