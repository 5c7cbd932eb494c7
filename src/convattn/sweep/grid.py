"""Grid files: one recipe, its variants and seeds, expanded into training runs.

A grid file (YAML; packaged ones live in ``convattn/configs/experiments/`` and load by
name) reads::

    description: CIFAR-10, ResNet-20 with each attention
    base: cifar10                    # a recipe (packaged name or file) or a mapping
    overrides: {data.path: cifar10-jpg.tar.gz}   # dotted keys, every run of every preset
    baseline: none                   # the variant the others are compared with
    seeds: [0, 1, 2]
    variants:                        # in order; each sets only what makes the model
      none: {model: cifar_resnet20}
      cbam: {model: cifar_resnet20_cbam, attn: {kernel_size: 3}}
    presets:                         # at least one; chosen with --preset
      quick: {base: cifar10_quick, seeds: [0, 1]}
      full: {overrides: {schedule.epochs: 164}, variants: {extra: {...}}}

A run's config is built in this order: the recipe (the preset's ``base`` or the grid's),
the grid's ``overrides``, the preset's ``overrides``, the variant, ``run.seed``, then
the command line's (``--data``, execution options). Variants may set ``model``,
``attn``, ``attn_impl``, ``model_kwargs`` and the numerics options ``run.amp``,
``run.channels_last``, ``run.compile`` and ``run.deterministic``: the recipe (data,
optimiser, schedule, EMA, ...) is the same for every variant of a grid, never tuned for one.

Runs are keyed by a hash of their *effective* config (:func:`run_key`): the resolved
recipe without where the run is written (``run.output``, ``run.name``) and without the
options that only decide how it executes (:data:`~convattn.engine.resume.EXECUTION_KEYS`),
with attention options and model arguments equal to their defaults dropped, ``attn_impl``
None read as "auto" and the learning rate resolved. Two variants of two grids with one
effective config therefore share one run folder, ``runs/<model>-s<seed>-<hash8>``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..engine.config import RECIPES, Config
from ..engine.recipes import (
    apply_overrides,
    config_to_dict,
    flatten,
    merge_sections,
    packaged_file,
    read_recipe,
)
from ..engine.resume import EXECUTION_KEYS
from ..layers import get_attention
from ..models import get_model_spec

__all__ = [
    "EXPERIMENTS",
    "GRID_KEYS",
    "PRESET_KEYS",
    "VARIANT_KEYS",
    "Grid",
    "RunSpec",
    "effective_config",
    "expand",
    "grid_path",
    "list_grids",
    "load_grid",
    "run_key",
    "variant_config",
]

#: Folder of the packaged grid files.
EXPERIMENTS = RECIPES / "experiments"
GRID_KEYS = ("description", "base", "overrides", "baseline", "seeds", "variants", "presets")
PRESET_KEYS = ("description", "base", "overrides", "seeds", "variants")
#: What a variant may set: the model, its attention, and how its numbers are computed.
VARIANT_KEYS = (
    "model",
    "attn",
    "attn_impl",
    "model_kwargs",
    "run.amp",
    "run.channels_last",
    "run.compile",
    "run.deterministic",
)
#: Keys no variant or grid may set: the sweep decides them per run.
_SWEEP_KEYS = ("run.seed", "run.output", "run.name")
#: Keys that do not change what a run computes.
NOT_KEYED = EXECUTION_KEYS | {"run.output", "run.name"}


@dataclass(frozen=True)
class Grid:
    """A grid file with one preset chosen: the recipe, variants, seeds and baseline."""

    name: str
    preset: str
    description: str
    recipe: dict[str, Any]  # nested config sections: base and every override
    variants: dict[str, dict[str, Any]]  # name -> dotted keys
    seeds: tuple[int, ...]
    baseline: str

    @property
    def label(self) -> str:
        """``<grid>-<preset>``, the name of its index and summary files."""
        return f"{self.name}-{self.preset}"


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: a variant at a seed, its resolved config and key."""

    variant: str
    seed: int
    config: Config
    key: str

    @property
    def name(self) -> str:
        """The run folder's name: ``<model>-s<seed>-<hash8>``."""
        return f"{self.config.model}-s{self.seed}-{self.key}"


