"""Shared fixtures: an executor factory for each backend the contract runs against."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clustertools import BACKENDS, backend_config

from clustrix import ClusterExecutor

#: Modules whose tests take a shared daemon down (sshd, slurmd, a node) or change account
#: limits: they run alone, after the others, which may run in parallel (scripts/test).
DISRUPTIVE_MODULES = {"test_faults.py", "test_limits.py", "test_submit_faults.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in DISRUPTIVE_MODULES:
            item.add_marker(pytest.mark.disruptive)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ClusterExecutor]]:
    """``make(backend, **overrides)``: an executor for ``backend``, shut down after the test."""
    created: list[ClusterExecutor] = []

    def build(backend: str, **overrides: Any) -> ClusterExecutor:
        executor = ClusterExecutor(backend_config(backend, tmp_path, **overrides))
        created.append(executor)
        return executor

    yield build
    for executor in created:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def make_executor(
    backend: str, make: Callable[..., ClusterExecutor]
) -> Callable[..., ClusterExecutor]:
    """``make_executor(**overrides)``: an executor for the current contract backend."""
    return lambda **overrides: make(backend, **overrides)


@pytest.fixture
def executor(make_executor: Callable[..., ClusterExecutor]) -> ClusterExecutor:
    return make_executor()
