"""ClusterExecutor: a :class:`concurrent.futures.Executor` whose workers are cluster jobs.

How a call travels::

    user thread                      executor's event-loop thread (one per executor)   cluster
    -----------                      -----------------------------------------------   -------
    ex.submit(fn, *args)
      payload = cloudpickle(fn, args)   (fails here, naming the bad object)
      future = ClusterFuture (PENDING) ─► engine: held while max_workers jobs are in flight
                                        gather the burst into one submission:
                                          upload job dir (SFTP / os): secret, job.sh, tasks/
                                          scheduler.submit_argv ─────────────────────────► sbatch
                                          future.job_id = "12345_7"
                                        monitor, once per cycle for ALL jobs:
                                          squeue/ps + exit files + result files ◄──────── worker
                                          read result, check HMAC, unpickle          writes
    future.result()  ◄────────────────── set_result / set_exception (user's own     results/
                                          exception type, remote traceback as cause)

The executor owns policy (``max_workers``, chunking, shutdown); the engine
(:mod:`clustrix._engine`) owns the loop-side state; a scheduler backend renders scripts and
parses output; a transport runs commands and moves files. None of them knows the others'
concrete classes.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

from ._chunked import chunk_payloads, results_of_chunks
from ._engine import Engine, Task
from ._engines import ExecutorEngine, uses_local_pool
from ._factory import make_scheduler, make_transport
from ._localpool.engine import LocalPoolEngine
from ._loop import LoopThread
from ._serialize import Payload, dumps_arguments, dumps_call, dumps_function
from .config import ClusterConfig, Resources
from .errors import BrokenClusterExecutor, ConfigError
from .filesystem import FileSystemMixin
from .future import ClusterFuture
from .packaging import EnvironmentPlan, Packager
from .registry import JobRegistry, default_state_dir
from .schedulers.base import Scheduler
from .transports.base import Transport

if TYPE_CHECKING:
    from .progress import Progress

__all__ = ["ClusterExecutor", "ExecutorView", "default_python"]

T = TypeVar("T")

# Strong references: an executor that the user dropped without shutting down still has
# jobs whose results must not be lost; at exit we wait for them (as ProcessPoolExecutor).
_live_executors: set[ClusterExecutor] = set()
#: map() plans the environment from the function and this many first calls' arguments.
_PLAN_SAMPLE = 100
_executor_ids = itertools.count(1)


def default_python(config: ClusterConfig) -> str:
    """The Python jobs run with: ``python_executable``, else this interpreter for a local
    cluster, ``python3`` on a remote one."""
    if config.python_executable:
        return config.python_executable
    return sys.executable if not config.is_remote else "python3"


def job_name_for(fn: Callable[..., Any], resources: Resources) -> str:
    """The job name: the configured one, or ``clustrix-<function name>``; safe characters."""
    name = resources.job_name or f"clustrix-{getattr(fn, '__name__', type(fn).__name__)}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "clustrix"


class _Submitter:
    """What an executor and its per-call-resources views share: submit and map."""

    _executor: ClusterExecutor
    _resources: Resources

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> ClusterFuture[T]:
        """Run ``fn(*args, **kwargs)`` as a cluster job; return its future at once.

        ``fn`` and every argument are pickled here, so one that cannot be sent fails now
        with a :class:`clustrix.SerializationError` naming it.
        """
        executor = self._executor
        with executor._engine.arriving():  # a burst is not over while this one pickles
            plan = executor._plan(fn, [args], kwargs)
            payload = dumps_call(fn, args, kwargs)
            (future,) = executor._enqueue(fn, [payload], 1, self._resources, plan)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like :meth:`concurrent.futures.Executor.map`, as a pool of cluster jobs.

        Results come in input order; ``timeout`` is one deadline for the whole iteration,
        counted from this call; an exception is raised when its result is reached; leaving
        the iterator early (or an exception) cancels the calls that have not started, which
        then never start. By default (``chunksize=None``) the calls go out as one job array
        of about as many tasks as the cluster can run at once, and each task takes the next
        call nobody has taken yet: a slow call holds up only the task that runs it.
        ``chunksize=k`` runs exactly k calls per job instead (``chunksize=1``: one scheduler
        job per call; on the local pool a chunk travels as one message, as in
        ``ProcessPoolExecutor``). A call that raises fails only its own result.

        ``progress=True`` shows how many calls are done, pending, running and failed while
        they run, in a terminal or a notebook (:class:`clustrix.Progress`), from the polls
        the executor makes anyway.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        executor = self._executor
        if chunksize is not None and chunksize > 1 and not progress and executor._chunk_calls:
            # zip stops at the shortest iterable, as the builtin map does
            payloads = chunk_payloads(fn, list(zip(*iterables)), chunksize)  # noqa: B905
            chunks = executor._enqueue(fn, payloads, 1, self._resources)
            return results_of_chunks(chunks, deadline)
        futures = self.submit_map(fn, *iterables, chunksize=chunksize)
        shown = _progress_of(fn, futures) if progress else None
        return _results_in_order(futures, deadline, shown)

    def submit_map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        progress: bool = False,
    ) -> list[ClusterFuture[T]]:
        """The futures of ``map``: one per call, in input order (see :meth:`map`).

        Every call is pickled before any is submitted: a bad argument submits nothing.
        ``progress=True``: as for :meth:`map`, shown until the last call is done.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1 (or None for automatic), got {chunksize}")
        # zip stops at the shortest iterable, as the builtin map does
        calls = list(zip(*iterables))  # noqa: B905
        plan = self._executor._plan(fn, calls[:_PLAN_SAMPLE], {})
        function = dumps_function(fn)  # once: every call shares these bytes
        payloads = [(function, dumps_arguments(args, {}, call=i)) for i, args in enumerate(calls)]
        futures = self._executor._enqueue(fn, payloads, chunksize, self._resources, plan)
        if progress:
            _progress_of(fn, futures)  # closes itself with the last call
        return futures

    def options(self, **resources: Any) -> ExecutorView:
        """A view of the same executor whose jobs ask for other resources.

        ``ex.options(cores=4, mem_gb=8).submit(fn, x)`` shares the executor's connection and
        monitor; the user's keyword arguments stay theirs.
        """
        merged = self._resources.model_dump()
        merged.update(resources)
        return ExecutorView(self._executor, self._executor.config.resources(**merged))


