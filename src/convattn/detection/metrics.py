"""Detection metrics: COCO's through ``pycocotools``, and Pascal VOC's average precision.

- **COCO** (Lin et al., "Microsoft COCO", ECCV 2014, https://arxiv.org/abs/1405.0312):
  :func:`coco_evaluate` builds in-memory ``COCO`` objects of the ground truth and the
  detections and runs ``pycocotools``' ``COCOeval`` for boxes, untouched; its twelve
  figures are returned as :class:`CocoStats` (AP averaged over IoU 0.5:0.95, at 0.5 and
  0.75, by object size, and the average recalls). Crowd (and VOC "difficult") objects are
  ``iscrowd`` there. Deviation: an object's area, which decides small / medium / large,
  is its box's (COCO's own files give the mask's).
- **VOC** (Everingham et al., IJCV 2010): average precision per class at IoU 0.5, with the
  2007 devkit's 11-point interpolation (the mean of the best precision at recall >= 0,
  0.1, ..., 1) or the 2010+ area under the monotone precision envelope. Detections are
  matched greedily by descending score to the unmatched ground truth of highest IoU;
  a match with a "difficult" object counts neither way. Deviation: boxes here are pixel
  edges, so areas have no devkit "+1".
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from .data import Target

__all__ = [
    "COCO_FIELDS",
    "VOC_METHODS",
    "CocoStats",
    "VocResult",
    "coco_evaluate",
    "voc_ap",
    "voc_evaluate",
]

#: The twelve figures of ``COCOeval.summarize()``, in its order.
COCO_FIELDS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
VOC_METHODS = ("11point", "area")


@dataclass(frozen=True)
class CocoStats:
    """``COCOeval``'s twelve figures (-1 where the data has no such objects)."""

    map: float
    map_50: float
    map_75: float
    map_small: float
    map_medium: float
    map_large: float
    mar_1: float
    mar_10: float
    mar_100: float
    mar_small: float
    mar_medium: float
    mar_large: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in COCO_FIELDS}


def _coco_gt(targets: Sequence[Target], sizes: Sequence[tuple[int, int]], num_classes: int):
    images, anns = [], []
    for i, (t, (h, w)) in enumerate(zip(targets, sizes, strict=True)):
        images.append({"id": i, "width": int(w), "height": int(h)})
        crowd = t.get("iscrowd", torch.zeros_like(t["labels"]))
        for box, label, c in zip(
            t["boxes"].tolist(), t["labels"].tolist(), crowd.tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(c),
                }
            )
    cats = [{"id": k} for k in range(1, num_classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def _coco_dets(predictions: Sequence[Target]) -> list[dict]:
    out = []
    for i, p in enumerate(predictions):
        for box, label, score in zip(
            p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            out.append(
                {
                    "image_id": i,
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    return out


def coco_evaluate(
    targets: Sequence[Target],
    predictions: Sequence[Target],
    *,
    sizes: Sequence[tuple[int, int]],
    num_classes: int,
) -> CocoStats:
    """COCO box AP of ``predictions`` (``boxes`` xyxy, ``labels``, ``scores`` per image)
    against ``targets`` (``boxes``, ``labels``, optional ``iscrowd``); ``sizes`` are the
    images' ``(height, width)``, ``num_classes`` counts the background."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        gt = COCO()
        gt.dataset = _coco_gt(targets, sizes, num_classes)
        gt.createIndex()
        dets = _coco_dets(predictions)
        if dets:
            dt = gt.loadRes(dets)
        else:  # loadRes refuses an empty list; no detections is a valid result
            dt = COCO()
            dt.dataset = {**gt.dataset, "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return CocoStats(*(float(v) for v in ev.stats))


def voc_ap(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """Average precision from the recall and precision after each ranked detection."""
    if method == "11point":
        points = [
            precision[recall >= t].max() if (recall >= t).any() else 0.0
            for t in np.linspace(0.0, 1.0, 11)
        ]
        return float(np.mean(points))
    if method != "area":
        raise ValueError(f"unknown VOC method {method!r}; valid: {', '.join(VOC_METHODS)}")
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # the envelope: best precision at recall >= r
    step = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))


@dataclass(frozen=True)
class VocResult:
    """VOC mAP at one IoU: the mean over classes with ground truth, and each class's AP
    (NaN for a class without non-difficult objects)."""

    map: float
    per_class: dict[str, float]
    method: str
    iou: float


def _class_hits(targets, predictions, label: int, iou: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and true-positive flags of class ``label``'s counted detections (ranked),
    and its number of non-difficult objects."""
    found: list[tuple[float, int, int]] = []  # (score, image, detection)
    npos = 0
    for i, (t, p) in enumerate(zip(targets, predictions, strict=True)):
        hard = t.get("iscrowd", torch.zeros_like(t["labels"]))[t["labels"] == label]
        npos += int((hard == 0).sum())
        for j in torch.nonzero(p["labels"] == label).flatten().tolist():
            found.append((float(p["scores"][j]), i, j))
    found.sort(key=lambda f: -f[0])  # stable: ties keep their image order
    taken = {
        i: torch.zeros(int((t["labels"] == label).sum()), dtype=torch.bool)
        for i, t in enumerate(targets)
    }
    scores, tp = [], []
    for score, i, j in found:
        t = targets[i]
        mine = t["labels"] == label
        gts, hard = t["boxes"][mine], t.get("iscrowd", torch.zeros_like(t["labels"]))[mine]
        hit, counted = _match(predictions[i]["boxes"][j], gts, hard, taken[i], iou)
        if counted:
            scores.append(score)
            tp.append(hit)
    return np.array(scores), np.array(tp, dtype=bool), npos


def _match(box, gts, hard, taken, iou: float) -> tuple[bool, bool]:
    """(true positive?, counted?) of one detection; marks the object it takes."""
    if len(gts) == 0:
        return False, True
    ious = box_iou(box[None].float(), gts.float())[0]
    best = int(ious.argmax())
    if float(ious[best]) < iou:
        return False, True
    if bool(hard[best]):
        return False, False  # a difficult object: neither way
    if bool(taken[best]):
        return False, True  # a duplicate
    taken[best] = True
    return True, True


def voc_evaluate(
    targets: Sequence[Target],
    predictions: Sequence[Target],
    classes: Sequence[str],
    *,
    method: str = "area",
    iou: float = 0.5,
) -> VocResult:
    """VOC AP per class (labels ``1..len(classes)``) and their mean (see the module
    docstring); ``iscrowd`` in a target marks its difficult objects."""
    if method not in VOC_METHODS:
        raise ValueError(f"unknown VOC method {method!r}; valid: {', '.join(VOC_METHODS)}")
    per_class = {}
    for k, name in enumerate(classes, start=1):
        _, tp, npos = _class_hits(targets, predictions, k, iou)
        if npos == 0:
            per_class[name] = math.nan
            continue
        ctp = np.cumsum(tp)
        cfp = np.cumsum(~tp)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(rec, prec, method)
    valid = [v for v in per_class.values() if not math.isnan(v)]
    return VocResult(float(np.mean(valid)) if valid else math.nan, per_class, method, iou)
