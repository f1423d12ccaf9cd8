"""A ``map(..., chunksize=k)`` on the local pool: one call per chunk, not one per input.

On warm local workers a no-op call costs microseconds, so what a map spends per input on
the client (a future with its lock, a ``cloudpickle.dumps`` of the arguments, a message, a
result record decoded on the loop thread) would be most of its time. As
``ProcessPoolExecutor`` does, each chunk of k inputs travels as ONE call of
:func:`clustrix.worker.run_chunk`: its inputs pickled together, one future, one message,
and a list of k result records back, decoded one by one as the iterator reaches them (on
the consumer's thread). Each input keeps its own outcome: one that raises fails only its
own result, which ``map`` raises when it gets there, after yielding the ones before it.

Only for the local pool: a remote job of k calls writes k result files anyway, and its
per-call futures carry the job ID and lifecycle the user may look at.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import cloudpickle

from ._serialize import Payload, decode_result, dumps_arguments, dumps_function
from .errors import SerializationError
from .future import ClusterFuture
from .worker import run_chunk

__all__ = ["chunk_payloads", "results_of_chunks"]

T = TypeVar("T")


@functools.cache
def _run_chunk_bytes() -> bytes:
    """:func:`run_chunk` pickled (by reference: the same bytes for every chunk, so a worker
    receives them once)."""
    return dumps_function(run_chunk)


def chunk_payloads(
    fn: Callable[..., Any], calls: list[tuple[Any, ...]], chunksize: int
) -> list[Payload]:
    """One payload per chunk of ``chunksize`` calls: ``run_chunk(fn bytes, [args, ...])``.

    Raises :class:`SerializationError` naming the call (input #i) that cannot be sent,
    before anything is submitted."""
    function = dumps_function(fn)
    runner = _run_chunk_bytes()
    payloads: list[Payload] = []
    for start in range(0, len(calls), chunksize):
        chunk = calls[start : start + chunksize]
        try:
            arguments: bytes = cloudpickle.dumps(((function, chunk), {}), protocol=5)
        except Exception as exc:
            for offset, args in enumerate(chunk):  # name the input that fails
                dumps_arguments(args, {}, call=start + offset)
            raise SerializationError(f"map calls {start}-{start + len(chunk) - 1}: {exc}") from exc
        payloads.append((runner, arguments))
    return payloads


def _value_of(record: Any) -> Any:
    """The value of one call's result record, or its exception raised."""
    value, exception = decode_result(record)
    if exception is not None:
        raise exception
    return value


def results_of_chunks(futures: list[ClusterFuture[Any]], deadline: float | None) -> Iterator[Any]:
    """The results of chunk ``futures`` in input order, as ``Executor.map`` yields them.

    ``deadline`` (``time.monotonic()``) bounds the whole iteration; however the loop ends,
    the chunks not done are cancelled. As in CPython's ``Executor.map``, nothing here keeps
    a yielded value: the consumer holds the only reference.
    """
    futures.reverse()
    try:
        while futures:
            future = futures.pop()
            try:
                timeout = None if deadline is None else deadline - time.monotonic()
                records: list[Any] = future.result(timeout)
            finally:
                future.cancel()  # a timed-out chunk is cancelled too (as CPython's)
            records.reverse()
            while records:
                yield _value_of(records.pop())
    finally:
        for future in futures:
            future.cancel()
