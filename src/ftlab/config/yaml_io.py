"""YAML in and out: :func:`load_config` (every problem one line with file:line),
:func:`save_config` (all defaults spelled out, data paths relative) and :func:`config_line`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftlab.config.fields import M
from ftlab.config.messages import format_errors, line_of
from ftlab.config.pipeline import PipelineConfig
from ftlab.errors import ConfigError


def load_config(path: str | os.PathLike[str], model: type[M] = PipelineConfig) -> M:
    """Read the YAML file at ``path`` and validate it as ``model``.

    Data paths in the file are resolved against the file's folder. Raises
    :class:`ConfigError` for a missing or unreadable file, a YAML syntax error, an empty
    file, a top level that is not a mapping, and every validation problem (one line
    each: ``<file>:<line>: <dotted.field>: <what is wrong> (got <value>)[; hint]``).
    """
    path = Path(path)
    text = _read_text(path)
    data = _parse_mapping(text, path, model)
    try:
        return model.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, path, text, model, data)) from None


def save_config(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML to ``path`` (parents created) and return the path.

    Every field is written, defaults included, so the file documents the values used.
    Data paths are written relative to the file's folder, so ``load_config`` of the
    written file returns a config equal to ``config``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json", context={"base_dir": path.resolve().parent})
    header = f"# ftlab {type(config).__name__}, written by ftlab.config.save_config (all defaults spelled out)\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _read_text(path: Path) -> str:
    """The file's UTF-8 text, or a one-line ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the path of a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (looked for {path.resolve()})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file as UTF-8 text ({exc})") from None


def _parse_mapping(text: str, path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """Parse ``text`` with ``yaml.safe_load``; it must be a non-empty mapping."""
    keys = ", ".join(model.model_fields)
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), ())
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}; check indentation, colons and quotes") from None
    if duplicates:
        raise ConfigError("\n".join(
            f"{path}:{second}: {field}: duplicate key (first given at line {first}); YAML keeps "
            "only the last, so the first would be silently ignored: give each key once"
            for field, first, second in duplicates))
    if data is None:
        raise ConfigError(f"{path}: config file is empty; expected a mapping with keys {keys}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: top level must be a mapping of keys ({keys}) (got a {type(data).__name__})"
        )
    return data


def _duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...]) -> list[tuple[str, int, int]]:
    """``(dotted field, first line, repeated line)`` of every key given twice in one mapping
    of the YAML tree under ``node`` (1-based lines)."""
    found = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            line, name = key.start_mark.line + 1, str(key.value)
            if name in first:
                found.append((".".join(map(str, (*loc, name))), first[name], line))
            first.setdefault(name, line)
            found += _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, index))
    return found


def config_line(path: str | os.PathLike[str], loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key (or list item) of ``loc`` in the YAML file at
    ``path`` (``("stages", 2, "export")``), or None when the file cannot be parsed."""
    try:
        return line_of(yaml.compose(Path(path).read_text(encoding="utf-8"),
                                     Loader=yaml.SafeLoader), loc)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
