"""Unpickle on the node what cloudpickle pickled, importing cloudpickle only when needed.

A function defined in ``__main__`` (a script, a notebook) or a lambda travels by value:
its pickle names a few reconstructors of ``cloudpickle.cloudpickle``, and plain
:func:`pickle.loads` imports that module to find them. The import costs more than the rest
of the worker's start together (``dataclasses`` → ``inspect``, ``typing``, ``logging``,
``platform``: about 18 ms of CPU per array task here), paid again by every task of every
array. The reconstructors a function needs are a few lines each and only rebuild standard
objects, so :func:`loads` finds those names here (:data:`LEAN_NAMES`) and lets cloudpickle
itself reconstruct anything else (classes, enums, type variables...), importing it then.

Each function below is the same as cloudpickle 3's own of that name; the tests unpickle a
corpus of by-value objects both ways and compare them, against the cloudpickle installed
(the one the runtime zip ships), so a cloudpickle whose format moves fails there first.

Standard library only, and only modules the interpreter has already loaded at start.
"""

from __future__ import annotations

import builtins
import io
import sys

try:
    import _pickle as pickle
except ImportError:  # not CPython
    import pickle  # type: ignore[no-redef]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the worker should not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CLOUDPICKLE_MODULE = "cloudpickle.cloudpickle"


def _function() -> None:
    """A plain function: its type and its code's type, without importing :mod:`types`."""


_FunctionType: Any = type(_function)
# The types that cloudpickle's by-value functions ask for by name, without importing
# ``types`` (half a millisecond, which the worker does not otherwise need).
_KNOWN_TYPES: dict[str, type] = {
    "CodeType": type(_function.__code__),
    "FunctionType": _FunctionType,
    "ModuleType": type(sys),
}


def _builtin_type(name: str) -> object:
    if name == "ClassType":  # cloudpickle < 1.3 wrote this
        return type
    known = _KNOWN_TYPES.get(name)
    if known is not None:
        return known
    import types

    return getattr(types, name)


def _make_function(
    code: object, globals: dict[str, object], name: object, argdefs: object, closure: object
) -> object:
    globals["__builtins__"] = __builtins__
    return _FunctionType(code, globals, name, argdefs, closure)


def _make_empty_cell() -> Any:
    if False:
        cell = None  # type: ignore[unreachable]  # a free variable: its cell stays empty
    return (lambda: cell).__closure__[0]  # type: ignore[has-type, index]


_EMPTY = object()


def _make_cell(value: object = _EMPTY) -> Any:
    cell = _make_empty_cell()
    if value is not _EMPTY:
        cell.cell_contents = value
    return cell


def _function_setstate(obj: Any, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    state_dict, slotstate = state
    obj.__dict__.update(state_dict)
    obj_globals = slotstate.pop("__globals__")
    obj_closure = slotstate.pop("__closure__")
    # held only so that unpickling imported these submodules; they are imported by now
    slotstate.pop("_cloudpickle_submodules", None)
    obj.__globals__.update(obj_globals)
    obj.__globals__["__builtins__"] = __builtins__
    if obj_closure is not None:
        for i, cell in enumerate(obj_closure):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            obj.__closure__[i].cell_contents = value
    for key, value in slotstate.items():
        setattr(obj, key, value)


def subimport(name: str) -> object:
    __import__(name)
    return sys.modules[name]


def dynamic_subimport(name: str, vars: dict[str, object]) -> object:
    module = type(sys)(name)
    module.__dict__.update(vars)
    module.__dict__["__builtins__"] = builtins.__dict__
    return module


#: The reconstructors of ``cloudpickle.cloudpickle`` that :func:`loads` finds here.
LEAN_NAMES: dict[str, Callable[..., object]] = {
    "_builtin_type": _builtin_type,
    "_make_function": _make_function,
    "_make_empty_cell": _make_empty_cell,
    "_make_cell": _make_cell,
    "_function_setstate": _function_setstate,
    "subimport": subimport,
    "dynamic_subimport": dynamic_subimport,
}


class LeanUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` that finds :data:`LEAN_NAMES` here, the rest as usual."""

    def find_class(self, module: str, name: str) -> object:
        if module == CLOUDPICKLE_MODULE:
            lean = LEAN_NAMES.get(name)
            if lean is not None:
                return lean
        return super().find_class(module, name)


def loads(data: bytes) -> Any:
    """:func:`pickle.loads`, without importing cloudpickle for a function by value (see the
    module's docstring); the same objects come back."""
    if CLOUDPICKLE_MODULE in sys.modules or b"cloudpickle" not in data:
        return pickle.loads(data)  # the C unpickler alone (a Python find_class costs more)
    return LeanUnpickler(io.BytesIO(data)).load()
