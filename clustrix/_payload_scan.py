"""What a call names: the modules the node imports to unpickle and run it.

Two readings of the same call, both cheap, neither running anything of the user's:

* :func:`modules_of_objects` walks the live objects (the function, its globals and closure,
  the modules its code imports, argument containers, partials, instance dictionaries, up to
  a budget) before the call is pickled: a module built at run time found there can still be
  sent by value;
* :func:`modules_in_pickle` reads the pickled bytes, which are exact whatever holds the
  objects (a class with ``__slots__`` or ``__reduce__``, an object array, a task graph nested
  past the walk's budget): every class and function pickled by reference is a global
  (``STACK_GLOBAL``, ``GLOBAL`` before protocol 4) naming its module and qualified name, and
  cloudpickle's by-value code names its modules as ``subimport("numpy")`` calls (a module in
  its globals) and in its code objects (the modules its body imports).

The pickle is read by the standard :class:`pickle.Unpickler` with ``find_class`` answering
every global with an inert stub (the pickle documentation's "restricting globals"): in C,
for most calls in a third of the time cloudpickle took to pickle them, and a pickle of plain
data (no global opcode byte in it) is skipped at once. If that fails, :mod:`pickletools`'
opcodes are read instead (ten times slower, and blind to the imports inside by-value code).

Knows nothing of distributions, clusters or the executor: objects and bytes in, module
names out.
"""

from __future__ import annotations

import contextlib
import contextvars
import dis
import functools
import io
import pickle
import pickletools
import re
import types
from collections.abc import Iterable, Iterator
from typing import Any

import cloudpickle

__all__ = ["imports_in_code", "modules_in_pickle", "modules_of_objects"]

#: How many objects the walk over live objects visits (argument containers, referenced
#: functions) before it stops.
_MAX_OBJECTS = 2000

#: The modules found by the stubs of the unpickling in progress (one set per scan).
_FOUND: contextvars.ContextVar[set[str]] = contextvars.ContextVar("clustrix_scan_found")
_CLOUDPICKLE = "cloudpickle.cloudpickle"
#: Opcodes that load a global (EXT1, EXT2, EXT4, STACK_GLOBAL): a protocol 4+ pickle
#: without any of these bytes names none (searched in C, a few µs for a call's arguments).
_GLOBAL_OPCODE = re.compile(b"[\x82-\x84\x93]")


def imports_in_code(code: types.CodeType) -> Iterator[str]:
    """Absolute module names imported by a code object and the code nested in it."""
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from imports_in_code(const)


# ---------------------------------------------------------------------------- live objects
def _names_in_code(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names_in_code(const)


def _by_reference(obj: Any) -> bool:
    """Whether cloudpickle pickles ``obj`` by reference (the node must import its module)."""
    should = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)
    if should is None:  # pragma: no cover - very old/new cloudpickle
        return getattr(obj, "__module__", "__main__") != "__main__"
    try:
        return bool(should(obj))
    except Exception:
        return False


def modules_of_objects(roots: Iterable[Any]) -> set[str]:
    """Module names the node must import to unpickle and run ``roots`` (live objects).

    Visits at most ``_MAX_OBJECTS`` objects, the first root (the function) first: a big
    argument may exhaust the budget, never before the function was seen (its pickle's scan
    finds the rest).
    """
    needed: set[str] = set()
    seen: set[int] = set()
    stack = list(roots)[::-1]  # popped from the end: the first root first
    while stack and len(seen) < _MAX_OBJECTS:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            needed.add(obj.__name__)
            continue
        if isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if isinstance(obj, functools.partial):
            stack.extend([obj.func, *obj.args, *obj.keywords.values()])
            continue
        if isinstance(obj, types.MethodType):
            stack.extend([obj.__func__, obj.__self__])
            continue
        if isinstance(obj, (types.FunctionType, type)):
            module = getattr(obj, "__module__", None)
            if _by_reference(obj):
                if module:
                    needed.add(module)
                continue
            if isinstance(obj, type):  # a class pickled by value: its bases and methods
                stack.extend(obj.__bases__)
                stack.extend(v for v in vars(obj).values() if callable(v))
                continue
            code = obj.__code__
            needed.update(imports_in_code(code))
            scope = obj.__globals__
            stack.extend(scope[n] for n in set(_names_in_code(code)) if n in scope)
            stack.extend(c.cell_contents for c in obj.__closure__ or () if _cell_filled(c))
            stack.extend((obj.__defaults__ or ()) + tuple((obj.__kwdefaults__ or {}).values()))
            continue
        # an instance: its class (and what its class needs)
        stack.append(type(obj))
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(state.values())
    return needed


