"""Reading a clustrix config file: YAML (``.yml``/``.yaml``) or TOML (``.toml``), a mapping of
field names to values at the top level or under a single ``clustrix`` key.

Knows nothing of the fields themselves: :mod:`clustrix.config` validates what this returns.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["read_config_file"]


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping stored in a YAML or TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data: Any = tomllib.loads(text)
        elif suffix in (".yml", ".yaml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(
                f"config file {str(path)!r}: unknown format {suffix!r}; use .yaml, .yml or .toml"
            )
    except ConfigError:
        raise
    except Exception as exc:  # YAML/TOML syntax errors have no common base class
        raise ConfigError(f"config file {str(path)!r} is not valid {suffix[1:]}: {exc}") from exc
    if isinstance(data, Mapping) and "clustrix" in data and len(data) == 1:
        data = data["clustrix"]  # allow a [clustrix] table / top-level key
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of field: value")
    return dict(data)
