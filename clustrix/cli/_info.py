"""``clustrix plan``, ``backends`` and ``version``: answers from this machine alone."""

from __future__ import annotations

import argparse
import os
import platform
import runpy
import sys
from pathlib import Path

from ..config import ClusterConfig
from ._output import CliError, Output

__all__ = ["backends", "plan", "version"]


def plan(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix plan SCRIPT.py:FUNCTION``: what the function would ship and install."""
    from ..packaging import Packager

    script, _, name = args.target.rpartition(":")
    if not script or not name:
        raise CliError(f"give SCRIPT.py:FUNCTION, not {args.target!r}", status=2)
    if not os.path.isfile(script):
        raise CliError(f"{script}: no such file here; give the path of a Python script", 2)
    sys.path.insert(0, str(Path(script).resolve().parent))
    namespace = runpy.run_path(script, run_name="__clustrix_plan__")
    if name not in namespace:
        functions = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_"))
        raise CliError(
            f"{script} defines no {name!r}; it defines {', '.join(functions) or 'no function'}",
            status=2,
        )
    packager = Packager(
        exclude_modules=config.exclude_modules, extra_requirements=config.extra_requirements
    )
    found = packager.plan(namespace[name])
    out.json(
        {
            "python_version": found.python_version,
            "requirements": list(found.requirements),
            "local_modules": [{"name": m.name, "path": str(m.path)} for m in found.local_modules],
            "missing": list(found.missing),
            "code_hash": found.code_hash or None,
        }
    )
    out.text(found.summary())
    return 0


def backends(args: argparse.Namespace, out: Output) -> int:
    """``clustrix backends``: the cluster types this installation has."""
    from ..backends import registered_backends

    listed = list(registered_backends().values())
    out.json(
        [
            {"name": b.name, "available": b.available, "summary": b.summary, "origin": b.origin}
            for b in listed
        ]
    )
    width = max(len(b.name) for b in listed)
    for b in listed:
        status = "" if b.available else " (planned: not in this release)"
        out.text(f"{b.name:<{width}}  {b.summary}{status}")
    return 0


def version(args: argparse.Namespace, out: Output) -> int:
    """``clustrix version``."""
    from .. import __version__

    out.json(
        {
            "clustrix": __version__,
            "python": platform.python_version(),
            "executable": sys.executable,
        }
    )
    out.text(__version__)
    return 0
