"""Checkpoint and requeue: what a long call does when its job is about to be stopped.

With ``checkpoint_before_s`` set, SLURM signals the job that many seconds before its time
limit (``--signal``). The worker then calls the running function's ``checkpoint`` method
with the call's own arguments; it returns the :class:`DelayedCall` to run when the job starts
again (or None to keep going), the worker saves it, and the job is requeued under the same
job ID. The future sees none of this: it just gets the result of the resumed call.

The protocol is submitit's: subclass :class:`Checkpointable`, keep progress on ``self``, and
the default ``checkpoint`` resumes ``self`` (with that progress) on the same arguments::

    class Train(clustrix.Checkpointable):
        def __init__(self) -> None:
            self.epoch = 0

        def __call__(self, epochs: int) -> float:
            while self.epoch < epochs:
                ...                      # one epoch
                self.epoch += 1
            return loss

    ex.options(time_limit_min=60, checkpoint_before_s=120).submit(Train(), 500)

This module is imported on the node by the worker (when it unpickles a Checkpointable):
standard library only, and little of it.
"""

from __future__ import annotations

__all__ = ["Checkpointable", "DelayedCall"]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the worker should not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class DelayedCall:
    """A call to make later: ``fn(*args, **kwargs)``, run when a requeued job restarts."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"DelayedCall needs a callable, not {type(fn).__name__}")
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)
        return f"DelayedCall({name}, {len(self.args)} args, {sorted(self.kwargs)})"


class Checkpointable:
    """Base class of callables that can be stopped and resumed (see the module docstring).

    Override :meth:`checkpoint` to save state elsewhere (files) or to change the arguments
    of the resumed call; return None from it to decline and keep running.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The work: override it."""
        raise NotImplementedError(f"{type(self).__qualname__} must define __call__")

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedCall | None:
        """Called in the worker when the job is about to stop, with the call's arguments:
        the call to run when the job starts again. Default: this object as it is now."""
        return DelayedCall(self, *args, **kwargs)
