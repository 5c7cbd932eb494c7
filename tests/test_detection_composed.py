"""The composed detection set: object photos pasted on real backgrounds, on tiny trees of
solid-colour photos, where every pixel's origin is known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from convattn.detection.composed import composed_detection, composed_options
from convattn.detection.setup import detection_dataset

# Each split has colours of its own (class folders sort: blue=1, red=2), so a pixel tells
# which split's photo it came from.
COLOURS = {
    "train": {"blue": (0, 0, 255), "red": (255, 0, 0)},
    "val": {"blue": (0, 0, 160), "red": (160, 0, 0)},
}
GREY = {"train": 128, "val": 90}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("composed")
    for split in ("train", "val"):
        for name, rgb in COLOURS[split].items():
            folder = root / "objects" / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), rgb).save(folder / f"{i}.png")
        folder = root / "backgrounds" / split / "scene"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (96, 80), (GREY[split],) * 3).save(folder / f"{i}.png")
    return root / "objects", root / "backgrounds"


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_pixel_is_its_splits_object_colour_inside_its_box_and_background_outside(
    trees, split
):
    ds = composed_detection(*map(str, trees), split, size=6, img_size=64, max_objects=4)
    assert ds.classes == ["blue", "red"] and len(ds) == 6
    for i in range(len(ds)):
        image, target = ds.images[i], ds.records[i].target(i)
        covered = torch.zeros(64, 64, dtype=torch.int64)
        assert 1 <= len(target["boxes"]) <= 4
        for box, label in zip(
            target["boxes"].int().tolist(), target["labels"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x2 - x1 == y2 - y1
            rgb = torch.tensor(COLOURS[split][ds.classes[label - 1]], dtype=torch.uint8)
            assert (image[:, y1:y2, x1:x2] == rgb[:, None, None]).all()
            covered[y1:y2, x1:x2] += 1
        assert covered.max() == 1  # no two objects overlap
        assert (image[:, covered == 0] == GREY[split]).all()


def test_images_repeat_by_seed_and_index_and_splits_differ(trees):
    a = composed_detection(*map(str, trees), "train", size=4, img_size=64)
    b = composed_detection(*map(str, trees), "train", size=2, img_size=64)
    assert torch.equal(a.images[:2], b.images)
    assert all(torch.equal(a.records[i].boxes, b.records[i].boxes) for i in range(2))
    other = composed_detection(*map(str, trees), "train", size=4, img_size=64, seed=1)
    assert not all(torch.equal(a.records[i].boxes, other.records[i].boxes) for i in range(4))


def test_the_data_path_names_both_sets_and_the_options(trees):
    objects, backgrounds = trees
    path = f"composed:objects={objects},backgrounds={backgrounds},train=3,val=2,img_size=48"
    train = detection_dataset(path, "train", train=True)
    val = detection_dataset(path, "val", train=False)
    assert (len(train), len(val), train.flip, val.flip) == (3, 2, True, False)
    assert train.images.shape == (3, 3, 48, 48)
    with pytest.raises(ValueError, match="backgrounds=PATH"):
        composed_options(f"objects={objects}", "train")
    with pytest.raises(ValueError, match="unknown composed option 'colour'"):
        composed_options("colour=red", "train")
