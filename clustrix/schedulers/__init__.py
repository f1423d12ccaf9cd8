"""Scheduler backends: render a job script, build argv, parse output."""

from __future__ import annotations

from .base import JobSpec, Scheduler, TaskStatus
from .local import LocalScheduler

__all__ = ["JobSpec", "LocalScheduler", "Scheduler", "TaskStatus"]
