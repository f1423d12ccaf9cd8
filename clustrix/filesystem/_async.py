""":class:`AsyncFileSystem`: the filesystem methods as coroutines, over one transport.

Here are the queries (``ls``, ``stat``, ``exists``, ``find``, ``du``, …) and the changes
(``makedirs``, ``rm``, ``read_bytes``/``write_bytes``, ``open_handle``); ``glob`` comes from
:mod:`._glob`, ``put``/``get`` from :mod:`._transfer`, path resolution and the primitives
from :mod:`._core`. Everything runs on the transport's event loop: this module knows nothing
of the loop thread, the blocking front doors, fsspec, schedulers or jobs.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
from typing import Any, Literal

from ..errors import TransportError
from ..transports.base import DirEntry, FileHandle, FileStat, OnError, gather_all
from ._glob import _AsyncGlob
from ._info import DiskUsage, FileInfo
from ._paths import RemotePath, _matcher
from ._transfer import _AsyncTransfer

__all__ = ["AsyncFileSystem"]

_BINARY_MODES: dict[str, Literal["rb", "wb", "ab", "xb"]] = {
    "r": "rb",
    "w": "wb",
    "a": "ab",
    "x": "xb",
}


class AsyncFileSystem(_AsyncGlob, _AsyncTransfer):
    """The filesystem methods as coroutines, over one transport.

    Everything the blocking front doors do happens here, on the transport's event loop.
    Relative paths resolve against ``work_dir`` (absolute), ``~`` against the home directory.
    """

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

    async def stat(self, path: RemotePath) -> FileInfo:
        p = await self.abspath(path)
        return await self._info(p, await self._lstat(p))

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

    # -- changes ---------------------------------------------------------------------------

    async def makedirs(self, path: RemotePath, exist_ok: bool = False) -> None:
        p = await self.abspath(path)
        st = await self._stat_or_none(p)
        if st is not None:
            if st.is_dir and exist_ok:
                return
            raise FileExistsError(errno.EEXIST, "File exists", p)
        await self._makedirs(p)

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
