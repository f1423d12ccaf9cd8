"""The dependency packager: what a call needs on the node, and how to recreate it there.

For a callable and its arguments it finds the modules the node must import:

* a callable that cloudpickle pickles *by reference* needs its module; one pickled *by value*
  (``__main__``, notebook cells, lambdas, nested functions) needs only what its code refers
  to: the globals it names, its closure, and the modules its bytecode imports;
* the user's own modules (on ``sys.path``, owned by no installed distribution, or installed
  in editable/development mode) are followed through their imports (AST analysis of their
  source) and shipped as a content-addressed archive, imported by name on the node, so
  their classes stay the same classes;
* installed distributions are pinned to the exact installed version, with the
  distributions they require, for a virtual environment built once per content hash;
* the standard library (``sys.stdlib_module_names``) needs nothing;
* clustrix and cloudpickle travel in the worker runtime zip; user code that imports a module
  of clustrix's that needs more than the zip (``from clustrix import ClusterConfig``: pydantic)
  gets clustrix's own requirements pinned; :mod:`clustrix.checkpoint` or a Checkpointable
  subclass needs nothing.

What a call names comes from its live objects and from its pickled payload
(:mod:`clustrix._payload_scan`): :meth:`Packager.plan` reads the former before the call is
pickled, :meth:`Packager.add_payloads` the latter after.

Pure analysis and rendering: it never talks to a cluster (the engine runs what it renders).
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import io
import json
import os
import re
import shlex
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from ._payload_scan import modules_in_pickle, modules_of_objects
from ._requirements import (
    REQ_NAME,
    RUNTIME_PACKAGES,
    clustrix_needs_dependencies,
    dist_is_local,
    distributions_of,
    module_path,
    pin,
    pin_clustrix_dependencies,
    stdlib,
)
from ._serialize import Payload
from .errors import PackagingError

__all__ = ["EnvironmentPlan", "LocalModule", "Packager", "env_build_script"]

#: The pickled arguments of a submission scanned by add_payloads: every call's while their
#: bytes add up to at most this (at least the first call's). A map of 10,000 calls of small
#: arguments is read whole (40-60 ms, a third of pickling it); the worst case, arguments
#: dense with small objects (floats in lists), stops after ~0.1 s. Measured, not guessed.
_SCAN_BUDGET_BYTES = 16 * 2**20
#: Distinct pickled functions whose scan is remembered (a burst of submit() pickles the same
#: function again for every call); functions bigger than _SCAN_CACHE_MAX_BYTES are not.
_SCAN_CACHE_SIZE = 256
_SCAN_CACHE_MAX_BYTES = 2**20


@dataclass(frozen=True)
class LocalModule:
    """A top-level module or package of the user's own code, shipped as source."""

    name: str
    path: Path  # a package directory or a single .py file

    def files(self) -> Iterator[tuple[str, Path]]:
        """``(archive name, path)`` of every Python source file it consists of."""
        if self.path.is_file():
            yield self.path.name, self.path
            return
        for root, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(names):
                if name.endswith((".py", ".pyi")):
                    full = Path(root, name)
                    yield f"{self.name}/{full.relative_to(self.path).as_posix()}", full


@dataclass(frozen=True)
class EnvironmentPlan:
    """What a call needs on the node; see :meth:`summary` for a readable form."""

    python_version: str  # "3.11"
    requirements: tuple[str, ...]  # pinned, sorted: "numpy==1.26.4"
    local_modules: tuple[LocalModule, ...]
    missing: tuple[str, ...]  # imported by the user's code but found nowhere here
    code_hash: str  # content hash of the local modules' files ("" if there are none)
    _archive: bytes = field(default=b"", repr=False, compare=False)
    #: The module names it was planned from, and the top-level names it covers (what they
    #: import included): add_payloads plans again only for a name beyond these.
    _roots: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _covered: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _clustrix_dependencies: bool = field(default=False, repr=False, compare=False)

    @property
    def archive(self) -> bytes:
        """The local code as a deterministic tar archive."""
        return self._archive

    def env_hash(self, python: str, setup: Sequence[str] = (), *, key: bytes = b"") -> str:
        """Hash naming the virtual environment: base Python, requirements, setup lines.

        With ``key`` (the work directory's secret) an HMAC: the name shows up in every job's
        command line, and a plain hash of setup lines holding a secret value would let
        anyone test guesses of that value against it."""
        text = json.dumps([self.python_version, python, list(self.requirements), list(setup)])
        if key:
            return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:16]
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """What will be shipped and installed, for humans."""
        lines = [f"Python {self.python_version}"]
        lines.append("requirements (pinned from this environment):")
        lines += [f"  {r}" for r in self.requirements] or ["  (none)"]
        lines.append(f"local code (archive {self.code_hash or '-'}):")
        lines += [f"  {m.name}  <- {m.path}" for m in self.local_modules] or ["  (none)"]
        if self.missing:
            lines.append("imported but not found here (the node must provide them):")
            lines += [f"  {name}" for name in self.missing]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------- what code needs
