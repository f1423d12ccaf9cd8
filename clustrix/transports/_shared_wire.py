"""Where a shared SSH connection listens, and the frames its clients and it exchange.

A *shared connection* (``connection_persist_s`` > 0) is one process of the user's holding
one :class:`~clustrix.transports.ssh.SSHTransport`, serving every clustrix process of the
same user that reaches the same cluster the same way (:mod:`._shared_server`; the client is
:mod:`.shared`). They meet on a Unix socket in the user's private cache directory
(:mod:`clustrix._usercache`: 0700, the user's own), named by a hash of everything that makes
the login what it is, so another host, user, key or clustrix gets a connection of its own.

A frame is a 4-byte big-endian length and a pickle. Only processes of the same user reach the
socket (the directory's mode, and the peer's uid checked where the system tells it), and
those can already do anything the user can: unpickling their frames grants nothing new.

Knows nothing of SSH, commands or files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._usercache import cache_dir, cache_path, private_dir

__all__ = [
    "HANDLE_OPS",
    "OPS",
    "SOCKET_DIR",
    "SharedPlace",
    "encode_frame",
    "read_frame",
    "receive",
    "send",
    "shared_place",
]

#: The Transport methods a client may call, by name (``open`` gives a handle whose
#: methods are the ops ``handle_read``, ``handle_write``, ``handle_stat``, ``handle_close``).
OPS = frozenset(
    {
        "connect", "home", "run", "read_bytes", "read_tail", "write_bytes", "makedirs",
        "exists", "remove_tree", "stat", "lstat", "scandir", "scan_tree", "disk_usage",
        "readlink", "symlink", "mkdir", "remove", "rmdir", "open", "put", "get",
    }
)  # fmt: skip
HANDLE_OPS = frozenset({"handle_read", "handle_write", "handle_stat", "handle_close"})

#: The cache subdirectory of the sockets, their lock files and their logs.
SOCKET_DIR = "connections"
_HEADER = struct.Struct("!I")
#: Unix socket paths longer than this fail to bind on some systems (104 bytes on macOS).
_MAX_SOCKET_PATH = 100


class SharedPlace:
    """The files of one shared connection: its socket, the lock its starters take, its log."""

    def __init__(self, directory: Path, name: str) -> None:
        self.socket = directory / f"{name}.sock"
        self.lock = directory / f"{name}.lock"
        self.log = directory / f"{name}.log"


def shared_place(identity: dict[str, Any]) -> SharedPlace | None:
    """Where the shared connection of ``identity`` (JSON-able: host, port, user, key, ...)
    listens; None if there is no private directory for it with a path short enough.

    The first of: ``$XDG_RUNTIME_DIR/clustrix`` (the login session's, removed at logout),
    the user cache (``~/.cache/clustrix/connections``), ``/tmp/clustrix-<uid>``, each taken
    only if private (the user's own, 0700; another user's ``/tmp/clustrix-<uid>`` is
    refused, as ssh-agent and tmux refuse theirs)."""
    # This clustrix's code and Python: another install must not speak to our process.
    ours = {**identity, "clustrix": str(Path(__file__).parent.parent), "python": sys.version}
    digest = hashlib.sha256(json.dumps(ours, sort_keys=True).encode()).hexdigest()[:24]
    for directory, make in _candidates():
        place = SharedPlace(directory, digest)
        if len(os.fsencode(place.socket)) <= _MAX_SOCKET_PATH and make() is not None:
            return place
    return None


def _candidates() -> Iterator[tuple[Path, Callable[[], Path | None]]]:
    """(directory, what makes it and says whether it is private), first choice first."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        session = Path(runtime) / "clustrix"
        yield session, lambda: private_dir(session)
    yield cache_path(SOCKET_DIR), lambda: cache_dir(SOCKET_DIR)
    if hasattr(os, "geteuid"):
        scratch = Path(tempfile.gettempdir()) / f"clustrix-{os.geteuid()}"
        yield scratch, lambda: private_dir(scratch)


async def send(writer: asyncio.StreamWriter, message: Any) -> None:
    """Write one frame (callers serialise their sends: one lock per stream)."""
    writer.write(encode_frame(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    """Read one frame; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def encode_frame(message: Any) -> bytes:
    """One frame as bytes, for the pipes between a starter and the process it starts."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def read_frame(stream: Any) -> Any:
    """One frame from a blocking binary file; EOFError if it ends first."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the stream ended before a frame")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the stream ended inside a frame")
    return pickle.loads(data)