def _cell_filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- pickles
class _Inert:
    """What every global of the scanned pickle becomes: built with any arguments, given any
    state or items, called, it does nothing (and returns another stub)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _SubImport(_Inert):
    """cloudpickle's ``subimport(name)``: a module in a by-value function's globals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], str):
            _FOUND.get().add(args[0])


def _record_code(args: tuple[Any, ...]) -> None:
    # Our own pickle, for this very interpreter: the code object is built, never run. (A
    # code object nested in its constants is a stub here: it recorded its own imports.)
    with contextlib.suppress(Exception):
        _FOUND.get().update(imports_in_code(types.CodeType(*args)))


class _CodeType(_Inert):
    """``types.CodeType(...)`` by reference: the imports of the code it would build."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _record_code(args)


class _CodeFactory(_Inert):
    """What cloudpickle's ``_builtin_type("CodeType")`` returns: called with a code
    object's fields, it records that code's imports."""

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        _record_code(args)
        return _Inert()


class _BuiltinType(_Inert):
    """cloudpickle's ``_builtin_type(name)``: the stub of a type it looks up by name."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # not always a _BuiltinType
        return object.__new__(_CodeFactory if args == ("CodeType",) else _Inert)


_STUBS: dict[tuple[str, str], type[_Inert]] = {
    (_CLOUDPICKLE, "subimport"): _SubImport,
    (_CLOUDPICKLE, "_builtin_type"): _BuiltinType,
    ("types", "CodeType"): _CodeType,
}


class _ScanningUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Called for every global (STACK_GLOBAL, GLOBAL, INST, EXT): nothing is imported.
        _FOUND.get().add(module)
        return _STUBS.get((module, name), _Inert)

    def persistent_load(self, pid: Any) -> Any:
        return _Inert()


def modules_in_pickle(data: bytes) -> frozenset[str]:
    """The modules a pickle names (dotted, as named: ``"mylab.core"``, ``"numpy"``).

    Includes what the unpickling machinery itself uses (``copyreg``, ``functools``,
    ``cloudpickle.cloudpickle``): classifying them is the caller's business.
    """
    if data[1:2] >= b"\x04" and data[:1] == b"\x80" and not _GLOBAL_OPCODE.search(data):
        return frozenset()  # plain data (numbers, strings, containers): nothing to import
    found: set[str] = set()
    token = _FOUND.set(found)
    try:
        _ScanningUnpickler(io.BytesIO(data)).load()
    except Exception:  # a pickle the stubs cannot walk through: read its opcodes instead
        found.update(_modules_by_opcodes(data))
    finally:
        _FOUND.reset(token)
    return frozenset(found)


_STRING_OPCODES = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
_SUBIMPORT = object()  # the marker of cloudpickle's subimport function on the model stack


def _modules_by_opcodes(data: bytes) -> set[str]:
    """The modules named by a pickle's global opcodes and cloudpickle's ``subimport`` calls.

    A model of the stack just deep enough for those: the two values ``STACK_GLOBAL`` takes
    are the last two pushed, each a string literal or a memo entry (``BINGET``) of one.
    """
    found: set[str] = set()
    memo: dict[int, object] = {}
    last: list[object] = [None, None]  # the last two values pushed
    subimport_pending = False
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            value: object = None
            if name in _STRING_OPCODES:
                value = arg
            elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
                value = memo.get(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = last[-1]
                continue
            elif name in ("BINPUT", "LONG_BINPUT", "PUT") and isinstance(arg, int):
                memo[arg] = last[-1]
                continue
            elif name == "FRAME":
                continue
            elif name == "STACK_GLOBAL" and isinstance(last[-2], str):
                module, qualname = last[-2], last[-1]
                found.add(module)
                if (module, qualname) == (_CLOUDPICKLE, "subimport"):
                    value = _SUBIMPORT
            elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.add(arg.partition(" ")[0])
            if subimport_pending and isinstance(value, str):
                found.add(value)  # subimport's argument: the module's name
                subimport_pending = False
            if value is _SUBIMPORT:
                subimport_pending = True
            last = [last[-1], value]
    except Exception:  # a truncated or foreign pickle: what was read so far
        pass
    return found
