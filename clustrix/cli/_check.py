"""``clustrix check-config``: each thing a cluster must get right, checked in the order an
executor needs them, each failure with its fix.

config (valid) → connection (reached) → host key → login → python (same minor version) →
work dir (writable, private: :mod:`clustrix._dircheck`, as an executor's first command) →
scheduler (its commands found by a non-interactive shell, its facts read). A check that
fails skips those that need it. The work directories are created as an executor would
create them; no job is submitted and the worker runtime is not uploaded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import posixpath
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .._bundle import runtime_filename
from .._factory import make_scheduler, make_transport
from .._remote_env import RemoteEnvironment
from ..config import ClusterConfig
from ..errors import ClusterError, ConfigError, PackagingError, TransportError
from ..executor import default_python
from ..schedulers.base import JobSpec, Scheduler
from ..transports.base import CommandResult, Transport
from ._output import Output

__all__ = ["Check", "check_config", "run_checks"]

Status = Literal["ok", "failed", "warning", "skipped"]
_MARKS = {"ok": "ok", "failed": "FAIL", "warning": "warn", "skipped": "skip"}
#: ``sh`` program: print each of "$@" that the shell cannot find.
_MISSING = 'for p do command -v "$p" >/dev/null 2>&1 || echo "$p"; done; exit 0'


@dataclass(frozen=True)
class Check:
    """One check: ``status`` ok, failed, warning or skipped; what was found; the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def config_source(path: str | None) -> str:
    """Where the configuration came from, for the report."""
    if path is not None:
        return path
    env = os.environ.get("CLUSTRIX_CONFIG")
    return f"$CLUSTRIX_CONFIG={env}" if env else "CLUSTRIX_* variables and defaults"


