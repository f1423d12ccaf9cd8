"""The engine: what an executor does on its event-loop thread, put together from its parts.

::

    Engine ── Core (shared state; the one place futures are resolved)
      ├── Submitter   held queue, batching into arrays, max_workers slots   (_submit.py)
      │     └── Sender  job directory + submit command, until accepted      (_send.py)
      ├── Monitor     the only poller: one round trip per cycle             (_poller.py)
      │     └── Collector  results, failures, retries, clean-up            (_collect.py)
      ├── Canceller   cancel / kill, one scheduler command per burst        (_cancel.py)
      └── Recovery    the job registry, recover()                          (_recovery.py)

Every method of the parts runs on the loop thread and touches the shared state without
locks; the public methods of :class:`Engine` are the thread-safe doors into it. The engine
knows the :class:`~clustrix.schedulers.base.Scheduler` and
:class:`~clustrix.transports.base.Transport` interfaces, never a particular one.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .._bundle import Bundle, cached_bundle, runtime_filename, worker_bundle
from .._loop import LoopThread
from .._remote_env import RemoteEnvironment, remember_runtime, runtime_known
from ..config import ClusterConfig, Resources
from ..future import ClusterFuture
from ..registry import JobRegistry
from ..schedulers.base import Scheduler
from ..transports.base import Transport
from ._cancel import Canceller
from ._collect import Collector
from ._core import Core
from ._model import Task
from ._poller import Monitor
from ._recovery import Recovery
from ._send import Sender
from ._submit import Submitter

__all__ = ["Engine"]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A background build nobody awaited (the cluster had the runtime): its error, if
    any, is the next build's to raise, not a warning at exit."""
    if not future.cancelled():
        future.exception()


