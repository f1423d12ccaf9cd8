"""Pickling calls and unpickling results on the client (cloudpickle).

``dumps_function`` and ``dumps_arguments`` fail at ``submit()`` time, naming the offending
object, so a bad argument never reaches the cluster. ``decode_result`` turns a worker's
record back into a value or into the user's own exception, with the remote traceback
attached as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from . import _wire
from .errors import RemoteError, RemoteTraceback, SerializationError

__all__ = ["Payload", "decode_result", "dumps_arguments", "dumps_call", "dumps_function"]


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


#: A call as it travels: the pickled function and the pickled ``(args, kwargs)``. The
#: function is pickled once per ``map`` and its bytes shared by every call (and written
#: once per task file: pickle stores an object it has seen as a reference).
Payload = tuple[bytes, bytes]


def dumps_function(fn: Any) -> bytes:
    """Pickle the function of a call (once for a whole map)."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    try:
        data: bytes = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise _pinpoint(fn, (), {}, exc) from exc
    return data


def dumps_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, call: int | None = None
) -> bytes:
    """Pickle one call's arguments; :class:`SerializationError` names the one that cannot
    travel (and which call of a map it belongs to)."""
    try:
        data: bytes = cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        error = _pinpoint(None, args, kwargs, exc)
        if call is not None:  # one call of a map: say which
            error = SerializationError(f"map call {call} (input #{call}): {error}")
        raise error from exc
    return data


def dumps_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
    """Pickle one call; :class:`SerializationError` names the object that cannot travel."""
    return dumps_function(fn), dumps_arguments(args, kwargs)


def _pinpoint(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> SerializationError:
    """Find which part of a call failed to pickle, for an error that names it."""
    candidates: list[tuple[str, Any]] = [("the function", fn)] if fn is not None else []
    candidates += [(f"positional argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, obj in candidates:
        try:
            cloudpickle.dumps(obj, protocol=5)
        except Exception as inner:
            return SerializationError(
                f"{label} ({_describe(obj)}) cannot be sent to the cluster: {inner}. "
                "Pass data that pickles (plain values, arrays, dataclasses), or create the "
                "object inside the function."
            )
    return SerializationError(f"the call cannot be sent to the cluster: {exc}")


def decode_result(record: _wire.Record) -> tuple[Any, BaseException | None]:
    """``(value, None)`` for a result, ``(None, exception)`` for a failed call.

    The exception is the user's own type with the remote traceback as ``__cause__``; one that
    cannot be rebuilt here becomes a :class:`RemoteError` keeping its type name and message.
    """
    if record["ok"]:
        try:
            return cloudpickle.loads(record["value"]), None
        except Exception as exc:
            error = SerializationError(
                f"the result could not be unpickled on the client: {exc!r}; make sure the "
                "modules that define the result's types are importable here"
            )
            error.__cause__ = exc
            return None, error
    if record.get("serialization"):  # the worker could not send the result back
        serialization_error = SerializationError(record["message"])
        serialization_error.__cause__ = RemoteTraceback(record["traceback"])
        return None, serialization_error
    exception: BaseException | None = None
    if record.get("exception") is not None:
        try:
            loaded = cloudpickle.loads(record["exception"])
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exception = loaded
    if exception is None:
        exception = RemoteError(record["type"], record["message"], record["traceback"])
    exception.__cause__ = RemoteTraceback(record["traceback"])
    return None, exception
