"""clustrix._unpickle rebuilds what cloudpickle pickled by value exactly as cloudpickle does,
and without importing it for functions (what every by-value array task would pay)."""

from __future__ import annotations

import functools
import io
import math
import os.path
import pickle
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import cloudpickle.cloudpickle as cloudpickle_module
import pytest

from clustrix import _unpickle

REPO = Path(__file__).resolve().parents[2]
GLOBAL_OFFSET = 7


def _corpus() -> dict[str, tuple[Callable[[], object], Callable[[object], object]]]:
    """name → (what is pickled, how its behaviour is observed after a round trip)."""

    def closure() -> Callable[[int], float]:
        scale = 2.5

        def inner(x: int) -> float:
            return math.sqrt(x) * scale + GLOBAL_OFFSET

        return inner

    def recursive() -> Callable[[int], int]:
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    def with_empty_cell() -> Callable[[], object]:
        def later() -> object:
            return value  # bound only after the function is made, and never here

        if False:
            value = None
        return later

    def attributes() -> Callable[..., object]:
        def described(a: int, b: int = 3, *, c: str = "k") -> tuple[int, int, str]:
            """Has a doc, defaults, kw-only defaults and annotations."""
            return a, b, c

        described.tag = "mine"  # type: ignore[attr-defined]
        return described

    def uses_submodule() -> Callable[[str], str]:
        return lambda p: os.path.basename(p)

    def dynamic_module() -> Callable[[], int]:
        module = types.ModuleType("made_up_module")
        exec("def answer():\n    return 42\n", module.__dict__)
        return lambda: module.answer()  # type: ignore[no-any-return]

    def by_value_class() -> Callable[[], object]:
        point = type("Point", (), {"__module__": "__main__", "norm": lambda self: 5})
        return lambda: point().norm()

    return {
        "lambda": (lambda: lambda x: x * 2, lambda f: f(21)),  # type: ignore[operator]
        "closure over a global and a module": (closure, lambda f: f(16)),  # type: ignore[operator]
        "recursive closure": (recursive, lambda f: f(6)),  # type: ignore[operator]
        "empty cell": (with_empty_cell, _empty_cell_error),
        "defaults, doc, annotations, __dict__": (
            attributes,
            lambda f: (f(1), f(1, 2, c="z"), f.__doc__, f.__annotations__, f.tag),  # type: ignore[operator, attr-defined]
        ),
        "a submodule in the globals": (uses_submodule, lambda f: f("/a/b.txt")),  # type: ignore[operator]
        "a module by value": (dynamic_module, lambda f: f()),  # type: ignore[operator]
        "a class by value": (by_value_class, lambda f: f()),  # type: ignore[operator]
        "a partial of a lambda": (
            lambda: functools.partial(lambda a, b: a - b, 10),
            lambda f: f(4),  # type: ignore[operator]
        ),
    }


def _empty_cell_error(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except NameError as exc:
        return type(exc).__name__
    return "no error"


CORPUS = _corpus()


def _shape(fn: object, outer: tuple[object, ...] = ()) -> object:
    """What a rebuilt function is made of (its code, names, defaults, closure contents)."""
    if any(fn is seen for seen in outer):
        return "<recursive>"
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not isinstance(fn, types.FunctionType):
        return type(fn).__name__
    cells = []
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:
            contents = "<empty>"
        shape = _shape(contents, (*outer, fn)) if callable(contents) else repr(contents)[:40]
        cells.append(shape)
    return (
        fn.__code__.co_code,
        fn.__name__,
        fn.__qualname__,
        fn.__module__,
        fn.__defaults__,
        fn.__kwdefaults__,
        fn.__doc__,
        sorted(fn.__dict__),
        sorted(k for k in fn.__globals__ if k != "__builtins__"),
        fn.__globals__["__builtins__"] is pickle.loads(pickle.dumps(len)).__self__.__dict__,
        cells,
    )


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_rebuilds_what_cloudpickle_rebuilds(name: str) -> None:
    make, observe = CORPUS[name]
    data = cloudpickle.dumps(make(), protocol=5)
    theirs = pickle.loads(data)
    ours = _unpickle.LeanUnpickler(io.BytesIO(data)).load()  # loads() would use cloudpickle's:
    # this process has imported it
    assert _shape(ours) == _shape(theirs)
    assert observe(ours) == observe(theirs)


def test_every_lean_name_is_a_cloudpickle_reconstructor() -> None:
    # a cloudpickle that renames one would otherwise be found only by a failing task
    for name in _unpickle.LEAN_NAMES:
        assert callable(getattr(cloudpickle_module, name)), name
    assert cloudpickle_module.__name__ == _unpickle.CLOUDPICKLE_MODULE


def test_by_reference_data_is_what_pickle_gives() -> None:
    data = pickle.dumps({"a": [1, 2.5, b"x"], "f": math.sqrt}, protocol=5)
    assert _unpickle.loads(data) == pickle.loads(data)


def test_functions_by_value_are_rebuilt_without_importing_cloudpickle(tmp_path: Path) -> None:
    """In a fresh interpreter (as a task's worker): the functions of the corpus come back
    and run with ``cloudpickle`` never imported; a class by value imports it, and works."""
    functions = {n: cloudpickle.dumps(m(), protocol=5) for n, (m, _) in CORPUS.items()}
    classy = functions.pop("a class by value")
    (tmp_path / "functions.pkl").write_bytes(pickle.dumps(functions))
    (tmp_path / "class.pkl").write_bytes(classy)
    program = textwrap.dedent(
        """
        import pickle, sys
        from clustrix import _unpickle
        functions = pickle.loads(open(sys.argv[1], "rb").read())
        rebuilt = {name: _unpickle.loads(data) for name, data in functions.items()}
        print(rebuilt["lambda"](21), rebuilt["recursive closure"](5))
        print(sorted(m for m in sys.modules if m.startswith("cloudpickle")))
        print(_unpickle.loads(open(sys.argv[2], "rb").read())())
        print("cloudpickle.cloudpickle" in sys.modules)
        """
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            str(tmp_path / "functions.pkl"),
            str(tmp_path / "class.pkl"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == ["42 120", "[]", "5", "True"]
