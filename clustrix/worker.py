"""The worker: ``python -m clustrix.worker run <job_dir> <task_index>``, run on the node
(a job script starts it with the same arguments through :data:`BOOTSTRAP`).

It reads the task's calls, runs each, and writes one sealed result record per call,
atomically, before moving on to the next call: a worker that dies half-way through a chunk
keeps the results it already produced. In a self-scheduled submission (``tasks/pool.pkl``)
every task takes the next call nobody has taken yet (an ``O_EXCL`` claim file), runs it, and
takes the next, until none is left: a slow call holds up only the task that runs it.

It knows nothing of transports, schedulers or the executor, and imports only a few standard
modules and :mod:`clustrix._wire`, so a job starts fast and the cluster needs no clustrix
install (clustrix and cloudpickle travel in a small zip on ``PYTHONPATH``). Calls are
unpickled with the standard :mod:`pickle` (:mod:`clustrix._unpickle`), which imports
cloudpickle only for what a function by value (``__main__`` code, lambdas) cannot be rebuilt
without (a class by value); results are pickled with :mod:`pickle` and fall back to
cloudpickle for what only it can pickle. Every import saved here is saved in
every job of every array.
"""

from __future__ import annotations

import os
import sys

from clustrix import _unpickle, _wire

try:  # the C pickler without the pickle module's pure-Python twin (see clustrix._wire)
    import _pickle as pickle
except ImportError:  # not CPython
    import pickle  # type: ignore[no-redef]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the worker should not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

USAGE = "usage: python -m clustrix.worker run <job_dir> <task_index>"
#: How a job script starts the worker: ``python -c BOOTSTRAP clustrix.worker run <job_dir>
#: <task_index>`` (the ``clustrix.worker`` argument only names the process for ``ps`` and
#: ``pkill -f``). Not ``-m``: runpy and the importlib.util it imports cost every job ~2 ms,
#: and under ``-m`` this module would run as ``__main__``, a second copy beside the
#: ``clustrix.worker`` that pickles name (``run_chunk``, a ``DelayedCall``'s module).
BOOTSTRAP = "import sys; from clustrix.worker import main; sys.exit(main(sys.argv[2:]))"
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


def run_call(
    function: bytes, arguments: bytes, checkpointer: _Checkpointer | None = None
) -> _wire.Record | None:
    """Unpickle one call (its function, then its ``(args, kwargs)``), run it, and return its
    result record (never raises). None: the checkpoint signal came before the call started,
    so it did not start.

    The function is unpickled anew for every call, even when the calls of a chunk share its
    bytes: a callable object's state (a Checkpointable's progress) must not leak from one
    call into the next.
    """
    try:
        fn = _unpickle.loads(function)
        args, kwargs = _unpickle.loads(arguments)
    except BaseException as exc:
        return _error_record(exc, "clustrix: the call could not be unpickled on the node")
    if fn is run_chunk:  # its records were each checked against the limit already
        return _outcome(fn, args, kwargs, checkpointer, limit=0)
    return _outcome(fn, args, kwargs, checkpointer)


def run_chunk(function: bytes, calls: list[tuple[object, ...]]) -> list[_wire.Record]:
    """Run ``function`` on each argument tuple of ``calls``, in order: one result record per
    call (never raises).

    The local pool's ``map(..., chunksize=k)`` sends a chunk of k calls as ONE call of this
    function (its arguments pickled once, not k times; one message and one future instead
    of k), as ``ProcessPoolExecutor`` does; each call still gets its own record, so a call
    that raises fails only its own result.
    """
    records: list[_wire.Record] = []
    limit = int(os.environ.get("CLUSTRIX_MAX_RESULT_BYTES", "0") or 0)
    for args in calls:
        try:
            fn = _unpickle.loads(function)  # anew per call, as run_call does
        except BaseException as exc:
            records.append(
                _error_record(exc, "clustrix: the call could not be unpickled on the node")
            )
            continue
        record = _outcome(fn, args, {}, None, limit)
        assert record is not None  # no checkpointer: every call runs
        records.append(record)
    return records


