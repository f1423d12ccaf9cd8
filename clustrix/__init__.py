"""clustrix: run Python functions on HPC clusters through ``concurrent.futures``.

>>> from clustrix import ClusterExecutor
>>> with ClusterExecutor() as ex:            # local processes: no cluster needed
...     print(list(ex.map(pow, [2, 3], [5, 2])))
[32, 9]
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing costs the worker ~8 ms per job (mypy treats any
# name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .checkpoint import Checkpointable, DelayedCall
    from .config import ClusterConfig, Resources
    from .decorator import ClusterFunction, cluster
    from .errors import (
        BrokenClusterExecutor,
        ClusterError,
        CommandTimeoutError,
        ConfigError,
        ConnectionLostError,
        JobFailedError,
        JobLostError,
        PackagingError,
        RemoteError,
        RemoteTraceback,
        ResultAuthenticationError,
        SchedulerError,
        SerializationError,
        SubmissionError,
        TransportError,
    )
    from .executor import ClusterExecutor, ExecutorView
    from .filesystem import (
        DiskUsage,
        FileInfo,
        cluster_count_files,
        cluster_du,
        cluster_exists,
        cluster_find,
        cluster_glob,
        cluster_isdir,
        cluster_isfile,
        cluster_ls,
        cluster_stat,
    )
    from .future import ClusterFuture
    from .progress import Progress


# Public names are imported on first use (PEP 562): ``python -m clustrix.worker`` on a node
# imports the package without pulling in the executor, pydantic or asyncssh.
_LAZY = {
    "BrokenClusterExecutor": "errors",
    "Checkpointable": "checkpoint",
    "ClusterConfig": "config",
    "ClusterError": "errors",
    "ClusterExecutor": "executor",
    "ClusterFunction": "decorator",
    "ClusterFuture": "future",
    "CommandTimeoutError": "errors",
    "ConfigError": "errors",
    "ConnectionLostError": "errors",
    "DelayedCall": "checkpoint",
    "DiskUsage": "filesystem",
    "ExecutorView": "executor",
    "FileInfo": "filesystem",
    "JobFailedError": "errors",
    "JobLostError": "errors",
    "PackagingError": "errors",
    "Progress": "progress",
    "RemoteError": "errors",
    "RemoteTraceback": "errors",
    "Resources": "config",
    "ResultAuthenticationError": "errors",
    "SchedulerError": "errors",
    "SerializationError": "errors",
    "SubmissionError": "errors",
    "TransportError": "errors",
    "cluster": "decorator",
    "cluster_count_files": "filesystem",
    "cluster_du": "filesystem",
    "cluster_exists": "filesystem",
    "cluster_find": "filesystem",
    "cluster_glob": "filesystem",
    "cluster_isdir": "filesystem",
    "cluster_isfile": "filesystem",
    "cluster_ls": "filesystem",
    "cluster_stat": "filesystem",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clustrix' has no attribute {name!r}")
    import importlib  # here: importlib (and the warnings it imports) costs the worker ~0.6 ms

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BrokenClusterExecutor",
    "Checkpointable",
    "ClusterConfig",
    "ClusterError",
    "ClusterExecutor",
    "ClusterFunction",
    "ClusterFuture",
    "CommandTimeoutError",
    "ConfigError",
    "ConnectionLostError",
    "DelayedCall",
    "DiskUsage",
    "ExecutorView",
    "FileInfo",
    "JobFailedError",
    "JobLostError",
    "PackagingError",
    "Progress",
    "RemoteError",
    "RemoteTraceback",
    "Resources",
    "ResultAuthenticationError",
    "SchedulerError",
    "SerializationError",
    "SubmissionError",
    "TransportError",
    "__version__",
    "cluster",
    "cluster_count_files",
    "cluster_du",
    "cluster_exists",
    "cluster_find",
    "cluster_glob",
    "cluster_isdir",
    "cluster_isfile",
    "cluster_ls",
    "cluster_stat",
]
