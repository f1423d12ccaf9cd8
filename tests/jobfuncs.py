"""Functions the tests run as jobs.

They live in their own module (not in test files) with few imports, so they pickle by value
and run on a node that has nothing but a plain Python.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from clustrix.checkpoint import Checkpointable, DelayedCall


def add(x: int, y: int) -> int:
    return x + y


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def echo_kwargs(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def pid_of(_: object = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_and_touch(seconds: float, path: str) -> str:
    """Sleep, then create ``path``: if the file exists, the job was not stopped."""
    time.sleep(seconds)
    with open(os.path.expanduser(path), "w") as fh:
        fh.write("finished\n")
    return path


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


class CustomError(Exception):
    """A user exception class defined outside any installed package."""


def raise_custom(message: str) -> None:
    raise CustomError(message)


class UnpicklableError(Exception):
    """An exception whose constructor needs two arguments: it pickles but cannot unpickle."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise UnpicklableError("first", "second")


def die(status: int, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(status)


def kill_self(message: str) -> None:
    import signal

    print(message, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(message: str) -> None:
    import ctypes

    print(message, file=sys.stderr, flush=True)
    ctypes.string_at(0)


def print_both(text: str) -> str:
    print(f"out: {text}", flush=True)
    print(f"err: {text}", file=sys.stderr, flush=True)
    return text


class Point:
    """A user class whose instances travel as arguments and results."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def norm2(self) -> float:
        return self.x * self.x + self.y * self.y


def shift(p: Point, dx: float) -> Point:
    return Point(p.x + dx, p.y)


def make_adder(n: int) -> Any:
    def adder(x: int) -> int:
        return x + n

    return adder


def read_env(name: str) -> str | None:
    return os.environ.get(name)


def path_exists(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def count_existing(paths: list[str]) -> int:
    return sum(os.path.exists(os.path.expanduser(p)) for p in paths)


def timed_sleep(seconds: float) -> tuple[float, float]:
    """Sleep; return the wall-clock start and end (to measure how many ran at once)."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def env_values(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def make_bytes(n: int) -> bytes:
    """A result of ``n`` bytes (to test limits on result size)."""
    return b"x" * n


def unpicklable_result() -> Any:
    """Returns a lock: the call runs, but its result cannot be pickled on the node."""
    import threading

    return threading.Lock()


def note_then_sleep(x: int, log_path: str, seconds: float) -> int:
    """Append ``x`` to ``log_path`` (one line per run of the call), sleep, return ``10 x``."""
    with open(log_path, "a") as fh:
        fh.write(f"{x}\n")
    time.sleep(seconds)
    return 10 * x


class CountTo(Checkpointable):
    """Counts to ``steps``, one step per ``step_s``; progress lives on ``self`` so that a
    checkpoint resumes where it stopped. The result tells how often the call was started
    and checkpointed."""

    def __init__(self) -> None:
        self.done = 0
        self.starts = 0
        self.checkpoints = 0

    def __call__(self, steps: int, step_s: float) -> dict[str, int]:
        self.starts += 1
        while self.done < steps:
            time.sleep(step_s)
            self.done += 1
        return {"done": self.done, "starts": self.starts, "checkpoints": self.checkpoints}

    def checkpoint(self, steps: int, step_s: float) -> DelayedCall | None:
        self.checkpoints += 1
        return super().checkpoint(steps, step_s)


def wait_for(path: str, value: Any = None, timeout_s: float = 120) -> Any:
    """Return ``value`` once ``path`` exists (another call or the test creates it)."""
    path = os.path.expanduser(path)
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.02)
    return value


def touch(path: str, value: Any = None) -> Any:
    """Create ``path`` (and its directory); return ``value``."""
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    return value


def handshake(role: str, path: str) -> str:
    """``wait`` until ``path`` exists, or ``write`` it: two calls of one map that need each
    other (a pool runs both; a static chunk holding both never finishes)."""
    if role == "wait":
        return str(wait_for(path, "waited"))
    return str(touch(path, "wrote"))


def start_then_wait(x: int, marker_dir: str) -> int:
    """Mark call ``x`` as started (``started-<x>``), then wait for ``release``; call 0 returns
    at once."""
    if x == 0:
        return 0
    touch(f"{marker_dir}/started-{x}")
    wait_for(f"{marker_dir}/release")
    return x


def sphere(x: Any) -> float:
    """A pure-Python objective for optimizers (no third-party import on the node)."""
    return float(sum(v * v for v in x))


class Blob:
    """A result that can be weakly referenced (to see that nothing keeps it alive)."""

    def __init__(self, size: int) -> None:
        self.data = b"x" * size


def make_blob(size: int) -> Blob:
    return Blob(size)
