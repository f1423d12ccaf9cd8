"""A private per-user cache directory on this machine, for what is costly to rebuild.

``$XDG_CACHE_HOME/clustrix/<name>`` (else ``~/.cache``; ``~/Library/Caches`` on macOS),
mode 0700. What another user could have written is never read: the directory must be the
user's own and writable by nobody else, and so must every file read from it (checked on the
open file, so a link swapped in meanwhile does not count). Files are written atomically
(temporary name, then rename), mode 0600. Where none of this can be checked (no uids, as
on Windows) there is no cache: callers rebuild.

Knows nothing of what is cached.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "cache_path", "private_dir", "prune", "read_private", "write_private"]


def _base() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _private_dir(path: Path, uid: int) -> bool:
    """``path`` is a directory of the user's that nobody else may write (made 0700)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        return False
    if st.st_mode & 0o077:  # readable by others: nothing secret here, but keep it ours
        os.chmod(path, 0o700)
    return True


def cache_path(name: str) -> Path:
    """Where the cache subdirectory ``name`` is (see :func:`cache_dir`), not made here."""
    return _base() / "clustrix" / name


def cache_dir(name: str) -> Path | None:
    """The cache subdirectory ``name``, created if missing; None if it is not private
    (or cannot be made): then there is no cache."""
    path = cache_path(name)
    return private_dir(path, path.parent)


def private_dir(path: Path, top: Path | None = None) -> Path | None:
    """``path``, created 0700 if missing (with its parents), if it and ``top`` (one of its
    parents, made here too) are directories of the user's that nobody else may write;
    else None."""
    if not hasattr(os, "geteuid"):
        return None
    uid = os.geteuid()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (top is None or _private_dir(top, uid)) and _private_dir(path, uid):
            return path
    except OSError:
        pass
    return None


def read_private(directory: Path, name: str) -> bytes | None:
    """The content of ``directory/name`` if it is a regular file of the user's that nobody
    else may write; else None."""
    try:
        fd = os.open(directory / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        return fh.read()


def write_private(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` atomically, mode 0600 (a failure leaves nothing behind)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` newest files of ``directory`` matching ``pattern``."""
    found = []
    for path in directory.glob(pattern):
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            found.append((path.lstat().st_mtime, path))
    found.sort(reverse=True)
    for _, old in found[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
