"""``@cluster``: sugar over an executor for one function.

>>> @cluster(cores=4, mem_gb=8)           # doctest: +SKIP
... def simulate(seed): ...
>>> simulate(1)                           # runs as a job, returns its value
>>> simulate.submit(2)                    # a ClusterFuture
>>> simulate.map(range(100))              # a list of ClusterFutures, in input order

Without an explicit ``executor``, decorated functions share one executor per config
(``ClusterConfig.load()`` when none is given), created on first use and shut down at exit.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import SecretStr

from .config import ClusterConfig
from .executor import ClusterExecutor, ExecutorView
from .future import ClusterFuture

__all__ = ["ClusterFunction", "cluster"]

P = ParamSpec("P")
R = TypeVar("R")

_shared: dict[str, ClusterExecutor] = {}
_shared_lock = threading.Lock()


def _config_key(config: ClusterConfig) -> str:
    """Equal for configs that may share an executor. The JSON dump stars secrets out, so
    their digest is added: configs that differ only in a password must not share one."""
    secrets = [
        f"{name}={value.get_secret_value()}"
        for name in type(config).model_fields
        if isinstance(value := getattr(config, name), SecretStr)
    ]
    digest = hashlib.sha256("\0".join(secrets).encode()).hexdigest()
    return f"{config.model_dump_json()}\0{digest}"


def _shared_executor(config: ClusterConfig | None) -> ClusterExecutor:
    config = config if config is not None else ClusterConfig.load()
    key = _config_key(config)
    with _shared_lock:
        executor = _shared.get(key)
        if executor is None or executor._shutdown:
            executor = _shared[key] = ClusterExecutor(config)
        return executor


class ClusterFunction(Generic[P, R]):
    """A function that runs as a cluster job when called."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        config: ClusterConfig | None = None,
        executor: ClusterExecutor | None = None,
        resources: dict[str, Any] | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._config = config
        self._executor = executor
        self._resources = dict(resources or {})
        if executor is not None:  # validate resources now, not at the first call
            executor.options(**self._resources)
        elif self._resources:
            (config or ClusterConfig()).resources(**self._resources)

    @property
    def executor(self) -> ExecutorView:
        """The executor view (with this function's resources) that runs the calls."""
        executor = self._executor or _shared_executor(self._config)
        return executor.options(**self._resources)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the call as a job and return its value (or raise its exception)."""
        return self.submit(*args, **kwargs).result()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> ClusterFuture[R]:
        """Run the call as a job; return its future at once."""
        return self.executor.submit(self.fn, *args, **kwargs)

    def map(
        self, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> list[ClusterFuture[R]]:
        """One future per call, in input order; calls are packed into jobs like ``map``."""
        return self.executor.submit_map(self.fn, *iterables, chunksize=chunksize)


def cluster(
    fn: Callable[P, R] | None = None,
    *,
    config: ClusterConfig | None = None,
    executor: ClusterExecutor | None = None,
    **resources: Any,
) -> Any:
    """Decorate a function so that calling it runs it as a cluster job.

    Usable bare (``@cluster``) or with job resources (``@cluster(cores=4, mem_gb=8)``),
    an explicit ``config`` or an existing ``executor``.
    """

    def wrap(function: Callable[P, R]) -> ClusterFunction[P, R]:
        return ClusterFunction(function, config=config, executor=executor, resources=resources)

    return wrap(fn) if fn is not None else wrap