def list_grids() -> list[str]:
    """Names of the packaged grid files."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def grid_path(grid: str | Path) -> Path:
    """``grid`` itself if it is a file, else the packaged grid of that name."""
    return packaged_file(grid, EXPERIMENTS, "grid")


def _check_keys(data: Any, valid: tuple[str, ...] | None, where: str) -> dict[str, Any]:
    """``data`` if it is a mapping whose keys are all ``valid`` (any key if ``None``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {data!r}")
    for key in data:
        if valid is not None and key not in valid:
            raise ValueError(f"{where}: unknown key {key!r} (valid: {', '.join(valid)})")
    return data


def _check_overrides(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping of config keys, got {data!r}")
    for key in flatten(data):
        if key in _SWEEP_KEYS:
            raise ValueError(f"{where}: {key} is set by the sweep (use seeds:)")
    return data


def _check_variant(name: str, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: variant {name!r} must be a mapping, got {data!r}")
    for key in data:
        if key not in VARIANT_KEYS:
            raise ValueError(
                f"{where}: variant {name!r} may not set {key!r} (variants set "
                f"{', '.join(VARIANT_KEYS)}; the recipe belongs in overrides)"
            )
    return data


def _check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of distinct ints, got {seeds!r}")
    return tuple(seeds)


def _base(base: Any, where: str) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, dict):
        return base
    try:
        return read_recipe(base)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{where}: base: {err}") from None


def _nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``{"optim.lr": 0.1}``) to nested sections; mappings merge."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        sub: dict[str, Any] = {}
        cur = sub
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[last] = value
        out = merge_sections(out, sub)
    return out


def load_grid(grid: str | Path, preset: str) -> Grid:
    """Read and check a grid file (a path or a packaged name) with preset ``preset``.

    Raises ``ValueError`` with one line naming the file and the offending key, preset or
    variant; every variant's config is resolved once here, so a bad value fails early.
    """
    path = grid_path(grid)
    where = path.name
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
    data = _check_keys(raw or {}, GRID_KEYS, where)
    presets = data.get("presets")
    if not isinstance(presets, dict) or not presets:
        raise ValueError(f"{where}: presets must be a non-empty mapping of preset names")
    if preset not in presets:
        raise ValueError(f"{where}: no preset {preset!r} (presets: {', '.join(presets)})")
    pre = _check_keys(presets[preset] or {}, PRESET_KEYS, f"{where}: preset {preset!r}")
    recipe = _base(pre.get("base", data.get("base")), where)
    for part, label in ((data, "overrides"), (pre, f"preset {preset!r} overrides")):
        extra = _check_overrides(part.get("overrides"), f"{where}: {label}")
        recipe = merge_sections(recipe, _nested(extra))
    try:
        apply_overrides(recipe, {})
    except ValueError as err:
        raise ValueError(f"{where}: preset {preset!r}: {err}") from None
    parts = [_check_keys(p.get("variants") or {}, None, f"{where}: variants") for p in (data, pre)]
    variants = {**parts[0], **parts[1]}
    if not variants:
        raise ValueError(f"{where}: variants must be a non-empty mapping")
    for name, v in variants.items():
        _check_variant(str(name), v, where)
    baseline = data.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise ValueError(f"{where}: baseline {baseline!r} is not a variant ({', '.join(variants)})")
    seeds = _check_seeds(pre.get("seeds", data.get("seeds")), where)
    g = Grid(path.stem, preset, pre.get("description", data.get("description", "")), recipe,
             {str(k): v for k, v in variants.items()}, seeds, baseline)  # fmt: skip
    for name in g.variants:
        variant_config(g, name, g.seeds[0])  # every variant resolves, or a clear error
    return g


def variant_config(
    grid: Grid, variant: str, seed: int, extra: Mapping[str, Any] | None = None
) -> Config:
    """The :class:`Config` of ``variant`` at ``seed`` (``extra``: dotted command-line keys)."""
    keys = {**grid.variants[variant], "run.seed": seed, **(extra or {})}
    try:
        cfg = apply_overrides(grid.recipe, keys)
        spec = get_model_spec(cfg.model)
        inspect.signature(spec.builder).bind_partial(**{**spec.fixed, **cfg.model_kwargs})
        if cfg.attn:
            get_attention(_attention_name(spec.fixed), **cfg.attn)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{grid.name}: variant {variant!r}: {err}") from None
    return cfg


def expand(
    grid: Grid, runs_dir: str | Path, extra: Mapping[str, Any] | None = None
) -> list[RunSpec]:
    """Every run of ``grid`` in its stable order: seed by seed, each with every variant
    in file order, so a sweep stopped part-way has all variants at its first seeds;
    writing into ``runs_dir``; ``extra`` are dotted keys from the command line."""
    out = []
    for seed in grid.seeds:
        for variant in grid.variants:
            cfg = variant_config(grid, variant, seed, extra)
            key = run_key(cfg)
            spec = RunSpec(variant, seed, cfg, key)
            cfg.run.output, cfg.run.name = str(runs_dir), spec.name
            out.append(spec)
    return out


def _attention_name(fixed: Mapping[str, Any]) -> Any:
    return fixed.get("attn_layer") or fixed.get("stage_attn_layer")


def _plain(value: Any) -> Any:
    """``value`` as JSON would store it (tuples become lists), or itself if it cannot be."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _without_defaults(
    options: Mapping[str, Any], target: Callable[..., Any] | None
) -> dict[str, Any]:
    """``options`` less those equal to ``target``'s keyword defaults."""
    if target is None or not options:
        return dict(options)
    func = getattr(target, "func", target)  # a functools.partial from get_attention
    params = inspect.signature(func).parameters
    return {
        k: v
        for k, v in options.items()
        if k not in params or _plain(params[k].default) != _plain(v)
    }


def effective_config(cfg: Config) -> dict[str, Any]:
    """The dotted keys that decide what a run computes (see the module docstring)."""
    spec = get_model_spec(cfg.model)
    data = config_to_dict(cfg)
    attn = _attention_name(spec.fixed)
    data["attn"] = _without_defaults(cfg.attn, get_attention(attn) if attn else None)
    data["model_kwargs"] = _without_defaults(cfg.model_kwargs, spec.builder)
    data["attn_impl"] = cfg.attn_impl or "auto"
    data["optim"]["lr"] = cfg.lr
    data["optim"].pop("base_lr")
    flat = flatten(data)
    for key in NOT_KEYED:
        flat.pop(key, None)
    return _plain(flat)


def run_key(cfg: Config) -> str:
    """Eight hex digits of the SHA-256 of the effective config (stable across machines
    and Python versions: sorted JSON)."""
    text = json.dumps(effective_config(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
