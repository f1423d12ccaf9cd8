"""User code that imports clustrix on the node: what it needs beyond the worker runtime zip.

The zip holds clustrix and cloudpickle only. ``from clustrix import ClusterConfig`` there
needs pydantic, pydantic-settings...: clustrix's own requirements are pinned. The modules
the worker itself imports (a Checkpointable, a DelayedCall, clustrix's exceptions) need
nothing, so a checkpointing job builds no environment for them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jobfuncs
import pytest

from clustrix import ClusterConfig, DelayedCall
from clustrix._requirements import clustrix_needs_dependencies, required_name
from clustrix._serialize import dumps_call
from clustrix.checkpoint import Checkpointable
from clustrix.packaging import EnvironmentPlan, Packager


def clustrix_requirements() -> set[str]:
    """The distributions clustrix's metadata requires here (extras excluded), normalised."""
    names = {required_name(r) for r in importlib.metadata.requires("clustrix") or []}
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names if n} - {"cloudpickle"}


def pinned(plan: EnvironmentPlan) -> set[str]:
    return {re.sub(r"[-_.]+", "-", r.partition("==")[0]).lower() for r in plan.requirements}


def planned(fn: Any, *args: Any, **options: Any) -> EnvironmentPlan:
    packager = Packager(**options)
    return packager.add_payloads(packager.plan(fn, args), [dumps_call(fn, args, {})])


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``user_module(source)``: a client-only module of that source, imported."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(source: str) -> ModuleType:
        name = f"usercode_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return importlib.import_module(name)

    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module", "needs"),
    [
        ("clustrix", True),  # what of it is used is unknown: its attributes load anything
        ("clustrix.config", True),  # pydantic, pydantic-settings
        ("clustrix.executor", True),
        ("clustrix.checkpoint", False),  # what the worker itself imports
        ("clustrix.errors", False),
        ("clustrix.worker", False),
        ("clustrix.no_such_module", True),
    ],
)
def test_which_modules_of_clustrix_need_its_dependencies(module: str, needs: bool) -> None:
    assert clustrix_needs_dependencies(module) is needs


def test_clustrix_requirements_are_those_of_its_metadata() -> None:
    assert {"pydantic", "asyncssh", "pyyaml"} <= clustrix_requirements()


def test_user_module_using_the_config_gets_clustrix_requirements(user_module: Any) -> None:
    module = user_module(
        """
        import clustrix
        from clustrix import ClusterConfig

        def where():
            return ClusterConfig().cluster_type
        """
    )
    plan = planned(module.where)
    assert clustrix_requirements() <= pinned(plan)
    assert "cloudpickle" not in pinned(plan)  # travels in the zip, as clustrix does
    assert [m.name for m in plan.local_modules] == [module.__name__]  # clustrix is not shipped


def test_checkpointing_code_needs_nothing(user_module: Any) -> None:
    module = user_module(
        """
        from clustrix.checkpoint import Checkpointable

        class Count(Checkpointable):
            def __call__(self, n):
                return n
        """
    )
    assert pinned(planned(module.Count(), 3)) == set()
    assert pinned(planned(jobfuncs.CountTo(), 3, 0.1)) == set()  # the suite's own


def test_a_checkpointable_defined_by_value_needs_nothing() -> None:
    class Resume(Checkpointable):  # nested: pickled by value, its base by reference
        def __call__(self, n: int) -> int:
            return n

    assert pinned(planned(Resume(), 3)) == set()
    assert pinned(planned(jobfuncs.identity, DelayedCall(jobfuncs.add, 1, 2))) == set()


def test_a_config_inside_an_argument_gets_clustrix_requirements() -> None:
    """Found by the payload's scan (``clustrix.config ClusterConfig`` in the pickle)."""
    argument = [{"config": ClusterConfig(cores=2)}]
    assert clustrix_requirements() <= pinned(planned(jobfuncs.identity, argument))


def test_excluding_clustrix_pins_nothing_for_it(user_module: Any) -> None:
    module = user_module("from clustrix import ClusterConfig\n\ndef f():\n    return 1\n")
    assert pinned(planned(module.f, exclude_modules=["clustrix"])) == set()
