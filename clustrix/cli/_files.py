"""``clustrix ls``, ``du``, ``get``, ``put``: the filesystem façade
(:class:`clustrix.filesystem.ClusterFileSystem`) over one connection, no jobs. Remote paths
resolve as everywhere in clustrix: relative ones against ``remote_work_dir``, ``~`` against
the remote home.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..config import ClusterConfig
from ..filesystem import ClusterFileSystem
from ._output import CliError, Output, human_bytes, table

__all__ = ["du", "get", "ls", "put"]

T = TypeVar("T")


@contextmanager
def _filesystem(config: ClusterConfig) -> Iterator[ClusterFileSystem]:
    with ClusterFileSystem(config) as fs:
        yield fs


def _explained(fs: ClusterFileSystem, what: Callable[[], T], remote: str, local: str = "") -> T:
    """``what()``, its builtin file errors turned into messages that say where to look."""
    where = fs._afs.transport.location
    work_dir = fs._afs.work_dir
    relative = not remote.startswith(("/", "~"))
    hint = f" (relative paths start at remote_work_dir, {work_dir})" if relative else ""
    try:
        return what()
    except FileNotFoundError as exc:
        name = exc.filename if exc.filename is not None else remote
        if local and os.fspath(name) == local:
            raise CliError(f"{local}: no such file or directory here") from exc
        raise CliError(
            f"{name}: no such file or directory on {where}{hint}; `clustrix ls` lists what is there"
        ) from exc
    except NotADirectoryError as exc:
        raise CliError(f"{remote} on {where} is not a directory{hint}") from exc
    except IsADirectoryError as exc:
        raise CliError(f"{exc.filename or remote} is a directory: give -r to copy a tree") from exc
    except PermissionError as exc:
        raise CliError(
            f"permission denied: {exc.filename or remote} on {where}; check its owner and mode "
            "(`clustrix ls -l` shows them)"
        ) from exc


def ls(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix ls [PATH] [-l]``."""
    with _filesystem(config) as fs:
        if not args.long:
            names = _explained(fs, lambda: fs.ls(args.path), args.path)
            out.json(names)
            for name in names:
                out.text(name)
            return 0
        infos = _explained(fs, lambda: fs.ls(args.path, detail=True), args.path)
    out.json([dataclasses.asdict(info) for info in infos])
    rows = [
        [
            info.filemode,
            str(info.size),
            _dt.datetime.fromtimestamp(info.modified).strftime("%Y-%m-%d %H:%M"),
            info.name + ("/" if info.is_dir else ""),
        ]
        for info in infos
    ]
    for line in table(rows, ["MODE", "SIZE", "MODIFIED", "NAME"])[1:] if rows else []:
        out.text(line)
    return 0


def du(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix du [PATH]``."""
    with _filesystem(config) as fs:
        usage = _explained(fs, lambda: fs.du(args.path), args.path)
    out.json({"path": args.path, **dataclasses.asdict(usage)})
    out.text(
        f"{human_bytes(usage.total_bytes)}  {args.path}  "
        f"({usage.total_bytes} bytes in {usage.file_count} files, {usage.dir_count} directories)"
    )
    return 0


def get(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix get REMOTE [LOCAL] [-r]``."""
    local = args.local if args.local is not None else os.path.basename(args.remote.rstrip("/"))
    with _filesystem(config) as fs:
        _explained(fs, lambda: fs.get(args.remote, local, recursive=args.recursive), args.remote)
    out.json({"from": args.remote, "to": local})
    out.text(f"{args.remote} -> {local}")
    return 0


def put(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """``clustrix put LOCAL [REMOTE] [-r]``."""
    if not os.path.exists(args.local):
        raise CliError(f"{args.local}: no such file or directory here")
    remote = args.remote if args.remote is not None else "."
    with _filesystem(config) as fs:
        _explained(
            fs, lambda: fs.put(args.local, remote, recursive=args.recursive), remote, args.local
        )
    out.json({"from": args.local, "to": remote})
    out.text(f"{args.local} -> {remote}")
    return 0
