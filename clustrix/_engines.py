"""What the executor needs from an engine, and which engine a configuration gets.

Two engines implement :class:`ExecutorEngine`:

- :class:`clustrix._engine.Engine`: jobs through a scheduler backend and a transport (job
  directories, one poll round trip per cycle): every backend;
- :class:`clustrix._localpool.engine.LocalPoolEngine`: warm worker processes on this machine
  that take calls over pipes, for ``cluster_type="local"`` without ``cluster_host`` (the
  embedded default), unless a scheduler or transport is given to the executor, or
  ``build_environment=True`` asks for a virtual environment per job.

``CLUSTRIX_LOCAL_ENGINE=jobs`` (environment variable) gives the local backend the jobs engine
instead: one detached OS process per job, as on a cluster (what ``recover()`` can adopt after
the client died); ``pool`` is the default.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError

if TYPE_CHECKING:
    from ._engine import Task
    from .config import ClusterConfig, Resources
    from .future import ClusterFuture
    from .schedulers.base import Scheduler
    from .transports.base import Transport

__all__ = ["LOCAL_ENGINE_ENV", "ExecutorEngine", "local_engine", "uses_local_pool"]

#: The environment variable that picks the engine of the local backend: ``pool``/``jobs``.
LOCAL_ENGINE_ENV = "CLUSTRIX_LOCAL_ENGINE"
_LOCAL_ENGINES = ("pool", "jobs")
_DEFAULT_LOCAL_ENGINE = "pool"


class ExecutorEngine(Protocol):
    """The engine's side of an executor: everything but the doors runs on its loop thread."""

    @property
    def config(self) -> ClusterConfig: ...
    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def python(self) -> str: ...
    @property
    def max_workers(self) -> int | None: ...
    @property
    def stats(self) -> Counter[str]: ...
    @property
    def work_dir(self) -> str: ...
    @property
    def worker_path(self) -> str: ...
    @property
    def broken(self) -> BaseException | None: ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def cancel_pending(self) -> None: ...
    async def wait_idle(self) -> None: ...
    async def recover(self) -> list[ClusterFuture[Any]]: ...

    # thread-safe doors (the futures' _JobControl among them)
    def enqueue(self, tasks: list[Task]) -> None: ...
    def arriving(self) -> AbstractContextManager[None]: ...
    def cancel_calls(self, futures: list[ClusterFuture[Any]]) -> None: ...
    def kill_call(self, future: ClusterFuture[Any]) -> bool: ...
    def read_log(self, future: ClusterFuture[Any], stream: str) -> str: ...
    def tail_logs(self, future: ClusterFuture[Any], max_bytes: int) -> tuple[bytes, bytes]: ...
    def slots(self, resources: Resources) -> int | None: ...
    def add_poll_listener(self, listener: Callable[[], None]) -> Callable[[], None]: ...


def local_engine() -> str:
    """``pool`` or ``jobs``, from :data:`LOCAL_ENGINE_ENV`."""
    choice = os.environ.get(LOCAL_ENGINE_ENV, "").strip().lower() or _DEFAULT_LOCAL_ENGINE
    if choice not in _LOCAL_ENGINES:
        raise ConfigError(
            f"{LOCAL_ENGINE_ENV}={os.environ[LOCAL_ENGINE_ENV]!r} is not an engine of the local "
            f"backend: use {' or '.join(_LOCAL_ENGINES)} (or unset it: {_DEFAULT_LOCAL_ENGINE})"
        )
    return choice


def uses_local_pool(
    config: ClusterConfig, *, scheduler: Scheduler | None, transport: Transport | None
) -> bool:
    """True if an executor of ``config`` (with these injected parts) gets the local pool."""
    return (
        config.cluster_type == "local"
        and config.cluster_host is None
        and scheduler is None
        and transport is None
        and not config.build_environment
        and local_engine() == "pool"
    )
