"""The engine: what an executor does on its event-loop thread (see :mod:`.engine`)."""

from __future__ import annotations

from ._model import Task
from .engine import Engine

__all__ = ["Engine", "Task"]
