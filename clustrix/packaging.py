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
* the standard library (``sys.stdlib_module_names``) needs nothing.

Pure analysis and rendering: it never talks to a cluster (the engine runs what it renders).
"""

from __future__ import annotations

import ast
import dis
import functools
import hashlib
import hmac
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shlex
import sys
import tarfile
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from .errors import PackagingError

__all__ = ["EnvironmentPlan", "LocalModule", "Packager", "env_build_script"]

#: clustrix travels in the worker runtime zip, never as a requirement or as user code.
_RUNTIME_PACKAGES = frozenset({"clustrix", "cloudpickle"})
#: How deep the analysis walks into argument containers and referenced functions.
_MAX_OBJECTS = 2000
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


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


# ---------------------------------------------------------------------------- classification
@functools.cache
def _distributions_of() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _dist_is_local(dist_name: str) -> bool:
    """True for a distribution installed from a local directory (editable/development)."""
    try:
        text = importlib.metadata.distribution(dist_name).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not text:
        return False
    info = json.loads(text)
    return bool(info.get("dir_info", {}).get("editable")) or str(info.get("url", "")).startswith(
        "file:"
    )


def _stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _module_path(top: str) -> Path | None:
    """Where the top-level module ``top`` lives (package dir or file), None if nowhere."""
    module = sys.modules.get(top)
    spec = getattr(module, "__spec__", None) if module is not None else None
    if spec is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return Path(locations[0]) if locations else None
    if spec.origin and spec.origin not in ("built-in", "frozen") and spec.origin.endswith(".py"):
        return Path(spec.origin)
    return None


def _pin(dist_name: str, pins: dict[str, str]) -> None:
    """Pin a distribution and, recursively, the installed distributions it requires."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return
    name = dist.metadata["Name"]
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in pins or key in _RUNTIME_PACKAGES:
        return
    pins[key] = f"{name}=={dist.version}"
    for requirement in dist.requires or []:
        required = _required_name(requirement)
        if required:
            _pin(required, pins)  # only what is installed here gets pinned


def _required_name(requirement: str) -> str | None:
    """The distribution a requirement names, or None if its marker excludes it here
    (optional extras, other Python versions or platforms)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # no 'packaging' here: skip extras, keep the rest
        if "extra ==" in requirement.replace("extra==", "extra =="):
            return None
        match = _REQ_NAME.match(requirement)
        return match.group(1) if match else None
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return None
    if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
        return None
    return str(parsed.name)


# ---------------------------------------------------------------------------- what code needs
def _imports_in_code(code: types.CodeType) -> Iterator[str]:
    """Absolute module names imported by a code object and the code nested in it."""
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _imports_in_code(const)


def _names_in_code(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names_in_code(const)


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


def _by_reference(obj: Any) -> bool:
    """Whether cloudpickle pickles ``obj`` by reference (the node must import its module)."""
    should = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)
    if should is None:  # pragma: no cover - very old/new cloudpickle
        return getattr(obj, "__module__", "__main__") != "__main__"
    try:
        return bool(should(obj))
    except Exception:
        return False


def _modules_needed(roots: Iterable[Any]) -> set[str]:
    """Module names the node must import to unpickle and run ``roots``."""
    needed: set[str] = set()
    seen: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < _MAX_OBJECTS:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            needed.add(obj.__name__)
            continue
        if isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if isinstance(obj, functools.partial):
            stack.extend([obj.func, *obj.args, *obj.keywords.values()])
            continue
        if isinstance(obj, types.MethodType):
            stack.extend([obj.__func__, obj.__self__])
            continue
        if isinstance(obj, (types.FunctionType, type)):
            module = getattr(obj, "__module__", None)
            if _by_reference(obj):
                if module:
                    needed.add(module)
                continue
            if isinstance(obj, type):  # a class pickled by value: its bases and methods
                stack.extend(obj.__bases__)
                stack.extend(v for v in vars(obj).values() if callable(v))
                continue
            code = obj.__code__
            needed.update(_imports_in_code(code))
            scope = obj.__globals__
            stack.extend(scope[n] for n in set(_names_in_code(code)) if n in scope)
            stack.extend(c.cell_contents for c in obj.__closure__ or () if _cell_filled(c))
            stack.extend((obj.__defaults__ or ()) + tuple((obj.__kwdefaults__ or {}).values()))
            continue
        # an instance: its class (and what its class needs)
        stack.append(type(obj))
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(state.values())
    return needed


def _cell_filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- the packager
class Packager:
    """Plans environments; caches file contents by (path, mtime, size)."""

    def __init__(
        self, *, exclude_modules: Sequence[str] = (), extra_requirements: Sequence[str] = ()
    ) -> None:
        self.exclude = frozenset(exclude_modules)
        self.extra_requirements = tuple(extra_requirements)
        self._sources: dict[Path, tuple[tuple[int, int], bytes, set[str]]] = {}

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
        """What ``fn(*args, **kwargs)`` needs on the node."""
        todo = sorted(_modules_needed([fn, *args, *(kwargs or {}).values()]))
        pins: dict[str, str] = {}
        local: dict[str, LocalModule] = {}
        files: dict[str, bytes] = {}
        missing: set[str] = set()
        done: set[str] = set()
        while todo:
            name = todo.pop()
            top = name.partition(".")[0]
            if top in done or not top or top == "__main__":
                continue
            done.add(top)
            if _stdlib(top) or top in self.exclude:
                continue
            dists = _distributions_of().get(top, [])
            if top in _RUNTIME_PACKAGES:
                for dist in dists:  # the user's code imports clustrix: it needs its deps
                    for req in importlib.metadata.requires(dist) or []:
                        required = _required_name(req)
                        if required:
                            _pin(required, pins)
                continue
            if dists and not all(_dist_is_local(d) for d in dists):
                for dist in dists:
                    _pin(dist, pins)
                continue
            path = _module_path(top)
            if path is None:
                module_object = sys.modules.get(top)
                if module_object is not None and getattr(module_object, "__file__", None) is None:
                    # code with no source to ship (built at run time): send it by value
                    cloudpickle.register_pickle_by_value(module_object)
                else:
                    missing.add(top)
                continue
            module = LocalModule(top, path)
            local[top] = module
            for arcname, file_path in module.files():
                data, imports = self._source(file_path, _dotted(arcname))
                files[arcname] = data
                todo.extend(i for i in imports if i.partition(".")[0] not in done)
        for requirement in self.extra_requirements:
            match = _REQ_NAME.match(requirement)
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
