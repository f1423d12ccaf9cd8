"""``clustrix disconnect``: end the shared SSH connection that ``connection_persist_s`` keeps
(OpenSSH's ``ssh -O exit``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from ..config import ClusterConfig
from ._output import CliError, Output

__all__ = ["disconnect"]

#: How long to wait for the shared process to be gone once asked to end.
_END_WAIT_S = 5.0


def disconnect(config: ClusterConfig, args: argparse.Namespace, out: Output) -> int:
    """End the shared connection to the cluster the config names, if one is open."""
    if config.cluster_host is None:
        raise CliError(
            "the config names no cluster_host: jobs run on this machine, with no SSH "
            "connection to end",
            status=2,
        )
    from .._factory import ssh_options
    from ..transports.shared import shared_transport

    shared = shared_transport(ssh_options(config), persist_s=0.0)
    if shared is None:
        raise CliError("this machine has no private directory for shared connections", 1)
    pid = asyncio.run(shared.stop_server())
    ended = pid is not None and _gone_within(pid, _END_WAIT_S)
    out.json({"location": shared.location, "pid": pid, "ended": ended})
    if pid is None:
        out.text(f"no shared connection to {shared.location} is open")
    elif ended:
        out.text(f"ended the shared connection to {shared.location} (pid {pid})")
    else:
        raise CliError(
            f"the shared connection to {shared.location} (pid {pid}) was asked to end and "
            f"is still there after {_END_WAIT_S:g} s; see {shared.log_path}, or kill {pid}"
        )
    return 0


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (the shared process is init's child: a
    container's init may be slow to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now has that pid
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): the pid exists
