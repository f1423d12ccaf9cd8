"""A submission's job directory: its files, and writing them to the cluster.

Over a transport whose round trips are costly (SSH) the files travel as a tar on the submit
command's stdin (:data:`UNPACK_AND_SUBMIT`): one round trip per submission. Locally they are
written one by one.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import tarfile

from .. import _wire
from ..schedulers.base import JobSpec, Scheduler
from ..transports.base import Transport
from ._model import Batch

__all__ = ["IO_CONCURRENCY", "JOB_SUBDIRS", "UNPACK_AND_SUBMIT", "UNPACK_FAILED", "job_files"]

#: At most this many file transfers in flight at once over one connection.
IO_CONCURRENCY = 64
JOB_SUBDIRS = (
    _wire.TASKS_DIR,
    _wire.RESULTS_DIR,
    _wire.LOGS_DIR,
    _wire.EXIT_DIR,
    _wire.CLAIMS_DIR,
)
#: Exit status of :data:`UNPACK_AND_SUBMIT` when the job directory could not be written.
UNPACK_FAILED = 97
#: ``sh -c`` script: $1 = job dir, then the submit command (run from the login directory,
#: which becomes the job's working directory). Private modes (umask 077); ``tar -m``: the
#: files get the cluster's time, not the client's.
UNPACK_AND_SUBMIT = (
    "umask 077; d=$1; shift; mkdir -p -- "
    + " ".join(f'"$d/{sub}"' for sub in JOB_SUBDIRS)
    + f' && tar -x -m -f - -C "$d" || exit {UNPACK_FAILED}; exec "$@"'
)


def tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (relative path -> content), every file mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def job_files(scheduler: Scheduler, batch: Batch, spec: JobSpec) -> dict[str, bytes]:
    """The files of a job directory, by path relative to it."""
    files: dict[str, bytes] = {
        _wire.SECRET_FILE: batch.secret,
        _wire.SCRIPT_FILE: scheduler.render_script(spec).encode(),
    }
    # A self-scheduled submission has one task file for all its calls (its tasks claim them
    # one by one); otherwise each task has its own. The calls of a map share their function
    # bytes, which pickle stores once per file.
    groups = (
        {_wire.POOL_FILE: batch.pool.unclaimed()}
        if batch.pool is not None
        else {str(task.index): task.open_calls() for task in batch.tasks}
    )
    for name, open_calls in groups.items():
        calls = [(c.index, *c.payload) for c in open_calls if c.payload is not None]
        body = pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL)
        files[f"{_wire.TASKS_DIR}/{name}{_wire.SUFFIX}"] = _wire.seal(batch.secret, body)
    return files


async def upload(transport: Transport, job_dir: str, files: dict[str, bytes]) -> None:
    """Create the job directory and write ``files`` into it, one operation each."""
    await transport.makedirs(job_dir)
    await asyncio.gather(*(transport.makedirs(f"{job_dir}/{d}") for d in JOB_SUBDIRS))
    limit = asyncio.Semaphore(IO_CONCURRENCY)

    async def put(name: str, data: bytes) -> None:
        async with limit:
            await transport.write_bytes(f"{job_dir}/{name}", data, mode=0o600)

    await asyncio.gather(*(put(name, data) for name, data in files.items()))
