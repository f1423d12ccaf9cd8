"""Progress of many calls: done/total, with how many are pending, running, done and failed.

``ex.map(fn, xs, progress=True)`` shows one for a map; ``with Progress(futures): wait(futures)``
for any futures (of one executor or several). It is fed by what already happens: the
executor's poll cycle (:meth:`clustrix._engine.Engine.add_poll_listener`, called on its loop
thread after every cycle, when the futures' states are fresh) and the futures'
done-callbacks. It never runs a command of its own.

Drawn by tqdm if installed (``pip install clustrix[progress]``; ``tqdm.auto`` in a notebook),
else by rich if installed, else as a line of text. Shown only where someone watches: a
terminal (the stream's ``isatty()``) or a Jupyter notebook; elsewhere (a batch job's log, CI)
it stays silent unless ``show=True``. It counts either way (:meth:`Progress.counts`).

It keeps no reference to a future once that future is done (a map's results stay the
consumer's), and knows nothing of schedulers or transports.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import IO, Any, Literal, Protocol

__all__ = ["STATES", "Progress"]

#: The states counted, in display order (``cancelled`` is shown only once there is one).
STATES = ("pending", "running", "done", "failed", "cancelled")
Renderer = Literal["auto", "tqdm", "rich", "text"]
#: Without a poll to follow (futures of another executor), redraw at most this often.
_MIN_REDRAW_S = 0.1


class _PollSource(Protocol):
    def add_poll_listener(self, listener: Callable[[], None]) -> Callable[[], None]: ...


class Progress:
    """A progress display of ``futures`` until they are all done (or :meth:`close`).

    ``desc`` labels it; ``file`` is where it draws (default ``sys.stderr``); ``show``: None
    draws only in a terminal or a notebook, True always, False never (it still counts).
    ``renderer`` picks ``"tqdm"``, ``"rich"`` or ``"text"`` instead of the first of them
    that is installed. Use it as a context manager to close it early, or let it close
    itself when the last future is done.
    """

    def __init__(
        self,
        futures: Iterable[Future[Any]],
        *,
        desc: str | None = None,
        file: IO[str] | None = None,
        show: bool | None = None,
        renderer: Renderer = "auto",
    ) -> None:
        self._lock = threading.RLock()
        self._open: set[Future[Any]] = set()  # not done yet: the only futures kept
        self._ended: Counter[str] = Counter()
        self._closed = False
        self._starting = True  # the last future done while starting: close at the end
        self._last_draw = 0.0
        self._removers: list[Callable[[], None]] = []
        listed = list(futures)
        self.total = len(listed)
        sources: dict[int, _PollSource] = {}
        for future in listed:
            control = getattr(future, "_control", None)
            if callable(getattr(control, "add_poll_listener", None)):
                sources[id(control)] = control  # type: ignore[assignment]
        self._follows_polls = bool(sources)
        stream = file if file is not None else sys.stderr
        visible = show if show is not None else _interactive(stream)
        self._view: _View | None = (
            _make_view(renderer, self.total, desc, file, stream) if visible else None
        )
        with self._lock:
            self._open.update(listed)
        for future in listed:
            future.add_done_callback(self._on_done)  # at once if done already
        del listed  # no reference to the futures beyond those still open
        self._removers = [source.add_poll_listener(self._on_poll) for source in sources.values()]
        self._starting = False
        self.refresh()
        if self._finished():
            self.close()

    # ------------------------------------------------------------------ counting
    def counts(self) -> dict[str, int]:
        """How many futures are in each of :data:`STATES` now."""
        with self._lock:
            running = sum(1 for f in self._open if f.running())
            counts = {
                "pending": len(self._open) - running,
                "running": running,
                "done": self._ended["done"],
                "failed": self._ended["failed"],
                "cancelled": self._ended["cancelled"],
            }
        return counts

    @property
    def finished(self) -> int:
        """How many futures are done (with a result, an exception, or cancelled)."""
        with self._lock:
            return self.total - len(self._open)

    def _finished(self) -> bool:
        with self._lock:
            return not self._open

    def _on_done(self, future: Future[Any]) -> None:
        if future.cancelled():
            state = "cancelled"
        else:
            state = "failed" if future.exception() is not None else "done"
        with self._lock:
            if future not in self._open:
                return
            self._open.discard(future)
            self._ended[state] += 1
            last = not self._open and not self._starting
        if last:
            self.close()
        elif not self._follows_polls:
            self._redraw_soon()

    def _on_poll(self) -> None:
        # on an executor's loop thread, after a poll cycle: only count and draw
        self.refresh()

    # ------------------------------------------------------------------ drawing
    def refresh(self) -> None:
        """Draw the current counts (a poll cycle does this by itself)."""
        with self._lock:
            if self._view is None or self._closed:
                return
            self._view.update(self.finished, describe(self.counts()))
            self._last_draw = time.monotonic()

    def _redraw_soon(self) -> None:
        if time.monotonic() - self._last_draw >= _MIN_REDRAW_S:
            self.refresh()

    def close(self) -> None:
        """Draw the final counts and stop following the futures; idempotent."""
        with self._lock:
            if self._closed:
                return
            self.refresh()
            self._closed = True
            removers, self._removers = self._removers, []
            view, self._view = self._view, None
        for remove in removers:
            remove()
        if view is not None:
            view.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Progress {self.finished}/{self.total}: {describe(self.counts())}>"


def describe(counts: dict[str, int]) -> str:
    """``pending 3, running 4, done 10, failed 1`` (cancelled only when there are some)."""
    return ", ".join(
        f"{state} {counts.get(state, 0)}"
        for state in STATES
        if state != "cancelled" or counts.get(state)
    )


# ---------------------------------------------------------------------- where it is shown
def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython already imported and running one)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half torn down: not a notebook we can draw in
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _interactive(stream: IO[str]) -> bool:
    if in_notebook():
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _View(Protocol):
    def update(self, finished: int, states: str) -> None: ...
    def close(self) -> None: ...


def _make_view(
    renderer: Renderer, total: int, desc: str | None, file: IO[str] | None, stream: IO[str]
) -> _View:
    order = ("tqdm", "rich", "text") if renderer == "auto" else (renderer,)
    for name in order:
        try:
            if name == "tqdm":
                return _TqdmView(total, desc, file)
            if name == "rich":
                return _RichView(total, desc, stream)
        except ImportError:
            if renderer != "auto":
                raise
            continue
    return _TextView(total, desc, stream)


class _TqdmView:
    def __init__(self, total: int, desc: str | None, file: IO[str] | None) -> None:
        # imported by name: neither tqdm nor rich is a dependency (nor typed for mypy)
        if file is None:
            with warnings.catch_warnings():  # tqdm.auto warns when ipywidgets is missing
                warnings.simplefilter("ignore")
                tqdm = importlib.import_module("tqdm.auto").tqdm
        else:
            tqdm = importlib.import_module("tqdm").tqdm  # a stream given: text, even in Jupyter
        self._bar = tqdm(total=total, desc=desc, file=file, unit="call", dynamic_ncols=True)

    def update(self, finished: int, states: str) -> None:
        self._bar.n = finished
        self._bar.set_postfix_str(states, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class _RichView:
    def __init__(self, total: int, desc: str | None, stream: IO[str]) -> None:
        console = importlib.import_module("rich.console")
        rich = importlib.import_module("rich.progress")
        self._progress = rich.Progress(
            rich.TextColumn("{task.description}"),
            rich.BarColumn(),
            rich.MofNCompleteColumn(),
            rich.TextColumn("{task.fields[states]}"),
            console=console.Console(file=stream),
        )
        self._task = self._progress.add_task(desc or "", total=total, states="")
        self._progress.start()

    def update(self, finished: int, states: str) -> None:
        self._progress.update(self._task, completed=finished, states=states)

    def close(self) -> None:
        self._progress.stop()


class _TextView:
    """One line, redrawn in place on a terminal; one line per change elsewhere."""

    def __init__(self, total: int, desc: str | None, stream: IO[str]) -> None:
        self._total, self._stream = total, stream
        self._prefix = f"{desc}: " if desc else ""
        self._in_place = _interactive(stream)
        self._last = ""

    def update(self, finished: int, states: str) -> None:
        line = f"{self._prefix}{finished}/{self._total} ({states})"
        if line == self._last:
            return
        self._last = line
        self._stream.write(f"\r{line}\x1b[K" if self._in_place else f"{line}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._in_place and self._last:
            self._stream.write("\n")
            self._stream.flush()
