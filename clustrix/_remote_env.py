"""The cluster side of packaging: the work directory, the Python check, the user's code
archive and the virtual environment, each prepared at most once per executor.

It runs commands through the engine's ``run`` (so they are counted) and moves files through
the transport; it knows nothing of schedulers or futures.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from .config import ClusterConfig
from .errors import PackagingError, TransportError
from .packaging import READY_MARKER, EnvironmentPlan, env_build_script
from .schedulers.base import setup_lines
from .transports.base import CommandResult, Transport

__all__ = ["RemoteEnvironment"]

RunCommand = Callable[..., Awaitable[CommandResult]]
_VERSION_PROBE = 'import sys; print("CLUSTRIX-PY %d.%d" % sys.version_info[:2])'


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
        worker_path: str,
    ) -> None:
        self.config = config
        self.transport = transport
        self._run = run
        self.stats = stats
        self.python = python
        self.build_environment = build_environment
        self.work_dir = work_dir
        self.worker_path = worker_path
        self._setup: Sequence[str] = setup_lines(config.module_loads, config.environment_variables)
        # (code hash, env hash) -> its preparation: concurrent submissions wait for one
        self._prepared: dict[tuple[str, str], asyncio.Future[tuple[str, str | None]]] = {}

    async def check_python_and_layout(self) -> bool:
        """One round trip: create the work directories, check the Python on the cluster
        (same minor version as here: pickled code depends on it), and whether the worker
        runtime is already there (returned)."""
        q = shlex.quote
        dirs = " ".join(q(f"{self.work_dir}/{d}") for d in ("jobs", "runtime", "code", "envs"))
        script = "\n".join(
            [
                f"umask 077; mkdir -p {dirs} || exit 3",
                f"{q(self.python)} -c {q(_VERSION_PROBE)} 2>&1 || echo CLUSTRIX-PY-MISSING",
                f"test -f {q(self.worker_path)} && echo CLUSTRIX-RUNTIME-OK; exit 0",
            ]
        )
        result = await self._run(["sh", "-c", script], counts_as="setup")
        where = self.transport.location
        if result.returncode == 3:
            raise TransportError(
                f"cannot create remote_work_dir {self.work_dir!r} on {where}: "
                f"{result.stderr.strip()}; choose a writable remote_work_dir"
            )
        found = re.search(r"CLUSTRIX-PY (\d+\.\d+)", result.stdout)
        if found is None:
            detail = "\n".join(
                line for line in result.stdout.splitlines() if not line.startswith("CLUSTRIX-")
            ).strip()
            raise PackagingError(
                f"python_executable {self.python!r} does not run on {where}"
                f"{': ' + detail[-500:] if detail else ''}; set python_executable to the "
                "cluster's Python (same minor version as here: "
                f"{sys.version_info.major}.{sys.version_info.minor})"
            )
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        if found.group(1) != here:
            raise PackagingError(
                f"the cluster's Python ({self.python!r} on {where}) is {found.group(1)}, this "
                f"one is {here}: pickled code only runs on the same minor version; set "
                f"python_executable to a Python {here} on the cluster"
            )
        return "CLUSTRIX-RUNTIME-OK" in result.stdout

    async def prepare(self, plan: EnvironmentPlan | None) -> tuple[str, str | None]:
        """Make sure the plan's code and environment exist on the cluster, once per
        executor (concurrent submissions wait for the same preparation). Returns the Python
        to run and the code directory to put on PYTHONPATH."""
        if plan is None:
            return self.python, None
        env_hash = plan.env_hash(self.python, self._setup) if self._needs_env(plan) else ""
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
        # and a concurrent upload of the same hash simply loses the race.
        script = (
            f'set -e; tmp={q(tmp)}; mkdir -p "$tmp"; tar -xzf "$tmp.tar.gz" -C "$tmp"; '
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
        result = await self.transport.run(["sh", "-c", script], timeout_s=timeout_s)
        if not result.ok:
            raise PackagingError(
                f"building the environment {env_dir} on {self.transport.location} failed "
                f"(exit status {result.returncode}); requirements: "
                f"{', '.join(plan.requirements)}\n--- pip's output (tail) ---\n"
                f"{result.stderr.strip()[-3000:]}"
            )
        if "CLUSTRIX-ENV built" in result.stdout:
            self.stats["packaging.env_builds"] += 1
