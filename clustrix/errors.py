"""The clustrix exception tree.

Every error clustrix raises on its own account derives from :class:`ClusterError`; the user's
own exceptions come back unchanged (their own type), with the remote traceback attached as
``__cause__``, as :class:`concurrent.futures.ProcessPoolExecutor` does::

    ClusterError
    ├── ConfigError(ValueError)          bad configuration: names the field, value and fix
    ├── SerializationError(TypeError)    a function/argument/result that cannot be pickled
    ├── TransportError                   SSH or local I/O failed (connection, timeout, …)
    │   ├── ConnectionLostError          the cluster could not be reached: may come back
    │   └── CommandTimeoutError          a remote command exceeded its timeout
    ├── SchedulerError                   the scheduler answered with something we cannot use
    │   └── SubmissionError              sbatch (or the like) refused a job: carries stderr
    ├── JobFailedError                   the job ended without a result (killed, crashed, …)
    │   └── JobLostError                 the job vanished from the scheduler and left nothing
    ├── RemoteError                      a remote exception that cannot be rebuilt here
    ├── ResultAuthenticationError        a result file failed its HMAC check
    ├── PackagingError                   the remote environment could not be prepared
    └── BrokenClusterExecutor(BrokenExecutor)   the executor itself can no longer work

:class:`RemoteTraceback` is not an error of ours: it only carries the formatted remote
traceback as the ``__cause__`` of a user's exception.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "BrokenClusterExecutor",
    "ClusterError",
    "CommandTimeoutError",
    "ConfigError",
    "ConnectionLostError",
    "JobFailedError",
    "JobLostError",
    "PackagingError",
    "RemoteError",
    "RemoteTraceback",
    "ResultAuthenticationError",
    "SchedulerError",
    "SerializationError",
    "SubmissionError",
    "TransportError",
]


class ClusterError(Exception):
    """Base class of every error clustrix raises on its own account."""


class ConfigError(ClusterError, ValueError):
    """A configuration value is missing, unknown or invalid."""


class SerializationError(ClusterError, TypeError):
    """A function, argument or result could not be pickled (or unpickled)."""


class TransportError(ClusterError):
    """A command or file operation on the cluster could not be carried out."""


class ConnectionLostError(TransportError):
    """The connection to the cluster dropped, or the cluster could not be reached (refused,
    timed out, unreachable). Unlike a refused login or a wrong host key, this may pass:
    the executor retries such failures for up to ``connection_grace_s``."""


class CommandTimeoutError(TransportError):
    """A command on the cluster did not finish within its timeout."""


class SchedulerError(ClusterError):
    """The scheduler's answer could not be used (unexpected output, failed query)."""


class SubmissionError(SchedulerError):
    """The scheduler refused a submission; ``stderr`` holds what it said."""

    def __init__(self, message: str, *, argv: list[str] | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.argv = argv or []
        self.stderr = stderr


class JobFailedError(ClusterError):
    """A job ended without producing the result of a call.

    Carries the scheduler's ``job_id``, its final ``state`` (``FAILED``, ``CANCELLED``,
    ``TIMEOUT``, ``OUT_OF_MEMORY``, ``NODE_FAIL``, ``EXITED`` for local processes, …), the
    ``exit_code`` when known and the tail of the job's stderr.
    """

    def __init__(
        self,
        job_id: str | None,
        state: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        reason: str = "",
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.reason = reason
        parts = [f"job {job_id} ended without a result: state {state}"]
        if exit_code is not None:
            parts.append(f"exit status {exit_code}{_describe_exit(exit_code)}")
        if reason:
            parts.append(reason)
        message = ", ".join(parts)
        if stderr_tail.strip():
            message += "\n--- tail of the job's stderr ---\n" + stderr_tail.rstrip()
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_job_failed,
            (self.job_id, self.state, self.exit_code, self.stderr_tail, self.reason),
        )


def _rebuild_job_failed(
    job_id: str | None, state: str, exit_code: int | None, stderr_tail: str, reason: str
) -> JobFailedError:
    return JobFailedError(
        job_id, state, exit_code=exit_code, stderr_tail=stderr_tail, reason=reason
    )


def _describe_exit(exit_code: int) -> str:
    """Name the signal behind a shell-style exit status (128 + n), if it is one."""
    if exit_code > 128:
        import signal

        try:
            return f" (killed by {signal.Signals(exit_code - 128).name})"
        except ValueError:
            return ""
    return ""


class JobLostError(JobFailedError):
    """A job disappeared from the scheduler and left neither a result nor a final state."""


class RemoteError(ClusterError):
    """A remote exception whose type cannot be rebuilt on the client.

    Raised instead of the user's exception when it could not be pickled on the node or not be
    unpickled here; keeps its type name, message and remote traceback.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")


class RemoteTraceback(Exception):
    """The formatted traceback of a remote call, attached as ``__cause__`` of its exception."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return self.traceback_text


class ResultAuthenticationError(ClusterError):
    """A result or payload file failed its HMAC check: it was not written by this executor."""


class PackagingError(ClusterError):
    """The remote environment or the code archive could not be prepared."""


class BrokenClusterExecutor(ClusterError, BrokenExecutor):
    """The executor can no longer work (its event loop or connection is gone for good)."""
