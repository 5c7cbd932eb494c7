"""The report's detection part: run folders of ``convattn detect train``, their mAP table,
AP per class, and predicted boxes on a fixed sample of evaluation images.

The pictures put the ground truth in the first row and each run's detections (boxes
scoring at least ``score_thresh``, labelled with class and score) in the rows below, on
the same images of the first run's evaluation split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..detection.config import DetectionConfig
from ..detection.draw import draw_detections
from ..detection.evaluate import load_run_detector, run_config
from ..detection.setup import detection_dataset
from ..detection.summary import SUMMARY_COLUMNS
from ..engine.run import read_metrics

__all__ = [
    "DetectionRunView",
    "class_rows",
    "detection_rows",
    "is_detection_run",
    "read_detection_run",
    "sample_images",
    "summary_rows",
]


def is_detection_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder of ``convattn detect train``."""
    info = Path(path) / "dataset.json"
    return info.is_file() and json.loads(info.read_text()).get("task") == "detection"


@dataclass
class DetectionRunView:
    """What a report reads of one detection run folder."""

    dir: Path
    config: DetectionConfig
    classes: list[str]
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def evaluated(self) -> dict[str, Any]:
        """The last record with evaluation figures (empty before the first)."""
        return next((r for r in reversed(self.metrics) if "val_map" in r), {})


def read_detection_run(path: str | Path) -> DetectionRunView:
    """The detection run folder ``path`` (``config.yaml`` and ``dataset.json`` needed)."""
    folder = Path(path)
    cfg, classes = run_config(folder)
    summary = None
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())[0]
    return DetectionRunView(folder, cfg, classes, summary, read_metrics(folder))


def _cell(v: Any, fmt: str) -> str:
    bad = v is None or (isinstance(v, float) and not math.isfinite(v))
    return "-" if bad else fmt.format(v)


def summary_rows(runs: list[DetectionRunView]) -> tuple[list[str], list[list[str]]]:
    """The mAP table: heading and one row per run (from its ``summary.json``)."""
    columns = [*SUMMARY_COLUMNS, ("epochs", "epochs", "{}")]
    head = ["run"] + [c[0] for c in columns]
    rows = [[r.name] + [_cell((r.summary or {}).get(k), f) for _, k, f in columns] for r in runs]
    return head, rows


def class_rows(runs: list[DetectionRunView]) -> tuple[list[str], list[list[str]]]:
    """VOC AP at IoU 0.5 (area method, %) per class (rows) and run (columns), from each
    run's last evaluation."""
    per = [r.evaluated.get("val_ap_per_class", {}) for r in runs]
    rows = [[c] + [_cell(p.get(c), "{:.1f}") for p in per] for c in runs[0].classes]
    return ["class"] + [r.name for r in runs], rows


def sample_images(run: DetectionRunView, n: int, *, seed: int = 0) -> tuple[list, list]:
    """``n`` evaluation images of ``run`` chosen by ``seed`` (in their order): float
    images (3, H, W) and their targets."""
    d = run.config.data
    ds = detection_dataset(d.path, d.val_split, train=False)
    g = torch.Generator().manual_seed(seed)
    idx = sorted(torch.randperm(len(ds), generator=g)[: min(n, len(ds))].tolist())
    return [ds.load_image(i) for i in idx], [ds.records[i].target(i) for i in idx]


@torch.no_grad()
def detection_rows(
    runs: list[DetectionRunView], n: int, *, seed: int = 0, score_thresh: float = 0.5
) -> list[tuple[str, list[torch.Tensor]]]:
    """Rows of ``uint8`` pictures (3, H, W): the ground truth of ``n`` evaluation images
    of the first run, then each run's detections on them."""
    images, targets = sample_images(runs[0], n, seed=seed)
    classes = runs[0].classes
    truth = [_draw(im, t, classes, 0.0) for im, t in zip(images, targets, strict=True)]
    rows = [("ground truth", truth)]
    for r in runs:
        model = load_run_detector(r.dir, last=not (r.dir / "best.safetensors").is_file())[0]
        outs = model(images)
        drawn = [_draw(im, o, r.classes, score_thresh) for im, o in zip(images, outs, strict=True)]
        rows.append((r.name, drawn))
    return rows


#: Pictures are drawn at least this many pixels high, so labels stay small beside the
#: objects of small images.
MIN_SIDE = 192


def _draw(image: torch.Tensor, output: dict, classes: list[str], thresh: float) -> torch.Tensor:
    """``draw_detections`` on the image enlarged by a whole factor (nearest neighbour)."""
    k = max(1, math.ceil(MIN_SIDE / min(image.shape[-2:])))
    big = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    return draw_detections(big, {**output, "boxes": output["boxes"] * k}, classes,
                           score_thresh=thresh)  # fmt: skip
