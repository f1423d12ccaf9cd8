"""One worker process of the local pool, seen from the executor's event loop.

:class:`WorkerProcess` starts ``python -c BOOTSTRAP`` (a new interpreter: never a ``fork`` of
the threaded executor) with a pipe each way, sends it calls and hands what comes back to the
dispatcher (:class:`WorkerEvents`). It keeps what the dispatcher needs to know about the
process: the job it runs, the calls sent and not answered (in order), the function bytes the
process holds, and where the current call's output starts in the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .._engine._model import Call, Task
from . import _worker

__all__ = ["WorkerEvents", "WorkerProcess"]


class WorkerEvents(Protocol):
    """What the dispatcher does when a worker speaks or ends (on the loop thread)."""

    def on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None: ...
    def on_exit(self, worker: WorkerProcess, returncode: int) -> None: ...


class WorkerProcess(asyncio.SubprocessProtocol):
    """A warm worker: its process and pipes, and what it is doing."""

    def __init__(self, serial: int, log_dir: str, events: WorkerEvents) -> None:
        self.serial = serial  # the nth worker of the pool: names its logs
        self.out_path = f"{log_dir}/{serial}.out"
        self.err_path = f"{log_dir}/{serial}.err"
        self.events = events
        self.pid = 0
        self.ready = False  # said hello: takes calls
        self.exited = asyncio.get_running_loop().create_future()
        #: The job (task) it runs; None: idle (or not ready yet).
        self.task: Task | None = None
        #: Calls sent and not answered yet, in the order it runs them.
        self.running: deque[Call] = deque()
        #: The function bytes the process holds (a map's are sent once per worker).
        self.function: bytes | None = None
        #: Sizes of its logs when the call at the head of ``running`` started.
        self.out_pos = self.err_pos = 0
        #: Why the executor stopped it (kill(), a time limit), or None.
        self.stopped_for: str | None = None
        #: The time-limit timer of the call at the head of ``running``.
        self.timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None

    async def spawn(
        self, python: Sequence[str], pool_dir: str, env: Mapping[str, str], path: list[str]
    ) -> None:
        """Start the process (``python``: the argv that runs the interpreter)."""
        clustrix_dir = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        argv = [*python, "-c", _worker.BOOTSTRAP, clustrix_dir, pool_dir, str(self.serial)]
        err = os.open(self.err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.subprocess_exec(
                lambda: self,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=dict(env),
                umask=0o077,  # as the jobs of the local backend: what a call creates is private
            )
        finally:
            os.close(err)
        self._transport = transport
        self.pid = transport.get_pid()
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self._stdin = stdin
        stdin.write(_worker.encode({"path": path, "out": self.out_path}))

    # ------------------------------------------------------------------ talking to it
    def send(self, calls: list[tuple[int, bytes | None, bytes]]) -> None:
        """Send calls to run one after the other (buffered by the loop if the pipe is full)."""
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(_worker.encode(calls))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """Messages from the worker's stdout pipe."""
        self._buffer += data
        for message in _worker.decode_frames(self._buffer):
            assert isinstance(message, tuple)
            self.events.on_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        """The process has exited and both pipes are closed: every message has arrived."""
        returncode = self._transport.get_returncode() if self._transport is not None else None
        if returncode is None:
            returncode = -signal.SIGKILL
        if not self.exited.done():
            self.exited.set_result(returncode)
        self.events.on_exit(self, returncode)

    # ------------------------------------------------------------------ stopping it
    def kill(self, why: str) -> None:
        """SIGKILL the process; :meth:`connection_lost` follows."""
        self.stopped_for = self.stopped_for or why
        if self._transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self._transport.kill()

    async def close(self, timeout_s: float) -> None:
        """End its stdin (the worker exits when idle); kill it after ``timeout_s``."""
        if self._stdin is not None:
            self._stdin.close()
        if self._transport is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout_s)
        except asyncio.TimeoutError:
            self.kill("shutdown")
            await self.exited
        self._transport.close()


def exit_status(returncode: int) -> int:
    """A process's return code as a shell reports it (128 + n when killed by signal n)."""
    return 128 - returncode if returncode < 0 else returncode


def python_argv(python: str, module_loads: Sequence[str]) -> list[str]:
    """The argv that starts the worker's interpreter (after ``module load``, if any)."""
    if not module_loads:
        return [python]
    from ..schedulers.base import setup_lines

    script = "\n".join([*setup_lines(module_loads, {}), 'exec "$@"'])
    return ["sh", "-c", script, "clustrix-pool-worker", python]


def default_path() -> list[str]:
    """The executor's ``sys.path``, for the worker (what this process can import)."""
    return list(sys.path)
