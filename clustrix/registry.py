"""The local job registry: what was submitted, so a new process can reattach after a crash.

One small JSON file per submission under the user's state directory
(``$XDG_STATE_HOME/clustrix/submissions``, else ``~/.local/state/clustrix/submissions``),
written when the submission is accepted and deleted once all its results are in. It holds
the job IDs, the job directory, the HMAC secret of the results (hence mode 0600 in a 0700
directory), the call indices and the process that owns it. Knows nothing of the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._wire import write_atomic

__all__ = ["JobRegistry", "SubmissionRecord", "default_state_dir", "owner_alive"]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/clustrix`` or ``~/.local/state/clustrix``."""
    home_state = os.path.join(os.path.expanduser("~"), ".local", "state")
    base = os.environ.get("XDG_STATE_HOME") or home_state
    return Path(base) / "clustrix"


@dataclass(frozen=True)
class SubmissionRecord:
    """One submission as the registry keeps it."""

    job_dir: str
    location: str  # where the transport runs commands (user@host:port, or "local")
    work_dir: str
    secret_hex: str
    function: str
    job_ids: list[str]  # per task
    calls: list[list[int]]  # per task: (submission-wide) call index of each call
    call_ids: list[list[int]]  # per task: the executor's call index (ClusterFuture.call_index)
    submitted_at: float
    pid: int
    hostname: str
    #: A self-scheduled submission's calls (submission-wide index, executor's call index),
    #: which its tasks claim on the node; empty otherwise.
    pool: list[list[int]] = field(default_factory=list)


class JobRegistry:
    """Submissions not yet fully collected, one file each."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "submissions"

    def _path(self, job_dir: str) -> Path:
        return self.directory / f"{os.path.basename(job_dir.rstrip('/'))}.json"

    def add(self, record: SubmissionRecord) -> None:
        """Remember a submission (atomic write, 0600)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(str(self._path(record.job_dir)), json.dumps(asdict(record)).encode(), 0o600)

    def remove(self, job_dir: str) -> None:
        """Forget a submission whose results are all in."""
        with contextlib.suppress(FileNotFoundError):
            self._path(job_dir).unlink()

    def pending(self, location: str, work_dir: str) -> list[SubmissionRecord]:
        """Submissions to this cluster and work dir whose owner process is gone (a live
        one, this process included, is still collecting its own), oldest first."""
        return [r for r in self.records(location, work_dir) if not owner_alive(r)]

    def records(
        self, location: str | None = None, work_dir: str | None = None
    ) -> list[SubmissionRecord]:
        """Every submission recorded (to this cluster and work dir, if given), whoever
        owns it, oldest first (``clustrix jobs``)."""
        records: list[SubmissionRecord] = []
        if not self.directory.is_dir():
            return records
        for path in self.directory.glob("*.json"):
            try:
                record = SubmissionRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # unreadable or from another version: leave it alone
            if location is not None and record.location != location:
                continue
            if work_dir is None or record.work_dir == work_dir:
                records.append(record)
        return sorted(records, key=lambda r: r.submitted_at)


def owner_alive(record: SubmissionRecord) -> bool:
    """Whether the submitting process still runs; one on another host is taken as gone."""
    if record.hostname != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
