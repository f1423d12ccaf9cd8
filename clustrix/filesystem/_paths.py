"""Remote path strings and the matching of names against patterns: pure, no I/O.

:func:`_posix` makes the POSIX string sent to the cluster from a :data:`RemotePath`;
:func:`_matcher` is ``find``'s ``-name``/``-path`` test and :func:`_glob_match` matches path
components against glob components with ``**``. This module must not know about transports,
event loops or the filesystem classes: it is tested without a cluster
(``tests/unit/test_filesystem_paths.py``, against Python's own ``glob`` on a real tree).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import PurePath

from ..transports.base import DirEntry

#: A remote path: a POSIX string, or a PurePath (sent as ``as_posix()``).
RemotePath = str | PurePath
#: A path on this machine (for ``put``/``get``).
LocalPath = str | os.PathLike[str]


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


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name