def _imports_in_source(path: Path, module_name: str) -> set[str]:
    """Modules imported anywhere in a source file (relative imports made absolute)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise PackagingError(f"cannot read local module {module_name} at {path}: {exc}") from exc
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return found


# ---------------------------------------------------------------------------- the packager
class Packager:
    """Plans environments; caches file contents by (path, mtime, size)."""

    def __init__(
        self, *, exclude_modules: Sequence[str] = (), extra_requirements: Sequence[str] = ()
    ) -> None:
        self.exclude = frozenset(exclude_modules)
        self.extra_requirements = tuple(extra_requirements)
        self._sources: dict[Path, tuple[tuple[int, int], bytes, set[str]]] = {}
        self._scanned: dict[bytes, frozenset[str]] = {}  # pickled function -> its modules
        self._by_value: set[str] = set()  # modules registered with cloudpickle to go by value

    def _source(self, path: Path, module_name: str) -> tuple[bytes, set[str]]:
        """A file's bytes and (for Python files) its imports, re-read when it changes."""
        try:
            st = path.stat()
        except OSError as exc:
            raise PackagingError(f"cannot read local module {module_name}: {exc}") from exc
        key = (st.st_mtime_ns, st.st_size)
        cached = self._sources.get(path)
        if cached is None or cached[0] != key:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise PackagingError(f"cannot read {path} ({module_name}): {exc}") from exc
            imports = _imports_in_source(path, module_name) if path.suffix == ".py" else set()
            cached = (key, data, imports)
            self._sources[path] = cached
        return cached[1], cached[2]

    def plan(
        self, fn: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> EnvironmentPlan:
        """What ``fn(*args, **kwargs)`` needs on the node, from its live objects.

        Call it before pickling the call: a module with no source file (built at run time)
        is registered with cloudpickle to travel by value.
        """
        names = modules_of_objects([fn, *args, *(kwargs or {}).values()])
        return self._plan_modules(frozenset(names), register_by_value=True)

    def add_payloads(self, plan: EnvironmentPlan, payloads: Sequence[Payload]) -> EnvironmentPlan:
        """``plan`` with what the pickled calls name (:func:`modules_in_pickle`): a class
        or function of a local module inside an argument, whatever holds it.

        The function's bytes are read once per distinct function; the arguments' of every
        call while they add up to ``_SCAN_BUDGET_BYTES`` (at least the first call's). Returns
        ``plan`` itself when they name nothing it does not cover (the usual case).
        """
        names: set[str] = set()
        for function in {id(f): f for f, _ in payloads}.values():
            names.update(self._function_modules(function))
        budget = _SCAN_BUDGET_BYTES
        for _, arguments in payloads:
            if budget <= 0:
                break
            names.update(modules_in_pickle(arguments))
            budget -= len(arguments)
        if all(self._covers(plan, name) for name in names):
            return plan
        return self._plan_modules(plan._roots | names, register_by_value=False)

    def _covers(self, plan: EnvironmentPlan, name: str) -> bool:
        top = name.partition(".")[0]
        if top == "clustrix":  # what of clustrix is named matters, not only that it is
            return (
                plan._clustrix_dependencies
                or top in self.exclude
                or not clustrix_needs_dependencies(name)
            )
        return (  # nothing to plan again for what needs nothing (most of what pickles name)
            top in plan._covered
            or top in ("", "__main__")
            or top in RUNTIME_PACKAGES
            or top in self.exclude
            or stdlib(top)
        )

    def _function_modules(self, data: bytes) -> frozenset[str]:
        cached = self._scanned.get(data)
        if cached is None:
            cached = modules_in_pickle(data)
            if len(data) <= _SCAN_CACHE_MAX_BYTES:
                if len(self._scanned) >= _SCAN_CACHE_SIZE:
                    self._scanned.clear()
                self._scanned[data] = cached
        return cached

    def _plan_modules(self, roots: frozenset[str], *, register_by_value: bool) -> EnvironmentPlan:
        todo = sorted(roots)
        pins: dict[str, str] = {}
        local: dict[str, LocalModule] = {}
        files: dict[str, bytes] = {}
        missing: set[str] = set()
        done: set[str] = set()
        clustrix_dependencies = False
        while todo:
            name = todo.pop()
            top = name.partition(".")[0]
            if (  # each name of clustrix counts: what of it is used, not only that it is
                top == "clustrix"
                and not clustrix_dependencies
                and top not in self.exclude
                and clustrix_needs_dependencies(name)
            ):
                pin_clustrix_dependencies(pins)
                clustrix_dependencies = True
            if top in done or not top or top == "__main__":
                continue
            done.add(top)
            if stdlib(top) or top in self.exclude or top in RUNTIME_PACKAGES:
                continue
            dists = distributions_of().get(top, [])
            if dists and not all(dist_is_local(d) for d in dists):
                for dist in dists:
                    pin(dist, pins)
                continue
            path = module_path(top)
            if path is None:
                module_object = sys.modules.get(top)
                if top in self._by_value:
                    continue
                if (
                    register_by_value
                    and module_object is not None
                    and getattr(module_object, "__file__", None) is None
                ):
                    # code with no source to ship (built at run time): send it by value
                    cloudpickle.register_pickle_by_value(module_object)
                    self._by_value.add(top)
                else:  # nowhere here; or named only by a pickle, too late to send by value
                    missing.add(top)
                continue
            module = LocalModule(top, path)
            local[top] = module
            for arcname, file_path in module.files():
                data, imports = self._source(file_path, _dotted(arcname))
                files[arcname] = data
                seen = done - {"clustrix"}  # (each module of clustrix's counts)
                todo.extend(i for i in imports if i.partition(".")[0] not in seen)
        for requirement in self.extra_requirements:
            match = REQ_NAME.match(requirement)
            key = re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement
            pins[key] = requirement.strip()
        code_hash, archive = _archive(files) if files else ("", b"")
        return EnvironmentPlan(
            python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
            requirements=tuple(sorted(pins.values(), key=str.lower)),
            local_modules=tuple(sorted(local.values(), key=lambda m: m.name)),
            missing=tuple(sorted(missing)),
            code_hash=code_hash,
            _archive=archive,
            _roots=roots,
            _covered=frozenset(done),
            _clustrix_dependencies=clustrix_dependencies,
        )


def _dotted(arcname: str) -> str:
    parts = arcname.removesuffix(".pyi").removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _archive(files: dict[str, bytes]) -> tuple[str, bytes]:
    """A deterministic tar of ``files`` and the hash of its content."""
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6
    ) as tar:
        for name in sorted(files):
            data = files[name]
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(name)
            # 0600: a root's tar keeps the archive's modes whatever the umask
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    # gzip stores no name or time for a fileobj: the bytes depend on the content only
    return digest.hexdigest()[:16], buffer.getvalue()


