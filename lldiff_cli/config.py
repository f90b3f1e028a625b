"""Typed configuration: dataclasses filled from YAML (safe_load) and ``key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key, the value and
what was expected. Nested dataclasses map to nested YAML mappings; ``a.b=3`` overrides
field ``b`` of section ``a``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from lldiff_cli.errors import LldiffError


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LldiffError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LldiffError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(_join(where, k) for k in unknown)}; allowed: {', '.join(sorted(names))}")
    values = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except LldiffError as exc:
                errors.append(str(exc))
        raise LldiffError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise LldiffError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LldiffError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LldiffError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LldiffError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 5e-5 (no dot in the mantissa) as a string; it is a number to a user.
            try:
                return float(value)
            except ValueError:
                pass
        raise LldiffError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise LldiffError(f"{where}: expected a string, got {value!r}")
    return value


def to_dict(obj) -> dict:
    """A config dataclass as plain dicts and lists (tuples too become lists): storable as YAML
    and in a weights_only checkpoint."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(obj))


def load_yaml(path: Path, what: str = "config file") -> dict:
    """The mapping a YAML file holds ({} when empty); any other file is an LldiffError naming it
    and why. ``what`` names the file's kind in the messages (a config file, a model card)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise LldiffError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise LldiffError(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError:
        raise LldiffError(f"{path}: not a text file (not UTF-8); a {what} is a YAML file") from None
    except yaml.YAMLError as exc:
        raise LldiffError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise LldiffError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number",
                bool: "a boolean"}.get(type(data), type(data).__name__)
        raise LldiffError(f"{path}: a {what} is a mapping of keys, got {kind}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars) to a nested mapping."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise LldiffError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls, path: Path | None, overrides: list[str] = ()):
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, list(overrides)))


def dump_yaml(data: dict, path: Path) -> None:
    from lldiff_cli.atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
