"""What every coroutine of :class:`~clustrix.filesystem.AsyncFileSystem` stands on.

:class:`_AsyncCore` holds the transport and the work directory, resolves paths
(:meth:`~_AsyncCore.abspath`) and has the ``stat``/``mkdir`` primitives that turn the
transport's answers into what ``os`` would raise. :mod:`._glob`, :mod:`._transfer` and
:mod:`._async` build on it. It knows the transport interface and nothing else: not the
event-loop thread, the blocking front doors, schedulers or jobs.
"""

from __future__ import annotations

import errno
import posixpath

from ..errors import TransportError
from ..transports.base import FileStat, Transport
from ._paths import RemotePath, _posix


class _AsyncCore:
    """The transport, the work directory, path resolution and the primitives over them.

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

    async def _lstat(self, path: str) -> FileStat:
        try:
            return await self.transport.lstat(path)
        except NotADirectoryError as exc:  # a file on the way: missing, as over SFTP
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from exc

    async def _stat_or_none(self, path: str) -> FileStat | None:
        try:
            return await self.transport.stat(path)
        except FileNotFoundError:
            return None

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
