"""``LocalPoolEngine``: the engine of ``ClusterExecutor()`` on this machine (``cluster_type=
"local"`` without ``cluster_host``): ``max_workers`` warm worker processes that take calls.

::

    user thread                 executor's loop thread                    worker processes
    -----------                 ----------------------                    ----------------
    ex.submit(fn, *args) ──► enqueue: the job QUEUED, job ID when it starts
                              Dispatcher: a free worker takes the next job ──► pipe: (call id,
                                (one call at a time; a chunk at once)          fn bytes once
                                                                              per worker, args)
                                                                              run_call(); the
                                                                              prints go to the
                              result record (pickle, no file) ◄────────────── worker's logs
    future.result() ◄──────── decode_result, set_result / set_exception
                              worker died (crash, kill(), time limit): its call fails with
                              JobFailedError(exit code); a new worker takes its place

It offers the executor what :class:`clustrix._engine.Engine` does (the
:class:`clustrix._engines.ExecutorEngine` protocol) and reuses its model (``Task``/``Call``
and their lifecycle), the worker's :func:`clustrix.worker.run_call` and the client's
:func:`clustrix._serialize.decode_result`; nothing travels through job directories, so there
is nothing to poll, to recover or to ship: the workers import what this process imports.
The work directory is checked once, as for every backend (the worker logs live there:
``<remote_work_dir>/jobs/pool-<uuid>/logs/<worker>.out|err``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .._engine._model import Task
from .._loop import LoopThread
from .._remote_env import RemoteEnvironment
from ..config import ClusterConfig, Resources
from ..future import ClusterFuture
from ..lifecycle import JobState
from ..schedulers.local import LocalScheduler
from ..transports.base import CommandResult
from ..transports.local import LocalTransport
from . import _worker
from ._core import LOG_SPAN, PoolCore
from ._dispatch import Dispatcher
from ._process import WorkerProcess, default_path, python_argv

__all__ = ["LocalPoolEngine"]

log = logging.getLogger("clustrix")

#: How long close() waits for an idle worker to exit before killing it.
CLOSE_TIMEOUT_S = 5.0


class LocalPoolEngine:
    """Warm worker processes on this machine, behind the executor's engine interface."""

    def __init__(
        self, config: ClusterConfig, loop: LoopThread, *, max_workers: int | None, python: str
    ) -> None:
        self.config = config
        #: What the executor asks the backend (checkpointing, resources it cannot honour).
        self.scheduler = LocalScheduler.from_config(config)
        self.scheduler.unsupported_resources = frozenset()  # the pool enforces time_limit_min
        #: Files only (the filesystem methods of the executor); no command runs through it
        #: but the work directory check.
        self.transport = LocalTransport()
        self.python = python
        self._loop = loop
        self._max_workers = max_workers or os.cpu_count() or 1
        self._stats: Counter[str] = Counter()
        self._listeners: list[Callable[[], None]] = []
        self._listeners_due: asyncio.TimerHandle | None = None
        self._work_dir = ""
        self._core: PoolCore | None = None
        self._dispatcher: Dispatcher | None = None
        self._env = dict(os.environ)
        self._env.update(config.environment_variables)
        if config.max_result_mb is not None:  # run_call refuses bigger results
            self._env["CLUSTRIX_MAX_RESULT_BYTES"] = str(int(config.max_result_mb * 1e6))

    # ------------------------------------------------------------------ what it is
    @property
    def max_workers(self) -> int | None:
        """How many worker processes run calls at once."""
        return self._max_workers

    @property
    def stats(self) -> Counter[str]:
        """``pool.submissions`` (submit/map calls), ``pool.calls`` (calls sent to
        workers), ``pool.workers_started``, ``pool.worker_exits`` (a worker that died or was
        killed), ``commands.setup`` (the work directory check)."""
        return self._stats

    @property
    def work_dir(self) -> str:
        """``remote_work_dir``, expanded."""
        return self._work_dir

    @property
    def worker_path(self) -> str:
        """The module the worker processes run."""
        return _worker.__file__

    @property
    def broken(self) -> BaseException | None:
        """Why the pool stopped working, or None."""
        return self._core.broken if self._core is not None else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Check the Python and the work directory; start the workers (not waited for:
        the first calls wait in the queue until a worker is ready)."""
        await self.transport.connect()
        self._work_dir = await self.transport.expand(self.config.remote_work_dir)
        environment = RemoteEnvironment(
            self.config,
            self.transport,
            self._run,
            self._stats,
            python=self.python,
            build_environment=False,
            work_dir=self._work_dir,
        )
        await environment.check_python_and_layout()
        pool_dir = f"{self._work_dir}/jobs/pool-{uuid.uuid4().hex}"
        os.makedirs(f"{pool_dir}/logs", mode=0o700)
        os.chmod(pool_dir, 0o700)  # makedirs applies the mode to the leaf only
        self._core = PoolCore(pool_dir, self._stats)
        self._core.spawn = self._spawn
        self._core.changed = self._changed
        self._dispatcher = Dispatcher(self._core)
        self._background: set[asyncio.Task[Any]] = set()
        self._python_argv = python_argv(self.python, self.config.module_loads)
        for _ in range(self._max_workers):
            self._spawn()

    def _spawn(self) -> None:
        """Start one more worker process (in the background)."""
        core, dispatcher = self._core, self._dispatcher
        if core is None or dispatcher is None or core.closing:
            return
        serial = self._stats["pool.workers_started"]
        self._stats["pool.workers_started"] += 1
        worker = WorkerProcess(serial, f"{core.pool_dir}/logs", dispatcher)
        core.workers.add(worker)

        async def spawn() -> None:
            try:
                await worker.spawn(self._python_argv, core.pool_dir, self._env, default_path())
            except OSError as exc:
                what = f"cannot run {self._python_argv[0]!r}: {exc}"
                dispatcher.endings.startup_failed(worker, what)

        task = asyncio.ensure_future(spawn())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop the workers (they exit once idle), clean up as ``cleanup`` says."""
        core = self._core
        if core is not None:
            core.closing = True
            await asyncio.gather(*self._background, return_exceptions=True)
            await asyncio.gather(*(w.close(CLOSE_TIMEOUT_S) for w in list(core.workers)))
            error = RuntimeError("the executor was shut down before this call ran")
            for call in list(core.call_of.values()):
                core.resolve(call, None, error)
            while core.queue:
                core.end_job(core.queue.popleft(), JobState.CANCELLED, "CANCELLED")
            policy = self.config.cleanup
            if policy == "always" or (policy == "on_success" and not core.had_failure):
                shutil.rmtree(core.pool_dir, ignore_errors=True)
        if self._listeners_due is not None:
            self._listeners_due.cancel()
        await self.transport.close()

    async def _run(
        self, argv: Sequence[str], counts_as: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command here, counted in :attr:`stats` (the work directory check)."""
        self._stats[f"commands.{counts_as or posixpath.basename(argv[0])}"] += 1
        return await self.transport.run(argv, timeout_s=self.config.command_timeout_s, stdin=stdin)

    # ------------------------------------------------------------------ thread-safe doors
    def _parts(self) -> Dispatcher:
        assert self._dispatcher is not None, "the engine was not started"
        return self._dispatcher

    def enqueue(self, tasks: list[Task]) -> None:
        """Queue jobs (from any thread)."""
        self._loop.call_soon(self._parts().on_enqueue, tasks)

    def arriving(self) -> contextlib.AbstractContextManager[None]:
        """Around a submit()/map() on the user's thread: nothing to wait for here (a call
        goes to a free worker at once, there is no burst to gather)."""
        return contextlib.nullcontext()

    def cancel_calls(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls (from any thread)."""
        self._loop.call_soon(self._parts().endings.on_cancel, futures)

    def kill_call(self, future: ClusterFuture[Any]) -> bool:
        """Kill the worker running ``future``'s call (blocking)."""
        return self._loop.run(self._parts().endings.kill(future))

    def read_log(self, future: ClusterFuture[Any], stream: str) -> str:
        """The output of ``future``'s call so far: its part of its worker's log (from any
        thread: a plain file read)."""
        return self._read_span(future, stream, None).decode(errors="replace")

    def tail_logs(self, future: ClusterFuture[Any], max_bytes: int) -> tuple[bytes, bytes]:
        """The last ``max_bytes`` of the output of ``future``'s call, stdout and stderr."""
        return self._read_span(future, "out", max_bytes), self._read_span(future, "err", max_bytes)

    def _read_span(self, future: ClusterFuture[Any], stream: str, tail: int | None) -> bytes:
        span = getattr(future, LOG_SPAN, None)
        path = future.stdout_path if stream == "out" else future.stderr_path
        if span is None or path is None:
            return b""  # not started
        start, end = (span[0], span[1]) if stream == "out" else (span[2], span[3])
        try:
            with open(path, "rb") as fh:
                if end is None:  # still running: up to what it wrote so far
                    end = fh.seek(0, os.SEEK_END)
                if tail is not None:
                    start = max(start, end - tail)
                fh.seek(start)
                return fh.read(max(0, end - start))
        except OSError:  # removed at shutdown
            return b""

    def slots(self, resources: Resources) -> int | None:
        """How many calls run at once: one per worker."""
        return self._max_workers

    async def cancel_pending(self) -> None:
        """Cancel every call that has not started."""
        await self._parts().endings.cancel_pending()

    async def wait_idle(self) -> None:
        """Return once no call is outstanding."""
        await self._parts().core.idle_event.wait()

    def add_poll_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` on the loop thread after calls started or ended, at most once
        per ``poll_interval_min_s`` (there are no polls here); returns its remover."""
        self._loop.call_soon(self._listeners.append, listener)

        def remove() -> None:
            def drop() -> None:
                if listener in self._listeners:
                    self._listeners.remove(listener)

            self._loop.call_soon(drop)

        return remove

    def _changed(self) -> None:
        if self._listeners and self._listeners_due is None:
            loop = asyncio.get_running_loop()
            self._listeners_due = loop.call_later(
                self.config.poll_interval_min_s, self._call_listeners
            )

    def _call_listeners(self) -> None:
        self._listeners_due = None
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a display must never stop the pool
                log.exception("clustrix: poll listener failed")

    async def recover(self) -> list[ClusterFuture[Any]]:
        """Nothing to adopt: the calls of a process that died died with its workers."""
        return []
