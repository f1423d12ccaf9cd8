"""``glob`` as coroutines: one pattern component at a time, every directory of a level in
flight at once, and ``**`` with what follows it from ONE tree scan per directory matched so
far (:meth:`~clustrix.transports.base.Transport.scan_tree`), never a round trip per file.

:class:`_AsyncGlob` is a base of :class:`~clustrix.filesystem.AsyncFileSystem`; it builds
on :class:`~._core._AsyncCore` and the pure matching of :mod:`._paths`, and knows nothing of
the blocking front doors or the event-loop thread.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable, Coroutine
from typing import Any

from ..transports.base import DirEntry, OnError, gather_all
from ._core import _AsyncCore
from ._paths import RemotePath, _glob_match, _has_magic, _join, _posix


class _AsyncGlob(_AsyncCore):
    """:meth:`glob` of :class:`~clustrix.filesystem.AsyncFileSystem`."""

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
