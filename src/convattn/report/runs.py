"""Trained models as the report and ``convattn cam`` see them: a run folder (or a bare
checkpoint) with its model, class names and preprocessing, and the images to explain."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from ..data import build_dataset
from ..data.folders import image_files
from ..data.subset import stratified_indices
from ..data.transforms import build_transform, normalize_transform
from ..engine.config import Config
from ..engine.recipes import load_config
from ..engine.run import read_metrics
from ..engine.setup import build_model
from ..models import CheckpointError, create_model, get_model_spec, load_checkpoint

__all__ = ["Explained", "RunView", "load_images", "read_run", "sample_val_images"]

log = logging.getLogger("convattn")


@dataclass
class RunView:
    """What a report reads of one run folder."""

    dir: Path
    config: Config
    dataset: dict[str, Any]
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dir.name

    def load_model(self) -> nn.Module:
        """The run's best weights (``best.safetensors``, else ``checkpoint.pt``), eval mode."""
        weights = self.dir / "best.safetensors"
        if not weights.is_file():
            weights = self.dir / "checkpoint.pt"
        model = build_model(self.config, len(self.dataset["classes"]))
        _load(model, weights)
        return model.eval()


def _load(model: nn.Module, weights: Path) -> None:
    """Every tensor of the model from ``weights`` (a backbone without the model's
    attention, which ``load_checkpoint`` accepts, would explain an untrained attention)."""
    try:
        report = load_checkpoint(model, weights)
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: does not fit the model: {err}") from None
    if report.missing:
        shown = ", ".join(report.missing[:3])
        raise CheckpointError(
            f"{weights}: does not fit the model: {len(report.missing)} of its tensors are not "
            f"in the file ({shown}, ...); weights of a model without its attention?"
        )


def read_run(path: str | Path) -> RunView:
    """The run folder ``path`` (``config.yaml`` and ``dataset.json`` are needed)."""
    folder = Path(path)
    for name in ("config.yaml", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a run folder: no {name}")
    summary = None
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())[0]
    dataset = json.loads((folder / "dataset.json").read_text())
    return RunView(
        folder, load_config(folder / "config.yaml"), dataset, summary, read_metrics(folder)
    )


@dataclass
class Explained:
    """A model to explain, with its class names and preprocessing."""

    label: str
    model: nn.Module
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    style: str

    @classmethod
    def from_run(cls, run: RunView) -> Explained:
        d = run.dataset
        style = "imagenet" if d["kind"] == "imagenet-like" else "cifar"
        return cls(run.config.model, run.load_model(), list(d["classes"]), tuple(d["mean"]),
                   tuple(d["std"]), int(d["img_size"]), style)  # fmt: skip

    @classmethod
    def from_checkpoint(cls, name: str, checkpoint: str | Path) -> Explained:
        """A run folder, or a weights file for the registered model ``name`` (class names
        then read "class k"; the preprocessing is the registry entry's)."""
        path = Path(checkpoint)
        if path.is_dir():
            return cls.from_run(read_run(path))
        spec = get_model_spec(name)
        model = create_model(name)
        _load(model, path)
        style = "cifar" if spec.input_size[1] <= 64 else "imagenet"
        classes = [f"class {k}" for k in range(model.num_classes)]
        return cls(name, model.eval(), classes, spec.mean, spec.std, spec.input_size[1], style)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images (N, 3, S, S) at ``img_size`` -> the model's normalised input."""
        return normalize_transform(self.mean, self.std)(images)

    def display(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> ``uint8`` (3, S, S) as the model's evaluation transform sees it."""
        t = build_transform(train=False, img_size=self.img_size, style=self.style)
        return t(image.convert("RGB"))


def load_images(paths: list[str | Path]) -> list[tuple[Path, Image.Image]]:
    """Every image of ``paths`` (files, or folders searched recursively), decoded.

    Raises a one-line ``ValueError`` naming the file that does not decode or the folder
    without images."""
    files = image_files(paths)
    out = []
    for f in files:
        try:
            with Image.open(f) as image:
                out.append((f, image.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"{f}: not a readable image ({type(err).__name__})") from None
    return out


def sample_val_images(
    run: RunView, n: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A fixed, class-stratified sample of ``n`` validation images of ``run``'s dataset:
    ``uint8`` images (n, 3, S, S) as evaluated, labels (n,), and object boxes (n, 4) when
    the dataset keeps them (the synthetic shapes), else ``None``."""
    d = run.config.data
    ds, _ = build_dataset(d.path, d.val_split, img_size=d.img_size, augment=d.augment,
                          cache_dir=d.cache_dir, progress=False)  # fmt: skip
    idx = stratified_indices([int(t) for t in ds.targets], n, seed=seed)
    images = torch.stack([ds[i][0] for i in idx])
    labels = torch.tensor([int(ds.targets[i]) for i in idx])
    boxes = getattr(ds, "boxes", None)
    return images, labels, None if boxes is None else boxes[idx]
