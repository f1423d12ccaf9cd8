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

Where things are: :mod:`._blocking` the front doors above; :mod:`._async` the coroutines
they run (:class:`AsyncFileSystem`), on :mod:`._core` (path resolution, ``stat``/``mkdir``
primitives), with ``glob`` in :mod:`._glob` and ``put``/``get`` in :mod:`._transfer`;
:mod:`._files` the file objects of ``open``; :mod:`._fsspec` ``ex.fs``; :mod:`._info` the
result types; :mod:`._paths` pure path and pattern helpers.

This package knows the transport interface and :class:`~clustrix._loop.LoopThread`; it knows
nothing of schedulers, jobs or the concrete transports.
"""

from __future__ import annotations

from ._async import AsyncFileSystem
from ._blocking import (
    ClusterFileSystem,
    FileSystemMixin,
    cluster_count_files,
    cluster_du,
    cluster_exists,
    cluster_find,
    cluster_glob,
    cluster_isdir,
    cluster_isfile,
    cluster_ls,
    cluster_stat,
)
from ._files import DEFAULT_BLOCK_SIZE as DEFAULT_BLOCK_SIZE
from ._files import _parse_mode as _parse_mode
from ._files import open_file as open_file
from ._info import DiskUsage, FileInfo
from ._paths import LocalPath as LocalPath
from ._paths import RemotePath as RemotePath
from ._paths import _glob_match as _glob_match
from ._paths import _matcher as _matcher
from ._paths import _posix as _posix

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
