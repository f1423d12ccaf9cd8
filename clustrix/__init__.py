"""clustrix: run Python functions on HPC clusters through ``concurrent.futures``.

>>> from clustrix import ClusterExecutor
>>> with ClusterExecutor() as ex:            # local processes: no cluster needed
...     print(list(ex.map(pow, [2, 3], [5, 2])))
[32, 9]
"""

from __future__ import annotations

from .config import ClusterConfig, Resources
from .decorator import ClusterFunction, cluster
from .errors import (
    BrokenClusterExecutor,
    ClusterError,
    CommandTimeoutError,
    ConfigError,
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
from .future import ClusterFuture

__version__ = "0.1.0"

__all__ = [
    "BrokenClusterExecutor",
    "ClusterConfig",
    "ClusterError",
    "ClusterExecutor",
    "ClusterFunction",
    "ClusterFuture",
    "CommandTimeoutError",
    "ConfigError",
    "ExecutorView",
    "JobFailedError",
    "JobLostError",
    "PackagingError",
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
]
