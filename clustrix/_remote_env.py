"""The cluster side of packaging: the work directory, the Python check, the user's code
archive and the virtual environment, each prepared at most once per executor.

It runs commands through the engine's ``run`` (so they are counted) and moves files through
the transport; it knows nothing of schedulers or futures. On a shared cluster every other
user can read every command line (``ps``): scripts that carry a value of
``environment_variables`` travel on stdin, and what is created is private (umask 077); the
work directory is checked before anything is written (:mod:`clustrix._dircheck`, see
docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import inspect
import json
import logging
import re
import shlex
import stat
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _dircheck, _usercache
from .config import ClusterConfig
from .errors import ConfigError, PackagingError, TransportError
from .packaging import READY_MARKER, EnvironmentPlan, env_build_script
from .schedulers.base import setup_lines
from .transports.base import CommandResult, Transport

__all__ = ["Layout", "RemoteEnvironment", "remember_runtime", "runtime_known"]

log = logging.getLogger("clustrix")

RunCommand = Callable[..., Awaitable[CommandResult]]
#: ``sh -c`` program that runs the script on its stdin: the script never shows in ``ps``.
#: ``$(cat)`` reads all of it first, so nothing the script starts can eat the rest of it.
RUN_STDIN = 'eval "$(cat)"'
#: Values of environment_variables shorter than this are not hidden in error messages.
_MIN_REDACTED = 4
_FIX = "e.g. $SCRATCH/$USER/clustrix (clustrix creates it, mode 0700)"


#: ``sh -c UPLOAD_RUNTIME clustrix-runtime <path>``: the worker runtime zip from stdin to
#: ``<path>``, atomically (a temporary name beside it, then rename), private (umask 077).
UPLOAD_RUNTIME = (
    'umask 077; tmp="$1.$$.tmp"; '
    'if cat > "$tmp" && mv -f "$tmp" "$1"; then exit 0; fi; rm -f "$tmp"; exit 1'
)


@functools.cache
def dircheck_argument() -> str:
    """:mod:`clustrix._dircheck`'s source as :data:`~clustrix._dircheck.BOOTSTRAP` takes
    it: zlib-compressed, base64."""
    source = inspect.getsource(_dircheck).encode()
    return base64.b64encode(zlib.compress(source, 9)).decode()


#: The user cache's record of the (cluster, work dir, runtime) seen with the runtime there,
#: and how many records it keeps (the newest).
SEEN_CACHE = "seen"
SEEN_KEEP = 256
#: The same, for this process (no file read for the second executor).
_seen_here: set[str] = set()


def _seen_key(location: str, work_dir: str, runtime_name: str) -> str:
    return hashlib.sha256(f"{location}\0{work_dir}\0{runtime_name}".encode()).hexdigest()[:32]


def runtime_known(location: str, work_dir: str, runtime_name: str) -> bool:
    """True if the cluster at ``location`` had this runtime in ``work_dir`` (as the config
    gives it) when this user last looked, from this process or an earlier one. Only a
    guess (what decides whether to send the runtime along): the cluster checks."""
    key = _seen_key(location, work_dir, runtime_name)
    if key in _seen_here:
        return True
    directory = _usercache.cache_dir(SEEN_CACHE)
    return directory is not None and (directory / key).is_file()


def remember_runtime(location: str, work_dir: str, runtime_name: str) -> None:
    """Note that the cluster has the runtime (see :func:`runtime_known`)."""
    key = _seen_key(location, work_dir, runtime_name)
    if key in _seen_here:
        return
    _seen_here.add(key)
    directory = _usercache.cache_dir(SEEN_CACHE)
    if directory is not None:
        try:
            _usercache.write_private(directory, key, b"")
            _usercache.prune(directory, "?" * len(key), keep=SEEN_KEEP)
        except OSError as exc:  # only a guess is lost
            log.debug("clustrix: cannot note the runtime in %s: %s", directory, exc)


@dataclass(frozen=True)
class Layout:
    """What the first command found: the work directory (absolute), whether the worker
    runtime is there, and the scheduler's discovery answer (exit status, stdout, stderr;
    None if none was asked for)."""

    work_dir: str
    runtime_ok: bool
    discovery: tuple[int, str, str] | None = None


class RemoteEnvironment:
    """Prepares what jobs need on the cluster; caches what is ready for this executor."""

    def __init__(
        self,
        config: ClusterConfig,
        transport: Transport,
        run: RunCommand,
        stats: Counter[str],
        *,
        python: str,
        build_environment: bool,
        work_dir: str,
        runtime_name: str = "",
    ) -> None:
        """``work_dir``: ``remote_work_dir``, absolute or not yet (``~/...``: the cluster
        resolves it in :meth:`check_python_and_layout`); ``runtime_name``: the worker
        runtime's file name in ``<work dir>/runtime`` ("": none is needed)."""
        self.config = config
        self.transport = transport
        self._run = run
        self.stats = stats
        self.python = python
        self.build_environment = build_environment
        self.work_dir = work_dir
        self.runtime_name = runtime_name
        self.worker_path = f"{work_dir}/runtime/{runtime_name}" if runtime_name else ""
        self._setup: Sequence[str] = setup_lines(config.module_loads, config.environment_variables)
        # (code hash, env hash) -> its preparation: concurrent submissions wait for one
        self._prepared: dict[tuple[str, str], asyncio.Future[tuple[str, str | None]]] = {}
        #: The work directory's key (from check_python_and_layout): environments are named
        #: by a keyed hash, so that their names (in every job's command line) reveal nothing
        #: of the values of environment_variables that went into them.
        self._key = b""

    async def check_python_and_layout(
        self, discovery: Sequence[str] | None = None, runtime_zip: bytes | None = None
    ) -> Layout:
        """One round trip: check the Python on the cluster (same minor version as here:
        pickled code depends on it); then check and create the work directories, read the
        work directory's key, and tell whether the worker runtime is already there (or
        put ``runtime_zip`` there, sent along on stdin, if it is missing); run the
        scheduler's ``discovery`` command meanwhile. Nothing is written into a directory
        that is refused. Sets :attr:`work_dir` and :attr:`worker_path` (absolute)."""
        q = shlex.quote
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        runtime = f"runtime/{self.runtime_name}" if self.runtime_name else ""
        argv = [self.python, "-c", _dircheck.BOOTSTRAP, here, dircheck_argument()]
        argv += [self.work_dir, runtime, "along" if runtime_zip else "-", *(discovery or [])]
        result = await self._run(
            ["sh", "-c", " ".join(map(q, argv)) + " 2>&1"], counts_as="setup", stdin=runtime_zip
        )
        where = self.transport.location
        found = re.search(r"^CLUSTRIX-PY (\d+\.\d+)$", result.stdout, re.MULTILINE)
        if found is None:
            detail = "\n".join(
                line for line in result.stdout.splitlines() if not line.startswith("CLUSTRIX-")
            ).strip()
            raise PackagingError(
                f"python_executable {self.python!r} does not run on {where}"
                f"{': ' + detail[-500:] if detail else ''}; set python_executable to the "
                f"cluster's Python (same minor version as here: {here})"
            )
        if found.group(1) != here:
            raise PackagingError(
                f"the cluster's Python ({self.python!r} on {where}) is {found.group(1)}, this "
                f"one is {here}: pickled code only runs on the same minor version; set "
                f"python_executable to a Python {here} on the cluster"
            )
        facts = _facts(result.stdout)
        if "UNSAFE" in facts:
            raise ConfigError(self._unsafe_message(facts["UNSAFE"]))
        if "CANNOT" in facts:
            cannot = facts["CANNOT"]
            raise TransportError(
                f"cannot create remote_work_dir {self.work_dir!r} on {where}: "
                f"{cannot['path']}: {cannot['error']}; choose a writable remote_work_dir"
            )
        if "DIRS-OK" not in facts:
            raise TransportError(
                f"checking remote_work_dir {self.work_dir!r} on {where} failed (exit status "
                f"{result.returncode}): {result.stdout.strip()[-1000:]}"
            )
        for made_private in facts.get("PRIVATE", []):
            log.warning(
                "clustrix: %s on %s was mode %s; made it private (0700)",
                made_private["path"],
                where,
                f"{made_private['mode'] & 0o7777:04o}",
            )
        self._key = bytes.fromhex(facts["KEY"])
        if "RUNTIME-WRITTEN" in facts:
            self.stats["packaging.runtime_uploads"] += 1
        if "RUNTIME-FAILED" in facts:  # the upload command says why, if it fails too
            log.info("clustrix: writing the worker runtime failed: %s", facts["RUNTIME-FAILED"])
        self.work_dir = facts["WORKDIR"]["path"]
        self.worker_path = f"{self.work_dir}/{runtime}" if runtime else ""
        answer = facts.get("DISCOVERY")
        return Layout(
            work_dir=self.work_dir,
            runtime_ok="RUNTIME-OK" in facts,
            discovery=(answer["rc"], answer["out"], answer["err"]) if answer else None,
        )

    async def upload_runtime(self, data: bytes) -> None:
        """Put the worker runtime zip at :attr:`worker_path`: one command, the zip on its
        stdin (SFTP would take a round trip per step: session, open, write, close,
        rename)."""
        result = await self._run(
            ["sh", "-c", UPLOAD_RUNTIME, "clustrix-runtime", self.worker_path], stdin=data
        )
        if not result.ok:
            raise TransportError(
                f"cannot write the worker runtime {self.worker_path} on "
                f"{self.transport.location} (exit status {result.returncode}): "
                f"{result.stderr.strip()[-500:]}"
            )
        self.stats["packaging.runtime_uploads"] += 1

    def _unsafe_message(self, fact: dict[str, Any]) -> str:
        """Why the work directory is refused, naming the directory, owner, mode and fix."""
        path, user, owner, mode = fact["path"], fact["user"], fact["owner"], fact["mode"]
        seen = f"{path} (owner {owner}, mode {mode & 0o7777:04o}, {stat.filemode(mode)})"
        kind = fact["kind"]
        fix = f"Set remote_work_dir to a private directory of {user}'s own, {_FIX}"
        if kind == "owner":
            why = (
                f"{seen} belongs to another user, who could change what your jobs import "
                f"and run code as {user}"
            )
        elif kind == "writable":
            why = (
                f"{seen} may be written by group or others: what they put there would run as {user}"
            )
            fix = f"Check what is in it, then 'chmod 700 {path}'; or s{fix[1:]}"
        elif kind in ("parent-owner", "link-owner"):
            why = (
                f"{seen}, on the way to it, belongs to {owner}, who could put a directory "
                "of their own in its place"
            )
        elif kind == "parent-writable":
            why = (
                f"{seen}, on the way to it, may be written by group or others and has no "
                "sticky bit: they could put a directory of their own in its place"
            )
        else:  # not-dir
            why = f"{seen} is not a directory"
        return (
            f"remote_work_dir {self.work_dir!r} on {self.transport.location} is not safe to "
            f"run code from: {why}. Nothing was written. {fix}"
        )

    def redact(self, text: str) -> str:
        """``text`` without the values of environment_variables (pip and shells may echo
        them into what becomes an error message)."""
        for name, value in self.config.environment_variables.items():
            if len(value) >= _MIN_REDACTED:
                text = text.replace(value, f"<environment_variables[{name!r}]>")
        return text

    async def prepare(self, plan: EnvironmentPlan | None) -> tuple[str, str | None]:
        """Make sure the plan's code and environment exist on the cluster, once per
        executor (concurrent submissions wait for the same preparation). Returns the Python
        to run and the code directory to put on PYTHONPATH."""
        if plan is None:
            return self.python, None
        env_hash = (
            plan.env_hash(self.python, self._setup, key=self._key) if self._needs_env(plan) else ""
        )
        key = (plan.code_hash, env_hash)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = asyncio.ensure_future(
                self._prepare_remote(plan, env_hash)
            )
        try:
            return await asyncio.shield(prepared)
        except BaseException:
            if self._prepared.get(key) is prepared and prepared.done():
                del self._prepared[key]  # a later submission tries again
            raise

    def _needs_env(self, plan: EnvironmentPlan) -> bool:
        return bool(self.build_environment and plan.requirements)

    async def _prepare_remote(self, plan: EnvironmentPlan, env_hash: str) -> tuple[str, str | None]:
        q = shlex.quote
        code_dir = f"{self.work_dir}/code/{plan.code_hash}" if plan.code_hash else None
        env_dir = f"{self.work_dir}/envs/{env_hash}" if env_hash else None
        checks = []
        if code_dir:
            checks.append(f"test -f {q(code_dir)}/.complete && echo CODE-OK")
        if env_dir:
            checks.append(f"test -f {q(env_dir)}/{READY_MARKER} && echo ENV-OK")
        if not checks:
            return self.python, None
        found = (await self._run(["sh", "-c", "\n".join([*checks, "exit 0"])], "setup")).stdout
        if code_dir and "CODE-OK" not in found:
            await self._upload_code(plan, code_dir)
        if env_dir and "ENV-OK" not in found:
            await self._build_env(plan, env_dir)
        return (f"{env_dir}/bin/python" if env_dir else self.python), code_dir

    async def _upload_code(self, plan: EnvironmentPlan, code_dir: str) -> None:
        q = shlex.quote
        tmp = f"{code_dir}.{uuid.uuid4().hex}"
        await self.transport.write_bytes(f"{tmp}.tar.gz", plan.archive, mode=0o600)
        # Unpack beside the final name, then rename: a half-unpacked archive is never used,
        # and a concurrent upload of the same hash simply loses the race. umask 077 and the
        # archive's own 0600: private for a user and for root (whose tar keeps the modes).
        script = (
            f'set -e; umask 077; tmp={q(tmp)}; mkdir -p "$tmp"; tar -xzf "$tmp.tar.gz" -C "$tmp"; '
            f'touch "$tmp/.complete"; rm -f "$tmp.tar.gz"; '
            f'mv -T "$tmp" {q(code_dir)} 2>/dev/null || rm -rf "$tmp"'
        )
        result = await self._run(["sh", "-c", script], "setup")
        if not result.ok:
            raise PackagingError(
                f"could not unpack the local code archive in {code_dir}: {result.stderr.strip()}"
            )
        self.stats["packaging.code_uploads"] += 1

    async def _build_env(self, plan: EnvironmentPlan, env_dir: str) -> None:
        requirements = f"{env_dir}.requirements.txt"
        await self.transport.write_bytes(
            requirements, ("\n".join(plan.requirements) + "\n").encode(), mode=0o600
        )
        timeout_s = self.config.env_build_timeout_s
        script = env_build_script(
            env_dir=env_dir,
            python=self.python,
            requirements_file=requirements,
            setup_lines=self._setup,
            timeout_s=int(timeout_s),
        )
        self.stats["commands.sh:env-build"] += 1
        # On stdin: the script exports the values of environment_variables.
        result = await self.transport.run(
            ["sh", "-c", RUN_STDIN, "clustrix-env-build"],
            stdin=script.encode(),
            timeout_s=timeout_s,
        )
        if not result.ok:
            raise PackagingError(
                f"building the environment {env_dir} on {self.transport.location} failed "
                f"(exit status {result.returncode}); requirements: "
                f"{', '.join(plan.requirements)}\n--- pip's output (tail) ---\n"
                f"{self.redact(result.stderr.strip()[-3000:])}"
            )
        if "CLUSTRIX-ENV built" in result.stdout:
            self.stats["packaging.env_builds"] += 1


def _facts(stdout: str) -> dict[str, Any]:
    """The ``CLUSTRIX-<WORD> [json]`` lines of the directory check (see _dircheck), by word;
    ``PRIVATE`` may come several times (a list), the others once."""
    facts: dict[str, Any] = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if not word.startswith("CLUSTRIX-"):
            continue
        word = word[len("CLUSTRIX-") :]
        if word == "KEY":
            facts[word] = rest.strip()
        elif word == "PRIVATE":
            facts.setdefault(word, []).append(json.loads(rest))
        elif rest.startswith("{"):
            facts[word] = json.loads(rest)
        else:
            facts[word] = rest
    return facts
