"""Reading the small text files every side hands over (YAML configs, JSON hand-offs) into typed models: any
failure becomes one line that names the file, the field and the fix."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import yaml  # an edge dependency too (the daemon's config), never torch
from pydantic import ValidationError

__all__ = ["field_problem", "read_document"]

# format -> (its name in messages, parser, the parser's syntax errors)
_FORMATS: dict[str, tuple[str, Callable[[str], Any], tuple[type[Exception], ...]]] = {
    "yaml": ("YAML", yaml.safe_load, (yaml.YAMLError,)),
    "json": ("JSON", json.loads, (json.JSONDecodeError,)),
}


def read_document(path: Path, fmt: Literal["yaml", "json"], error: type[Exception], what: str,
                  fix: str = "") -> Any:
    """The parsed content of a YAML or JSON file. An unreadable file or bad syntax raises `error` with one
    line naming the file, the cause and, when given, the fix."""
    name, parse, syntax_errors = _FORMATS[fmt]
    hint = f"; {fix}" if fix else ""
    try:
        return parse(path.read_text())
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror}{hint}") from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: not {name} text (undecodable bytes at offset {err.start}){hint}") from err
    except syntax_errors as err:
        raise error(f"{path}: not valid {name}: {err}{hint}") from err


def field_problem(err: ValidationError, fix: str = "", keys: Iterable[str] = ()) -> str:
    """The first problem of a validation error as `<dotted.field>: <message> (<fix>)`. Without a fix, an
    unknown key is to be removed or respelt (the valid `keys` listed when given); any other problem shows
    the value received."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"])
    valid = ", ".join(keys)
    if fix:
        hint = fix
    elif e["type"] == "extra_forbidden":
        hint = f"valid keys: {valid}" if valid else "remove it or check its spelling"
    else:
        hint = f"got {e.get('input')!r}"
    return f"{loc}: {e['msg']} ({hint})"
