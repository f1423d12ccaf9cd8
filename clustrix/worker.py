"""The worker: ``python -m clustrix.worker run <job_dir> <task_index>``, run on the node.

It reads the task's calls, runs each, and writes one sealed result record per call,
atomically, before moving on to the next call: a worker that dies half-way through a chunk
keeps the results it already produced.

It knows nothing of transports, schedulers or the executor, and imports only a few standard
modules and :mod:`clustrix._wire`, so a job starts fast and the cluster needs no clustrix
install (clustrix and cloudpickle travel in a small zip on ``PYTHONPATH``). Calls are
unpickled with the standard :mod:`pickle`, which imports cloudpickle only if the call was
pickled by value (``__main__`` code, lambdas); results are pickled with :mod:`pickle` and
fall back to cloudpickle for what only it can pickle. Every import saved here is saved in
every job of every array.
"""

from __future__ import annotations

import os
import pickle
import sys

from clustrix import _wire

USAGE = "usage: python -m clustrix.worker run <job_dir> <task_index>"
EXIT_BAD_USAGE = 2
EXIT_BAD_TASK = 3


def _qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", "") or ""
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _dumps(obj: object) -> bytes:
    """Pickle with the standard library; cloudpickle for what only it can pickle (classes
    and functions that exist only by value, lambdas)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        import cloudpickle

        data: bytes = cloudpickle.dumps(obj, protocol=5)
        return data


def _error_record(exc: BaseException, context: str = "") -> _wire.Record:
    import traceback

    # Skip the worker's own frame: the user wants to see where *their* code failed.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if context:
        text = f"{context}\n{text}"
    try:
        pickled: bytes | None = _dumps(exc)
    except Exception:  # the exception itself cannot travel: keep its name, message, traceback
        pickled = None
    return {
        "ok": False,
        "type": _qualified_name(type(exc)),
        "message": str(exc),
        "traceback": text,
        "exception": pickled,
    }


def run_call(payload: bytes) -> _wire.Record:
    """Unpickle one call, run it, and return its result record (never raises)."""
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:
        return _error_record(exc, "clustrix: the call could not be unpickled on the node")
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # SystemExit/KeyboardInterrupt from user code are results too
        return _error_record(exc)
    try:
        data = _dumps(value)
    except BaseException as exc:
        record = _error_record(exc)
        record.update(
            serialization=True,
            message=f"the result of the call (a {_qualified_name(type(value))}) cannot be "
            f"sent back: {exc}. Return plain data, or convert it before returning.",
        )
        return record
    limit = int(os.environ.get("CLUSTRIX_MAX_RESULT_BYTES", "0") or 0)
    if limit and len(data) > limit:
        return {
            "ok": False,
            "serialization": True,
            "type": "SerializationError",
            "message": f"the result of the call ({len(data) / 1e6:.1f} MB pickled) exceeds "
            f"max_result_mb={limit / 1e6:g}: write big outputs to files on the cluster and "
            "return their paths, or raise max_result_mb",
            "traceback": "",
            "exception": None,
        }
    return {"ok": True, "value": data}


def run_task(job_dir: str, task_index: int) -> int:
    """Run every call of one task; return the process exit status."""
    try:
        with open(os.path.join(job_dir, _wire.SECRET_FILE), "rb") as fh:
            secret = fh.read()
        task_path = os.path.join(job_dir, _wire.TASKS_DIR, f"{task_index}{_wire.SUFFIX}")
        with open(task_path, "rb") as fh:
            calls = pickle.loads(_wire.unseal(secret, fh.read()))
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        print(
            f"clustrix worker: cannot read task {task_index} in {job_dir}: {exc}", file=sys.stderr
        )
        return EXIT_BAD_TASK
    results_dir = os.path.join(job_dir, _wire.RESULTS_DIR)
    for call_index, payload in calls:
        record = run_call(payload)
        # Flush the user's prints before the result appears, so logs are complete by then.
        sys.stdout.flush()
        sys.stderr.flush()
        _wire.write_atomic(
            os.path.join(results_dir, f"{call_index}{_wire.SUFFIX}"),
            _wire.dump_record(secret, record),
        )
    return 0


def _restore_environment() -> None:
    """Undo what the job script did for this process only, before the user's code runs.

    The script put the runtime zip on ``PYTHONPATH`` and set ``PYTHONSAFEPATH`` so that the
    job's working directory cannot shadow the runtime; the user's code and its subprocesses
    get neither, and the working directory is importable again (after the runtime).
    """
    runtime = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ.pop("PYTHONSAFEPATH", None)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [p for p in paths if p and os.path.abspath(p) != runtime]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m clustrix.worker``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "run" or not args[2].isdigit():
        print(USAGE, file=sys.stderr)
        return EXIT_BAD_USAGE
    _restore_environment()
    return run_task(args[1], int(args[2]))


if __name__ == "__main__":
    sys.exit(main())
