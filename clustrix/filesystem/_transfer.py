"""``put`` and ``get`` as coroutines: files and trees between this machine and the cluster.

A tree is listed once (here with ``os.scandir`` in a thread, there with one
:meth:`~clustrix.transports.base.Transport.scan_tree`), its directories are made one level at
a time, its files copied concurrently and its symlinks recreated last. :class:`_AsyncTransfer`
is a base of :class:`~clustrix.filesystem.AsyncFileSystem` over
:class:`~._core._AsyncCore`; it knows the local ``os`` and the transport interface, nothing of
the blocking front doors or the event-loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import stat as stat_module

from ..errors import TransportError
from ..transports.base import FileStat, gather_all
from ._core import _AsyncCore
from ._paths import LocalPath, RemotePath, _join, _posix

# The logger of the module this came from: log configuration that names it keeps working.
logger = logging.getLogger("clustrix.filesystem")


class _AsyncTransfer(_AsyncCore):
    """:meth:`put` and :meth:`get` of :class:`~clustrix.filesystem.AsyncFileSystem`."""

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
