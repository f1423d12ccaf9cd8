"""A transport that uses the user's shared SSH connection to a cluster (``connection_persist_s``).

Like OpenSSH's ``ControlPersist``: the first clustrix process that reaches a cluster starts
a process of the user's that holds the connection (:mod:`._shared_server`) and outlives it
by ``connection_persist_s``; every later process reaching the same cluster the same way
(host, port, user, key, known_hosts, jump host, timeouts: :func:`shared_transport`) uses
that connection through a private Unix socket (:mod:`._shared_wire`). A new process so
starts without a login: no key exchange and authentication round trips, no second
one-time code on a cluster that asks for one.

The login happens in the shared process; a question it needs answered (a passphrase, a
one-time code) comes back to the client that waits for it and is put to that client's own
auth prompt. When the shared process ends (idle, killed, its machine suspended), calls in
flight fail as on a dropped SSH connection, and the next call starts another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ConnectionLostError, TransportError
from ._shared_wire import SharedPlace, encode_frame, read_frame, receive, send, shared_place
from ._ssh_prompt import AuthPrompt, PromptUnavailable, default_prompt
from .base import CommandResult, DirEntry, FileHandle, FileStat, OnError, Transport, TreeUsage

__all__ = ["SharedSSHTransport", "shared_transport"]

logger = logging.getLogger("clustrix.ssh.shared")

#: The settings of SSHTransport that do not make a login different (secrets: the shared
#: process logs in with the first client's; another client's are not needed then).
_NOT_IDENTITY = ("password", "key_passphrase")
#: How long a starter waits for the process it started to listen (its imports, a bind).
START_TIMEOUT_S = 30.0
#: A log of the shared process larger than this is started afresh.
_MAX_LOG_BYTES = 1 << 20


def shared_transport(
    options: dict[str, Any], *, persist_s: float, auth_prompt: AuthPrompt | None = None
) -> SharedSSHTransport | None:
    """A client of the shared connection that ``options`` (SSHTransport's keyword
    arguments) describe; None where it has no private place on this machine (no uids, as
    on Windows, or a cache path too long for a Unix socket)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    identity = {k: v for k, v in options.items() if k not in _NOT_IDENTITY}
    for name in ("key_file", "known_hosts"):
        if identity.get(name) is not None:
            identity[name] = os.path.abspath(os.path.expanduser(os.fspath(identity[name])))
    place = shared_place(identity)
    if place is None:
        return None
    return SharedSSHTransport(place, options, persist_s=persist_s, auth_prompt=auth_prompt)


