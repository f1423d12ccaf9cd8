"""Local transport: commands as subprocesses of this machine, files through ``os``.

Used by the ``local`` backend and by scheduler backends run on a login node (no
``cluster_host``). Knows nothing of schedulers or jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Sequence

from .._wire import write_atomic
from ..errors import CommandTimeoutError, TransportError
from .base import CommandResult, Transport

__all__ = ["LocalTransport"]


class LocalTransport(Transport):
    """Runs commands with :mod:`asyncio` subprocesses and touches files with :mod:`os`."""

    location = "local"

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def run(
        self, argv: Sequence[str], *, timeout_s: float | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run ``argv`` in a new session, so a Ctrl-C in the user's terminal spares the jobs."""
        args = list(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TransportError(f"command not found: {args[0]!r}") from exc
        except OSError as exc:
            raise TransportError(f"cannot run {args[0]!r}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise CommandTimeoutError(
                f"command {args[0]!r} did not finish within {timeout_s} s"
            ) from None
        assert proc.returncode is not None
        return CommandResult(
            args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def home(self) -> str:
        """The current user's home directory."""
        return os.path.expanduser("~")

    async def read_bytes(self, path: str) -> bytes:
        """Read a whole file."""
        with open(await self.expand(path), "rb") as fh:
            return fh.read()

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """Read the last ``max_bytes`` of a file."""
        with open(await self.expand(path), "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            return fh.read()

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write atomically through a temp file."""
        write_atomic(await self.expand(path), data, mode)

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """``os.makedirs``."""
        os.makedirs(await self.expand(path), mode=mode, exist_ok=exist_ok)

    async def exists(self, path: str) -> bool:
        """``os.path.exists``, except that errors other than "not found" propagate."""
        try:
            os.stat(await self.expand(path))
        except FileNotFoundError:
            return False
        return True

    async def remove_tree(self, path: str) -> None:
        """``shutil.rmtree``, ignoring a missing tree."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(await self.expand(path))
