"""Sphinx extension of the clustrix docs: the pages that are generated, never written by hand.

Directives (usable in MyST pages as ```` ```{clustrix-config} ````):

``clustrix-config``
    The configuration reference, from ``ClusterConfig.model_fields`` at build time: every
    field's name, type, default, bounds, description, its ``CLUSTRIX_<NAME>`` environment
    variable and its key in a config file. What is said about the environment is checked
    against :func:`clustrix.config.config_from_env`, the file keys against
    :func:`clustrix.config.read_config_file`: if clustrix changes, the page changes, or the
    build fails.
``clustrix-config-yaml``
    A config file holding every field at its default, checked by reading it back.
``clustrix-config-sources``
    Where a configuration comes from and in which order, found by building configurations
    from a file, variables and arguments (the build fails if the order changed).
``clustrix-backends``
    The table of ``cluster_type`` names, from :data:`clustrix.backends.BUILTIN_BACKENDS`.
``clustrix-backends-status``
    The same as prose: available, coming next (``:coming:``, while still planned), not yet.
``clustrix-cli``
    The ``--help`` text of the ``clustrix`` command (or of one subcommand).
``clustrix-raises``
    Runs the Python code it holds, which must raise, and shows the code and the error
    exactly as Python prints its last line (the troubleshooting page).

Checks (each failure is a warning, so an error under ``-W``):

- every name of ``clustrix.__all__`` is documented in the API reference;
- every ``python`` code block of every page parses, every name it imports from clustrix
  (``from clustrix import X``, ``clustrix.X``) exists, and so does every attribute it uses of
  a variable named ``ex``/``executor`` (a ClusterExecutor), ``future`` or ``config``.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import re
import tempfile
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- small helpers
def format_type(annotation: Any) -> str:
    """A field's annotation as a reader writes it: ``float | None``, ``list[str]``."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(format_type(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(format_type(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def format_bounds(metadata: list[Any]) -> str:
    """``>= 1, <= 65535`` from pydantic's annotated-types metadata."""
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = []
    for item in metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def literal(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def paragraph(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def table(headers: list[str], rows: list[list[nodes.Element]], widths: list[int]) -> nodes.table:
    """A docutils table: one header row, cells given as nodes."""
    group = nodes.tgroup(cols=len(headers))
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for header in headers:
        row += nodes.entry("", paragraph(header))
    head += row
    group += head
    body = nodes.tbody()
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            row += nodes.entry("", cell)
        body += row
    group += body
    result = nodes.table()
    result += group
    return result


# ----------------------------------------------------------------- the configuration model
def note_generated(env: Any) -> None:
    """This page shows what the code says now: read it again on every build, even an
    incremental one in which its source did not change."""
    if not hasattr(env, "clustrix_generated"):
        env.clustrix_generated = set()
    env.clustrix_generated.add(env.docname)


def generated_outdated(
    app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    return sorted(getattr(env, "clustrix_generated", set()) - removed)


def generated_purge(app: Sphinx, env: Any, docname: str) -> None:
    getattr(env, "clustrix_generated", set()).discard(docname)


def generated_merge(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    if not hasattr(env, "clustrix_generated"):
        env.clustrix_generated = set()
    env.clustrix_generated |= getattr(other, "clustrix_generated", set()) & set(docnames)


class ConfigField:
    """What the docs say about one field of ``ClusterConfig``, each fact checked."""

    def __init__(self, name: str, info: Any) -> None:
        from clustrix.config import ENV_PREFIX, Resources

        self.name = name
        self.info = info
        self.type = format_type(info.annotation)
        self.default = info.get_default(call_default_factory=True)
        self.bounds = format_bounds(list(info.metadata))
        self.description = info.description or ""
        self.per_call = name in Resources.model_fields
        self.env = ENV_PREFIX + name.upper()
        self.yaml_default = _defaults_as_json()[name]
        self.env_forms = self._env_forms()

    def _env_forms(self) -> list[tuple[str, str]]:
        """``(example, what it means)`` for the environment variable, found by asking
        :func:`clustrix.config.config_from_env` rather than by reading its code."""
        from clustrix.config import config_from_env
        from clustrix.errors import ConfigError

        def parsed(value: str, var: str | None = None) -> Any:
            return config_from_env({var or self.env: value}).get(self.name, KeyError)

        try:
            words = parsed("a, b")
        except ConfigError:  # refused as not a JSON object: a mapping field
            if parsed("v", f"{self.env}__KEY") != {"KEY": "v"} or parsed('{"KEY": "value"}') != {
                "KEY": "value"
            }:
                raise ValueError(f"{self.env}: not the mapping forms the page shows") from None
            return [
                (f"{self.env}__<KEY>=value", "sets one key, upper-cased; the file's others stay"),
                (f'{self.env}=\'{{"KEY": "value"}}\'', "or the whole mapping as JSON"),
            ]
        if words is KeyError:
            raise ValueError(f"{self.env} does not set the field {self.name}")
        if words == ["a", "b"]:  # a list field
            if parsed('["a b", "c"]') != ["a b", "c"]:
                raise ValueError(f"{self.env} does not take a JSON list")
            return [
                (f"{self.env}=a,b", "comma-separated words"),
                (f'{self.env}=\'["a", "b"]\'', "or a JSON list"),
            ]
        if words != "a, b":
            raise ValueError(f"{self.env} does not pass its text on as the value")
        return [(self.env, "its text, converted and validated as the field")]

    def default_text(self) -> str:
        if self.name == "password":
            return "None"
        return repr(str(self.default) if isinstance(self.default, Path) else self.default)

    def yaml_line(self) -> str:
        return yaml.safe_dump({self.name: self.yaml_default}, default_flow_style=True).strip()[1:-1]


@functools.cache
def _defaults_as_json() -> dict[str, Any]:
    from clustrix.config import ClusterConfig

    # model_construct: the defaults alone, whatever sources a ClusterConfig() may read
    return ClusterConfig.model_construct().model_dump(mode="json")


def config_fields(group: str) -> list[ConfigField]:
    from clustrix.config import ClusterConfig, Resources

    names = [
        name
        for name in ClusterConfig.model_fields
        if group == "all" or (name in Resources.model_fields) == (group == "resources")
    ]
    return [ConfigField(name, ClusterConfig.model_fields[name]) for name in names]


def config_anchor(name: str) -> str:
    return f"config-{name.replace('_', '-')}"


class ConfigDirective(SphinxDirective):
    """``{clustrix-config} resources|connection|summary``: fields of ``ClusterConfig``.

    ``resources``: the fields that are also per call (``Resources``); ``connection``: the
    others; ``summary``: one table of all of them, linking to their sections.
    """

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        kind = self.arguments[0]
        if kind not in ("resources", "connection", "summary"):
            raise self.error(f"clustrix-config: unknown group {kind!r}")
        try:
            fields = config_fields("all" if kind == "summary" else kind)
        except ValueError as exc:  # a fact the page would state is not true
            raise self.error(f"clustrix-config: {exc}") from exc
        if kind == "summary":
            return [self._summary(fields)]
        return [self._section(field) for field in fields]

    def _summary(self, fields: list[ConfigField]) -> nodes.table:
        rows = []
        for field in fields:
            link = nodes.reference("", "", literal(field.name), refid=config_anchor(field.name))
            rows.append(
                [
                    paragraph(link),
                    paragraph(literal(field.type)),
                    paragraph(literal(field.default_text())),
                    paragraph(literal(field.env)),
                ]
            )
        return table(["field", "type", "default", "environment variable"], rows, [26, 18, 16, 34])

    def _section(self, field: ConfigField) -> nodes.section:
        section = nodes.section(ids=[config_anchor(field.name)], names=[field.name])
        section += nodes.title("", "", literal(field.name))
        section += paragraph(field.description)
        facts: list[nodes.Node | str] = [
            nodes.strong("", "Type "),
            literal(field.type),
            ", ",
            nodes.strong("", "default "),
            literal(field.default_text()),
        ]
        if field.bounds:
            facts += [", ", nodes.strong("", "allowed "), literal(field.bounds)]
        env: list[nodes.Node | str] = [nodes.strong("", "Environment: ")]
        for i, (example, meaning) in enumerate(field.env_forms):
            env += [("; " if i else ""), literal(example), f" ({meaning})"]
        items = [facts, env, [nodes.strong("", "Config file: "), literal(field.yaml_line())]]
        if field.per_call:
            items.append(
                [
                    nodes.strong("", "Per call: "),
                    literal(f"ex.options({field.name}=…)"),
                    ", ",
                    literal(f"@cluster({field.name}=…)"),
                ]
            )
        bullets = nodes.bullet_list()
        for item in items:
            bullets += nodes.list_item("", paragraph(*item))
        section += bullets
        return section


@contextlib.contextmanager
def _environment(**variables: str) -> Any:
    """``os.environ`` with these variables set (and no other ``CLUSTRIX_*`` ones), restored."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("CLUSTRIX_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in [name for name in os.environ if name.startswith("CLUSTRIX_")]:
            del os.environ[name]
        os.environ.update(saved)


def probe_sources() -> dict[str, bool]:
    """How configurations are really merged, found by building some (documented below)."""
    from clustrix.config import ClusterConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "clustrix.yml")
        path.write_text(
            "cores: 2\npartition: fromfile\nenvironment_variables: {A: file, B: file}\n",
            encoding="utf-8",
        )
        with _environment(CLUSTRIX_CORES="3", CLUSTRIX_ENVIRONMENT_VARIABLES__B="env"):
            from_file = ClusterConfig.from_file(path)
            loaded = ClusterConfig.load(path, cores=4)
            bare = ClusterConfig()
        with _environment(CLUSTRIX_CONFIG=str(path)):
            named = ClusterConfig.load()
    return {
        "file_read": from_file.partition == "fromfile",
        "env_over_file": from_file.cores == 3,
        "args_over_env": loaded.cores == 4,
        "config_variable": named.partition == "fromfile",
        "mappings_merge": from_file.environment_variables == {"A": "file", "B": "env"},
        "bare_reads_sources": bare.cores == 3,
    }


class ConfigSourcesDirective(SphinxDirective):
    """``{clustrix-config-sources}``: where a configuration comes from, as probed now."""

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        facts = probe_sources()
        needed = ("file_read", "env_over_file", "args_over_env", "config_variable")
        wrong = [name for name in needed if not facts[name]]
        if wrong:
            raise self.error(
                f"clustrix-config-sources: the sources no longer merge as the page says "
                f"({', '.join(wrong)} is false): update docs/_ext/clustrix_docs.py"
            )
        steps = nodes.enumerated_list(enumtype="arabic")
        for item in [
            ["the defaults below;"],
            [
                "a YAML (",
                literal(".yml"),
                ", ",
                literal(".yaml"),
                ") or TOML (",
                literal(".toml"),
                ") file: the one given to ",
                literal("ClusterConfig.from_file(path)"),
                " or ",
                literal("ClusterConfig.load(path)"),
                ", else the one ",
                literal("$CLUSTRIX_CONFIG"),
                " names;",
            ],
            [literal("CLUSTRIX_<FIELD>"), " environment variables;"],
            [
                "explicit arguments (the keyword arguments of ",
                literal("from_file"),
                ", ",
                literal("load"),
                " and ",
                literal("ClusterExecutor"),
                ").",
            ],
        ]:
            steps += nodes.list_item("", paragraph(*item))
        if facts["bare_reads_sources"]:
            bare = [
                "A bare ",
                literal("ClusterConfig(...)"),
                " built in code reads them all too, as ",
                literal("ClusterConfig.load()"),
                " does; ",
                literal("config.with_overrides(...)"),
                " makes a changed copy without reading them again.",
            ]
        else:
            bare = [
                "A ",
                literal("ClusterConfig(...)"),
                " built in code reads neither the environment nor a file: it is exactly "
                "what it says; ",
                literal("ClusterConfig.load()"),
                " is the one that merges all four.",
            ]
        merge = (
            [
                "A mapping field (",
                literal("environment_variables"),
                ") is merged key by key: ",
                literal("CLUSTRIX_ENVIRONMENT_VARIABLES__OMP_NUM_THREADS=4"),
                " sets one key and keeps the file's others.",
            ]
            if facts["mappings_merge"]
            else [
                "A mapping field (",
                literal("environment_variables"),
                ") given by a higher source replaces the lower one's as a whole.",
            ]
        )
        return [
            paragraph("Sources, lowest to highest priority:"),
            steps,
            paragraph(*bare),
            paragraph(*merge),
        ]


class ConfigYamlDirective(SphinxDirective):
    """``{clustrix-config-yaml}``: a YAML config file with every field at its default."""

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        from clustrix.config import ClusterConfig, read_config_file

        data = _defaults_as_json()
        text = yaml.safe_dump(data, sort_keys=False)
        # Prove the file means what the page says: read back, it is the default config.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "clustrix.yml")
            path.write_text(text, encoding="utf-8")
            read = ClusterConfig(**read_config_file(path)).model_dump(mode="json")
            if read != data:
                raise self.error("clustrix-config-yaml: the defaults do not read back as such")
        block = nodes.literal_block(text, text)
        block["language"] = "yaml"
        return [block]


class BackendsDirective(SphinxDirective):
    """``{clustrix-backends}``: the ``cluster_type`` names of this release."""

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        from clustrix.backends import BUILTIN_BACKENDS

        rows = [
            [
                paragraph(literal(backend.name)),
                paragraph(backend.summary),
                paragraph("available" if backend.available else "planned (refused for now)"),
            ]
            for backend in BUILTIN_BACKENDS
        ]
        return [table(["cluster_type", "where jobs run", "status"], rows, [14, 50, 24])]


class BackendsStatusDirective(SphinxDirective):
    """``{clustrix-backends-status}`` with ``:coming: sge, ssh``: one paragraph saying which
    backends this release has, which planned ones come next (those named, while they are
    still planned) and which are not there yet, from the registry."""

    option_spec = {"coming": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        from clustrix.backends import BUILTIN_BACKENDS

        coming = {name.strip() for name in self.options.get("coming", "").split(",")}
        groups = {
            "Available in this release: ": [b for b in BUILTIN_BACKENDS if b.available],
            "Coming next: ": [b for b in BUILTIN_BACKENDS if not b.available and b.name in coming],
            "Not there yet: ": [
                b for b in BUILTIN_BACKENDS if not b.available and b.name not in coming
            ],
        }
        result = []
        for label, backends in groups.items():
            if not backends:
                continue
            para = paragraph(nodes.strong("", label))
            for i, backend in enumerate(backends):
                para += nodes.Text("; " if i else "")
                para += literal(backend.name)
                para += nodes.Text(f", {backend.summary}")
            para += nodes.Text(".")
            result.append(para)
        return result


class CliDirective(SphinxDirective):
    """``{clustrix-cli} [subcommand]``: the ``--help`` of the ``clustrix`` command."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        from clustrix.cli import main

        argv = [*self.arguments, "--help"]
        out = io.StringIO()
        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"  # argparse wraps at the terminal's width
        try:
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main(argv)
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        text = f"$ clustrix {' '.join(argv)}\n{out.getvalue().rstrip()}"
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def code_block(text: str, language: str, *classes: str) -> nodes.literal_block:
    block = nodes.literal_block(text, text)
    block["language"] = language
    block["classes"].extend(classes)
    return block


class RaisesDirective(SphinxDirective):
    """``{clustrix-raises} ErrorName``: run the code (which must raise ErrorName, or a
    subclass of it) and show it with the last line of the traceback Python prints.

    The code runs in a scratch directory (its current directory); ``:env: NAME=value`` sets
    an environment variable while it runs (and says so above the code); ``:hide-code:``
    shows only the error.
    """

    required_arguments = 1
    has_content = True
    option_spec = {"hide-code": directives.flag, "env": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        code = "\n".join(self.content)
        namespace: dict[str, Any] = {"__name__": "__main__"}
        env_name, _, env_value = self.options.get("env", "").partition("=")
        saved = os.environ.get(env_name) if env_name else None
        if env_name:
            os.environ[env_name] = env_value
        cwd = os.getcwd()
        scratch = tempfile.TemporaryDirectory(prefix="clustrix-docs-raises-")
        os.chdir(scratch.name)  # files the example writes go nowhere near the checkout
        try:
            exec(compile(code, f"<{self.env.docname}>", "exec"), namespace)
        except Exception as exc:  # the point: show what it raised
            error = exc
        else:
            raise self.error(f"clustrix-raises: the code raised nothing:\n{code}")
        finally:
            os.chdir(cwd)
            scratch.cleanup()
            if env_name and saved is None:
                del os.environ[env_name]
            elif env_name:
                os.environ[env_name] = saved or ""
        if env_name:
            code = f"# with {env_name}={env_value} in the environment\n{code}"
        wanted = self.arguments[0]
        if not any(cls.__name__ == wanted for cls in type(error).__mro__):
            raise self.error(
                f"clustrix-raises: expected {wanted}, the code raised "
                + "".join(traceback.format_exception(error))
            )
        shown = "".join(traceback.format_exception_only(type(error), error)).rstrip()
        result: list[nodes.Node] = []
        if "hide-code" not in self.options:
            result.append(code_block(code, "python"))
        result.append(code_block(shown, "text", "clustrix-error-output"))
        return result


class CapturedDirective(SphinxDirective):
    """``{clustrix-captured} case``: a failure that needs the real cluster, as
    ``_ext/capture_errors.py`` recorded it (the code, the error, and what the node said)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        path = Path(self.env.srcdir, self.config.clustrix_captured_errors)
        self.env.note_dependency(str(path))
        captured = json.loads(path.read_text(encoding="utf-8"))
        case = captured.get(self.arguments[0])
        if case is None:
            raise self.error(
                f"clustrix-captured: no case {self.arguments[0]!r} in {path.name}; "
                "run docs/_ext/capture_errors.py against the test cluster"
            )
        result: list[nodes.Node] = [
            code_block(case["code"], "python"),
            code_block(case["error"], "text", "clustrix-error-output"),
        ]
        if "remote_traceback" in case:
            result.append(paragraph("The traceback from the node, its ", literal("__cause__"), ":"))
            result.append(code_block(case["remote_traceback"], "text", "clustrix-error-output"))
        return result


class CapturedWhereDirective(SphinxDirective):
    """``{clustrix-captured-where}``: where and when the captured messages were recorded."""

    def run(self) -> list[nodes.Node]:
        note_generated(self.env)
        path = Path(self.env.srcdir, self.config.clustrix_captured_errors)
        about = json.loads(path.read_text(encoding="utf-8"))["_about"]
        return [
            paragraph(
                f"Captured on {about['where']}, with clustrix {about['clustrix']}, on "
                f"{about['date']}, by ",
                literal("docs/_ext/capture_errors.py"),
                ".",
            )
        ]


# ------------------------------------------------------------- links to files of the repo
def link_repository_files(app: Sphinx, doctree: nodes.document) -> None:
    """A Markdown link from a page to a file of the repository outside ``docs/`` (the design
    notes link ``../benchmarks/README.md``, which reads well on GitHub) becomes a download
    of that file, instead of a reference to a page that does not exist."""
    srcdir = Path(app.srcdir).resolve()
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("refdomain") != "doc" or node.get("reftype") != "myst":
            continue
        here = Path(app.env.doc2path(app.env.docname)).parent
        base = Path(node["reftarget"])
        candidates = [
            (here / base).resolve().with_name(base.name + suffix)
            for suffix in app.config.source_suffix
        ]
        for candidate in candidates:
            if candidate.is_file() and srcdir not in candidate.parents:
                relative = os.path.relpath(candidate, here)
                download = addnodes.download_reference(
                    "",
                    "",
                    *node.children,
                    reftarget=relative,
                    refdoc=app.env.docname,
                    refexplicit=True,
                    classes=["xref", "download", "myst"],
                )
                node.replace_self(download)
                break


# ----------------------------------------------------------------------------------- checks
def check_code_blocks(app: Sphinx, doctree: nodes.document) -> None:
    """Every python block parses; every clustrix name it imports exists."""
    for block in doctree.findall(nodes.literal_block):
        if block.get("language") != "python" or "clustrix-error-output" in block["classes"]:
            continue
        text = block.astext()
        try:
            tree = ast.parse(text)
        except SyntaxError as exc:
            logger.warning("python code block does not parse: %s", exc, location=block)
            continue
        for problem in _missing_clustrix_names(tree):
            logger.warning("python code block: %s", problem, location=block)


def _missing_clustrix_names(tree: ast.AST) -> list[str]:
    problems = []

    def module_of(name: str) -> types.ModuleType | None:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"cannot import {name}: {exc}")
            return None

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "clustrix":
            module = module_of(node.module or "")
            for alias in node.names if module is not None else []:
                if alias.name != "*" and not hasattr(module, alias.name):
                    problems.append(f"{node.module} has no {alias.name!r}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "clustrix":
                    module_of(alias.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = _CONVENTIONAL_NAMES.get(node.value.id)
            if owner is not None:
                import clustrix

                obj = clustrix if owner == "clustrix" else getattr(clustrix, owner)
                if not _has_attribute(obj, node.attr):
                    problems.append(f"{node.value.id}.{node.attr}: {owner} has no {node.attr!r}")
    return problems


def _has_attribute(obj: Any, name: str) -> bool:
    """``hasattr``, counting what instances get in ``__init__`` (``self.name = ...``) and
    the fields of a pydantic model."""
    if hasattr(obj, name) or name in getattr(obj, "model_fields", {}):
        return True
    if not isinstance(obj, type):
        return False
    for cls in obj.__mro__:
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        if re.search(rf"\bself\.{re.escape(name)}\s*(:[^=]*)?=[^=]", source):
            return True
    return False


#: Variable names the pages use for one thing only, so ``ex.subimt(...)`` is caught too.
_CONVENTIONAL_NAMES = {
    "clustrix": "clustrix",
    "ex": "ClusterExecutor",
    "executor": "ClusterExecutor",
    "future": "ClusterFuture",
    "config": "ClusterConfig",
}


def check_api_complete(app: Sphinx, env: Any) -> None:
    """Every public name (``clustrix.__all__``) has an entry in the API reference."""
    import clustrix

    documented = env.get_domain("py").objects
    for name in clustrix.__all__:
        if name.startswith("__"):
            continue
        if f"clustrix.{name}" not in documented:
            logger.warning(
                "clustrix.%s is in clustrix.__all__ but not documented: add it to "
                "docs/reference/api.md",
                name,
            )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("clustrix-config", ConfigDirective)
    app.add_directive("clustrix-config-yaml", ConfigYamlDirective)
    app.add_directive("clustrix-config-sources", ConfigSourcesDirective)
    app.add_directive("clustrix-backends", BackendsDirective)
    app.add_directive("clustrix-backends-status", BackendsStatusDirective)
    app.add_directive("clustrix-cli", CliDirective)
    app.add_directive("clustrix-raises", RaisesDirective)
    app.add_directive("clustrix-captured", CapturedDirective)
    app.add_directive("clustrix-captured-where", CapturedWhereDirective)
    app.add_config_value("clustrix_captured_errors", "guide/cluster-errors.json", "env")
    app.connect("doctree-read", link_repository_files, priority=400)  # before downloads
    app.connect("doctree-read", check_code_blocks)
    app.connect("env-check-consistency", check_api_complete)
    app.connect("env-get-outdated", generated_outdated)
    app.connect("env-purge-doc", generated_purge)
    app.connect("env-merge-info", generated_merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
