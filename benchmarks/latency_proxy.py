"""A TCP proxy on 127.0.0.1 that delays every byte by a fixed time in each direction: a
stand-in for a WAN link to the cluster (the machine's kernel has no ``netem``). Order is
kept; bandwidth is not limited. 25 ms each way makes a 50 ms round trip.

    python benchmarks/latency_proxy.py --listen 2223 --target 2222 --delay-ms 25

``--listen 0`` takes a free port; the first line on stdout is ``LISTENING <port> CONTROL
<port>``. It also counts what crosses it: a connection to the control port gets one JSON
line of totals over all proxied connections so far (:func:`read_totals`), among them
``turns``, the client-to-server flights (data from the client after data from the server:
one per round trip on the link's critical path; requests that the client pipelines before
the answers arrive make one flight). Any process can read them, e.g. a benchmark's child
at the moments it wants. Benchmarks use :class:`ProxyProcess`, which starts the proxy as a
child process (so that it never competes with the measured client for a GIL).

Adapted from the test cluster's reference proxy; the project carries its own copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import IO

HOST = "127.0.0.1"
READ_BYTES = 65536


@dataclass
class Totals:
    """What crossed the proxy, over all connections."""

    connections: int = 0
    turns: int = 0
    c2s_bytes: int = 0
    s2c_bytes: int = 0


@dataclass
class Link:
    """One proxied connection: which way data went last (for counting turns)."""

    totals: Totals
    last: str = field(default="s2c")  # the client speaks first: its first send is a turn

    def saw(self, direction: str, n: int) -> None:
        if direction == "c2s":
            if self.last != "c2s":
                self.totals.turns += 1
            self.totals.c2s_bytes += n
        else:
            self.totals.s2c_bytes += n
        self.last = direction


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay_s: float,
    link: Link,
    direction: str,
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(READ_BYTES)
            if data:
                link.saw(direction, len(data))
            # the end of the stream is delayed too: it must not overtake the data
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                break
    except ConnectionError:
        queue.put_nowait((0.0, b""))
    await asyncio.gather(task, return_exceptions=True)


async def serve(
    listen: int, target: int, delay_s: float, out: IO[str], watch_stdin: bool = False
) -> None:
    """Listen on ``listen`` (0: any free port), forward to ``target``, until SIGTERM (or,
    with ``watch_stdin``, until stdin closes: the parent that holds it has ended)."""
    totals = Totals()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(HOST, target)
        except OSError:
            cw.close()
            return
        totals.connections += 1
        link = Link(totals)
        try:
            await asyncio.gather(
                pump(cr, sw, delay_s, link, "c2s"),
                pump(sr, cw, delay_s, link, "s2c"),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # the proxy is stopping with this connection open: drop it. Not re-raised:
            # asyncio's stream callback (3.11) logs a cancelled handler as an error.
            cw.close()
            sw.close()

    async def report(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((json.dumps(asdict(totals)) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # ProxyProcess.close, Ctrl-C: a quiet end
        loop.add_signal_handler(signum, stop.set)
    if watch_stdin:

        def stdin_readable() -> None:
            if not os.read(0, 4096):
                stop.set()

        loop.add_reader(0, stdin_readable)
    server = await asyncio.start_server(handle, HOST, listen)
    control = await asyncio.start_server(report, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    out.write(f"LISTENING {port} CONTROL {control.sockets[0].getsockname()[1]}\n")
    out.flush()
    async with server, control:
        await stop.wait()


def read_totals(control_port: int) -> Totals:
    """The proxy's counters so far, from its control port."""
    with socket.create_connection((HOST, control_port), timeout=5) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return Totals(**json.loads(data))


class ProxyProcess:
    """The proxy as a child process: its port, and its counters on demand."""

    def __init__(self, target: int, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        argv = [sys.executable, os.path.abspath(__file__), "--listen", "0", "--target"]
        self._proc = subprocess.Popen(
            [*argv, str(target), "--delay-ms", str(delay_ms), "--until-stdin-closes"],
            stdin=subprocess.PIPE,  # never written: closes when this process ends, however
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 4 or line[0] != "LISTENING":
            self.close()
            raise RuntimeError(f"latency proxy did not start (said {line!r})")
        self.port, self.control_port = int(line[1]), int(line[3])

    def totals(self) -> Totals:
        """The counters so far."""
        return read_totals(self.control_port)

    def close(self) -> None:
        """Stop the proxy (its connections drop)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=2223, help="port (0: any free one)")
    parser.add_argument("--target", type=int, default=2222, help="port on 127.0.0.1")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="delay each way")
    parser.add_argument(
        "--until-stdin-closes", action="store_true", help="stop when stdin reaches its end"
    )
    opts = parser.parse_args()
    delay_s = opts.delay_ms / 1000.0
    asyncio.run(serve(opts.listen, opts.target, delay_s, sys.stdout, opts.until_stdin_closes))


if __name__ == "__main__":
    main()