# ---------------------------------------------------------------------------- remote scripts
READY_MARKER = ".clustrix-ready"


def env_build_script(
    *,
    env_dir: str,
    python: str,
    requirements_file: str,
    setup_lines: Sequence[str],
    timeout_s: int,
) -> str:
    """The ``sh`` script that builds a virtual environment once, under a lock.

    Concurrent builders (two executors, two processes) serialise on ``flock``; whoever gets
    the lock second finds the ready marker and does nothing. The marker is written last,
    so a failed build is never reused. Prints ``CLUSTRIX-ENV cached`` or ``... built``;
    every real build appends a line to ``<env_dir>.builds``. Everything it creates is
    private (umask 077: venv and pip honour it, for root too). It exports the values of
    ``environment_variables`` (``setup_lines``): run it from stdin, never as ``sh -c``.
    """
    q = shlex.quote
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f"env_dir={q(env_dir)}",
            'exec 9>"$env_dir.lock"',
            f"flock -w {int(timeout_s)} 9 || {{ echo 'timed out waiting for the build lock' >&2;"
            " exit 75; }",
            f'if [ -f "$env_dir/{READY_MARKER}" ]; then echo "CLUSTRIX-ENV cached"; exit 0; fi',
            'rm -rf "$env_dir"',
            *setup_lines,
            f'{q(python)} -m venv "$env_dir" >"$env_dir.log" 2>&1 ||',
            '  { cat "$env_dir.log" >&2; exit 1; }',
            '"$env_dir/bin/python" -m pip install --disable-pip-version-check --no-input -q \\',
            f'  -r {q(requirements_file)} >>"$env_dir.log" 2>&1 ||',
            '  { tail -c 4000 "$env_dir.log" >&2; exit 1; }',
            'date -u +"%Y-%m-%dT%H:%M:%SZ built by $$" >> "$env_dir.builds"',
            f'touch "$env_dir/{READY_MARKER}"',
            'echo "CLUSTRIX-ENV built"',
        ]
    )
