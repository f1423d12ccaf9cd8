"""Fixtures of the engine tests: the fakes of ``tests/fakes.py`` and executors built on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler, FakeTransport, fake_config, shut_down

from clustrix import ClusterExecutor


@pytest.fixture
def fake_scheduler(tmp_path: Path) -> FakeScheduler:
    """A fake scheduler; set its capabilities before building the executor."""
    return FakeScheduler(tmp_path / "scheduler")


@pytest.fixture
def fake_transport(tmp_path: Path) -> FakeTransport:
    """A fake transport that claims to be remote (one round trip per submission)."""
    return FakeTransport(home=str(tmp_path / "home"))


@pytest.fixture
def make_fake_executor(
    tmp_path: Path, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> Iterator[Callable[..., ClusterExecutor]]:
    """``make_fake_executor(**config_overrides)``: an executor on the fakes, shut down after
    the test whatever state it left the fakes in."""
    created: list[ClusterExecutor] = []

    def build(**overrides: Any) -> ClusterExecutor:
        executor = ClusterExecutor(
            fake_config(tmp_path, **overrides), scheduler=fake_scheduler, transport=fake_transport
        )
        created.append(executor)
        return executor

    yield build
    for executor in created:
        shut_down(executor, fake_scheduler, fake_transport)
