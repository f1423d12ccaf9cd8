"""The process that holds a shared SSH connection: ``python -m clustrix.transports._shared_server``.

The first client that finds none starts it (:mod:`.shared`). It reads its settings from
stdin, never from its command line (they may hold a password), detaches from its starter,
listens on the socket of :mod:`._shared_wire` and says so on stdout, then serves each
client's calls on one :class:`~clustrix.transports.ssh.SSHTransport`: the login, the spare
channels and the SFTP session are shared by every process of the user's.

- A login that needs a person (a passphrase, a one-time code) asks the client whose call
  started it, through that client's own auth prompt; if that one cannot ask (no
  terminal), the other clients waiting for the login are asked in turn.
- A client that goes away has its calls cancelled (a command it ran is killed, as a
  cancelled ``run`` does) and its open files closed.
- It exits ``persist_s`` after its last client left (the longest any client asked for; at
  once if no login has worked), on SIGTERM, or when a client calls ``stop``.

Its log (stderr) is the ``.log`` file next to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from ..errors import TransportError
from ._shared_wire import HANDLE_OPS, OPS, encode_frame, read_frame, receive, send
from ._ssh_prompt import PromptUnavailable
from .base import FileHandle
from .ssh import SSHTransport

__all__ = ["main"]

logger = logging.getLogger("clustrix.ssh.shared")

#: How long a process that was just started waits for its starter to connect.
STARTER_GRACE_S = 10.0

#: The client whose call is being performed, in that call's task and in what it starts (the
#: login, and the worker thread that runs the auth prompt: both copy the context).
_CALLER: contextvars.ContextVar[_Client] = contextvars.ContextVar("clustrix_shared_caller")


class _Client:
    """One connected clustrix process: its calls in flight, its open files, its questions."""

    def __init__(
        self, server: _Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._server, self._reader, self._writer = server, reader, writer
        self._send_lock = asyncio.Lock()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.handles: dict[int, FileHandle] = {}
        self._questions: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._question_ids = itertools.count(1)

    @property
    def waiting(self) -> bool:
        """True while a call of this client's is in flight."""
        return bool(self._tasks)

    @property
    def gone(self) -> bool:
        """True once this client has left (or is being closed)."""
        return self._writer.is_closing()

    async def serve(self) -> None:
        """Take this client's messages until it goes away."""
        while True:
            try:
                message = await receive(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
                return
            kind = message[0]
            if kind == "call":
                _, call_id, op, args, kwargs = message
                task = asyncio.create_task(self._call(call_id, op, args, kwargs))
                self._tasks[call_id] = task
                task.add_done_callback(functools.partial(self._forget, call_id))
            elif kind == "cancel":
                if (running := self._tasks.get(message[1])) is not None:
                    running.cancel()
            elif kind == "answer":
                _, question_id, ok, text = message
                future = self._questions.pop(question_id, None)
                if future is not None and not future.done():
                    future.set_result((ok, text))

    def _forget(self, call_id: int, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(call_id, None)

    async def ask(self, question: str) -> tuple[bool, str]:
        """(True, answer) from this client's auth prompt, or (False, why it cannot)."""
        question_id = next(self._question_ids)
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._questions[question_id] = future
        await self._send(("prompt", question_id, question))
        return await future

    async def close(self) -> None:
        """Cancel the calls in flight, close the open files, fail the questions asked."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for handle in self.handles.values():
            with contextlib.suppress(Exception):
                await handle.close()
        self.handles.clear()
        for future in self._questions.values():
            if not future.done():
                future.set_result((False, "the clustrix process asked has gone"))
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _call(self, call_id: int, op: str, args: tuple[Any, ...], kwargs: Any) -> None:
        _CALLER.set(self)  # this task's own context: its login asks this client
        try:
            reply = ("result", call_id, True, await self._server.perform(self, op, args, kwargs))
        except asyncio.CancelledError:
            return  # the client cancelled it, or left: nobody waits for the answer
        except Exception as exc:
            reply = ("result", call_id, False, _portable(exc))
        try:
            await self._send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            error = TransportError(f"{op}: its result cannot be sent back ({exc})")
            await self._send(("result", call_id, False, error))

    async def _send(self, message: Any) -> None:
        async with self._send_lock:
            with contextlib.suppress(ConnectionError):
                await send(self._writer, message)


class _Server:
    """The shared transport and the clients it serves."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._socket = Path(spec["socket"])
        self._persist_s = float(spec["persist_s"])
        self._transport = SSHTransport(**spec["options"], auth_prompt=self._relay_prompt)
        self._clients: list[_Client] = []
        self._logged_in = False
        self._tried = False  # a call that needs the connection has come
        self._handle_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._idle: asyncio.TimerHandle | None = None

    async def serve(self) -> None:
        """Listen, tell the starter, serve until idle or told to stop."""
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        # Bound under a name of its own, then renamed over a stale socket in one step: a
        # client finds either the old (refusing) socket or this one, never none.
        bound = self._socket.with_name(f".{self._socket.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            bound.unlink()
        server = await asyncio.start_unix_server(self._serve_client, path=os.fspath(bound))
        os.replace(bound, self._socket)
        inode = os.stat(self._socket).st_ino
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._done.set)
        _tell_starter(("listening", os.getpid()))
        logger.info("pid %d serving %s on %s", os.getpid(), self._transport.location, self._socket)
        self._arm_idle(STARTER_GRACE_S)
        try:
            await self._done.wait()
        finally:
            server.close()
            with contextlib.suppress(OSError):
                if os.stat(self._socket).st_ino == inode:  # not a successor's
                    self._socket.unlink()
            await asyncio.gather(*(client.close() for client in list(self._clients)))
            await self._transport.close()
            logger.info("pid %d exits", os.getpid())

    async def perform(
        self, client: _Client, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Do one call of ``client``'s."""
        if op == "hello":
            self._persist_s = max(self._persist_s, float(args[0]))
            return self._transport.location, os.getpid()
        if op == "stop":
            assert self._done is not None
            self._done.set()
            return None
        if op in HANDLE_OPS:
            handle = client.handles[args[0]]
            if op == "handle_close":
                del client.handles[args[0]]
            return await getattr(handle, op.removeprefix("handle_"))(*args[1:])
        if op not in OPS:
            raise TransportError(f"the shared connection has no operation {op!r}")
        self._tried = True
        try:
            result = await getattr(self._transport, op)(*args, **kwargs)
        finally:  # a file not found is an answer too: the login worked
            self._logged_in = self._logged_in or self._transport.connected
        if op == "connect":
            return self._transport.location
        if isinstance(result, FileHandle):
            handle_id = next(self._handle_ids)
            client.handles[handle_id] = result
            return handle_id
        return result

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not _same_user(writer.get_extra_info("socket")):
            logger.warning("refused a client of another user")
            writer.close()
            return
        client = _Client(self, reader, writer)
        self._clients.append(client)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            await client.serve()
        finally:
            self._clients.remove(client)
            await client.close()
            if not self._clients:
                self._arm_idle(self._linger_s())

    def _linger_s(self) -> float:
        """How long to wait for a client once none is left."""
        if self._logged_in:
            return self._persist_s
        # A login tried and failed: nothing to keep. None tried (a starter's probe, a
        # client that left at once): the one that started us is still to come.
        return 0.0 if self._tried else STARTER_GRACE_S

    def _arm_idle(self, delay_s: float) -> None:
        assert self._loop is not None and self._done is not None
        self._idle = self._loop.call_later(delay_s, self._done.set)

    def _relay_prompt(self, question: str) -> str:
        """The auth prompt of the shared transport (called from a worker thread): asks the
        client whose call started the login, else the others that wait for a call."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is self._loop:  # would wait for itself
                raise PromptUnavailable("asked on the event loop itself")
        caller = _CALLER.get(None)
        ask = self._ask(question, caller)
        ok, text = asyncio.run_coroutine_threadsafe(ask, self._loop).result()
        if not ok:
            raise PromptUnavailable(text)
        return text

    async def _ask(self, question: str, caller: _Client | None) -> tuple[bool, str]:
        """Ask the caller, then each client that waits for a call (all of them wait for
        this login), until one can answer."""
        candidates = [] if caller is None else [caller]
        candidates += [c for c in self._clients if c.waiting and c is not caller]
        why = "no clustrix process is connected to answer it"
        for client in candidates:
            if client.gone:  # left while the login went on
                continue
            ok, text = await client.ask(question)
            if ok:
                return ok, text
            why = text
        return False, why


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a TransportError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return TransportError(f"{type(exc).__name__}: {exc}")
    return exc


def _same_user(sock: socket.socket | None) -> bool:
    """The peer runs as our user, where the system says (Linux); elsewhere the socket's
    private directory is the only gate."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.geteuid())


def _tell_starter(message: tuple[Any, ...]) -> None:
    """Write ``message`` on stdout, then let go of stdin and stdout (the starter's pipes)."""
    try:
        os.write(1, encode_frame(message))
    except OSError:  # the starter has gone: nobody will connect
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def main() -> None:
    """Read the settings, detach, serve."""
    spec = read_frame(sys.stdin.buffer)
    # Detach before any thread exists: the starter reaps the child that exits here, and
    # the process that serves belongs to init, not to the starter (no zombie left behind).
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_Server(spec).serve())
    except Exception as exc:
        logger.exception("failed")
        with contextlib.suppress(OSError):
            os.write(1, encode_frame(("failed", f"{type(exc).__name__}: {exc}")))
        sys.exit(1)


if __name__ == "__main__":
    main()