def _result_or_cancel(future: ClusterFuture[T], timeout: float | None = None) -> T:
    try:
        return future.result(timeout)
    finally:  # a timed-out call is cancelled too (as CPython's)
        future.cancel()


def _progress_of(fn: Callable[..., Any], futures: list[ClusterFuture[T]]) -> Progress:
    from .progress import Progress  # only for those who ask

    return Progress(futures, desc=getattr(fn, "__name__", None))


def _results_in_order(
    futures: list[ClusterFuture[T]], deadline: float | None, progress: Progress | None = None
) -> Iterator[T]:
    # As in CPython's Executor.map: pop from a reversed list and keep no name for the
    # future while suspended at the yield, so each yielded result is referenced only by
    # the consumer; cancel what is left however the loop ends.
    futures.reverse()
    try:
        while futures:
            if deadline is None:
                yield _result_or_cancel(futures.pop())
            else:
                yield _result_or_cancel(futures.pop(), deadline - time.monotonic())
    finally:
        for future in futures:
            future.cancel()
        if progress is not None:
            progress.close()


class ClusterExecutor(_Submitter, FileSystemMixin, Executor):
    """An Executor whose workers are jobs on a cluster (or local processes by default).

    ``ClusterExecutor()`` runs each job as a local process (``cluster_type="local"``);
    ``ClusterExecutor(ClusterConfig(cluster_type="slurm", cluster_host=...))`` runs them as
    SLURM jobs over one SSH connection. ``overrides`` set config fields by name. Without a
    config, ``ClusterConfig.load()`` reads ``$CLUSTRIX_CONFIG`` and ``CLUSTRIX_*`` variables.

    Done-callbacks of its futures run on the executor's event-loop thread: keep them short
    and never block in them on another future of the same executor.

    ``scheduler`` and ``transport`` replace what the config would build (as httpx's
    ``Client(transport=...)``): for tests with the fakes of ``tests/fakes.py``, or to embed
    an already configured backend.

    ``auth_prompt`` answers what an SSH login asks and the config does not give (a key's
    passphrase, a one-time code): called with the question, returns the answer. Default: the
    terminal, or the notebook in Jupyter; see docs/tutorials/login.md.
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        scheduler: Scheduler | None = None,
        transport: Transport | None = None,
        auth_prompt: Callable[[str], str] | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = ClusterConfig.load(**overrides)
        elif not isinstance(config, ClusterConfig):
            raise TypeError(f"config must be a ClusterConfig, got {type(config).__name__}")
        else:
            config = config.with_overrides(**overrides)
        self.config = config
        self._executor = self
        self._resources = config.resources()
        max_workers = config.max_workers
        if max_workers is None and config.cluster_type == "local":
            max_workers = os.cpu_count() or 1
        python = default_python(config)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._next_call = itertools.count()
        self._packager = (
            Packager(
                exclude_modules=config.exclude_modules,
                extra_requirements=config.extra_requirements,
            )
            if config.packaging
            else None
        )
        build_environment = (
            config.build_environment if config.build_environment is not None else config.is_remote
        )
        pooled = uses_local_pool(config, scheduler=scheduler, transport=transport)
        # The local pool's workers import what this process imports: nothing to ship.
        self._ships_code = not pooled
        # ... and a call costs them so little that map's chunks travel as one call each.
        self._chunk_calls = pooled
        self._loop = LoopThread(f"clustrix-executor-{next(_executor_ids)}")
        self._engine: ExecutorEngine
        if pooled:
            self._engine = LocalPoolEngine(
                config, self._loop, max_workers=max_workers, python=python
            )
        else:
            self._engine = Engine(
                config,
                scheduler if scheduler is not None else make_scheduler(config),
                transport
                if transport is not None
                else make_transport(config, auth_prompt=auth_prompt),
                self._loop,
                max_workers=max_workers,
                python=python,
                build_environment=build_environment and config.packaging,
                registry=JobRegistry(config.state_dir or default_state_dir()),
            )
        try:
            self._loop.run(self._engine.start())
        except BaseException:
            self._loop.run(self._engine.close())
            self._loop.stop()
            raise
        _live_executors.add(self)

    @property
    def max_workers(self) -> int | None:
        """At most this many jobs are in flight at once (None: the cluster's own limit)."""
        return self._engine.max_workers

    def recover(self) -> list[ClusterFuture[Any]]:
        """Reattach to the work of a client that died: futures for every call of the
        submissions it left on this cluster (same host and ``remote_work_dir``).

        The jobs are not resubmitted: finished ones deliver their results at once, the
        others when they end. Futures come in submission order; each keeps the
        ``call_index`` the dead process gave it (a map's calls are consecutive). The
        registry lives in ``state_dir``; see docs/reliability.md.
        """
        return self._loop.run(self._engine.recover())

    def stats(self) -> dict[str, int]:
        """Counters of what the executor did on the cluster.

        ``poll_cycles`` (status round trips), ``commands.<program>`` (e.g.
        ``commands.sbatch``, ``commands.squeue``: at most one per poll cycle, whatever the
        number of jobs; ``commands.poll``: the cycles that only listed the job directories,
        the scheduler's query budget being spent, see ``poll_rate_max_per_s``), and over
        SSH ``poll_waits_news`` (cycles that waited on the cluster and went on at a new
        result, exit or claim file before their pause was over) and ``poll_waits_cut_short``
        (such cycles started again for a submission or ``future.logs()``), so the cost of
        a workload can be checked, not guessed.
        """
        if not self._loop.running:
            return dict(self._engine.stats)

        async def snapshot() -> dict[str, int]:
            return dict(self._engine.stats)

        return self._loop.run(snapshot())

    def plan_environment(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> EnvironmentPlan:
        """What submitting ``fn(*args, **kwargs)`` would ship and install on the cluster.

        ``print(ex.plan_environment(fn, x))`` lists the pinned requirements, the local
        modules shipped as source, and imports found nowhere here.
        """
        if self._packager is None:
            raise RuntimeError("packaging is turned off for this executor (packaging=False)")
        plan = self._packager.plan(fn, list(args), kwargs)
        return self._packager.add_payloads(plan, [dumps_call(fn, args, kwargs)])

    def _plan(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], kwargs: dict[str, Any]
    ) -> EnvironmentPlan | None:
        if self._packager is None or not self._ships_code:
            return None
        return self._packager.plan(fn, [arg for args in calls for arg in args], kwargs)

    def _enqueue(
        self,
        fn: Callable[..., Any],
        payloads: list[Payload],
        chunksize: int | None,
        resources: Resources,
        plan: EnvironmentPlan | None = None,
    ) -> list[ClusterFuture[Any]]:
        if plan is not None and self._packager is not None:  # what the pickles name too
            plan = self._packager.add_payloads(plan, payloads)
        job_name = job_name_for(fn, resources)
        if (
            resources.checkpoint_before_s is not None
            and not self._engine.scheduler.supports_requeue
        ):
            raise ConfigError(
                f"checkpoint_before_s={resources.checkpoint_before_s} needs a scheduler that "
                f"signals jobs before their time limit and requeues them; "
                f"cluster_type={self.config.cluster_type!r} does not: use cluster_type='slurm' "
                "or leave checkpoint_before_s unset"
            )
        asked = set(resources.model_dump(exclude_defaults=True))
        unsupported = sorted(asked & self._engine.scheduler.unsupported_resources)
        if unsupported:
            raise ConfigError(
                f"cluster_type={self.config.cluster_type!r} cannot honour "
                f"{', '.join(unsupported)}: leave {'it' if len(unsupported) == 1 else 'them'} "
                f"unset, or {self._engine.scheduler.unsupported_fix}"
            )
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._engine.broken is not None:
                raise BrokenClusterExecutor(
                    f"the executor stopped working: {self._engine.broken!r}"
                ) from self._engine.broken
            futures = [ClusterFuture[Any](self._engine, next(self._next_call)) for _ in payloads]
            if chunksize is None and len(payloads) > 1:
                # Self-scheduled: as many tasks as can run at once, each taking the next
                # call nobody has taken yet, so a slow call holds up only its own task.
                workers = min(len(payloads), self._engine.slots(resources) or 1)
                tasks = Task.pooled(futures, payloads, resources, job_name, plan, workers)
            else:
                size = chunksize or 1
                tasks = [
                    Task.of(
                        futures[i : i + size], payloads[i : i + size], resources, job_name, plan
                    )
                    for i in range(0, len(payloads), size)
                ]
            if tasks:
                self._engine.enqueue(tasks)
        return futures

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait.

        ``cancel_futures=True`` cancels every call that has not started, removing queued
        jobs from the scheduler with one command. ``wait=True`` returns once every running
        call has finished and the connection is closed. Safe to call more than once.
        """
        with self._shutdown_lock:
            already = self._shutdown
            self._shutdown = True
        if not self._loop.running:
            self._loop.stop()
            return
        if cancel_futures:
            self._loop.run(self._engine.cancel_pending())
        if not already:
            # One closing, whoever asks for it: an earlier shutdown(wait=False) (a with
            # block ends with shutdown(wait=True)) must not race a second close.
            self._closing = self._loop.submit(self._close_when_idle())
        if wait:
            self._closing.result()
            self._loop.stop()
        _live_executors.discard(self)

    async def _close_when_idle(self) -> None:
        await self._engine.wait_idle()
        await self._engine.close()
        self._loop.stop_soon()  # no thread left behind by shutdown(wait=False)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return (
            f"<ClusterExecutor {self.config.cluster_type} on "
            f"{self._engine.transport.location} ({state})>"
        )


class ExecutorView(_Submitter, Executor):
    """An executor's submit/map with other job resources (from ``options()``).

    Shares the executor's connection, monitor and ``max_workers``; shutting a view down does
    nothing: shut down the executor it came from.
    """

    def __init__(self, executor: ClusterExecutor, resources: Resources) -> None:
        self._executor = executor
        self._resources = resources

    @property
    def resources(self) -> Resources:
        """The resources every job of this view asks for."""
        return self._resources

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A view owns nothing to shut down; the executor it came from does."""


@atexit.register
def _shutdown_all() -> None:
    # Like ProcessPoolExecutor: at interpreter exit, wait for what is still outstanding.
    for executor in list(_live_executors):
        executor.shutdown(wait=True)
