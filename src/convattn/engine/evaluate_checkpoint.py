"""Evaluate saved weights: a run folder (its config decides model and data) or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import build_dataset, build_loader
from ..data.subset import limit_dataset
from ..models import create_model, load_checkpoint
from .evaluate import evaluate
from .recipes import load_config
from .runtime import resolve_device
from .setup import build_model

__all__ = ["evaluate_weights"]


def evaluate_weights(
    weights: Path,
    *,
    model: str | None = None,
    data: str | None = None,
    img_size: int | None = None,
    batch_size: int = 128,
    workers: int = 2,
    split: str | None = None,
    last: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Top-1/top-5 error, loss and images/s of ``weights`` on a validation split."""
    cfg = None
    if weights.is_dir():
        cfg = load_config(weights / "config.yaml")
        weights = weights / ("checkpoint.pt" if last else "best.safetensors")
    elif (weights.parent / "config.yaml").is_file():
        cfg = load_config(weights.parent / "config.yaml")
    name = model or (cfg.model if cfg else None)
    source = data or (cfg.data.path if cfg else None)
    if name is None or source is None:
        raise ValueError("give --model and --data, or a run folder that holds config.yaml")
    size = img_size or (cfg.data.img_size if cfg else None)
    augment = cfg.data.augment if cfg else "default"
    split = split or (cfg.data.val_split if cfg else "val")
    ds, info = build_dataset(
        source, split, img_size=size, augment=augment, cache_dir=cfg.data.cache_dir if cfg else None
    )
    if cfg and cfg.data.limit_val:  # the subset the run was evaluated on
        ds = limit_dataset(ds, cfg.data.limit_val, seed=cfg.data.limit_seed)
    if cfg and name == cfg.model:
        net = build_model(cfg, info.num_classes)
    else:
        net = create_model(name, num_classes=info.num_classes)
    load_checkpoint(net, weights)
    dev = resolve_device(device)
    loader = build_loader(ds, batch_size, train=False, workers=workers)
    metrics = evaluate(net.to(dev), loader, dev)
    return {"model": name, "data": str(source), "weights": str(weights), **metrics}