def _outcome(
    fn: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    checkpointer: _Checkpointer | None,
    limit: int | None = None,
) -> _wire.Record | None:
    """Run one unpickled call and pickle its outcome (see :func:`run_call`)."""
    try:
        if checkpointer is not None:
            checkpointer.current = (fn, args, kwargs)
            if checkpointer.signalled:  # while unpickling: requeue it rather than start it
                checkpointer.current = None
                return None
        try:
            value = fn(*args, **kwargs)
        finally:
            if checkpointer is not None:
                checkpointer.current = None
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
    if limit is None:
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


def _say(message: str) -> None:
    print(f"clustrix worker: {message}", file=sys.stderr, flush=True)


class _Checkpointer:
    """What the worker does on the checkpoint signal (see :mod:`clustrix.checkpoint`).

    If a call is running and its function has a ``checkpoint`` method, the call it returns
    replaces the running one: the task file is rewritten with it and the calls not started
    yet, and the worker exits with :data:`clustrix._wire.EXIT_REQUEUE` so that the job script
    requeues the job. Otherwise the running call goes on and the calls after it are requeued
    once it is done.
    """

    def __init__(self, task_path: str, secret: bytes) -> None:
        self.task_path = task_path
        self.secret = secret
        self.signalled = False
        #: (fn, args, kwargs) while the user's code runs
        self.current: tuple[object, tuple[object, ...], dict[str, object]] | None = None
        #: (call_index, function, arguments) of the task's unfinished calls; the running
        #: one (or the next) is at ``position``
        self.pending: list[tuple[int, bytes, bytes]] = []
        self.position = 0

    def install(self, signal_name: str) -> None:
        import signal

        signal.signal(getattr(signal, f"SIG{signal_name}"), self._on_signal)

    def requeue(self, calls: list[tuple[int, bytes, bytes]]) -> int:
        """Save ``calls`` as this task's work and return the exit status that asks for a
        requeue."""
        body = pickle.dumps(calls, protocol=_wire.PROTOCOL)
        _wire.write_atomic(self.task_path, _wire.seal(self.secret, body))
        _say(f"checkpointed: {len(calls)} call(s) left for when the job is requeued")
        sys.stdout.flush()
        return _wire.EXIT_REQUEUE

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs inside the user's code: it must never raise into it.
        try:
            self._checkpoint()
        except BaseException as exc:  # the call goes on, whatever happened here
            _say(f"checkpoint failed, the call goes on: {exc!r}")

    def _checkpoint(self) -> None:
        if self.signalled:
            return
        self.signalled = True
        if self.current is None:
            return  # between calls: run_task requeues what is left
        fn, args, kwargs = self.current
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        hook = getattr(fn, "checkpoint", None)
        if hook is None:
            _say(f"checkpoint signal: {name} has no checkpoint() method, so it goes on")
            return
        resumed = hook(*args, **kwargs)
        if resumed is None:
            _say(f"checkpoint signal: {name}.checkpoint() declined, the call goes on")
            return
        from clustrix.checkpoint import DelayedCall

        if not isinstance(resumed, DelayedCall):
            _say(
                f"{name}.checkpoint() returned a {type(resumed).__name__}, not a "
                "clustrix.DelayedCall or None: the call goes on"
            )
            return
        resumed_call = (
            self.pending[self.position][0],
            _dumps(resumed.fn),
            _dumps((resumed.args, resumed.kwargs)),
        )
        os._exit(self.requeue([resumed_call, *self.pending[self.position + 1 :]]))


def _load_calls(secret: bytes, path: str) -> list[tuple[int, bytes, bytes]]:
    with open(path, "rb") as fh:
        calls: list[tuple[int, bytes, bytes]] = pickle.loads(_wire.unseal(secret, fh.read()))
    return calls