class SharedSSHTransport(Transport):
    """Commands and files through the user's shared SSH connection (see the module)."""

    round_trips_are_costly = True

    def __init__(
        self,
        place: SharedPlace,
        options: dict[str, Any],
        *,
        persist_s: float,
        auth_prompt: AuthPrompt | None = None,
    ) -> None:
        """``options``: SSHTransport's keyword arguments, for the process that starts it."""
        self._place = place
        self._options = options
        self._persist_s = persist_s
        self._prompt = auth_prompt if auth_prompt is not None else default_prompt
        host, port = options["host"], options.get("port")
        where = f"{host}:{port}" if port is not None else host
        self.location = f"{options.get('username') or getpass.getuser()}@{where}"
        #: The shared process's log (its stderr), for error messages.
        self.log_path = place.log
        #: The pid of the shared process, once connected to it.
        self.server_pid: int | None = None
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._home: str | None = None

    # -- the link to the shared process ------------------------------------------------------

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        link = self._link
        if link is None or not link.alive:
            link = await self._linked()
        return await link.call(op, args, kwargs)

    async def _linked(self) -> _Link:
        async with self._lock:
            if self._link is None or not self._link.alive:
                # Again if the one found was ending as we came (its idle time just over).
                link = await self._reach()
                for _attempt in range(3):
                    if link is not None:
                        break
                    await asyncio.to_thread(self._start_server)
                    link = await self._reach()
                if link is None:
                    raise TransportError(
                        f"the shared SSH connection process started but does not answer on "
                        f"{self._place.socket}; see {self._place.log}, or set "
                        "connection_persist_s=0 to connect without it"
                    )
                self._link = link
            return self._link

    async def _reach(self) -> _Link | None:
        """A link to the shared process if one answers on the socket, else None."""
        try:
            reader, writer = await asyncio.open_unix_connection(os.fspath(self._place.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        link = _Link(reader, writer, self._prompt)
        try:
            location, self.server_pid = await link.call("hello", (self._persist_s,), {})
        except ConnectionLostError:  # it was exiting as we came
            await link.close()
            return None
        self.location = location  # the server's word for the user, once it has logged in
        return link

    def _start_server(self) -> None:
        """Start the shared process unless another starter did meanwhile (blocking)."""
        import fcntl  # POSIX only, as AF_UNIX sockets with private directories are

        lock = os.open(self._place.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time, others then find it
            if _answers(self._place.socket):
                return
            self._spawn()
        finally:
            os.close(lock)

    def _spawn(self) -> None:
        log = os.open(self._place.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.fstat(log).st_size > _MAX_LOG_BYTES:
                os.truncate(log, 0)
            env = dict(os.environ)
            # The server imports this clustrix, whatever made it importable here.
            package_parent = str(Path(__file__).resolve().parent.parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [package_parent, env.get("PYTHONPATH")])
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "clustrix.transports._shared_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd="/",
                env=env,
                start_new_session=True,  # a Ctrl-C in the starter's terminal is not its
            )
        finally:
            os.close(log)
        assert proc.stdin is not None and proc.stdout is not None
        spec = {
            "options": self._options,
            "socket": os.fspath(self._place.socket),
            "persist_s": self._persist_s,
        }
        try:
            proc.stdin.write(encode_frame(spec))
            proc.stdin.close()
            # Its answer is one small write: readable means all of it is there.
            if not select.select([proc.stdout], [], [], START_TIMEOUT_S)[0]:
                proc.kill()  # if it is still the child that has not detached yet
                message = ("failed", f"it did not start listening within {START_TIMEOUT_S:g} s")
            else:
                message = read_frame(proc.stdout)
        except (EOFError, OSError):
            message = ("failed", f"it exited with status {proc.wait()}")
        finally:
            proc.stdout.close()
            proc.wait()  # the child that detached the server; exits at once
        if message[0] != "listening":
            raise TransportError(
                f"could not start the shared SSH connection process: {message[1]}; see "
                f"{self._place.log}, or set connection_persist_s=0 to connect without it"
            )
        logger.debug("started the shared connection process %d", message[1])

    async def stop_server(self) -> int | None:
        """Ask the shared process to end now (its other clients' calls fail as on a drop);
        its pid, or None if none was running."""
        link = await self._reach()
        if link is None:
            return None
        try:
            with contextlib.suppress(ConnectionLostError):  # it may close before answering
                await link.call("stop", (), {})
        finally:
            await link.close()
        return self.server_pid

    # -- Transport ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Reach the shared process (starting it if none) and have it log in if needed."""
        self.location = await self._call("connect")

    async def close(self) -> None:
        """Leave the shared process; it keeps the connection for ``connection_persist_s``."""
        async with self._lock:
            link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def home(self) -> str:
        """The login directory (asked once)."""
        if self._home is None:
            self._home = await self._call("home")
        return self._home

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        """Run ``argv`` on a channel of the shared connection."""
        result: CommandResult = await self._call(
            "run", list(argv), timeout_s=timeout_s, stdin=stdin, errors=errors
        )
        return result

    async def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""
        data: bytes = await self._call("read_bytes", path)
        return data

    async def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a file."""
        data: bytes = await self._call("read_tail", path, max_bytes)
        return data

    async def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write a file atomically."""
        await self._call("write_bytes", path, data, mode=mode)

    async def makedirs(self, path: str, *, mode: int = 0o700, exist_ok: bool = True) -> None:
        """Create a directory and its missing parents."""
        await self._call("makedirs", path, mode=mode, exist_ok=exist_ok)

    async def exists(self, path: str) -> bool:
        """True if ``path`` exists."""
        found: bool = await self._call("exists", path)
        return found

    async def remove_tree(self, path: str) -> None:
        """Delete a directory tree."""
        await self._call("remove_tree", path)

    async def stat(self, path: str) -> FileStat:
        """Attributes of ``path``, following symlinks."""
        found: FileStat = await self._call("stat", path)
        return found

    async def lstat(self, path: str) -> FileStat:
        """Attributes of ``path`` itself."""
        found: FileStat = await self._call("lstat", path)
        return found

    async def scandir(self, path: str) -> list[DirEntry]:
        """The entries of a directory."""
        entries: list[DirEntry] = await self._call("scandir", path)
        return entries

    async def scan_tree(
        self, path: str, *, on_error: OnError = "raise", detail: bool = True
    ) -> list[DirEntry]:
        """Every entry below ``path``, in one call of the shared process."""
        entries: list[DirEntry] = await self._call(
            "scan_tree", path, on_error=on_error, detail=detail
        )
        return entries

    async def disk_usage(self, path: str, *, on_error: OnError = "raise") -> TreeUsage:
        """Files, directories and bytes below ``path``."""
        usage: TreeUsage = await self._call("disk_usage", path, on_error=on_error)
        return usage

    async def readlink(self, path: str) -> str:
        """The target of a symlink."""
        target: str = await self._call("readlink", path)
        return target

    async def symlink(self, target: str, path: str) -> None:
        """Create a symlink ``path`` pointing at ``target``."""
        await self._call("symlink", target, path)

    async def mkdir(self, path: str, *, mode: int = 0o777) -> None:
        """Create one directory."""
        await self._call("mkdir", path, mode=mode)

    async def remove(self, path: str) -> None:
        """Delete a file or symlink."""
        await self._call("remove", path)

    async def rmdir(self, path: str) -> None:
        """Delete an empty directory."""
        await self._call("rmdir", path)

    async def open(self, path: str, mode: Literal["rb", "wb", "ab", "xb"]) -> FileHandle:
        """An open file, read and written through the shared process."""
        handle_id: int = await self._call("open", path, mode)
        return _SharedHandle(self, handle_id)

    async def put(self, local_path: str, path: str) -> None:
        """Copy a local file to the cluster (the shared process reads it: same machine)."""
        await self._call("put", os.path.abspath(local_path), path)

    async def get(self, path: str, local_path: str) -> None:
        """Copy a file from the cluster to a local path."""
        await self._call("get", path, os.path.abspath(local_path))


class _SharedHandle(FileHandle):
    """A file the shared process holds open for this client."""

    def __init__(self, transport: SharedSSHTransport, handle_id: int) -> None:
        self._transport, self._id = transport, handle_id

    async def read(self, size: int, offset: int) -> bytes:
        data: bytes = await self._transport._call("handle_read", self._id, size, offset)
        return data

    async def write(self, data: bytes, offset: int) -> None:
        await self._transport._call("handle_write", self._id, data, offset)

    async def stat(self) -> FileStat:
        found: FileStat = await self._transport._call("handle_stat", self._id)
        return found

    async def close(self) -> None:
        await self._transport._call("handle_close", self._id)


class _Link:
    """One Unix connection to the shared process: calls by id, questions answered."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prompt: AuthPrompt
    ) -> None:
        self._reader, self._writer, self._prompt = reader, writer, prompt
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._answering: set[asyncio.Task[None]] = set()  # referenced until done
        self._reading = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        """False once the shared process has gone (or this link was closed)."""
        return not self._reading.done()

    async def call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The result of ``op`` in the shared process; its exception raised here."""
        if not self.alive:
            raise ConnectionLostError("the shared SSH connection process has gone")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            try:
                await self._send(("call", call_id, op, args, kwargs))
            except OSError as exc:  # it went away between two calls
                raise ConnectionLostError(
                    f"the shared SSH connection process has gone ({exc})"
                ) from None
            ok, value = await future
        except asyncio.CancelledError:
            if self.alive:  # a whole frame in one write: no need to wait for the lock
                with contextlib.suppress(ConnectionError):
                    self._writer.write(encode_frame(("cancel", call_id)))
            raise
        finally:
            self._pending.pop(call_id, None)
        if ok:
            return value
        raise value

    async def close(self) -> None:
        """Leave: the shared process cancels this link's calls in flight."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading

    async def _read(self) -> None:
        try:
            while True:
                message = await receive(self._reader)
                if message[0] == "result":
                    future = self._pending.get(message[1])
                    if future is not None and not future.done():
                        future.set_result((message[2], message[3]))
                elif message[0] == "prompt":
                    task = asyncio.create_task(self._answer(message[1], message[2]))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        ConnectionLostError(
                            "the shared SSH connection process went away during the call"
                        )
                    )

    async def _answer(self, question_id: int, question: str) -> None:
        try:
            reply = ("answer", question_id, True, await asyncio.to_thread(self._prompt, question))
        except PromptUnavailable as exc:
            reply = ("answer", question_id, False, str(exc))
        except Exception as exc:  # a user's prompt that failed cannot answer
            reply = ("answer", question_id, False, f"the auth prompt raised {exc!r}")
        with contextlib.suppress(ConnectionError):
            await self._send(reply)

    async def _send(self, message: Any) -> None:
        async with self._send_lock:
            await send(self._writer, message)


def _answers(path: Path) -> bool:
    """Something listens on the Unix socket ``path`` (blocking, local: immediate)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True
