"""``ex.fs``: an fsspec ``AbstractFileSystem`` over the blocking methods (fsspec is optional).

The class is defined on first use, as a subclass of fsspec's base class, so that importing
clustrix never imports fsspec. It reaches the cluster only through its owner's blocking
methods (the :class:`Owner` protocol) and :class:`AsyncFileSystem`; it knows nothing of
executors, configs, schedulers or jobs.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import posixpath
from collections.abc import Callable, Coroutine
from pathlib import PurePath
from typing import IO, Any, Protocol, TypeVar

from ..transports.base import FileStat
from ._async import AsyncFileSystem
from ._files import DEFAULT_BLOCK_SIZE
from ._info import FileInfo
from ._paths import RemotePath, _has_magic, _posix

T = TypeVar("T")


class Owner(Protocol):
    """What the fsspec class uses of the front door it wraps (``ex`` for ``ex.fs``)."""

    def _fs_run(self, coro: Callable[[AsyncFileSystem], Coroutine[Any, Any, T]]) -> T: ...
    def stat(self, path: RemotePath) -> FileInfo: ...
    def exists(self, path: RemotePath) -> bool: ...
    def isdir(self, path: RemotePath) -> bool: ...
    def isfile(self, path: RemotePath) -> bool: ...
    def open(
        self, path: RemotePath, mode: str = ..., *, block_size: int | None = ...
    ) -> IO[Any]: ...
    def read_bytes(self, path: RemotePath) -> bytes: ...
    def write_bytes(self, path: RemotePath, data: bytes) -> None: ...
    def makedirs(self, path: RemotePath, exist_ok: bool = ...) -> None: ...
    def rm(self, path: RemotePath, recursive: bool = ...) -> None: ...


def fsspec_filesystem(owner: Owner) -> Any:
    """A new fsspec filesystem over ``owner``'s connection (ImportError without fsspec)."""
    return _fsspec_class()(owner)


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

        def __init__(self, owner: Owner, **kwargs: Any) -> None:
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
