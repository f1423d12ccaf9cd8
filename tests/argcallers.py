"""Functions whose work arrives inside their arguments (the packaging tests' callers).

They import nothing: what the node needs for a call comes from what the call carries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def call_each(tasks: Iterable[Callable[[], Any]]) -> list[Any]:
    """Call every task: the tasks' functions come from modules this one never names."""
    return [task() for task in tasks]
