"""Typed training configuration: YAML recipes, command-line overrides, strict keys.

A recipe (``configs/*.yaml``) is a nested mapping whose sections mirror the dataclasses
below. Every key is checked: a misspelled or unknown key raises ``ValueError`` naming it
and the closest valid key, values are converted to the field's type (so ``1e-4`` written
as a YAML string still becomes a float), and the resolved configuration is saved in the
run folder so a run can be repeated from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "configs"

__all__ = [
    "RECIPES",
    "Config",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "load_config",
    "merge_sections",
    "read_recipe",
    "recipe_path",
    "save_config",
]


@dataclass
class DataConfig:
    """Dataset, input pipeline and augmentation."""

    path: str = "synthetic"  # "synthetic", "cifar10", "cifar100", a folder or an archive
    img_size: int | None = None  # None: the dataset's default
    batch_size: int = 128  # global batch, split across processes
    workers: int = 2
    augment: str = "default"  # "default" (dataset-appropriate), "imagenet", "cifar", "none"
    auto_augment: str | None = None  # "imagenet" or "cifar" policy
    mixup: float = 0.0  # alpha; 0 disables
    cutmix: float = 0.0  # alpha; 0 disables
    cache_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    limit_train: int | None = None  # a class-stratified subset of N training samples
    limit_val: int | None = None  # the same for validation
    limit_seed: int = 0  # which subset (independent of run.seed)


@dataclass
class OptimConfig:
    """SGD as in the paper; ``lr`` None means ``base_lr * batch_size / 256``."""

    lr: float | None = None
    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    clip_grad: float | None = None
    label_smoothing: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: "step" (the paper's x0.1 every 30 epochs) or "cosine"."""

    epochs: int = 90
    kind: str = "step"
    step_epochs: int = 30
    milestones: list[int] | None = None  # "step" at these epochs instead of every step_epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class RunConfig:
    """Execution, logging and checkpointing."""

    output: str = "runs"
    name: str | None = None  # default: <model>-<timestamp>
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: str = "none"  # "none", "bf16", "fp16" (fp16 on CUDA only)
    channels_last: bool = False
    compile: bool = False
    ema_decay: float | None = None
    precise_bn_batches: int = 0  # re-estimate BN statistics over N batches before eval
    sync_bn: bool = False
    eval_every: int = 1
    max_steps: int | None = None  # per epoch; for quick runs and tests
    tensorboard: bool = False
    progress: bool = True
    threads: int | None = None  # torch intra-op threads; None: PyTorch's default


@dataclass
class Config:
    """A whole training recipe."""

    model: str = "cifar_resnet20_cbam"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def lr(self) -> float:
        """The learning rate used: ``optim.lr`` or ``base_lr * batch_size / 256``."""
        if self.optim.lr is not None:
            return self.optim.lr
        return self.optim.base_lr * self.data.batch_size / 256


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


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping, rejecting unknown keys."""
    return _build(Config, data or {}, "")


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


def recipe_path(path: str | Path) -> Path:
    """``path`` itself, or the packaged recipe of that name ("cifar10", "demo.yaml")."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = RECIPES / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(f.stem for f in RECIPES.glob("*.yaml")))
    raise FileNotFoundError(f"config file not found: {p} (packaged recipes: {names})")


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


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> Config:
    """The :class:`Config` of the nested mapping ``data`` with dotted ``overrides`` applied."""
    for dotted, value in (overrides or {}).items():
        nested: dict[str, Any] = {}
        cur = nested
        *parents, last = dotted.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[last] = value
        data = merge_sections(data, nested)
    return config_from_dict(data)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The nested mapping of a YAML recipe (a file or a packaged recipe name)."""
    p = recipe_path(path)
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config sections")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML recipe (a file or a packaged recipe name; or start from defaults) and
    apply dotted ``overrides`` such as ``{"optim.lr": 0.05, "model": "resnet50"}``."""
    data = {} if path is None else read_recipe(path)
    try:
        return apply_overrides(data, overrides)
    except ValueError as err:
        raise ValueError(f"{path or 'config'}: {err}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
