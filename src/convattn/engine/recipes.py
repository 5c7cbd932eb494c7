"""Recipes: reading YAML files (packaged by name or given by path), applying dotted
command-line overrides, building a recipe class (:class:`~convattn.engine.config.Config`
or another, such as detection's) with every key checked and every value converted to
its field's type, and saving a resolved recipe in a run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml

from .config import RECIPES, Config

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "merge_sections",
    "packaged_file",
    "read_recipe",
    "recipe_path",
    "save_config",
]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown config key {where}{key!r}{hint} (valid: {', '.join(fields)})"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ValueError(f"config section {where}{key!r} must be a mapping")
            kwargs[key] = _build(tp, value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}{key}")
    return cls(**kwargs)


#: A recipe class: :class:`Config`, or another such as detection's.
T = TypeVar("T")


@overload
def config_from_dict(data: dict[str, Any]) -> Config: ...
@overload
def config_from_dict(data: dict[str, Any], cls: type[T]) -> T: ...
def config_from_dict(data: dict[str, Any], cls: type[Any] = Config) -> Any:
    """Build a :class:`Config` (or another recipe class ``cls``, e.g. detection's) from a
    nested mapping, rejecting unknown keys."""
    return _build(cls, data or {}, "")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def merge_sections(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys replaced, section by section (a new mapping)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = (
            merge_sections(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def packaged_file(path: str | Path, folder: Path, what: str) -> Path:
    """``path`` itself if it is a file, else the YAML file of that name in ``folder``
    ("cifar10" or "cifar10.yaml", a name without a folder); the error names ``what``
    and lists the packaged ones."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = folder / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if len(p.parts) == 1 and packaged.is_file():  # a name; a path never falls back
        return packaged
    names = ", ".join(sorted(f.stem for f in folder.glob("*.yaml")))
    raise FileNotFoundError(
        f"{what} file not found: {p} (packaged {what}s, named without a folder: {names})"
    )


def recipe_path(path: str | Path) -> Path:
    """``path`` itself, or the packaged recipe of that name ("cifar10", "demo.yaml")."""
    return packaged_file(path, RECIPES, "recipe")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections to dotted keys: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``
    (``model_kwargs`` stays one value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "model_kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@overload
def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> Config: ...
@overload
def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None, cls: type[T]) -> T: ...
def apply_overrides(
    data: dict[str, Any], overrides: dict[str, Any] | None, cls: type[Any] = Config
) -> Any:
    """The :class:`Config` (or ``cls``) of the nested mapping ``data`` with dotted
    ``overrides`` applied."""
    for dotted, value in (overrides or {}).items():
        nested: dict[str, Any] = {}
        cur = nested
        *parents, last = dotted.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[last] = value
        data = merge_sections(data, nested)
    return config_from_dict(data, cls)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The nested mapping of a YAML recipe (a file or a packaged recipe name)."""
    p = recipe_path(path)
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config sections")
    return data


@overload
def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config: ...
@overload
def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, cls: type[T]
) -> T: ...
def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    cls: type[Any] = Config,
) -> Any:
    """Read a YAML recipe (a file or a packaged recipe name; or start from defaults) and
    apply dotted ``overrides`` such as ``{"optim.lr": 0.05, "model": "resnet50"}``; the
    recipe is a :class:`Config` unless ``cls`` names another recipe class."""
    data = {} if path is None else read_recipe(path)
    try:
        return apply_overrides(data, overrides, cls)
    except ValueError as err:
        raise ValueError(f"{path or 'config'}: {err}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
