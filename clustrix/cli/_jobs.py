"""``clustrix jobs``, ``status``, ``cancel``, ``logs`` and ``recover``: the jobs of the local
job registry (what this machine submitted and has not collected yet), each invocation with
one status round trip for all of them (:func:`._remote.look`), never one per job.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _wire
from ..config import ClusterConfig
from ..lifecycle import JobState
from ..registry import SubmissionRecord
from ..transports.base import FileHandle
from ._output import CliError, Output, age, table
from ._remote import (
    Remote,
    SubmissionView,
    TaskView,
    ask_scheduler,
    look,
    open_remote,
    registry_hint,
    select,
)

__all__ = ["cancel", "jobs", "logs", "recover", "save_path", "status"]

#: ``logs`` reads at most this much per file and round trip.
_CHUNK = 1 << 20
_LIVE_WORDS = {s.value for s in JobState if s.is_live}


def _no_such_job(remote: Remote, job: str) -> CliError:
    return CliError(
        f"no job {job!r} in the job registry ({registry_hint(remote)}) for "
        f"{remote.location}:{remote.work_dir}; `clustrix jobs` lists the jobs it has (a job "
        "collected already is no longer listed; give --config for another cluster)"
    )


def _rows(views: Sequence[SubmissionView]) -> list[list[str]]:
    return [
        [
            v.label,
            str(len(v.tasks)),
            str(v.calls),
            v.describe_states(),
            v.record.function,
            age(v.record.submitted_at),
            v.client,
        ]
        for v in views
    ]


_HEADER = ["JOB", "TASKS", "CALLS", "STATES", "FUNCTION", "SUBMITTED", "CLIENT"]


def _print_views(out: Output, views: Sequence[SubmissionView], empty: str) -> None:
    if not views:
        out.text(empty)
        return
    for line in table(_rows(views), _HEADER):
        out.text(line)


# ---------------------------------------------------------------------------------- jobs
async def _jobs(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    async with open_remote(config) as remote:
        views = await look(remote, remote.records())
        elsewhere = len(remote.registry.records()) - len(views)
    out.json([v.to_json() for v in views])
    where = f"{remote.location}:{remote.work_dir}"
    _print_views(out, views, f"no clustrix jobs in the registry for {where}")
    if args.tasks:
        for view in views:
            _print_tasks(out, view)
    if elsewhere:
        out.text(f"({elsewhere} more submitted to other clusters or work dirs: give --config)")
    return 0


def jobs(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix jobs``: this user's clustrix jobs on this cluster and their states."""
    return asyncio.run(_jobs(config, args, out))


def _print_tasks(out: Output, view: SubmissionView) -> None:
    rows = [
        [
            t.job_id,
            t.state,
            t.native or "-",
            "-" if t.exit_code is None else str(t.exit_code),
            str(t.calls),
            t.reason,
        ]
        for t in view.tasks
    ]
    out.text()
    for line in table(rows, ["TASK", "STATE", "NATIVE", "EXIT", "CALLS", "REASON"]):
        out.text(f"  {line}")


