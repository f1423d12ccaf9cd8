"""What travels inside arguments: the modules a pickled call names, found in its bytes.

Real pickles (cloudpickle, protocol 5, as ``clustrix._serialize`` makes them) of calls whose
arguments hold functions, classes and objects of a client-only module, some where the walk
over live objects does not look; the packager ships that module, pins a third-party one.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest
import yaml

from clustrix import packaging
from clustrix._payload_scan import _modules_by_opcodes, modules_in_pickle, modules_of_objects
from clustrix._serialize import Payload, dumps_arguments, dumps_call, dumps_function
from clustrix.packaging import EnvironmentPlan, Packager

LAB_SOURCE = """
import json


def scale(x):
    return 2 * x


def load(name):
    return json.dumps(name)


class Sample:
    def __init__(self, value):
        self.value = value


class Other:
    pass
"""

BOX_SOURCE = '''
class Opaque:
    """Holds its content where the walk does not look: no __dict__, a __reduce__."""

    __slots__ = ("content",)

    def __init__(self, content):
        self.content = content

    def __reduce__(self):
        return (Opaque, (self.content,))


def run_boxed(box):
    return box.content
'''


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``lab_<hex>.core``: a client-only package (on sys.path, owned by no distribution)."""
    name = f"lab_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "core.py").write_text(textwrap.dedent(LAB_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(f"{name}.core")
    for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[loaded]


@pytest.fixture
def box(tmp_path: Path, lab: ModuleType) -> Iterator[ModuleType]:
    """``box_<hex>``: another client-only module, importing nothing: its ``Opaque`` holds
    what the calls carry, its ``run_boxed`` is their function."""
    name = f"box_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(BOX_SOURCE))
    yield importlib.import_module(name)
    del sys.modules[name]


def top(module: ModuleType) -> str:
    return module.__name__.partition(".")[0]


def local_names(plan: EnvironmentPlan) -> list[str]:
    return [m.name for m in plan.local_modules]


def planned(fn: Any, *args: Any) -> EnvironmentPlan:
    """What the executor plans for ``fn(*args)``: the walk, then the payload's scan."""
    packager = Packager()
    plan = packager.plan(fn, args)
    return packager.add_payloads(plan, [dumps_call(fn, args, {})])


# --------------------------------------------------------------------------- the scan
def test_partial_of_a_local_function_in_a_list(lab: ModuleType) -> None:
    data = dumps_arguments(([functools.partial(lab.scale, 3)],), {})
    assert lab.__name__ in modules_in_pickle(data)
    assert lab.__name__ in _modules_by_opcodes(data)  # the fallback reads the same global


def test_dict_of_classes(lab: ModuleType) -> None:
    data = dumps_arguments(({"a": lab.Sample, "b": lab.Other, "n": 3},), {})
    assert lab.__name__ in modules_in_pickle(data)
    assert lab.__name__ in _modules_by_opcodes(data)


def test_task_graph_nested_past_the_walks_budget(lab: ModuleType) -> None:
    """A dask-like graph of tuples (function, *arguments); the local function only at the
    bottom, 300 levels down: past the walk's budget (2000 objects), not past the pickle's."""
    graph: Any = (lab.load, "input")
    for i in range(300):
        graph = (max, graph, *range(1000 + 10 * i, 1010 + 10 * i))
    graph = {"result": (sum, [graph, ("x", 1)]), "raw": (len, "abc")}
    assert top(lab) not in {m.partition(".")[0] for m in modules_of_objects([graph])}
    found = modules_in_pickle(dumps_arguments((graph,), {}))
    assert lab.__name__ in found
    assert "builtins" in found  # what the machinery itself names: the planner drops it


def test_object_the_walk_cannot_open(lab: ModuleType, box: ModuleType) -> None:
    """``__slots__`` and ``__reduce__``: the walk sees the outer object's class only.
    Without the scan such a call failed on the node with ModuleNotFoundError."""
    wrapper = box.Opaque({"deep": [functools.partial(lab.scale, 1)]})
    walked = Packager().plan(box.run_boxed, [wrapper])
    assert local_names(walked) == [box.__name__]
    assert lab.__name__ in modules_in_pickle(dumps_arguments((wrapper,), {}))
    assert local_names(planned(box.run_boxed, wrapper)) == sorted([box.__name__, top(lab)])


def test_third_party_object_is_pinned(box: ModuleType) -> None:
    wrapper = box.Opaque([yaml.ScalarNode("tag:yaml.org,2002:str", "value")])
    assert "yaml.nodes" in modules_in_pickle(dumps_arguments((wrapper,), {}))
    assert Packager().plan(box.run_boxed, [wrapper]).requirements == ()
    plan = planned(box.run_boxed, wrapper)
    assert any(r.startswith("PyYAML==") for r in plan.requirements)
    assert "yaml" not in local_names(plan) and "yaml" not in plan.missing


