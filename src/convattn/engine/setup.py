"""What a training run is made of, built from a :class:`~convattn.engine.config.Config`:
the data loaders, the model, its optimiser, schedule, gradient scaler, weight average,
and the wrapped model that trains (DDP, ``torch.compile``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import DatasetInfo, build_dataset, build_loader, build_mix
from ..data.subset import limit_dataset
from ..models import create_model
from .config import Config
from .distributed import DistInfo
from .optim import build_optimizer, build_scheduler
from .sync_bn import convert_sync_batchnorm

__all__ = [
    "RunData",
    "TrainParts",
    "build_data",
    "build_model",
    "build_parts",
    "compile_model",
    "num_skipped",
]

log = logging.getLogger("convattn")


@dataclass
class RunData:
    """The loaders of a run, the dataset's description and the steps of an epoch."""

    train: DataLoader
    val: DataLoader
    info: DatasetInfo
    steps: int


@dataclass
class TrainParts:
    """The model (``model``: the plain module, whose state is saved) and everything that
    updates it; ``train_model`` is what the loop calls (DDP and/or compiled ``model``)."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    ema: nn.Module | None
    device: torch.device


def _limit(ds: Any, n: int | None, seed: int, what: str, classes: int) -> Any:
    sub = limit_dataset(ds, n, seed=seed)
    if sub is not ds:
        held = len(set(sub.targets))
        log.info("%s: a subset of %d of %d images, %d of %d classes (seed %d)",
                 what, len(sub), len(ds), held, classes, seed)  # fmt: skip
    return sub


def build_data(cfg: Config, dist: DistInfo, *, progress: bool) -> RunData:
    """Training and validation loaders (``limit_*``: class-stratified subsets)."""
    d = cfg.data
    common = {"img_size": d.img_size, "cache_dir": d.cache_dir, "progress": progress}
    train_ds, info = build_dataset(
        d.path, d.train_split, augment=d.augment, auto_augment=d.auto_augment, **common
    )
    common["img_size"] = info.img_size
    val_ds, _ = build_dataset(d.path, d.val_split, augment=d.augment, **common)
    train_ds = _limit(train_ds, d.limit_train, d.limit_seed, "training", info.num_classes)
    val_ds = _limit(val_ds, d.limit_val, d.limit_seed, "validation", info.num_classes)
    if d.batch_size % dist.world_size:
        raise ValueError(
            f"batch_size {d.batch_size} must divide by the {dist.world_size} processes"
        )
    per_process = d.batch_size // dist.world_size
    mix = build_mix(info.num_classes, mixup_alpha=d.mixup, cutmix_alpha=d.cutmix)
    kw = {"workers": d.workers, "seed": cfg.run.seed, "distributed": dist.enabled}
    train = build_loader(train_ds, per_process, train=True, mix=mix, **kw)
    val = build_loader(val_ds, per_process, train=False, **kw)
    if len(train) == 0:
        raise ValueError(f"batch_size {d.batch_size} exceeds the {len(train_ds)} training samples")
    max_steps = cfg.run.max_steps
    steps = len(train) if max_steps is None else min(len(train), max_steps)
    return RunData(train, val, info, steps)


def num_skipped(loader: DataLoader) -> int:
    """Unreadable files the loader's dataset has left out so far (0 if it cannot tell)."""
    ds = loader.dataset
    while isinstance(ds, Subset):
        ds = ds.dataset
    return int(getattr(ds, "num_skipped", 0))


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """``cfg.model`` from the registry, with its attention options and model arguments."""
    return create_model(
        cfg.model,
        num_classes=num_classes,
        attn=cfg.attn or None,
        attn_impl=cfg.attn_impl,
        **cfg.model_kwargs,
    )


def build_parts(cfg: Config, data: RunData, device: torch.device, dist: DistInfo) -> TrainParts:
    """The model (seeded by ``run.seed``, the same on every process) and its training
    machinery, on ``device``."""
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg, data.info.num_classes)
    if cfg.run.sync_bn and dist.enabled:
        model = convert_sync_batchnorm(model, device)
    fmt = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, data.steps, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.run.amp == "fp16" else None
    ema = None
    if cfg.run.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        avg = get_ema_multi_avg_fn(cfg.run.ema_decay)
        ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    train_model: nn.Module = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.run.compile:
        train_model = compile_model(train_model, cfg, device)
    return TrainParts(model, train_model, optimizer, scheduler, scaler, ema, device)


def _masked_sum(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, 0.0, a.float() + b.float()).contiguous()


def inductor_bf16_fault() -> bool:
    """Whether Inductor's CPU code for a boolean mask over the sum of two channels-last
    bfloat16 tensors comes out wrong on this machine (README, "Known issue"): one small
    compile, checked against eager. Seen with torch 2.14 on one AVX-512 machine, not on
    another with the same CPU flags, torch and gcc; so it is probed, not assumed."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(8, 64, 8, 8, generator=g) < 0.3
    cl = torch.channels_last
    a, b = (torch.randn(8, 64, 8, 8, generator=g).bfloat16().to(memory_format=cl) for _ in "ab")
    try:
        got = torch.compile(_masked_sum, dynamic=False)(mask, a, b)
    except Exception as err:  # a machine that cannot compile: nothing to warn about here
        log.debug("the Inductor probe did not compile: %s", err)
        return False
    return not torch.equal(got, _masked_sum(mask, a, b))


def compile_model(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """``torch.compile(model)``, with a warning where Inductor computes wrong values: on a
    CPU under bfloat16 autocast, where :func:`inductor_bf16_fault` finds its AVX-512 code
    for some half-precision tiles wrong (right at -O0 and with AVX2 code); a CBAM
    network's first backward is then NaN, in either memory format."""
    if (
        device.type == "cpu"
        and cfg.run.amp == "bf16"
        and torch.backends.cpu.get_cpu_capability() == "AVX512"
        and inductor_bf16_fault()
    ):
        log.warning(
            "run.compile with run.amp=bf16: Inductor (torch %s) computes wrong values on "
            "this CPU; set torch._inductor.config.cpp.simdlen = 256 (README, Known issue)",
            torch.__version__,
        )
    return torch.compile(model)
