"""The ``clustrix`` command: check a configuration, show what a function would ship.

clustrix check-config [--config FILE]    validate, connect, report the cluster's facts
clustrix plan path/to/script.py:function [--config FILE]
clustrix backends [--json]               the cluster types (built in and from plugins)
clustrix version
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _load_config(path: str | None) -> object:
    from .config import ClusterConfig

    return ClusterConfig.load(path)


def _check_config(args: argparse.Namespace) -> int:
    from .executor import ClusterExecutor

    config = _load_config(args.config)
    print(repr(config))
    with ClusterExecutor(config) as executor:  # type: ignore[arg-type]
        engine = executor._engine
        print(f"connected: {engine.transport.location}")
        print(f"work dir:  {engine.work_dir}")
        print(f"python:    {engine.python}")
        print(f"runtime:   {engine.worker_path}")
        print(
            f"scheduler: {engine.scheduler.name} (max array size {engine.scheduler.max_array_size})"
        )
    print("ok")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .packaging import Packager

    script, _, name = args.target.rpartition(":")
    if not script or not name:
        print("clustrix plan: give SCRIPT.py:FUNCTION", file=sys.stderr)
        return 2
    sys.path.insert(0, str(__import__("pathlib").Path(script).resolve().parent))
    namespace = runpy.run_path(script, run_name="__clustrix_plan__")
    if name not in namespace:
        print(f"clustrix plan: {script} defines no {name!r}", file=sys.stderr)
        return 2
    config = _load_config(args.config)
    packager = Packager(
        exclude_modules=getattr(config, "exclude_modules", ()),
        extra_requirements=getattr(config, "extra_requirements", ()),
    )
    print(packager.plan(namespace[name]).summary())
    return 0


def _backends(args: argparse.Namespace) -> int:
    from .backends import registered_backends

    backends = list(registered_backends().values())
    if args.json:
        rows = [
            {"name": b.name, "available": b.available, "summary": b.summary, "origin": b.origin}
            for b in backends
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(b.name) for b in backends)
    for b in backends:
        status = "" if b.available else " (planned: not in this release)"
        print(f"{b.name:<{width}}  {b.summary}{status}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clustrix`` command."""
    parser = argparse.ArgumentParser(prog="clustrix", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config and connect to its cluster")
    check.add_argument("--config", help="YAML/TOML file (default: $CLUSTRIX_CONFIG, environment)")
    plan = sub.add_parser("plan", help="show what a function would ship and install")
    plan.add_argument("target", help="SCRIPT.py:FUNCTION")
    plan.add_argument("--config", help="YAML/TOML file (default: $CLUSTRIX_CONFIG, environment)")
    listing = sub.add_parser("backends", help="list the cluster types this installation has")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    from .errors import ClusterError

    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "backends":
            return _backends(args)
        from . import __version__

        print(__version__)
        return 0
    except ClusterError as exc:
        print(f"clustrix: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
