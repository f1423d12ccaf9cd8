"""Blocking file objects on the cluster: what ``ex.open(...)`` returns.

:class:`_RemoteRawFile` is an :class:`io.RawIOBase` over a
:class:`~clustrix.transports.base.FileHandle`, each call one trip to the event-loop thread;
:func:`open_file` wraps it in the stdlib's buffered and text layers. This module knows the
:class:`~clustrix._loop.LoopThread` and :meth:`AsyncFileSystem.open_handle`; nothing of the
front doors that call it, fsspec, schedulers or jobs.
"""

from __future__ import annotations

import errno
import io
from typing import IO, Any, Literal

from .._loop import LoopThread
from ..transports.base import FileHandle
from ._async import AsyncFileSystem
from ._paths import RemotePath

#: Buffer of the file objects from ``open``: one round trip per this many bytes.
DEFAULT_BLOCK_SIZE = 1 << 20
#: ``readall`` asks for this much per round trip (each within the command timeout).
_READALL_CHUNK = 16 << 20


class _RemoteRawFile(io.RawIOBase):
    """A raw binary file over a :class:`FileHandle`, each call a blocking trip to the loop.

    The position is kept here (positional reads and writes), so ``seek`` costs nothing; the
    buffered wrapper from :func:`open_file` makes one round trip per buffer.
    """

    def __init__(
        self, loop: LoopThread, handle: FileHandle, path: str, mode: str, position: int
    ) -> None:
        super().__init__()
        self._loop, self._handle, self._pos = loop, handle, position
        self.name = path
        self.mode = f"{mode}b"

    def readable(self) -> bool:
        return self.mode == "rb"

    def writable(self) -> bool:
        return self.mode != "rb"

    def seekable(self) -> bool:
        return True

    def _check(self, ok: bool, what: str) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not ok:
            raise io.UnsupportedOperation(f"file not open for {what}")

    def readinto(self, buffer: Any) -> int:
        self._check(self.readable(), "reading")
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        data = self._loop.run(self._handle.read(len(view), self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._check(self.readable(), "reading")
        chunks = []
        while True:
            data = self._loop.run(self._handle.read(_READALL_CHUNK, self._pos))
            chunks.append(data)
            self._pos += len(data)
            if len(data) < _READALL_CHUNK:
                return b"".join(chunks)

    def write(self, data: Any) -> int:
        self._check(self.writable(), "writing")
        payload = bytes(data)
        self._loop.run(self._handle.write(payload, self._pos))
        self._pos += len(payload)
        return len(payload)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check(True, "seeking")
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self._loop.run(self._handle.stat()).size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise OSError(errno.EINVAL, f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        self._check(True, "tell")
        return self._pos

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._loop.in_loop_thread:  # garbage collected on the loop's own thread
                self._loop.submit(self._handle.close())
            elif self._loop.running:
                self._loop.run(self._handle.close())
        finally:
            super().close()


def _parse_mode(mode: str) -> tuple[Literal["r", "w", "a", "x"], bool]:
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or len(set(mode)) != len(mode) or not set(mode) <= set("rwaxbt"):
        raise ValueError(f"invalid mode {mode!r}: one of r, w, a, x, optionally with b or t")
    if "b" in mode and "t" in mode:
        raise ValueError(f"invalid mode {mode!r}: binary and text at once")
    kind: Literal["r", "w", "a", "x"] = kinds[0]  # type: ignore[assignment]
    return kind, "b" in mode


def open_file(
    loop: LoopThread,
    afs: AsyncFileSystem,
    path: RemotePath,
    mode: str = "r",
    *,
    block_size: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> IO[Any]:
    """A blocking, buffered file object over ``afs`` (see :meth:`_FileSystemMethods.open`)."""
    kind, binary = _parse_mode(mode)
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode takes no encoding, errors or newline")
    p, handle, position = loop.run(afs.open_handle(path, kind))
    raw = _RemoteRawFile(loop, handle, p, kind, position)
    size = block_size or DEFAULT_BLOCK_SIZE
    buffered: io.BufferedReader | io.BufferedWriter = (
        io.BufferedReader(raw, size) if kind == "r" else io.BufferedWriter(raw, size)
    )
    if binary:
        return buffered
    # UTF-8, not the locale of this client: the file lives on the cluster.
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)