# -------------------------------------------------------------------------------- status
async def _status(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    documents: list[dict[str, Any]] = []
    missing: list[str] = []
    async with open_remote(config) as remote:
        records = remote.records()
        chosen = {job: select(records, job) for job in args.jobs}
        wanted = {id(r): r for pairs in chosen.values() for r, _ in pairs}
        views = {id(v.record): v for v in await look(remote, list(wanted.values()))}
        for job, pairs in chosen.items():
            if not pairs:
                # collected (or never ours): what the scheduler still says, if asked by ID
                found = await ask_scheduler(remote, job)
                if found is None:
                    missing.append(job)
                    continue
                state = remote.scheduler.lifecycle(found.state).value
                documents.append(
                    {
                        "job": job,
                        "in_registry": False,
                        "state": state,
                        "native_state": found.state,
                        "exit_code": found.exit_code,
                    }
                )
                out.text(
                    f"{job}: {state} ({found.state}) says the scheduler; not in the job "
                    "registry (collected already, or not submitted from here)"
                )
                continue
            for record_id in dict.fromkeys(id(r) for r, _ in pairs):
                view = views[record_id]
                indices = {i for r, i in pairs if id(r) == record_id}
                document = view.to_json()
                document["tasks"] = [t.to_json() for t in view.tasks if t.index in indices]
                document["in_registry"] = True
                documents.append(document)
                _print_status(out, view, indices)
    out.json(documents)
    if missing:
        raise CliError(
            f"no job {', '.join(missing)} in the job registry ({registry_hint(remote)}) for "
            f"{remote.location}:{remote.work_dir}, nor known to the scheduler; `clustrix jobs` "
            "lists the jobs of this cluster"
        )
    return 0


def _print_status(out: Output, view: SubmissionView, indices: set[int]) -> None:
    record = view.record
    tasks = f"array of {len(view.tasks)} tasks" if len(view.tasks) > 1 else "one job"
    out.text(f"{view.label}: {record.function}, {tasks}, {view.calls} call(s)")
    out.text(f"  submitted {age(record.submitted_at)} by {view.client}")
    out.text(f"  job dir   {record.job_dir}")
    out.text(f"  states    {view.describe_states()}")
    view_of = SubmissionView(
        record, view.client_alive, [t for t in view.tasks if t.index in indices]
    )
    _print_tasks(out, view_of)


def status(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix status JOB...``."""
    return asyncio.run(_status(config, args, out))


# -------------------------------------------------------------------------------- cancel
async def _cancel(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    async with open_remote(config) as remote:
        records = remote.records()
        chosen = {job: select(records, job) for job in args.jobs}
        unknown = [job for job, pairs in chosen.items() if not pairs]
        if unknown:  # nothing is cancelled unless every name is one of ours
            raise CliError(
                f"{_no_such_job(remote, ', '.join(unknown))}; nothing was cancelled. To cancel "
                f"a job clustrix does not know, use the scheduler{_by_hand(remote, unknown)}"
            )
        wanted = {id(r): r for pairs in chosen.values() for r, _ in pairs}
        views = {id(v.record): v for v in await look(remote, list(wanted.values()))}
        targets: dict[str, TaskView] = {}
        for pairs in chosen.values():
            for record, index in pairs:
                task = views[id(record)].tasks[index]
                targets[task.job_id] = task
        # only live jobs: a local job's PID may belong to another process once it ended
        live = [job_id for job_id, task in targets.items() if task.state in _LIVE_WORDS]
        if live:
            command = remote.scheduler.cancel_argv(live)
            result = await remote.run(command)
            if not result.ok:
                raise CliError(
                    f"{command[0]} refused to cancel {', '.join(live)} "
                    f"(exit status {result.returncode}): {result.stderr.strip()[-500:]}; "
                    "`clustrix status` shows their state"
                )
    report = [
        {"job_id": job_id, "cancelled": job_id in live, "state": task.state}
        for job_id, task in targets.items()
    ]
    out.json(report)
    for item in report:
        what = "cancelled" if item["cancelled"] else f"not cancelled: had ended ({item['state']})"
        out.text(f"{item['job_id']}: {what}")
    return 0


def _by_hand(remote: Remote, job_ids: list[str]) -> str:
    try:
        return f": {shlex.join(remote.scheduler.cancel_argv(job_ids))}"
    except ValueError:  # not IDs this backend can even name
        return ""


def cancel(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix cancel JOB...``."""
    return asyncio.run(_cancel(config, args, out))


# ---------------------------------------------------------------------------------- logs
class _Log:
    """One log file read from an offset, through the transport."""

    def __init__(self, job_id: str, path: str) -> None:
        self.job_id, self.path = job_id, path
        self.offset = 0
        self.handle: FileHandle | None = None

    async def read_new(self, remote: Remote) -> bytes:
        """What was written since the last read (empty while the file does not exist)."""
        if self.handle is None:
            try:
                self.handle = await remote.transport.open(self.path, "rb")
            except FileNotFoundError:
                return b""
        chunks: list[bytes] = []
        while True:
            data = await self.handle.read(_CHUNK, self.offset)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            self.offset += len(data)

    async def close(self) -> None:
        if self.handle is not None:
            await self.handle.close()


async def _logs(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    stream = "err" if args.stderr else "out"
    async with open_remote(config) as remote:
        pairs = select(remote.records(), args.job)
        if not pairs:
            raise _no_such_job(remote, args.job)
        logs = [_Log(r.job_ids[i], f"{r.job_dir}/{_wire.LOGS_DIR}/{i}.{stream}") for r, i in pairs]
        try:
            if args.tail is not None:
                for log in logs:
                    await _skip_to_tail(remote, log, args.tail)
            await _print_new(remote, logs, out, several=len(logs) > 1)
            if args.follow:
                await _follow(remote, pairs, logs, out)
        finally:
            for log in logs:
                await log.close()
    return 0


async def _skip_to_tail(remote: Remote, log: _Log, lines: int) -> None:
    """Start ``log`` at its last ``lines`` lines."""
    try:
        size = (await remote.transport.stat(log.path)).size
    except FileNotFoundError:
        return
    window = max(64 * 1024, lines * 1024)
    data = await remote.transport.read_tail(log.path, window)
    keep = b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b""
    log.offset = max(0, size - len(keep))


async def _print_new(remote: Remote, logs: list[_Log], out: Output, several: bool) -> bool:
    """Print what the logs gained; True if anything."""
    printed = False
    for log in logs:
        data = await log.read_new(remote)
        if not data:
            continue
        printed = True
        text = data.decode(errors="replace")
        out.json_line({"job_id": log.job_id, "path": log.path, "text": text})
        if out.as_json:
            continue
        if several:  # like tail -f of several files: say whose lines these are
            text = "".join(f"[{log.job_id}] {line}" for line in text.splitlines(keepends=True))
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
    return printed


async def _follow(
    remote: Remote, pairs: list[tuple[SubmissionRecord, int]], logs: list[_Log], out: Output
) -> None:
    """Print what the logs gain until every job has ended: one status round trip and one
    read per log each cycle, with backoff while nothing happens."""
    records = list({id(r): r for r, _ in pairs}.values())
    wanted = {r.job_ids[i] for r, i in pairs}
    config = remote.config
    delay = config.poll_interval_min_s
    while True:
        views = await look(remote, records)
        tasks = [t for v in views for t in v.tasks if t.job_id in wanted]
        ended = all(t.ended for t in tasks)
        # after the status: a job seen ended has written all it will write
        if await _print_new(remote, logs, out, several=len(logs) > 1):
            delay = config.poll_interval_min_s
        if ended:
            return
        await asyncio.sleep(delay)
        delay = min(max(delay * 1.5, 0.2), max(config.poll_interval_max_s, 0.2))


def logs(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix logs JOB [--follow]``."""
    return asyncio.run(_logs(config, args, out))


# ------------------------------------------------------------------------------- recover
async def _recoverable(config: ClusterConfig) -> list[SubmissionView]:
    async with open_remote(config) as remote:
        records = remote.registry.pending(remote.location, remote.work_dir)
        return await look(remote, records)


def recover(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix recover [--wait]``: what ``ClusterExecutor.recover()`` would adopt."""
    if not args.wait:
        views = asyncio.run(_recoverable(config))
        out.json([v.to_json() for v in views])
        _print_views(out, views, "nothing to recover: no submission of a client that died")
        if views:
            out.text("`clustrix recover --wait` collects their results")
        return 0
    return _collect(config, args, out)


def _collect(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    from .._factory import make_scheduler
    from ..executor import ClusterExecutor
    from ..progress import Progress

    report: list[dict[str, Any]] = []
    values: dict[int, Any] = {}
    # the scheduler given: the engine of job directories and the registry, whatever engine
    # the config would get by default (the local backend's warm pool adopts nothing)
    with ClusterExecutor(config, scheduler=make_scheduler(config)) as executor:
        futures = executor.recover()
        with Progress(futures, desc="recover"):
            for future in futures:
                error = future.exception()
                item: dict[str, Any] = {"call_index": future.call_index, "job_id": future.job_id}
                if error is None:
                    value = future.result()
                    values[future.call_index] = value
                    item.update(ok=True, result=_short_repr(value))
                else:
                    item.update(ok=False, error=f"{type(error).__name__}: {error}")
                report.append(item)
    if args.save is not None:
        with open(args.save, "wb") as fh:
            pickle.dump(values, fh)
    failed = [item for item in report if not item["ok"]]
    out.json({"calls": report, "saved_to": args.save})
    if not report:
        out.text("nothing to recover: no submission of a client that died")
        return 0
    out.text(
        f"collected {len(report)} call(s): {len(report) - len(failed)} ok, {len(failed)} failed"
    )
    for item in report:
        shown = item["result"] if item["ok"] else item["error"].splitlines()[0]
        out.text(f"  call {item['call_index']} ({item['job_id']}): {shown}")
    if args.save is not None:
        out.text(f"results saved to {args.save} (a pickled dict: call index -> result)")
    if failed:
        raise CliError(
            f"{len(failed)} of {len(report)} recovered call(s) failed (see above); their job "
            "directories are kept on the cluster for inspection: `clustrix ls jobs`"
        )
    return 0


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_path(value: str) -> str:
    """``--save FILE``: a writable local path (checked before anything is collected)."""
    parent = Path(value).expanduser().resolve().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{parent} is not a directory")
    return str(Path(value).expanduser())
