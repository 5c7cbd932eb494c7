"""Typed training configuration: the recipe's sections as dataclasses, with each field's
help and command-line flag.

A recipe (``configs/*.yaml``) is a nested mapping whose sections mirror the dataclasses
below; :mod:`convattn.engine.recipes` reads it, checks every key (a misspelled or unknown
key raises ``ValueError`` naming it and the closest valid key), converts values to the
field's type (so ``1e-4`` written as a YAML string still becomes a float), and saves the
resolved configuration in the run folder so a run can be repeated from it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parent.parent / "configs"

__all__ = [
    "RECIPES",
    "Config",
    "ConfigField",
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "config_fields",
    "scaled_lr",
]


def opt(
    default: Any = None, help: str = "", *, flag: str | None = None, factory: Any = None
) -> Any:
    """A config field with its command-line help (and flag, when it is not the key's)."""
    meta = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Dataset, input pipeline and augmentation."""

    path: str = opt(
        "synthetic",
        "'synthetic[:train=N,val=N,...]', 'cifar10', 'cifar100', a class-folder tree or a "
        ".tar/.tar.gz",
        flag="--data",
    )
    img_size: int | None = opt(
        None, "input side; train RandomResizedCrop(S), eval resize S*256/224 + centre crop S"
    )
    batch_size: int = opt(128, "global batch size (split across processes)")
    workers: int = opt(2, "data-loading processes per training process")
    augment: str = opt("default", "'default' (by dataset), 'imagenet', 'cifar' or 'none'")
    auto_augment: str | None = opt(None, "AutoAugment policy: 'imagenet' or 'cifar10'")
    mixup: float = opt(0.0, "mixup alpha (0 disables)")
    cutmix: float = opt(0.0, "cutmix alpha (0 disables)")
    cache_dir: str | None = opt(
        None, "where archives are extracted and small images decoded (default ~/.cache/convattn)"
    )
    train_split: str = opt("train", "training split folder")
    val_split: str = opt("val", "validation split folder")
    limit_train: int | None = opt(None, "a seeded, class-stratified subset of N training images")
    limit_val: int | None = opt(None, "a seeded, class-stratified subset of N validation images")
    limit_seed: int = opt(0, "which subset limit_train/limit_val take (independent of --seed)")


@dataclass
class OptimConfig:
    """SGD as in the paper; ``lr`` None means ``base_lr * batch_size / 256``."""

    lr: float | None = opt(None, "learning rate (default base_lr * batch_size / 256)")
    base_lr: float = opt(0.1, "learning rate per 256 images")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum")
    weight_decay: float = opt(1e-4, "L2 weight decay")
    no_decay_bn_bias: bool = opt(False, "no weight decay on BatchNorm weights and biases")
    clip_grad: float | None = opt(None, "clip the gradient norm to this value")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: "step" (the paper's x0.1 every 30 epochs) or "cosine"."""

    epochs: int = opt(90, "training epochs")
    kind: str = opt("step", "'step' (x gamma every step_epochs) or 'cosine'", flag="--sched")
    step_epochs: int = opt(30, "epochs between decays of the step schedule")
    milestones: list[int] | None = opt(None, "decay at these epochs instead of every step_epochs")
    gamma: float = opt(0.1, "decay factor of the step schedule")
    warmup_epochs: float = opt(0.0, "linear warm-up length (fractions allowed)")
    min_lr: float = opt(0.0, "lowest learning rate of the schedule")


@dataclass
class RunConfig:
    """Execution, logging and checkpointing."""

    output: str = opt("runs", "folder that receives the run folders")
    name: str | None = opt(None, "run folder name (default <model>-<timestamp>)", flag="--run-name")
    seed: int = opt(0, "random seed (weights, shuffling, augmentation)")
    deterministic: bool = opt(False, "deterministic algorithms (for exact repeats on CUDA)")
    device: str = opt("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    amp: str = opt("none", "mixed precision: 'none', 'bf16' (CPU or CUDA) or 'fp16' (CUDA)")
    channels_last: bool = opt(False, "channels_last memory format for model and batches")
    compile: bool = opt(False, "torch.compile the model")
    ema_decay: float | None = opt(
        None, "keep an exponential moving average of the weights (e.g. 0.9998)"
    )
    precise_bn_batches: int = opt(
        0, "re-estimate BatchNorm statistics over N batches before evaluating"
    )
    sync_bn: bool = opt(False, "synchronise BatchNorm across processes (works on CPU too)")
    eval_every: int = opt(1, "evaluate every N epochs (and after the last)")
    max_steps: int | None = opt(None, "at most this many steps per epoch (quick runs)")
    tensorboard: bool = opt(False, "write TensorBoard event files")
    progress: bool = opt(True, "progress: a bar on a terminal, a line per 30 s otherwise")
    threads: int | None = opt(None, "torch intra-op threads (default: PyTorch's)")


@dataclass
class Config:
    """A whole training recipe."""

    model: str = opt("cifar_resnet20_cbam", "registered model name (see `convattn models`)")
    attn: dict[str, Any] = opt(
        help="JSON of the attention's options, e.g. '{\"kernel_size\": 3}' or "
        '\'{"pool_types": ["avg"], "spatial": false}\'',
        factory=dict,
    )
    attn_impl: str | None = opt(
        None, "attention implementation: 'auto', 'eager' or 'fused' (default: auto)"
    )
    model_kwargs: dict[str, Any] = opt(
        help="JSON of other model arguments, e.g. '{\"zero_init_last\": true}'", factory=dict
    )
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def lr(self) -> float:
        """The learning rate used: ``optim.lr`` or ``base_lr * batch_size / 256``."""
        return scaled_lr(self.optim, self.data.batch_size)


def scaled_lr(optim: OptimConfig, batch_size: int) -> float:
    """``optim.lr`` when set, else the linear scaling rule ``base_lr * batch_size / 256``
    (Goyal et al. 2017), the paper's 0.1 at batch 256."""
    if optim.lr is not None:
        return optim.lr
    return optim.base_lr * batch_size / 256


@dataclass(frozen=True)
class ConfigField:
    """One leaf of the config: dotted key, type, default, help and command-line flag."""

    key: str
    type: Any
    default: Any
    help: str
    flag: str


def config_fields(cls: type = Config, prefix: str = "") -> list[ConfigField]:
    """Every leaf field of ``cls`` (sections flattened to dotted keys), in order."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(ConfigField(prefix + f.name, tp, default, f.metadata.get("help", ""), flag))
    return out
