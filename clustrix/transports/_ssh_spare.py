"""Spare channels: SSH sessions started ahead of need, each a shell waiting for its command.

A command on a new channel waits two round trips before it runs (the channel open, then
the exec request), and one more when it has stdin: OpenSSH gives a session a send window
only once its command has started, so the data cannot follow the exec request in the same
flight (the window is 0 until the server's adjust arrives; seen through
``benchmarks/latency_proxy.py``). A spare is a channel opened and exec'd earlier, off the
critical path, running :data:`SPARE_READER`: it reads a command line from its stdin up to
an end marker, then becomes that command (``exec``), and the rest of its stdin is the
command's. A command on a spare costs ONE round trip, stdin included, and what the stdin
carries (a submission's key) stays off command lines as before. The command runs with the
environment a command of its own would have (the login shell started the spare), under the
same process ID (``exec``), so a signal request or a close ends it as before.

Knows nothing of what the commands are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex

import asyncssh

__all__ = ["SPARE_READER", "Spare", "SparePool"]

logger = logging.getLogger("clustrix.ssh")

#: ``sh -c`` program of a spare, ``$0`` its end marker: the lines before the marker line
#: are a command line, run with ``exec`` (the shell's ``read`` takes one byte at a time from
#: a pipe, so the command's stdin starts right after the marker line). One line, with no
#: newline of its own (``$n`` is made): any login shell passes it on to ``sh`` unchanged.
SPARE_READER = (
    "n=$(printf '\\nx'); n=${n%x}; c=; while IFS= read -r l; do "
    'if [ "$l" = "$0" ]; then eval "exec $c"; fi; c="$c$l$n"; done; exit 255'
)


class Spare:
    """One started spare: its process (waiting on its stdin) and its end marker."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        marker: str,
    ) -> None:
        self.conn = conn
        self.process = process
        self.marker = marker

    @staticmethod
    def command(marker: str) -> str:
        """The command line that starts a spare with ``marker``."""
        return shlex.join(["sh", "-c", SPARE_READER, marker])

    def alive(self) -> bool:
        """Still waiting for its command (not ended by the server or a dropped connection)."""
        return (
            not self.conn.is_closed()
            and self.process.exit_status is None
            and self.process.exit_signal is None
            and not self.process.channel.is_closing()
        )

    def start(self, command_line: str, stdin: bytes | None) -> None:
        """Send the command (and its stdin, then EOF) in one flight."""
        self.process.stdin.write(f"{command_line}\n{self.marker}\n".encode() + (stdin or b""))
        self.process.stdin.write_eof()


class SparePool:
    """Up to ``size`` spares on the current connection, refilled in the background.

    A spare costs the server one idle ``sh`` and one of its ``MaxSessions`` per connection;
    if the server refuses a spare's channel, this connection gets no more spares.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._spares: list[Spare] = []
        self._opening: set[asyncio.Task[None]] = set()
        self._refused: asyncssh.SSHClientConnection | None = None  # no spares on this one
        #: Commands that ran on a spare (for tests and benchmarks).
        self.taken = 0

    def take(self, conn: asyncssh.SSHClientConnection, command_line: str) -> Spare | None:
        """A live spare on ``conn`` for ``command_line`` (None: use a channel of its own),
        and more started in the background."""
        self._spares = [s for s in self._spares if s.conn is conn and s.alive()]
        spare = None
        if self._spares and f"\n{self._spares[0].marker}\n" not in f"\n{command_line}\n":
            spare = self._spares.pop(0)
            self.taken += 1
        self.refill(conn)
        return spare

    def ready(self) -> int:
        """How many spares wait for a command now."""
        return len([s for s in self._spares if s.alive()])

    def refill(self, conn: asyncssh.SSHClientConnection) -> None:
        """Start spares on ``conn`` until ``size`` are there or on their way."""
        if conn is self._refused or conn.is_closed():
            return
        for _ in range(self.size - len(self._spares) - len(self._opening)):
            task = asyncio.ensure_future(self._open(conn))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    def refuse(self, conn: asyncssh.SSHClientConnection) -> None:
        """No spares on ``conn`` from now on (its server has too few sessions for them);
        those there are closed."""
        if conn is not self._refused:
            logger.info("no spare SSH channels on this connection: the server refused one")
        self._refused = conn
        for spare in self._spares:
            spare.process.close()
        self._spares = []

    async def give_back(self, conn: asyncssh.SSHClientConnection) -> None:
        """:meth:`refuse`, and wait until the server has the spares' sessions back (those
        being opened too: they close once open), so that a command can take one."""
        spares = [s for s in self._spares if s.conn is conn]
        self.refuse(conn)
        for task in list(self._opening):
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        for spare in spares:
            with contextlib.suppress(asyncssh.Error, OSError):
                await spare.process.wait_closed()

    async def _open(self, conn: asyncssh.SSHClientConnection) -> None:
        marker = f"clustrix-end-{secrets.token_hex(8)}"
        try:
            process = await conn.create_process(Spare.command(marker), encoding=None)
        except asyncssh.ChannelOpenError:
            self.refuse(conn)
            return
        except (asyncssh.Error, OSError) as exc:  # a dropped connection: commands notice it
            logger.debug("spare SSH channel not opened: %s", exc)
            return
        if conn is self._refused or len(self._spares) >= self.size:
            process.close()
            await process.wait_closed()
            return
        self._spares.append(Spare(conn, process, marker))

    async def close(self) -> None:
        """Close every spare and stop opening more."""
        for task in list(self._opening):
            task.cancel()
        for task in list(self._opening):
            with contextlib.suppress(BaseException):
                await task
        for spare in self._spares:
            spare.process.close()
        self._spares = []
