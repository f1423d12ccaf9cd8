"""The state the parts of the engine share, and the one place a future is resolved.

Everything here runs on the executor's event-loop thread and is touched without locks. The
parts (submission, the monitor, collection, cancellation, recovery) each hold this core and
nothing of each other but what they call.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._loop import LoopThread
from ..config import ClusterConfig
from ..errors import BrokenClusterExecutor, TransportError
from ..future import ClusterFuture
from ..registry import JobRegistry
from ..schedulers.base import Scheduler
from ..transports.base import CommandResult, Transport
from ._model import Batch, Call, Task, result_path

__all__ = ["Core", "log"]

log = logging.getLogger("clustrix")


class Core:
    """Configuration, backend, transport and the engine's collections, for every part."""

    def __init__(
        self,
        config: ClusterConfig,
        scheduler: Scheduler,
        transport: Transport,
        loop: LoopThread,
        registry: JobRegistry,
        max_workers: int | None,
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.transport = transport
        self.loop = loop
        self.registry = registry
        self.max_workers = max_workers
        self.held: deque[Task] = deque()  # waiting for a slot, in submission order
        self.batches: list[Batch] = []  # submitted (or being submitted), not all collected
        self.call_of: dict[ClusterFuture[Any], Call] = {}  # every unresolved call
        self.to_cancel: set[str] = set()  # job IDs the next cancel command cancels
        self.finished_dirs: list[str] = []  # job dirs to delete at close (cleanup policy)
        self.consumed: list[str] = []  # files the next poll deletes (see Collector.consume)
        self.fetched: list[str] = []  # result files read: the next poll moves them to done/
        #: Log tails asked for by future.logs(): (path, max bytes) -> what the next poll read.
        self.tails: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        #: Counters: ``poll_cycles`` and ``commands.<program>`` run on the cluster.
        self.stats: Counter[str] = Counter()
        self.broken: BaseException | None = None
        #: Called on the loop thread after every poll cycle (progress displays): the
        #: futures' states are fresh then, and no extra command is run for them.
        self.poll_listeners: list[Callable[[], None]] = []
        self.background: set[asyncio.Task[Any]] = set()
        self.work_dir = self.jobs_root = self.worker_path = ""
        #: submit()/map() calls being pickled on users' threads right now (read on the loop
        #: thread: while one is, a burst of submissions is not over).
        self.arriving = 0
        #: :meth:`start` ran: the loop-bound events exist.
        self.started = False

    def start(self) -> None:
        """Create the loop-bound events (on the loop thread)."""
        self.wake_submitter = asyncio.Event()
        self.wake_monitor = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.started = True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; :meth:`Engine.close` waits for it."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def run(
        self, argv: Sequence[str], counts_as: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a command on the cluster, counting it (by program) in :attr:`stats`."""
        name = counts_as or posixpath.basename(argv[0])
        if name == "sh" and len(argv) > 3:
            name = f"sh:{argv[3]}"  # sh -c <script> <name> ...: the script's own label
        self.stats[f"commands.{name}"] += 1
        return await self.transport.run(argv, timeout_s=self.config.command_timeout_s, stdin=stdin)

    async def run_scheduler_command(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """:meth:`run` as :meth:`Scheduler.discover` wants it."""
        result = await self.run(argv)
        return result.returncode, result.stdout, result.stderr

    # ------------------------------------------------------------------ resolution
    def forget(self, call: Call) -> ClusterFuture[Any] | None:
        """Mark ``call`` resolved and drop every reference to its future and arguments."""
        future = call.future
        if future is not None:
            self.call_of.pop(future, None)
        call.resolved = True
        call.future = call.payload = None
        if call.batch is not None:
            call.batch.paths.pop(result_path(call.batch, call), None)
        return future

    def resolve(self, call: Call, value: Any, exception: BaseException | None) -> None:
        """Give ``call``'s future its outcome (unless the user cancelled it) and forget it."""
        future = self.forget(call)
        if future is None:
            return
        if call.batch is not None and exception is not None:
            call.batch.had_failure = True
        if not future._mark_running():
            return  # cancelled by the user: the outcome has no taker
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)

    def broken_error(self) -> BrokenClusterExecutor:
        """The error every call gets once the engine has stopped working."""
        error = BrokenClusterExecutor(f"the executor stopped working: {self.broken!r}")
        error.__cause__ = self.broken
        return error

    def break_(self, exc: BaseException) -> None:
        """A bug stopped the engine: fail every outstanding call rather than let it hang."""
        log.error("clustrix: executor engine failed", exc_info=exc)
        self.broken = exc
        error = self.broken_error()
        for call in list(self.call_of.values()):
            self.resolve(call, None, error)
        self.held.clear()
        self.batches.clear()
        self.update_idle()

    def update_idle(self) -> None:
        """Set the idle event once no call, submission or held task is left."""
        if not self.call_of and not self.batches and not self.held:
            self.idle.set()

    async def remove_quietly(self, paths: list[str]) -> None:
        """``rm -rf`` many paths with few commands; a failure is only logged."""
        for i in range(0, len(paths), 200):
            argv = ["rm", "-rf", "--", *paths[i : i + 200]]
            try:
                result = await self.run(argv)
            except TransportError as exc:
                log.info("clustrix: could not remove job files: %s", exc)
                return
            if not result.ok:
                log.info("clustrix: could not remove job files: %s", result.stderr.strip())
