"""The message of a :class:`~clustrix.errors.ConfigError` made from pydantic's
``ValidationError``: each bad field, the value given and what is allowed, the closest field
name for a typo, and never a secret's value.

Knows no model; only which field names hold secrets.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["format_validation_error", "suggest"]


def suggest(name: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SECRET_FIELDS = {"password", "key_passphrase"}


def format_validation_error(model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem: field, value given, what is wrong and what is allowed."""
    lines = [f"invalid {model.__name__}:"]
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            hint = suggest(str(err["loc"][0]), model.model_fields)
            lines.append(
                f"  {field}: unknown field{hint}; allowed: {', '.join(model.model_fields)}"
            )
            continue
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across fields: the input is the whole config, not shown
            lines.append(f"  {message}")
            continue
        shown = "***" if err["loc"][0] in _SECRET_FIELDS else repr(err.get("input"))
        lines.append(f"  {field}: {message} (got {shown})")
    return "\n".join(lines)
