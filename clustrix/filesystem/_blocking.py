"""The blocking front doors, each method one coroutine of :class:`AsyncFileSystem` run on a
:class:`~clustrix._loop.LoopThread`:

- :class:`FileSystemMixin`: methods of :class:`clustrix.ClusterExecutor` over its connection
  and loop thread;
- :class:`ClusterFileSystem`: the same methods without an executor (one connection, no jobs);
- ``cluster_ls(path, config)``, …: each a short-lived :class:`ClusterFileSystem`.

The docstrings here are the user's reference. This module builds a transport from a config
(through :mod:`clustrix._factory`) and reads an executor's loop and engine; it knows nothing
of schedulers, jobs or the concrete transports.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._factory import make_transport
from .._loop import LoopThread
from ..config import ClusterConfig
from ..transports.base import OnError
from ._async import AsyncFileSystem
from ._files import open_file
from ._fsspec import fsspec_filesystem
from ._info import DiskUsage, FileInfo
from ._paths import LocalPath, RemotePath

if TYPE_CHECKING:
    from .._engines import ExecutorEngine

__all__ = [
    "ClusterFileSystem",
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

T = TypeVar("T")


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
            cached = self.__dict__["_fsspec_fs"] = fsspec_filesystem(self)
        return cached


class FileSystemMixin(_FileSystemMethods):
    """The filesystem methods of :class:`clustrix.ClusterExecutor`, over its connection."""

    _loop: LoopThread
    _engine: ExecutorEngine
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
