"""COCO-format and Pascal VOC-format annotations, checked record by record.

- COCO (Lin et al., "Microsoft COCO", ECCV 2014, https://arxiv.org/abs/1405.0312): one
  JSON file with ``images`` (``id``, ``file_name``, ``width``, ``height``),
  ``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``,
  optional ``iscrowd``) and ``categories`` (``id``, ``name``); images in a folder.
  Category ids (COCO's run 1..90 with gaps) become labels ``1..K`` in id order.
- VOC (Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010):
  ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and ``ImageSets/Main/<split>.txt``;
  boxes are 1-based inclusive pixel indices, read as edges ``(xmin - 1, ymin - 1, xmax,
  ymax)``; "difficult" objects are kept as crowd (ignored by evaluation).

Bad records never stop a run: each is logged (``logging.warning``) with its file and the
record, kept in the dataset's ``problems`` and skipped. They are boxes leaving the image
by more than :data:`TOLERANCE` px (boxes within it are clipped, and refused when nothing
is left), zero-area or inverted boxes, malformed boxes, unknown categories, ids that are
not integers or strings, images listed but missing (or unreadable), duplicate image ids,
unparsable XML, and a truncated or broken JSON file, of which the complete records
before the damage are kept; when the damage may have cut the annotations, images left
without any are dropped too (their objects may be lost, and they would be learned as
background). Image sizes are read from the files' headers; a COCO ``width``/``height``
that differs is logged.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data import DetectionDataset, ImageRecord
from .salvage import salvage_json

__all__ = ["TOLERANCE", "VOC_CLASSES", "check_box", "read_coco", "read_voc"]

log = logging.getLogger("convattn")

#: Pixels a box may leave the image by (annotation tools round); such boxes are clipped.
TOLERANCE = 1.0
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class _Problems(list):
    """The skipped records of one file, each logged as it is found."""

    def __init__(self, file: Path) -> None:
        super().__init__()
        self.file = file

    def add(self, record: Any, why: str) -> None:
        line = f"{self.file}: {why}; skipped: {record}"
        log.warning("%s", line)
        self.append(line)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def check_box(
    box: Sequence[float], width: int, height: int
) -> tuple[list[float] | None, str | None]:
    """An ``xyxy`` box clipped to the image, or None and why it is refused."""
    if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        return None, "malformed box"
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None, "zero-area or inverted box"
    t = TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return None, f"box outside the {width}x{height} image"
    # A box within the tolerance but wholly beyond an edge has nothing left once clipped.
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        return None, f"zero-area box once clipped to the {width}x{height} image"
    return [x1, y1, x2, y2], None


def _record(w: int, h: int, objs: list[tuple[list[float], int, int]], **kw: Any) -> ImageRecord:
    boxes = torch.tensor([o[0] for o in objs], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([o[1] for o in objs], dtype=torch.int64)
    crowd = torch.tensor([o[2] for o in objs], dtype=torch.int64)
    return ImageRecord(w, h, boxes, labels, crowd, **kw)


def _coco_categories(data: dict, bad: _Problems) -> dict[Any, tuple[int, str]]:
    """Category id -> (label 1..K in id order, name)."""
    cats = {}
    for c in data.get("categories", []):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c["id"], int):
            bad.add(c, "category without an integer id")
            continue
        cats[c["id"]] = str(c.get("name", c["id"]))
    return {cid: (k + 1, cats[cid]) for k, cid in enumerate(sorted(cats))}


def _is_id(value: Any) -> bool:
    """COCO ids are integers (strings are accepted); lists and objects cannot be keys."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _coco_images(data: dict, image_dir: Path, bad: _Problems) -> dict[Any, ImageRecord]:
    """Image id -> an empty record of the file's size, for images that exist."""
    out: dict[Any, ImageRecord] = {}
    for im in data.get("images", []):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            bad.add(im, "image without id or file_name")
            continue
        if not _is_id(im["id"]):
            bad.add(im, "image id is not an integer or a string")
            continue
        if im["id"] in out:
            bad.add(im, f"duplicate image id {im['id']}")
            continue
        path = image_dir / str(im["file_name"])
        size = _image_size(path) if path.is_file() else None
        if size is None:
            bad.add(im, "image listed but missing" if not path.is_file() else "unreadable image")
            continue
        listed = (im.get("width"), im.get("height"))
        if listed != (None, None) and listed != size:
            got = f"{path.name} is {size[0]}x{size[1]}, not the listed {listed[0]}x{listed[1]}"
            log.warning("%s: image %s; its file's size is used", bad.file, got)
        out[im["id"]] = _record(*size, [], path=path, name=str(im["file_name"]))
    return out


