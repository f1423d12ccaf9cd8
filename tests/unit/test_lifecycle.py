"""The one job lifecycle: its transition table, and every backend's native words in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from clustrix.backends import registered_backends
from clustrix.lifecycle import (
    FINAL_STATES,
    LIVE_STATES,
    TRANSITIONS,
    JobState,
    LifecycleError,
    advance,
)
from clustrix.schedulers.local import LocalScheduler
from clustrix.schedulers.slurm import SLURM_STATES, SlurmScheduler

SLURM_DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def test_every_state_has_a_row_and_final_states_go_nowhere() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
        assert state.is_final and not state.is_live
    assert LIVE_STATES.isdisjoint(FINAL_STATES)
    assert {JobState.HELD, JobState.SUBMITTING} | LIVE_STATES | FINAL_STATES == set(JobState)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobState.HELD, JobState.SUBMITTING),
        (JobState.SUBMITTING, JobState.HELD),  # refused for its size: sent again smaller
        (JobState.SUBMITTING, JobState.QUEUED),
        (JobState.SUBMITTING, JobState.FAILED),  # refused
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.REQUEUED),
        (JobState.REQUEUED, JobState.QUEUED),
        (JobState.RUNNING, JobState.LOST),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.TIMED_OUT),
        (JobState.COMPLETED, JobState.COMPLETED),  # a poll that sees no change
    ],
)
def test_allowed_transitions(current: JobState, new: JobState) -> None:
    assert advance(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (JobState.COMPLETED, JobState.RUNNING),  # a final state is final
        (JobState.CANCELLED, JobState.COMPLETED),
        (JobState.LOST, JobState.QUEUED),  # a retry is a new task, not a resurrection
        (JobState.HELD, JobState.RUNNING),  # nothing runs without being submitted
        (JobState.HELD, JobState.QUEUED),
        (JobState.QUEUED, JobState.SUBMITTING),
        (JobState.RUNNING, JobState.HELD),
    ],
)
def test_illegal_transitions_raise(current: JobState, new: JobState) -> None:
    with pytest.raises(LifecycleError, match=f"{current.name} -> {new.name}"):
        advance(current, new)


def test_slurm_states_seen_on_the_real_cluster_are_all_mapped() -> None:
    """Every state word in the captured squeue/sacct/scontrol output has an explicit entry
    (an unknown word would silently count as QUEUED)."""
    scheduler = SlurmScheduler()
    seen: set[str] = set()
    for path in SLURM_DATA.glob("squeue*.txt"):
        seen |= {s.state for s in scheduler.parse_status(path.read_text()).values()}
    for path in [*SLURM_DATA.glob("sacct*.txt"), *SLURM_DATA.glob("scontrol*.txt")]:
        seen |= {s.state for s in scheduler.parse_detail(path.read_text()).values()}
    seen.discard("")
    assert seen, "no captured states found"
    assert seen <= set(SLURM_STATES), seen - set(SLURM_STATES)


def test_slurm_infrastructure_failures_are_lost_and_time_limits_timed_out() -> None:
    scheduler = SlurmScheduler()
    for word in ("NODE_FAIL", "PREEMPTED", "BOOT_FAIL"):
        assert scheduler.lifecycle(word) is JobState.LOST
    assert scheduler.lifecycle("TIMEOUT") is JobState.TIMED_OUT
    assert scheduler.lifecycle("OUT_OF_MEMORY") is JobState.FAILED
    assert scheduler.lifecycle("SOME_NEW_WORD") is JobState.QUEUED  # never ends a job


def test_local_backend_maps_live_processes_only() -> None:
    scheduler = LocalScheduler()
    assert scheduler.lifecycle("RUNNING") is JobState.RUNNING
    assert set(scheduler.native_states.values()) == {JobState.RUNNING}


def test_every_available_backend_maps_only_onto_lifecycle_states() -> None:
    for backend in registered_backends().values():
        if not backend.available:
            continue
        cls = backend.load()
        assert all(isinstance(v, JobState) for v in cls.native_states.values()), backend.name
