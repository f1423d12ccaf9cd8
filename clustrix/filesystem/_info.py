"""What the filesystem methods answer: :class:`FileInfo` for one path, :class:`DiskUsage` for
a tree.

Frozen dataclasses built from the transport's :class:`~clustrix.transports.base.FileStat`;
they know nothing of how those attributes were fetched, nor of any filesystem class.
"""

from __future__ import annotations

import datetime as _dt
import posixpath
import stat as stat_module
from dataclasses import dataclass

from ..transports.base import FileStat

__all__ = ["DiskUsage", "FileInfo"]


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
