"""The ``clustrix`` command: jobs, logs, files and checks of a cluster, from a shell.

::

    clustrix check-config         connect, check host key, login, Python, work dir, scheduler
    clustrix jobs                 this machine's clustrix jobs on the cluster, their states
    clustrix status JOB...        one job (or array) in detail
    clustrix cancel JOB...        cancel jobs (those the registry lists)
    clustrix logs JOB [-f]        a job's stdout (or --stderr), followed until it ends
    clustrix recover [--wait]     what a crashed client left running; --wait collects it
    clustrix ls|du|get|put ...    files on the cluster
    clustrix plan SCRIPT.py:FUNC  what a function would ship and install
    clustrix disconnect           end the shared connection (connection_persist_s)
    clustrix backends | version

Every command takes ``--config FILE`` (else ``$CLUSTRIX_CONFIG``; ``CLUSTRIX_<FIELD>``
variables override the file, as in the library) and ``--json``; it exits non-zero on failure
with a message that says what to do. The job commands read the local job registry (one file
per submission, see :mod:`clustrix.registry`) and ask the scheduler once per invocation.
Argparse only; each group of commands lives in its own module (``_jobs``, ``_files``,
``_check``, ``_info``, ``_connection``), on ``_remote`` (connection, registry, the one
status round trip) and ``_output`` (text, JSON, errors).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._output import CliError, Output

__all__ = ["build_parser", "main"]

ENVIRONMENT = (
    "configuration: --config FILE (YAML or TOML), else $CLUSTRIX_CONFIG; CLUSTRIX_<FIELD> "
    "environment variables override the file (CLUSTRIX_CLUSTER_HOST=login.example.org), as "
    "for ClusterConfig() in Python"
)


_JOB = "a job ID (12345, 12345_7), an array's base ID, or a job directory's name"


class _Formatter(argparse.HelpFormatter):
    """Command names (check-config) on the line of their help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before the command or after it, neither hides the other
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML/TOML config file (default: $CLUSTRIX_CONFIG, then CLUSTRIX_* variables)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="clustrix",
        description="Jobs, logs, files and checks of the cluster a clustrix config names.",
        epilog=ENVIRONMENT,
        parents=[common],
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=description or summary, parents=[common],
            epilog=ENVIRONMENT, formatter_class=_Formatter,
        )  # fmt: skip

    command(
        "check-config",
        "connect and check everything jobs need, each failure with its fix",
        "Validate the config, connect, and check in turn: the host key, the login, the "
        "cluster's Python (same minor version as here), the work directory (writable, "
        "private) and the scheduler's commands. Exit status 1 if a check failed.",
    )
    jobs = command(
        "jobs",
        "this machine's clustrix jobs on the cluster and their states",
        "The submissions the local job registry lists for this cluster and work dir (not "
        "yet collected), with their states: one status command for all of them.",
    )
    jobs.add_argument("-t", "--tasks", action="store_true", help="list every task too")
    status = command(
        "status",
        "the state of jobs, task by task",
        "JOB is a job ID (12345, an array task 12345_7), an array's base ID, or a job "
        "directory's name. A job the registry no longer lists is asked of the scheduler.",
    )
    status.add_argument("jobs", nargs="+", metavar="JOB", help=_JOB)
    cancel = command(
        "cancel",
        "cancel jobs the registry lists (every task of an array by its base ID)",
        "Cancel the jobs (queued or running) with one scheduler command; jobs that ended "
        "are left alone. Nothing is cancelled if a JOB is not in the registry.",
    )
    cancel.add_argument("jobs", nargs="+", metavar="JOB", help=_JOB)
    logs = command(
        "logs",
        "print a job's stdout (or stderr); --follow until it ends",
        "The job's logs/<task>.out (or .err) through the connection; for an array, every "
        "task's, each line marked with its task's job ID.",
    )
    logs.add_argument("job", metavar="JOB", help=_JOB)
    logs.add_argument("-e", "--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("-n", "--tail", type=int, metavar="N", help="start at the last N lines")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job ends"
    )
    recover = command(
        "recover",
        "list what a crashed client left on the cluster; --wait collects it",
        "The submissions ClusterExecutor(config).recover() would adopt: those of clients "
        "that died. --wait adopts them and waits for every call; exit status 1 if a call "
        "failed.",
    )
    recover.add_argument("--wait", action="store_true", help="collect the results")
    recover.add_argument(
        "--save",
        metavar="FILE",
        type=_save_path,
        help="with --wait: pickle {call index: result} to FILE",
    )
    ls = command("ls", "list a directory on the cluster (relative to remote_work_dir)")
    ls.add_argument("path", nargs="?", default=".", metavar="PATH")
    ls.add_argument("-l", "--long", action="store_true", help="mode, size, time")
    du = command("du", "size and counts of a tree on the cluster")
    du.add_argument("path", nargs="?", default=".", metavar="PATH")
    get = command("get", "copy from the cluster to here")
    get.add_argument("remote", metavar="REMOTE")
    get.add_argument("local", nargs="?", metavar="LOCAL", help="default: REMOTE's name, here")
    get.add_argument("-r", "--recursive", action="store_true", help="a directory tree")
    put = command("put", "copy from here to the cluster")
    put.add_argument("local", metavar="LOCAL")
    put.add_argument("remote", nargs="?", metavar="REMOTE", help="default: remote_work_dir")
    put.add_argument("-r", "--recursive", action="store_true", help="a directory tree")
    plan = command(
        "plan",
        "show what a function would ship and install (connects nowhere)",
    )
    plan.add_argument("target", metavar="SCRIPT.py:FUNCTION")
    command(
        "disconnect",
        "end the shared SSH connection that connection_persist_s keeps open",
        "Like ssh -O exit: the process that holds the login to this cluster for later "
        "clustrix processes ends now, instead of connection_persist_s after its last "
        "client; calls still in flight through it fail as on a dropped connection.",
    )
    command("backends", "list the cluster types this installation has")
    command("version", "print the version")
    return parser


def _save_path(value: str) -> str:
    from ._jobs import save_path

    return save_path(value)


Handler = Callable[..., int]


def _handler(name: str) -> tuple[Handler, bool]:
    """The function of a command, and whether it takes a loaded config."""
    if name in ("jobs", "status", "cancel", "logs", "recover"):
        from . import _jobs

        return getattr(_jobs, name), True
    if name in ("ls", "du", "get", "put"):
        from . import _files

        return getattr(_files, name), True
    if name == "disconnect":
        from ._connection import disconnect

        return disconnect, True
    from . import _info

    if name == "plan":
        return _info.plan, True
    if name == "check-config":
        from ._check import check_config

        return check_config, False
    return getattr(_info, name), False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clustrix`` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    out = Output(getattr(args, "json", False))
    from ..errors import ClusterError

    try:
        handler, takes_config = _handler(args.command)
        if not takes_config:
            return handler(args, out)
        from ..config import ClusterConfig

        return handler(ClusterConfig.load(args.config), args, out)
    except CliError as exc:
        return _fail(out, args.command, str(exc), exc.status)
    except ClusterError as exc:
        return _fail(out, args.command, str(exc), 1)
    except OSError as exc:  # a local file (--save, get's destination)
        return _fail(out, args.command, f"{exc.filename or ''}: {exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        return _fail(out, args.command, "interrupted", 130)


def _fail(out: Output, command: str, message: str, status: int) -> int:
    if not out.printed:  # under --json, stdout holds one document (or JSON lines)
        out.json({"ok": False, "error": message})
    out.error(f"clustrix {command}: {message}")
    return status


if __name__ == "__main__":
    sys.exit(main())