class Engine:
    """Submission, polling and resolution of futures for one executor."""

    def __init__(
        self,
        config: ClusterConfig,
        scheduler: Scheduler,
        transport: Transport,
        loop: LoopThread,
        *,
        max_workers: int | None,
        python: str,
        build_environment: bool,
        registry: JobRegistry,
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.transport = transport
        self.python = python
        self.build_environment = build_environment
        self._loop = loop
        self._core = Core(config, scheduler, transport, loop, registry, max_workers)
        self._arriving_lock = threading.Lock()
        self._job_environment = dict(config.environment_variables)
        if config.max_result_mb is not None:  # the worker refuses bigger results
            self._job_environment["CLUSTRIX_MAX_RESULT_BYTES"] = str(
                int(config.max_result_mb * 1e6)
            )
        self._canceller = Canceller(self._core)
        self._recovery = Recovery(self._core, self)
        self._collector = Collector(self._core)
        self._monitor = Monitor(self._core, self._collector)
        self._loops: list[asyncio.Task[Any]] = []

    @property
    def max_workers(self) -> int | None:
        """At most this many jobs in flight (None: the cluster's own limit)."""
        return self._core.max_workers

    @property
    def stats(self) -> Counter[str]:
        """Counters of what the engine did on the cluster (see ``ClusterExecutor.stats``)."""
        return self._core.stats

    @property
    def work_dir(self) -> str:
        """``remote_work_dir``, expanded on the cluster."""
        return self._core.work_dir

    @property
    def worker_path(self) -> str:
        """Where the worker runtime zip is on the cluster."""
        return self._core.worker_path

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect, then ONE command (:meth:`RemoteEnvironment.check_python_and_layout`):
        the Python, the work directory, whether the worker runtime is there, and the
        scheduler's facts. The runtime zip goes along on that command's stdin unless this
        machine has seen it on the cluster: from the user's cache, or built while the
        connection is made (the first start after an upgrade: ~50 ms, a login takes
        longer). Seen there but gone, it is uploaded by one more command."""
        core = self._core
        core.start()
        cached: Bundle | None = None
        building: asyncio.Future[Bundle] | None = None
        if self.transport.round_trips_are_costly:
            cached = cached_bundle()
            if cached is None:  # never built here: likely missing there too
                building = asyncio.ensure_future(asyncio.to_thread(worker_bundle))
                building.add_done_callback(_retrieve)
        await self.transport.connect()
        work_dir = self.config.remote_work_dir
        if posixpath.isabs(work_dir) or not self.transport.round_trips_are_costly:
            work_dir = await self.transport.expand(work_dir)  # no round trip here
        # else the first command resolves "~" on the cluster: asking the transport would
        # cost an SFTP session and a realpath first (four round trips)
        name = runtime_filename()
        self.environment = RemoteEnvironment(
            self.config,
            self.transport,
            core.run,
            core.stats,
            python=self.python,
            build_environment=self.build_environment,
            work_dir=work_dir,
            runtime_name=name,
        )
        seen = (self.transport.location, self.config.remote_work_dir, name)
        along: bytes | None = None
        if self.transport.round_trips_are_costly and not runtime_known(*seen):
            if cached is not None:
                along = cached.data
            elif building is not None:
                # a build that failed is raised below, if the cluster lacks the runtime
                with contextlib.suppress(Exception):
                    along = (await building).data
        discovery = self.scheduler.discovery_argv()
        layout = await self.environment.check_python_and_layout(discovery, along)
        core.work_dir = layout.work_dir
        core.jobs_root = f"{core.work_dir}/jobs"
        core.worker_path = self.environment.worker_path
        self.scheduler.attach(work_dir=core.work_dir, jobs_root=core.jobs_root)
        if layout.discovery is not None:
            self.scheduler.read_discovery_answer(*layout.discovery)
        else:  # a backend without a one-command discovery (or none at all)
            await self.scheduler.discover(core.run_scheduler_command)
        if not layout.runtime_ok:
            if cached is not None:  # read before the connection: not read again
                bundle = cached
            else:
                bundle = await building if building is not None else worker_bundle()
            await self.environment.upload_runtime(bundle.data)
        remember_runtime(*seen)
        if core.max_workers is None:  # a backend without a queue caps how many run at once
            core.max_workers = self.scheduler.default_max_workers()
        self._submitter = Submitter(
            core,
            Sender(core, self.environment, self._job_environment),
            register=self._recovery.register,
            canceller=self._canceller,
        )
        self._loops = [core.spawn(self._submitter.loop()), core.spawn(self._monitor.loop())]

    async def close(self) -> None:
        """Finish pending cancellations and clean-ups, then close the transport."""
        core = self._core
        if core.started:
            await self._canceller.flush()
        if self._monitor.marked and self._monitor.news_marker is not None:
            core.finished_dirs.append(self._monitor.news_marker)  # in the same rm
        if core.finished_dirs:
            core.spawn(core.remove_quietly(core.finished_dirs))
            core.finished_dirs = []
        for task in self._loops:
            task.cancel()
        pending = [t for t in core.background if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        await self.transport.close()

    # ------------------------------------------------------------------ thread-safe doors
    @property
    def broken(self) -> BaseException | None:
        """Why the engine stopped working, or None."""
        return self._core.broken

    def enqueue(self, tasks: list[Task]) -> None:
        """Queue tasks for submission (from any thread)."""
        self._loop.call_soon(self._submitter.on_enqueue, tasks)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around one submit()/map() on the user's thread, pickling included: a burst of
        them is not over while one is under way, so the submitter waits for it (up to
        ``BATCH_MAX_WAIT_S``) even when pickling takes longer than the batch window."""
        with self._arriving_lock:
            self._core.arriving += 1
        try:
            yield
        finally:
            with self._arriving_lock:
                self._core.arriving -= 1

    def cancel_calls(self, futures: list[ClusterFuture[Any]]) -> None:
        """Forget cancelled calls; cancel their jobs in the scheduler (from any thread)."""
        self._loop.call_soon(self._canceller.on_cancel, futures)

    def kill_call(self, future: ClusterFuture[Any]) -> bool:
        """Stop the job running ``future``'s call (blocking)."""
        return self._loop.run(self._canceller.kill(future))

    def read_log(self, future: ClusterFuture[Any], stream: str) -> str:
        """The text of a future's stdout or stderr log (blocking)."""
        path = future.stdout_path if stream == "out" else future.stderr_path
        if path is None:
            return ""
        try:
            data = self._loop.run(self.transport.read_bytes(path))
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace")

    def tail_logs(self, future: ClusterFuture[Any], max_bytes: int) -> tuple[bytes, bytes]:
        """The last ``max_bytes`` of a future's stdout and stderr logs (blocking).

        While its job runs, the next poll reads them in its round trip (started now, and
        shared by every call that asks meanwhile); otherwise one read each."""
        return self._loop.run(self._tail_logs(future, max_bytes))

    async def _tail_logs(self, future: ClusterFuture[Any], max_bytes: int) -> tuple[bytes, bytes]:
        out_path, err_path = future.stdout_path, future.stderr_path
        if out_path is None or err_path is None:
            return b"", b""  # not started: no log yet
        paths = out_path, err_path
        core = self._core
        call = core.call_of.get(future)
        task = call.task if call is not None else None
        running = task is not None and task.job_id is not None and not task.finished
        if running and core.broken is None:
            waiters = []
            for path in paths:
                waiter = core.tails.get((path, max_bytes))
                if waiter is None:
                    waiter = core.tails[(path, max_bytes)] = (
                        asyncio.get_running_loop().create_future()
                    )
                waiters.append(waiter)
            core.wake_monitor.set()
            # bounded: a poll that does not come (the job just ended, the link is down)
            # leaves it to the direct read below
            timeout_s = core.config.command_timeout_s + core.config.poll_interval_max_s
            polled = asyncio.gather(*waiters, return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                out, err = await asyncio.wait_for(asyncio.shield(polled), timeout_s)
                if isinstance(out, bytes) and isinstance(err, bytes):
                    return out, err
        out, err = await asyncio.gather(*(self._read_tail(p, max_bytes) for p in paths))
        return out, err

    async def _read_tail(self, path: str, max_bytes: int) -> bytes:
        try:
            return await self.transport.read_tail(path, max_bytes)
        except FileNotFoundError:
            return b""

    def slots(self, resources: Resources) -> int | None:
        """How many jobs can run at once (for default chunking)."""
        known = self.scheduler.slots(resources)
        max_workers = self._core.max_workers
        if max_workers is not None:
            return min(max_workers, known) if known else max_workers
        return known

    async def cancel_pending(self) -> None:
        """Cancel every call that has not started; one scheduler command for all."""
        await self._canceller.cancel_pending()

    async def wait_idle(self) -> None:
        """Return once no call is outstanding."""
        await self._core.idle.wait()

    def add_poll_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` on the loop thread after every poll cycle (thread-safe);
        returns the function that removes it again."""
        self._loop.call_soon(self._core.poll_listeners.append, listener)

        def remove() -> None:
            def drop() -> None:
                if listener in self._core.poll_listeners:
                    self._core.poll_listeners.remove(listener)

            self._loop.call_soon(drop)

        return remove

    async def recover(self) -> list[ClusterFuture[Any]]:
        """Futures for the calls of submissions whose submitting process has died."""
        return await self._recovery.recover()