def test_by_value_function_names_its_modules_and_imports(lab: ModuleType) -> None:
    """A nested function pickles by value: the modules in its globals are subimport()
    calls, those its body imports are in its code object."""
    core = lab

    def analyse(x: int) -> Any:
        import csv  # noqa: F401  (stdlib: found, then dropped by the planner)

        from yaml import safe_dump

        return safe_dump(core.scale(x))

    data = dumps_function(analyse)
    assert {lab.__name__, "yaml", "csv"} <= modules_in_pickle(data)
    assert lab.__name__ in _modules_by_opcodes(data)  # subimport(name) read from opcodes


def test_plain_data_names_nothing() -> None:
    assert modules_in_pickle(dumps_arguments(([1.5, "x", {"k": (1, None)}],), {})) == frozenset()


def test_scanning_runs_nothing_of_the_pickle(tmp_path: Path) -> None:
    """A pickle whose unpickling would run a command: the scan only reads its globals."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    found = modules_in_pickle(pickle.dumps([Evil()], protocol=5))
    assert {"posix", "os"} & found
    assert not marker.exists()


def test_old_protocols_and_broken_pickles(lab: ModuleType) -> None:
    for protocol in (0, 2):
        assert lab.__name__ in modules_in_pickle(pickle.dumps({"f": lab.scale}, protocol=protocol))
    truncated = dumps_arguments(([lab.Sample(1)],), {})[:-3]
    assert lab.__name__ in modules_in_pickle(truncated)  # the opcodes read so far


# --------------------------------------------------------------------------- the packager
def test_function_inside_an_argument_is_shipped(lab: ModuleType, box: ModuleType) -> None:
    plan = planned(box.run_boxed, box.Opaque([functools.partial(lab.scale, 2)]))
    assert top(lab) in local_names(plan)
    assert plan.code_hash and plan.archive
    assert plan.missing == ()


def test_walk_sees_the_function_whatever_the_size_of_the_arguments(lab: ModuleType) -> None:
    plan = Packager().plan(lab.scale, [list(range(5000))])
    assert top(lab) in local_names(plan)


def test_add_payloads_keeps_the_plan_when_nothing_is_new(lab: ModuleType) -> None:
    packager = Packager()
    plan = packager.plan(lab.scale, [lab.Sample(1)])
    payloads = [dumps_call(lab.scale, (lab.Sample(i),), {}) for i in range(50)]
    assert packager.add_payloads(plan, payloads) is plan


def test_the_function_is_scanned_once_per_distinct_pickle(
    lab: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned: list[bytes] = []
    real = packaging.modules_in_pickle

    def counting(data: bytes) -> frozenset[str]:
        scanned.append(data)
        return real(data)

    monkeypatch.setattr(packaging, "modules_in_pickle", counting)
    packager = Packager()
    plan = packager.plan(lab.scale, [1])
    function = dumps_function(lab.scale)
    packager.add_payloads(plan, [(function, dumps_arguments((i,), {})) for i in range(100)])
    assert scanned.count(function) == 1
    again = dumps_function(lab.scale)  # a new pickle of the same function: remembered
    assert again is not function
    packager.add_payloads(plan, [(again, dumps_arguments((1,), {}))])
    assert scanned.count(function) == 1


def test_arguments_beyond_the_budget_are_not_scanned(
    lab: ModuleType, box: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaging, "_SCAN_BUDGET_BYTES", 1)
    packager = Packager()
    plan = packager.plan(box.run_boxed, [0])
    function = dumps_function(box.run_boxed)
    first = dumps_arguments((0,), {})
    late = dumps_arguments((box.Opaque(lab.Sample(1)),), {})
    payloads: list[Payload] = [(function, first), (function, late)]
    assert top(lab) not in local_names(packager.add_payloads(plan, payloads))
    assert top(lab) in local_names(packager.add_payloads(plan, payloads[::-1]))


def test_excluded_modules_stay_excluded(lab: ModuleType, box: ModuleType) -> None:
    packager = Packager(exclude_modules=[top(lab)])
    wrapper = box.Opaque([lab.Sample(1)])
    plan = packager.add_payloads(
        packager.plan(box.run_boxed, [wrapper]), [dumps_call(box.run_boxed, (wrapper,), {})]
    )
    assert top(lab) not in local_names(plan)
    assert top(lab) not in plan.missing


def test_a_module_built_at_run_time_still_travels_by_value_after_the_scan(
    lab: ModuleType, box: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk registers it with cloudpickle; planning again for what the payload adds
    (the local module inside the argument) does not report it missing."""
    dynamic = ModuleType(f"built_{uuid.uuid4().hex[:8]}")
    exec("def double(x):\n    return 2 * x\n", dynamic.__dict__)
    monkeypatch.setitem(sys.modules, dynamic.__name__, dynamic)
    packager = Packager()
    wrapper = box.Opaque([lab.Sample(1)])
    try:
        plan = packager.plan(dynamic.double, [wrapper])
        assert plan.missing == ()
        plan = packager.add_payloads(plan, [dumps_call(dynamic.double, (wrapper,), {})])
        assert top(lab) in local_names(plan)
        assert plan.missing == ()
    finally:
        cloudpickle.unregister_pickle_by_value(dynamic)
