"""The one job lifecycle every backend maps onto: states and the transitions between them.

::

    HELD ──► SUBMITTING ──► QUEUED ◄──► RUNNING ──► COMPLETED
      ▲          │            ▲ │          │ │ ├──► FAILED      (the job, or the submission)
      └──────────┘            │ │          │ │ ├──► CANCELLED
     (refused for its size:   │ ▼          ▼ │ ├──► TIMED_OUT   (its time limit)
      sent again smaller)     REQUEUED ◄─────┘ └──► LOST        (node failure, preemption,
                                                                 or gone without a trace)

Every live state may also end in any final state (a queued job can be cancelled or fail to
start). A backend translates its native words (SLURM's ``PENDING``, Grid Engine's ``qw``...)
into these in its own module and keeps the native word for display
(:attr:`clustrix.ClusterFuture.job_state`); the engine decides only by these states.
:func:`advance` is the one transition function: an illegal transition is a bug, raised as
:class:`LifecycleError`, never a silent overwrite.

This module knows nothing but the stdlib (the worker does not import it).
"""

from __future__ import annotations

import enum

__all__ = ["FINAL_STATES", "LIVE_STATES", "TRANSITIONS", "JobState", "LifecycleError", "advance"]


class JobState(enum.Enum):
    """Where one job (or one array task) is in its life, whatever the scheduler."""

    #: Known to the client only: waiting for a free slot (``max_workers``) or a burst's end.
    HELD = "held"
    #: Its job directory is being written and the submit command runs.
    SUBMITTING = "submitting"
    #: Accepted by the scheduler, not started (or suspended, or held by the scheduler).
    QUEUED = "queued"
    #: Started on a node.
    RUNNING = "running"
    #: Stopped and put back in the queue (checkpoint, preemption, node failure, by hand): an
    #: exit status left by the run before no longer counts.
    REQUEUED = "requeued"
    #: Ended with exit status 0.
    COMPLETED = "completed"
    #: Ended with a failure of its own (non-zero exit, out of memory), or refused at submission.
    FAILED = "failed"
    #: Cancelled, by clustrix or by anyone else.
    CANCELLED = "cancelled"
    #: Stopped at its time limit.
    TIMED_OUT = "timed_out"
    #: Ended by the infrastructure, not by the call (node failure, preemption, boot failure),
    #: or out of clustrix's sight for good. ``max_retries`` resubmits the calls of jobs the
    #: scheduler reports lost; a job gone without any trace is not resubmitted (it may have
    #: run: its calls fail with ``JobLostError`` rather than maybe run twice).
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen to the job."""
        return self in FINAL_STATES

    @property
    def is_live(self) -> bool:
        """True while the scheduler has the job (queued, running or requeued)."""
        return self in LIVE_STATES


#: States after which a job will not produce anything more.
FINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST}
)
#: States in which the scheduler holds the job.
LIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.REQUEUED})

#: The allowed moves. Staying in a state is always allowed (a poll that sees no change).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # HELD -> FAILED: the executor broke (or the submission failed) before it went out
    JobState.HELD: frozenset({JobState.SUBMITTING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUBMITTING: frozenset(
        # HELD: refused for its size, sent again in smaller pieces
        {JobState.HELD, *LIVE_STATES, *FINAL_STATES}
    ),
    JobState.QUEUED: LIVE_STATES | FINAL_STATES,
    JobState.RUNNING: LIVE_STATES | FINAL_STATES,
    JobState.REQUEUED: LIVE_STATES | FINAL_STATES,
    **{state: frozenset() for state in FINAL_STATES},
}


class LifecycleError(RuntimeError):
    """A transition the lifecycle does not allow: a bug in clustrix or in a backend."""


def advance(current: JobState, new: JobState) -> JobState:
    """``new`` if the lifecycle allows moving there from ``current``; else raise."""
    if new is current or new in TRANSITIONS[current]:
        return new
    raise LifecycleError(f"illegal job state transition {current.name} -> {new.name}")
