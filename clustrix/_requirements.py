"""What a top-level module is here: the standard library's, the worker runtime's, an installed
distribution's (pinned with what it requires), or the user's own code (a path to ship).

Classification against this interpreter's installation (``importlib.metadata``, ``sys.path``);
knows nothing of pickles, archives or clusters.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

__all__ = [
    "REQ_NAME",
    "RUNTIME_PACKAGES",
    "clustrix_needs_dependencies",
    "dist_is_local",
    "distributions_of",
    "module_path",
    "pin",
    "pin_clustrix_dependencies",
    "required_name",
    "stdlib",
]

#: clustrix travels in the worker runtime zip, never as a requirement or as user code.
RUNTIME_PACKAGES = frozenset({"clustrix", "cloudpickle"})
REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_CLUSTRIX_DIR = Path(__file__).resolve().parent


@functools.cache
def distributions_of() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def dist_is_local(dist_name: str) -> bool:
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


def stdlib(top: str) -> bool:
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def module_path(top: str) -> Path | None:
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


def pin(dist_name: str, pins: dict[str, str]) -> None:
    """Pin a distribution and, recursively, the installed distributions it requires."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return
    name = dist.metadata["Name"]
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in pins or key in RUNTIME_PACKAGES:
        return
    pins[key] = f"{name}=={dist.version}"
    for requirement in dist.requires or []:
        required = required_name(requirement)
        if required:
            pin(required, pins)  # only what is installed here gets pinned


def required_name(requirement: str) -> str | None:
    """The distribution a requirement names, or None if its marker excludes it here
    (optional extras, other Python versions or platforms)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # no 'packaging' here: skip extras, keep the rest
        if "extra ==" in requirement.replace("extra==", "extra =="):
            return None
        match = REQ_NAME.match(requirement)
        return match.group(1) if match else None
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return None
    if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
        return None
    return str(parsed.name)


@functools.cache
def clustrix_needs_dependencies(name: str) -> bool:
    """Whether importing clustrix's module ``name`` on the node needs clustrix's own
    requirements, the worker runtime zip holding only clustrix and cloudpickle.

    Bare ``clustrix`` tells nothing of what is used of it (its attributes load the executor,
    the config...): yes. A submodule: whether it, or a clustrix module it imports (followed
    through their source, not into ``if TYPE_CHECKING:`` blocks), imports anything beyond
    the standard library, clustrix and cloudpickle.
    """
    if name == "clustrix":
        return True
    todo, seen = [name], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        if parts[0] != "clustrix":
            if not stdlib(parts[0]) and parts[0] not in RUNTIME_PACKAGES:
                return True
            continue
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        path = _CLUSTRIX_DIR.joinpath(*parts[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.is_file():
            return True  # not a module of this clustrix: assume the worst
        todo.extend(_runtime_imports(path, module))
    return False


def _runtime_imports(path: Path, module: str) -> set[str]:
    """The modules a clustrix source file imports when it runs: not those of ``if
    TYPE_CHECKING:`` blocks; ``from pkg import name`` imports ``pkg.name`` if it is one."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_bytes(), filename=str(path))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, node.module] if node.module else up)
            found.add(base)
            for alias in node.names:
                sub = _CLUSTRIX_DIR.joinpath(*f"{base}.{alias.name}".split(".")[1:])
                if base.partition(".")[0] == "clustrix" and (
                    sub.is_dir() or sub.with_suffix(".py").exists()
                ):
                    found.add(f"{base}.{alias.name}")
        stack.extend(ast.iter_child_nodes(node))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: true for type checkers only."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def pin_clustrix_dependencies(pins: dict[str, str]) -> None:
    """Pin what clustrix's own distribution requires (its extras excluded)."""
    try:
        requirements = importlib.metadata.requires("clustrix") or []
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path
        return
    for requirement in requirements:
        required = required_name(requirement)
        if required:
            pin(required, pins)
