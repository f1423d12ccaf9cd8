"""How the commands answer: text for people, ``--json`` for scripts, and errors that say
what to do. Knows nothing of clusters."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CliError", "Output", "age", "human_bytes", "table"]


class CliError(Exception):
    """A command failed: ``str(exc)`` says why and what to do; exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Output:
    """Where a command writes: ``--json`` prints one JSON document, text otherwise."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = False  # a JSON document is out: an error then goes to stderr only

    def text(self, line: str = "") -> None:
        """A line for people (nothing under ``--json``)."""
        if not self.as_json:
            print(line, flush=True)

    def json(self, document: Any) -> None:
        """The document for scripts (only under ``--json``)."""
        if self.as_json:
            print(json.dumps(document, indent=2, default=str), flush=True)
            self.printed = True

    def json_line(self, document: Any) -> None:
        """One JSON object per line (``--json`` of a command that streams, like ``logs -f``)."""
        if self.as_json:
            print(json.dumps(document, default=str), flush=True)
            self.printed = True

    @staticmethod
    def error(message: str) -> None:
        """A problem, on stderr whatever the format."""
        print(message, file=sys.stderr, flush=True)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    """Left-aligned columns, the last one unpadded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [f"{cell!s:<{widths[i]}}" for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return lines


def human_bytes(size: int) -> str:
    """``1.5 MiB``; bytes below 1 KiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(timestamp: float, now: float | None = None) -> str:
    """``2026-12-03 11:02 (5 min ago)``, local time."""
    when = _dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
    seconds = max(0, int((now if now is not None else _dt.datetime.now().timestamp()) - timestamp))
    if seconds < 90:
        ago = f"{seconds} s"
    elif seconds < 90 * 60:
        ago = f"{seconds // 60} min"
    elif seconds < 48 * 3600:
        ago = f"{seconds // 3600} h"
    else:
        ago = f"{seconds // 86400} days"
    return f"{when} ({ago} ago)"


def iso(timestamp: float) -> str:
    """ISO 8601 in UTC, for ``--json``."""
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")
