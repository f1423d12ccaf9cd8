"""The transport interface: run commands and move files on the cluster.

A transport knows nothing of schedulers, jobs or pickles. Its methods read like the standard
library (``subprocess``/``os``/``pathlib``) and asyncssh's SFTP client. Paths are POSIX strings;
relative ones resolve against the login directory (home) of the account the transport acts
as. Errors are translated once, here at the boundary: a missing path raises the builtin
:class:`FileNotFoundError`, a refused one :class:`PermissionError`, and everything else about
reaching the cluster a :class:`clustrix.errors.TransportError`.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CommandResult", "Transport"]


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind, like :class:`subprocess.CompletedProcess`."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0


class Transport(ABC):
    """Commands and files on one machine: this one (local) or a cluster's login node (SSH)."""

    #: Human-readable name of where commands run, e.g. ``"local"`` or ``"user@host:22"``.
    location: str = "local"

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection (no-op for local). Safe to call again after a drop."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; later calls may reconnect."""

    @abstractmethod
    async def run(
        self, argv: Sequence[str], *, timeout_s: float | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run ``argv`` (never through a shell of ours: quote with ``shlex.join`` if needed).

        A non-zero exit status is not an error here: callers read ``returncode``. Exceeding
        ``timeout_s`` raises :class:`clustrix.errors.CommandTimeoutError`.
        """

    @abstractmethod
    async def home(self) -> str:
        """Absolute path of the home directory, against which relative paths resolve."""

    async def expand(self, path: str) -> str:
        """``path`` made absolute: ``~`` and relative paths resolve against :meth:`home`."""
        if path == "~" or path.startswith("~/"):
            path = (await self.home()) + path[1:]
        if not posixpath.isabs(path):
            path = posixpath.join(await self.home(), path)
        return posixpath.normpath(path)

    @abstractmethod
    async def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""

    @abstractmethod
    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a file (all of it if smaller)."""

    @abstractmethod
    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write a file atomically (temp name, then rename), created with ``mode``."""

    @abstractmethod
    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """Create a directory and its missing parents."""

    @abstractmethod
    async def exists(self, path: str) -> bool:
        """True if ``path`` exists; only "not found" is False, other errors propagate."""

    @abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Delete a directory tree (a missing one is not an error)."""