async def run_checks(
    config: ClusterConfig,
    *,
    scheduler: Scheduler | None = None,
    transport: Transport | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """Every check of ``config`` (after "config"), and the facts found on the way."""
    scheduler = scheduler if scheduler is not None else make_scheduler(config)
    transport = transport if transport is not None else make_transport(config)
    facts: dict[str, Any] = {"cluster_type": config.cluster_type}
    try:
        checks = await _connect(config, transport)
        if any(c.status == "failed" for c in checks):
            return _skipping(checks, ["python", "work dir", "scheduler"], "needs a login"), facts
        facts["location"] = transport.location
        checks += await _python_and_work_dir(config, transport, facts)
        if checks[-2].status == "failed":  # no Python: nothing can run there
            return _skipping(checks, ["scheduler"], "needs the cluster's Python"), facts
        checks.append(await _scheduler(config, scheduler, transport, facts))
        return checks, facts
    finally:
        await transport.close()


def _skipping(checks: list[Check], names: Sequence[str], why: str) -> list[Check]:
    return checks + [Check(name, "skipped", why) for name in names]


# ---------------------------------------------------------------------------- SSH
async def _connect(config: ClusterConfig, transport: Transport) -> list[Check]:
    host = config.cluster_host
    if host is None:
        await transport.connect()
        return [
            Check("connection", "ok", "this machine (no cluster_host: no SSH)"),
            Check("host key", "skipped", "no SSH"),
            Check("login", "skipped", "no SSH"),
        ]
    where = f"{host}:{config.cluster_port}" if config.cluster_port else host
    known_hosts = os.fspath(config.known_hosts or "~/.ssh/known_hosts")
    try:
        await transport.connect()
    except TransportError as exc:
        return _connect_failure(config, exc, where, known_hosts)
    if config.strict_host_key_checking:
        key = Check("host key", "ok", f"{where} matches {known_hosts}")
    else:
        key = Check(
            "host key",
            "warning",
            "not verified (strict_host_key_checking=False): anyone on the way could pose as "
            f"{where}",
            f"add the host's key to {known_hosts} (check its fingerprint with your admins), "
            "then set strict_host_key_checking=True",
        )
    return [
        Check("connection", "ok", f"reached {where}"),
        key,
        Check("login", "ok", f"logged in as {transport.location}"),
    ]


def _ssh_command(config: ClusterConfig, *extra: str) -> str:
    """The ``ssh`` command line that logs in as the config says (for the fixes)."""
    parts = ["ssh"]
    if config.cluster_port:
        parts += ["-p", str(config.cluster_port)]
    if config.key_file:
        parts += ["-i", os.fspath(config.key_file)]
    if config.known_hosts:
        parts += ["-o", f"UserKnownHostsFile={os.fspath(config.known_hosts)}"]
    user = f"{config.username}@" if config.username else ""
    return shlex.join([*parts, f"{user}{config.cluster_host}", *extra])


def _connect_failure(
    config: ClusterConfig, exc: TransportError, where: str, known_hosts: str
) -> list[Check]:
    import asyncssh  # only a remote config gets here; the transport raised from it

    cause, message = exc.__cause__, str(exc)
    reached = Check("connection", "ok", f"reached {where}")
    key_ok = Check("host key", "ok", f"{where} matches {known_hosts}")
    # a file the config names is unusable: nothing was tried
    not_tried = Check("connection", "skipped", "not tried: fix the file first")
    if isinstance(cause, asyncssh.HostKeyNotVerifiable):
        fix = (
            f"make sure {where} is the host you mean and ask your admins for its key's "
            f"fingerprint; then record it with `{_ssh_command(config)}` once (after "
            f"`ssh-keygen -R {config.cluster_host} -f {known_hosts}` if the key changed)"
        )
        return [reached, Check("host key", "failed", message, fix), _skip_login("host key")]
    if isinstance(cause, asyncssh.PermissionDenied):
        fix = (
            f"`{_ssh_command(config, 'true')}` must log in without a prompt: fix username, "
            "key_file (or load the key into your SSH agent)"
        )
        return [reached, key_ok, Check("login", "failed", message, fix)]
    if message.startswith("known_hosts"):
        fix = "give known_hosts an existing file, or leave it unset (~/.ssh/known_hosts)"
        return [not_tried, Check("host key", "failed", message, fix), _skip_login("host key")]
    if isinstance(cause, asyncssh.KeyImportError) or message.startswith("key_file"):
        fix = (
            "give key_file the path of an unencrypted private key, or leave it unset to use "
            "your SSH agent and ~/.ssh/id_*"
        )
        skipped_key = Check("host key", "skipped", "not tried: fix key_file first")
        return [not_tried, skipped_key, Check("login", "failed", message, fix)]
    fix = (
        f"check cluster_host and cluster_port (now {where}), the network (VPN, firewall), "
        f"and that sshd runs there: `{_ssh_command(config, 'true')}`"
    )
    return [
        Check("connection", "failed", message, fix),
        Check("host key", "skipped", "needs a connection"),
        Check("login", "skipped", "needs a connection"),
    ]


def _skip_login(why: str) -> Check:
    return Check("login", "skipped", f"needs a good {why}")


# ------------------------------------------------------------------- Python, work dir
class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """What clustrix logs meanwhile (a work dir made private), for the report instead."""
    logger = logging.getLogger("clustrix")
    handler = _Warnings()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def _python_and_work_dir(
    config: ClusterConfig, transport: Transport, facts: dict[str, Any]
) -> list[Check]:
    async def run(
        argv: Sequence[str], counts_as: str | None = None, stdin: bytes | None = None
    ) -> CommandResult:
        return await transport.run(argv, timeout_s=config.command_timeout_s, stdin=stdin)

    python = default_python(config)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    work_dir = await transport.expand(config.remote_work_dir)
    facts.update(python=python, work_dir=work_dir)
    env = RemoteEnvironment(
        config, transport, run, Counter(), python=python, build_environment=False,
        work_dir=work_dir, runtime_name=runtime_filename(),
    )  # fmt: skip
    python_fix = (
        f"set python_executable to a Python {here} on the cluster (a full path, or load it "
        f"with module_loads, e.g. ['python/{here}'])"
    )
    with _captured_warnings() as made_private:
        try:
            facts["runtime_uploaded"] = (await env.check_python_and_layout()).runtime_ok
        except PackagingError as exc:
            return [
                Check("python", "failed", str(exc), python_fix),
                Check("work dir", "skipped", "checked by the cluster's Python"),
            ]
        except (ConfigError, TransportError) as exc:
            return [
                Check("python", "ok", f"{python} is Python {here}, as here"),
                Check(
                    "work dir",
                    "failed",
                    str(exc),
                    "set remote_work_dir to a directory of your own that only you may write, "
                    "e.g. $SCRATCH/$USER/clustrix (clustrix creates it, mode 0700)",
                ),
            ]
    python_ok = Check("python", "ok", f"{python} is Python {here}, as here")
    if made_private:
        return [python_ok, Check("work dir", "warning", "; ".join(made_private))]
    return [python_ok, Check("work dir", "ok", f"{work_dir}: writable, private (0700)")]


# ------------------------------------------------------------------------- scheduler
def scheduler_programs(scheduler: Scheduler, config: ClusterConfig, work_dir: str) -> list[str]:
    """The programs the backend's commands start (submit, status, cancel, accounting),
    read from the argv it builds: no list of names per backend."""
    spec = JobSpec(
        job_dir=f"{work_dir}/jobs/check-config",
        n_tasks=1,
        resources=config.resources(),
        job_name="clustrix-check-config",
        python=default_python(config),
        worker_path=f"{work_dir}/runtime/worker.zip",
    )
    builders: list[Callable[[], list[str] | None]] = [
        lambda: scheduler.submit_argv(spec, spec.path("job.sh")),
        lambda: scheduler.status_argv(["1"]),
        lambda: scheduler.cancel_argv(["1"]),
        lambda: scheduler.detail_argv(["1"]),
    ]
    programs: list[str] = []
    for build in builders:
        try:
            argv = build()
        except (ValueError, ClusterError):  # a job ID this backend cannot ask about
            continue
        if argv and argv[0] not in programs:
            programs.append(argv[0])
    return programs


async def _scheduler(
    config: ClusterConfig, scheduler: Scheduler, transport: Transport, facts: dict[str, Any]
) -> Check:
    work_dir = facts["work_dir"]
    programs = scheduler_programs(scheduler, config, work_dir)
    result = await transport.run(
        ["sh", "-c", _MISSING, "clustrix-check", *programs], timeout_s=config.command_timeout_s
    )
    missing = result.stdout.split()
    where = transport.location
    if missing:
        return Check(
            "scheduler",
            "failed",
            f"cluster_type={config.cluster_type!r} runs {', '.join(programs)}; not found on "
            f"{where}: {', '.join(missing)}",
            "clustrix runs them in a non-interactive shell, where ~/.bashrc often returns "
            "early and `module load` has not run: put them on that PATH (before the "
            "interactive check in ~/.bashrc), or choose the cluster_type this cluster has",
        )

    async def run(argv: Sequence[str]) -> tuple[int, str, str]:
        done = await transport.run(argv, timeout_s=config.command_timeout_s)
        return done.returncode, done.stdout, done.stderr

    scheduler.attach(work_dir=work_dir, jobs_root=posixpath.join(work_dir, "jobs"))
    try:
        await scheduler.discover(run)
    except (ClusterError, ValueError) as exc:
        return Check(
            "scheduler",
            "failed",
            f"{', '.join(programs)} found, but reading the cluster's facts failed: {exc}",
            "run the scheduler's commands by hand on the cluster to see what is wrong",
        )
    facts.update(
        scheduler=scheduler.name,
        max_array_size=scheduler.max_array_size,
        max_workers=config.max_workers or scheduler.default_max_workers(),
        slots=scheduler.slots(config.resources()),
    )
    limit = scheduler.max_array_size
    shown = f"; at most {limit} tasks per array" if limit != Scheduler.max_array_size else ""
    return Check("scheduler", "ok", f"{', '.join(programs)} found{shown}")


# ---------------------------------------------------------------------------- command
def check_config(args: argparse.Namespace, out: Output) -> int:
    """``clustrix check-config``: exit status 1 if a check failed."""
    source = config_source(args.config)
    facts: dict[str, Any] = {}
    try:
        config = ClusterConfig.load(args.config)
    except ConfigError as exc:
        fix = "change the field it names, in the file or its CLUSTRIX_<FIELD> variable"
        checks = [Check("config", "failed", f"{source}: {exc}", fix)]
        checks = _skipping(checks, ["connection", "host key", "login"], "needs a valid config")
        checks = _skipping(checks, ["python", "work dir", "scheduler"], "needs a valid config")
    else:
        host = f" on {config.cluster_host}" if config.cluster_host else " on this machine"
        checks = [
            Check("config", "ok", f"cluster_type={config.cluster_type!r}{host}, from {source}")
        ]
        found, facts = asyncio.run(run_checks(config))
        checks += found
    failed = [c for c in checks if c.status == "failed"]
    out.json({"ok": not failed, "checks": [asdict(c) for c in checks], "facts": facts})
    width = max(len(c.name) for c in checks)
    for check in checks:
        out.text(f"{_MARKS[check.status]:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != "ok":
            out.text(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    out.text(f"{len(failed)} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
