"""ClusterFuture: a real :class:`concurrent.futures.Future` backed by a scheduler job.

It adds what a job has (``job_id``, the scheduler's ``job_state``, its logs, ``logs()`` for
the tail of a running job's output) and two operations: ``cancel()`` that also removes a
queued job from the scheduler, and ``kill()`` that stops a running one. Knows nothing of
transports or schedulers: it asks its executor's engine (the ``_JobControl`` protocol) to
act.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import NamedTuple, Protocol, TypeVar

from .lifecycle import JobState

__all__ = ["ClusterFuture", "JobLogs"]

T = TypeVar("T")
#: What ``ClusterFuture.logs()`` returns by default: the last 10 kB of each log.
DEFAULT_TAIL_BYTES = 10_000


class JobLogs(NamedTuple):
    """The tail of a job's stdout and stderr (``out, err = future.logs()``)."""

    stdout: str
    stderr: str


class _JobControl(Protocol):
    def cancel_calls(self, futures: list[ClusterFuture[object]]) -> None: ...
    def kill_call(self, future: ClusterFuture[object]) -> bool: ...
    def read_log(self, future: ClusterFuture[object], stream: str) -> str: ...
    def tail_logs(self, future: ClusterFuture[object], max_bytes: int) -> tuple[bytes, bytes]: ...


class ClusterFuture(Future[T]):
    """The pending result of one call, running as (part of) a scheduler job.

    ``job_id`` is None until the job is submitted (``max_workers`` may hold calls back);
    ``lifecycle`` is where the job is in the one lifecycle of every backend
    (:class:`clustrix.lifecycle.JobState`) and ``job_state`` the scheduler's own word for it
    (``HELD``, ``SUBMITTING``, ``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ...).
    """

    def __init__(self, control: _JobControl, call_index: int) -> None:
        super().__init__()
        self._control = control
        self.call_index = call_index
        self._job_id: str | None = None
        self._job_state = "HELD"
        self._lifecycle = JobState.HELD
        self._job_dir: str | None = None
        self._task_index: int | None = None

    # --- what a job has -------------------------------------------------------------------
    @property
    def job_id(self) -> str | None:
        """The scheduler's ID of the job running this call (``12345_7`` for array tasks)."""
        return self._job_id

    @property
    def job_state(self) -> str:
        """The scheduler's last known state of the job, in its own word."""
        return self._job_state

    @property
    def lifecycle(self) -> JobState:
        """The job's last known state in clustrix's lifecycle (the same for every backend)."""
        return self._lifecycle

    @property
    def job_dir(self) -> str | None:
        """The job directory on the cluster (payload, script, results, logs)."""
        return self._job_dir

    @property
    def stdout_path(self) -> str | None:
        """Path on the cluster of the job's stdout log."""
        return self._log_path("out")

    @property
    def stderr_path(self) -> str | None:
        """Path on the cluster of the job's stderr log."""
        return self._log_path("err")

    def _log_path(self, stream: str) -> str | None:
        if self._job_dir is None or self._task_index is None:
            return None
        return f"{self._job_dir}/logs/{self._task_index}.{stream}"

    def stdout(self, max_bytes: int | None = None) -> str:
        """The job's stdout so far (empty before the job starts); with ``max_bytes``, only
        its last ``max_bytes`` bytes, as :meth:`logs` fetches them."""
        if max_bytes is not None:
            return self.logs(max_bytes).stdout
        return self._control.read_log(self, "out")  # type: ignore[arg-type]

    def stderr(self, max_bytes: int | None = None) -> str:
        """The job's stderr so far (empty before the job starts); with ``max_bytes``, only
        its last ``max_bytes`` bytes, as :meth:`logs` fetches them."""
        if max_bytes is not None:
            return self.logs(max_bytes).stderr
        return self._control.read_log(self, "err")  # type: ignore[arg-type]

    def logs(self, max_bytes: int = DEFAULT_TAIL_BYTES) -> JobLogs:
        """The last ``max_bytes`` bytes of the job's stdout and stderr, e.g. to watch a
        running job: ``print(future.logs().stdout)``.

        While the job runs, both come in the round trip of the executor's next status poll
        (started at once, and shared by every ``logs()`` asked for meanwhile): no command
        of their own. Before the job starts both are empty; after it ended they are read
        directly (until the executor removes the job directory at shutdown).
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        out, err = self._control.tail_logs(self, max_bytes)  # type: ignore[arg-type]
        return JobLogs(_decode_tail(out, max_bytes), _decode_tail(err, max_bytes))

    # --- control --------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the call if it has not started; a queued job leaves the scheduler too.

        As with any Future, a running or finished call cannot be cancelled (see :meth:`kill`).
        """
        if not super().cancel():
            return False
        # Move CANCELLED -> CANCELLED_AND_NOTIFIED now, so wait() and as_completed() see it
        # at once; the engine does the same under the same lock, so only one of us does it.
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()
        self._control.cancel_calls([self])  # type: ignore[list-item]
        return True

    def kill(self) -> bool:
        """Stop the call's job in the scheduler, running or not.

        A pending call is cancelled (as :meth:`cancel`); a running one fails with
        :class:`clustrix.JobFailedError` (state ``CANCELLED``). Returns False if the call had
        already finished, or if the scheduler's cancel command failed (a warning is logged;
        the call then ends as it ends, its result not lost). With ``chunksize > 1`` this
        stops every call of the same job.
        """
        if self.cancel():
            return True
        if self.done():
            return False
        return self._control.kill_call(self)  # type: ignore[arg-type]

    # --- engine side ----------------------------------------------------------------------
    def _set_job_state(self, state: JobState, native: str) -> None:
        """Record the job's state (the engine moves it through the lifecycle)."""
        self._lifecycle, self._job_state = state, native

    def _mark_running(self) -> bool:
        """PENDING -> RUNNING; False (and waiters notified) if it was cancelled."""
        with self._condition:
            if self._state == PENDING:
                return self.set_running_or_notify_cancel()
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()
                return False
            return self._state == RUNNING

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"{base} job_id={self._job_id} job_state={self._job_state}>"


def _decode_tail(data: bytes, max_bytes: int) -> str:
    """Text of a log tail; a UTF-8 character cut in two at the start is left out."""
    if len(data) >= max_bytes:
        start = 0
        while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
            start += 1  # a continuation byte: the character began before the tail
        data = data[start:]
    return data.decode(errors="replace")
