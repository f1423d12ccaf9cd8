"""One warm worker process of the local pool: ``python -c BOOTSTRAP <clustrix dir> <pool dir>
<serial>``.

It talks to the executor over its stdin and stdout pipes, which it moves to private file
descriptors first: the user's code reads ``/dev/null`` on fd 0 and writes to the worker's
log files on fds 1 and 2 (``<pool dir>/logs/<serial>.out|err``, the parent opens the
``.err`` one). The first message from the parent sets ``sys.path`` to the executor's, so a
call finds every module the executor's process can import; then the worker says it is ready
and runs what it is sent, one message at a time:

    parent -> worker   [(call id, function bytes or None, arguments bytes), ...]
                       (None: the same function as the call before, sent once per worker)
    worker -> parent   ("ready", pid, stdout size, stderr size)
                       ("done", call id, result record, stdout size, stderr size)

Each call runs through :func:`clustrix.worker.run_call` (the same as in a job), and its
result record goes back before the next call starts; the log sizes after it tell the parent
which part of the logs is that call's output. EOF on stdin: the worker exits 0.

Like :mod:`clustrix.worker`, it imports only a few standard modules and
:mod:`clustrix.worker` (``pickle``; cloudpickle only if a call was pickled by value), and
knows nothing of the executor, asyncio or the engine.
"""

from __future__ import annotations

import os
import pickle
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the worker should not import typing
if TYPE_CHECKING:
    from typing import BinaryIO

#: ``python -c`` program: the clustrix that the executor runs first on ``sys.path`` (the
#: working directory's own ``clustrix`` must not shadow it), then this module's main().
BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from clustrix._localpool._worker import main; sys.exit(main())"
)
READY = "ready"
DONE = "done"
_HEADER_BYTES = 8


def encode(message: object) -> bytes:
    """One message as it travels: its length, then its pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER_BYTES, "little") + body


def decode_frames(buffer: bytearray) -> list[object]:
    """The complete messages at the start of ``buffer``, which loses them."""
    messages: list[object] = []
    start, end = 0, len(buffer)
    while end - start >= _HEADER_BYTES:
        size = int.from_bytes(buffer[start : start + _HEADER_BYTES], "little")
        if end - start - _HEADER_BYTES < size:
            break
        body_start = start + _HEADER_BYTES
        messages.append(pickle.loads(buffer[body_start : body_start + size]))
        start = body_start + size
    del buffer[:start]
    return messages


def _read(stream: BinaryIO) -> object | None:
    """The next message, or None at EOF (the executor is gone or closing the pool)."""
    head = stream.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES:
        return None
    size = int.from_bytes(head, "little")
    body = stream.read(size)
    if len(body) < size:
        return None
    message: object = pickle.loads(body)
    return message


def _size(fd: int) -> int:
    """How many bytes the log on ``fd`` has (-1 if the user's code replaced it by something
    that has no size). ``lseek`` is a third of the cost of ``fstat``; the logs are opened
    with ``O_APPEND``, so moving the offset to the end changes nothing."""
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return -1


def _send(fd: int, message: object) -> None:
    """Write one message whole (a pipe may take less than all of a big one at once)."""
    data = memoryview(encode(message))
    while data:
        data = data[os.write(fd, data) :]


def _flush() -> None:
    """The user's buffered prints go to the log before the call's boundary is taken."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (no contextlib.suppress: this runs after every call)
            stream.flush()
        except Exception:  # replaced or closed by the user's code: nothing to flush
            pass


def main() -> int:
    """Serve calls until stdin ends."""
    # The pipes move away from fds 0 and 1 (non-inheritable copies: the user's
    # subprocesses do not get them); the user's code gets /dev/null and the log instead.
    requests = open(os.dup(0), "rb")  # noqa: SIM115 (lives as long as the process)
    results = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    setup = _read(requests)
    if not isinstance(setup, dict):
        return 0
    out = os.open(setup["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.close(out)
    sys.path[:] = setup["path"]

    import signal

    from clustrix.worker import run_call

    # A Ctrl-C in the executor's terminal reaches this process group too: it stops the
    # user's running call (a KeyboardInterrupt result), never the idle worker. One handler
    # for good (setting one per call costs more than the call itself); a read it interrupts
    # is resumed (PEP 475).
    in_call = [False]

    def on_interrupt(signum: int, frame: object) -> None:
        if in_call[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        _send(results, (READY, os.getpid(), _size(1), _size(2)))
        function = b""
        while True:
            calls = _read(requests)
            if calls is None:
                return 0
            assert isinstance(calls, list)
            for call_id, sent, arguments in calls:
                if sent is not None:
                    function = sent
                in_call[0] = True
                try:
                    record = run_call(function, arguments)
                finally:
                    in_call[0] = False
                _flush()
                # before the next call starts: a crash in that one keeps this result
                _send(results, (DONE, call_id, record, _size(1), _size(2)))
    except BrokenPipeError:  # the executor is gone
        return 0


if __name__ == "__main__":
    sys.exit(main())
