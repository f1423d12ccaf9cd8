"""The backend registry: the one list of ``cluster_type`` names and what each one builds.

Everything that names backends asks here: the config validator (and its error message listing
the choices), :mod:`clustrix._factory` (which scheduler to build for the executor and the
filesystem façade), and the CLI. A backend is a
:class:`~clustrix.schedulers.base.Scheduler` subclass in one module plus one :class:`Backend`
line in :data:`BUILTIN_BACKENDS`; a third-party package adds its own through the
``clustrix.backends`` entry point group::

    [project.entry-points."clustrix.backends"]
    mysched = "mypackage.mysched:MyScheduler"

Scheduler modules are imported only when a backend is built, so validating a config or
listing the backends imports none of them. This module imports nothing of clustrix (the
config module imports it) and knows no backend's internals.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "available_backends",
    "check_cluster_type",
    "registered_backends",
]

log = logging.getLogger("clustrix")

#: The entry point group third-party backends register in.
ENTRY_POINT_GROUP = "clustrix.backends"


@dataclass(frozen=True)
class Backend:
    """One ``cluster_type``: where its scheduler class lives, or that it is not there yet."""

    name: str
    #: One line for listings (``clustrix backends``, the docs' backend table).
    summary: str
    #: ``"module:Class"`` of its :class:`~clustrix.schedulers.base.Scheduler`; None: planned.
    target: str | None
    #: Where it came from: ``"clustrix"`` or the distribution of an entry point.
    origin: str = "clustrix"

    @property
    def available(self) -> bool:
        """True if this release can run jobs on it (False: planned, refused with a message)."""
        return self.target is not None

    def load(self) -> Any:
        """Import and return the scheduler class (only now: listing imports nothing)."""
        if self.target is None:
            raise ValueError(self.refusal())
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def refusal(self) -> str:
        """Why a planned backend cannot be used, and what to use instead."""
        return (
            f"cluster_type {self.name!r} is planned but not available in this release; "
            f"use one of {', '.join(available_backends())}"
        )


#: The backends clustrix ships, in the order listings show them.
BUILTIN_BACKENDS: tuple[Backend, ...] = (
    Backend(
        "local",
        "processes on this machine, no scheduler (the embedded default)",
        "clustrix.schedulers.local:LocalScheduler",
    ),
    Backend(
        "slurm",
        "SLURM, over SSH or on a login node",
        "clustrix.schedulers.slurm:SlurmScheduler",
    ),
    Backend("sge", "(Son of) Grid Engine", "clustrix.schedulers.sge:SgeScheduler"),
    Backend(
        "ssh",
        "a plain host reached by SSH, no scheduler",
        "clustrix.schedulers.direct:DirectScheduler",
    ),
    Backend("pbs", "PBS Pro / Torque", None),
    Backend("lsf", "IBM Spectrum LSF", None),
    Backend("kubernetes", "Kubernetes Jobs", None),
)


@functools.lru_cache(maxsize=1)
def registered_backends() -> dict[str, Backend]:
    """Every backend by name: the built-in ones, then those of installed entry points.

    An entry point may not replace a built-in backend that is available (a typo'd plugin
    must not silently take over ``slurm``), but may provide a planned one.
    """
    backends = {b.name: b for b in BUILTIN_BACKENDS}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        name = point.name.strip().lower()
        known = backends.get(name)
        if known is not None and known.available:
            log.warning(
                "clustrix: ignoring entry point %r (%s): cluster_type %r is built in",
                point.name,
                point.value,
                name,
            )
            continue
        origin = point.dist.name if point.dist is not None else "entry point"
        backends[name] = Backend(name, f"{point.value} (from {origin})", point.value, origin)
    return backends


def available_backends() -> tuple[str, ...]:
    """The names ``cluster_type`` accepts, in listing order."""
    return tuple(name for name, b in registered_backends().items() if b.available)


def check_cluster_type(value: str) -> str:
    """``value`` normalised if it names an available backend; else a ``ValueError`` that
    says why (planned, or unknown with the closest name) and lists the choices."""
    name = value.strip().lower()
    backends = registered_backends()
    backend = backends.get(name)
    if backend is not None and backend.available:
        return name
    if backend is not None:
        raise ValueError(backend.refusal())
    close = difflib.get_close_matches(name, list(backends), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown cluster_type {value!r}{hint}; use one of {', '.join(available_backends())}"
    )