def _pool_calls(
    job_dir: str, task_index: int, secret: bytes, done: Callable[[int], bool]
) -> Iterator[tuple[int, bytes, bytes]]:
    """The calls of a self-scheduled submission this task runs, claimed one at a time.

    First those this task claimed in an earlier run (the job was requeued) and did not
    finish, then each call nobody has claimed, in call order. ``done(c)`` tells whether call
    ``c`` has its result. The ledger (``claims/.task-<t>``) lists this task's claims; a task
    killed in the microseconds between a claim and its ledger line does not rerun that call
    when requeued, and the client fails it truthfully when the task ends.
    """
    calls = _load_calls(
        secret, os.path.join(job_dir, _wire.TASKS_DIR, f"{_wire.POOL_FILE}{_wire.SUFFIX}")
    )
    claims_dir = os.path.join(job_dir, _wire.CLAIMS_DIR)
    ledger_path = os.path.join(claims_dir, f".task-{task_index}")
    owner = str(task_index)
    earlier: set[int] = set()
    try:
        with open(ledger_path) as fh:
            earlier = {int(line) for line in fh if line.strip().isdigit()}
    except FileNotFoundError:
        pass
    for call in calls:
        if call[0] in earlier and not done(call[0]):
            try:
                with open(os.path.join(claims_dir, str(call[0]))) as fh:
                    mine = fh.read().strip() == owner
            except FileNotFoundError:
                mine = False
            if mine:
                yield call
    with open(ledger_path, "a") as ledger:
        for call in calls:
            if _wire.claim(os.path.join(claims_dir, str(call[0])), owner):
                ledger.write(f"{call[0]}\n")
                ledger.flush()
                yield call


def run_task(job_dir: str, task_index: int) -> int:
    """Run every call of one task; return the process exit status."""
    task_path = os.path.join(job_dir, _wire.TASKS_DIR, f"{task_index}{_wire.SUFFIX}")
    pool_path = os.path.join(job_dir, _wire.TASKS_DIR, f"{_wire.POOL_FILE}{_wire.SUFFIX}")
    pooled = os.path.exists(pool_path)
    try:
        with open(os.path.join(job_dir, _wire.SECRET_FILE), "rb") as fh:
            secret = fh.read()
        # a self-scheduled task has a task file only if it checkpointed (its resumed call)
        calls = _load_calls(secret, task_path) if not pooled or os.path.exists(task_path) else []
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        print(
            f"clustrix worker: cannot read task {task_index} in {job_dir}: {exc}", file=sys.stderr
        )
        return EXIT_BAD_TASK
    results_dir = os.path.join(job_dir, _wire.RESULTS_DIR)

    def result_path(call_index: int) -> str:
        return os.path.join(results_dir, f"{call_index}{_wire.SUFFIX}")

    def done(call_index: int) -> bool:
        name = f"{call_index}{_wire.SUFFIX}"  # read by the client already: moved to done/
        return os.path.exists(result_path(call_index)) or os.path.exists(
            os.path.join(results_dir, _wire.DONE_DIR, name)
        )

    # A job the scheduler started again (requeued) does not redo the calls it finished.
    pending = [call for call in calls if not done(call[0])]
    checkpointer = None
    signal_name = os.environ.pop(_wire.CHECKPOINT_SIGNAL_ENV, "")
    if signal_name:
        checkpointer = _Checkpointer(task_path, secret)
        checkpointer.pending = pending
        checkpointer.install(signal_name)

    def run_and_write(call: tuple[int, bytes, bytes]) -> bool:
        """False if the checkpoint signal came before the call started."""
        call_index, function, arguments = call
        record = run_call(function, arguments, checkpointer)
        if record is None:
            return False
        record["task"] = task_index  # who ran it (a pool's claim may be seen only later)
        # Flush the user's prints before the result appears, so logs are complete by then.
        sys.stdout.flush()
        sys.stderr.flush()
        _wire.write_atomic(result_path(call_index), _wire.dump_record(secret, record))
        return True

    for position, call in enumerate(pending):
        if checkpointer is not None:
            checkpointer.position = position
            if checkpointer.signalled:
                return checkpointer.requeue(pending[position:])
        if not run_and_write(call):  # the signal came while the call was being unpickled
            assert checkpointer is not None
            return checkpointer.requeue(pending[position:])
    if not pooled:
        return 0
    for call in _pool_calls(job_dir, task_index, secret, done):
        if checkpointer is not None:
            # Only the running call is this task's; the others stay in the pool.
            checkpointer.pending, checkpointer.position = [call], 0
            if checkpointer.signalled:
                return checkpointer.requeue([call])
        if not run_and_write(call):
            assert checkpointer is not None
            return checkpointer.requeue([call])
        if checkpointer is not None and checkpointer.signalled:
            return checkpointer.requeue([])  # stop claiming; the requeued job goes on
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
