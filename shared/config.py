"""Typed configuration: a TOML or YAML file plus environment overrides, loaded once in ``main()``.

Each process defines its config as a pydantic model (``extra="forbid"`` so a misspelt key is an
error) and calls :func:`load_config` once. Overrides come from a mapping (the entry point passes
``os.environ``) with keys like ``FABPM_EDGE__MQTT__HOST=broker``: the prefix, then the path of the
key in lower or upper case, separated by double underscores. Values are parsed as TOML scalars
when they can be (``8883`` → int, ``true`` → bool), else taken as strings.

Errors name the bad key as a dotted path, e.g. ``mqtt.port: Input should be a valid integer``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_mapping(path: Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict, with clear errors."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of keys")
    return data


def _parse_scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Return a copy of ``data`` with ``PREFIX__A__B=value`` entries of ``env`` set at ``a.b``."""
    out: dict[str, Any] = _deep_copy(data)
    head = prefix.upper() + "__"
    for key, raw in env.items():
        if not key.upper().startswith(head):
            continue
        path = [p.lower() for p in key[len(head) :].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {'.'.join(path)} goes through {part!r}, which is not a table")
            node = child
        node[path[-1]] = _parse_scalar(raw)
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {err['msg']}")
    return "\n".join(lines)


def validate(model: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build ``model`` from ``data`` or raise :class:`ConfigError` naming each bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_config(
    model: type[T],
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    prefix: str = "FABPM",
) -> T:
    """Load ``model`` from an optional file plus environment overrides; defaults fill the rest."""
    data = read_mapping(path) if path is not None else {}
    if env:
        data = apply_overrides(data, env, prefix)
    return validate(model, data, str(path) if path else "config")
