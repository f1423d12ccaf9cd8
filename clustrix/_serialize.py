"""Pickling calls and unpickling results on the client (cloudpickle).

``dumps_call`` fails at ``submit()`` time, naming the offending object, so a bad argument
never reaches the cluster. ``load_result`` turns a worker's record back into a value or
into the user's own exception, with the remote traceback attached as ``__cause__``.

Until the dependency packager ships local code as archives, modules that no installed
distribution owns (the user's own code beside a script, test modules) are pickled *by value*
so the node does not need to import them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from typing import Any

import cloudpickle

from . import _wire
from .errors import RemoteError, RemoteTraceback, SerializationError

__all__ = ["decode_result", "dumps_call"]


@functools.cache
def _installed_top_level_names() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _ship_by_value(obj: Any) -> None:
    """Register the top-level package of ``obj``'s module for pickling by value if it is
    the user's own code (neither standard library nor an installed distribution)."""
    module_name = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
    if not module_name or module_name in ("__main__", "builtins"):
        return  # cloudpickle already pickles __main__ by value
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in _installed_top_level_names():
        return
    module = sys.modules.get(top)
    if module is not None and top != "clustrix":
        cloudpickle.register_pickle_by_value(module)


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


def dumps_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle one call; :class:`SerializationError` names the object that cannot travel."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    _ship_by_value(fn)
    for value in (*args, *kwargs.values()):
        _ship_by_value(value)
    try:
        payload: bytes = cloudpickle.dumps((fn, args, kwargs), protocol=5)
    except Exception as exc:
        raise _pinpoint(fn, args, kwargs, exc) from exc
    return payload


def _pinpoint(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> SerializationError:
    """Find which part of a call failed to pickle, for an error that names it."""
    candidates: list[tuple[str, Any]] = [("the function", fn)]
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