def read_coco(
    annotation_file: str | Path, image_dir: str | Path, *, flip: bool = False
) -> DetectionDataset:
    """A COCO-format annotation file and its image folder as a dataset (bad records
    reported and skipped, see the module docstring); boxes become ``xyxy``."""
    file, bad = Path(annotation_file), _Problems(Path(annotation_file))
    data, damage, cut = salvage_json(file.read_text(encoding="utf-8", errors="replace"))
    if damage:
        kept = {k: len(v) for k, v in data.items() if isinstance(v, list)}
        bad.add(f"(records kept: {kept})", damage)
    cats, images = _coco_categories(data, bad), _coco_images(data, Path(image_dir), bad)
    objects: dict[Any, list] = {i: [] for i in images}
    for ann in data.get("annotations", []):
        why = _coco_annotation_problem(ann, images, cats)
        if why is None:
            rec = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            box, why = check_box([x, y, x + w, y + h], rec.width, rec.height)
        if why is not None:
            bad.add(ann, why)
            continue
        objects[ann["image_id"]].append(
            (box, cats[ann["category_id"]][0], int(bool(ann.get("iscrowd", 0))))
        )
    if damage and (cut == "annotations" or "annotations" not in data):  # objects lost
        for i in [i for i, objs in objects.items() if not objs]:
            bad.add(images.pop(i).name, "no annotation before the damage (objects may be lost)")
    records = [
        _record(r.width, r.height, objects[i], path=r.path, name=r.name) for i, r in images.items()
    ]
    classes = [name for _, name in sorted(cats.values())]
    return DetectionDataset(records, classes, file.stem, flip, problems=list(bad))


def _coco_annotation_problem(ann: Any, images: dict, cats: dict) -> str | None:
    if not isinstance(ann, dict):
        return "annotation is not an object"
    if not _is_id(ann.get("image_id")) or ann["image_id"] not in images:
        return f"unknown or skipped image_id {ann.get('image_id')!r}"
    if not _is_id(ann.get("category_id")) or ann["category_id"] not in cats:
        return f"unknown category id {ann.get('category_id')!r}"
    box = ann.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, int | float) for v in box)
    ):
        return "malformed bbox (expected [x, y, width, height])"
    return None


def _voc_object(obj: ET.Element, names: dict[str, int], w: int, h: int):
    """(box, label, difficult) of one ``<object>``, or None and why it is refused."""
    name = (obj.findtext("name") or "").strip()
    if name not in names:
        return None, f"unknown category {name!r}"
    bb = obj.find("bndbox")
    try:
        raw = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError):
        return None, "malformed bndbox"
    box, why = check_box([raw[0] - 1, raw[1] - 1, raw[2], raw[3]], w, h)
    if box is None:
        return None, why
    return (box, names[name], int((obj.findtext("difficult") or "0").strip() == "1")), None


def _voc_image(
    root: Path, image_id: str, names: dict[str, int], bad: _Problems
) -> ImageRecord | None:
    xml, path = root / "Annotations" / f"{image_id}.xml", root / "JPEGImages" / f"{image_id}.jpg"
    try:
        tree = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as err:
        bad.add(image_id, f"annotation {xml.name} unreadable ({err})")
        return None
    name = tree.findtext("filename")
    path = root / "JPEGImages" / name.strip() if name else path
    size = _image_size(path) if path.is_file() else None
    if size is None:
        bad.add(image_id, f"image {path.name} listed but missing or unreadable")
        return None
    w, h = size
    objs = []
    for k, obj in enumerate(tree.iter("object")):
        parsed, why = _voc_object(obj, names, w, h)
        if parsed is None:
            bad.add(
                f"{xml.name} object {k} ({ET.tostring(obj, encoding='unicode').split()[:12]})", why
            )
            continue
        objs.append(parsed)
    return _record(w, h, objs, path=path, name=image_id)


def read_voc(
    root: str | Path,
    split: str = "trainval",
    *,
    classes: Sequence[str] = VOC_CLASSES,
    flip: bool = False,
) -> DetectionDataset:
    """A Pascal VOC-format folder's ``split`` (``ImageSets/Main/<split>.txt``; every XML
    file of ``Annotations/`` when that list is absent) as a dataset."""
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    bad = _Problems(listing if listing.is_file() else root / "Annotations")
    if listing.is_file():
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    names = {c: k + 1 for k, c in enumerate(classes)}
    records = [r for i in ids if (r := _voc_image(root, i, names, bad)) is not None]
    return DetectionDataset(records, list(classes), f"voc-{split}", flip, problems=list(bad))
