"""One event-loop thread per executor, and a blocking bridge into it.

The executor's public methods are blocking (it is a ``concurrent.futures.Executor``); the
transports are async. :class:`LoopThread` runs one asyncio loop in a daemon thread and lets
other threads run coroutines on it, like ``fsspec.asyn.sync``. Calling the blocking bridge
from the loop's own thread would deadlock, so it refuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._stop_lock = threading.Lock()  # stop() may be called from two threads at once
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        """True while the loop's thread runs it (it may stop itself once idle)."""
        return self._thread.is_alive() and not self.loop.is_closed()

    @property
    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError(
                "blocking clustrix call from the executor's own event-loop thread (e.g. in a "
                "done-callback): call it from another thread"
            )
        if not self.running:
            coro.close()
            raise RuntimeError("the executor's event loop has stopped")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the loop thread soon (thread-safe)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        """Cancel what still runs, stop the loop and join its thread. Idempotent, and safe
        from several threads at once."""
        if self.in_loop_thread:
            raise RuntimeError("the loop cannot stop itself from its own thread")
        with self._stop_lock:
            self._stop()

    def stop_soon(self) -> None:
        """:meth:`stop` from another thread, without waiting (callable from the loop)."""
        threading.Thread(target=self.stop, name=f"{self._thread.name}-stop", daemon=True).start()

    def _stop(self) -> None:
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()
