"""Detection data: the generated scenes, flips, loaders, and the COCO and VOC readers on
small fixture files holding every kind of bad record (each reported with its file and
record, then skipped)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from convattn.data.scenes import render_scenes
from convattn.detection.data import build_detection_loader, hflip, synthetic_detection
from convattn.detection.readers import check_box, read_coco, read_voc
from convattn.detection.salvage import salvage_json


def test_scenes_are_deterministic_by_seed_and_index():
    a, b = render_scenes(range(12), seed=4), render_scenes(range(12), seed=4)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    picked = render_scenes([9, 3], seed=4)  # other batch and order
    assert torch.equal(picked.images, a.images[[9, 3]])
    assert torch.equal(picked.labels[0], a.labels[9])
    assert not torch.equal(render_scenes(range(12), seed=5).images, a.images)
    assert not torch.equal(render_scenes(range(12), seed=4, split="val").images, a.images)


def test_scenes_hold_several_separate_objects_inside_the_image():
    sc = render_scenes(range(60), img_size=96, num_classes=4, max_objects=4)
    counts = [len(b) for b in sc.boxes]
    assert min(counts) == 1 and max(counts) == 4
    assert len(torch.unique(torch.cat(sc.labels))) == 4
    for boxes in sc.boxes:
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert (iou == 0).all()  # one grid cell each: objects never overlap
    widths = torch.cat([b[:, 2] - b[:, 0] for b in sc.boxes])
    assert widths.max() > 2 * widths.min()  # several scales


def test_each_object_is_drawn_inside_its_box():
    sc = render_scenes(range(20), max_objects=3, clutter=0, noise=0.0)
    for img, boxes in zip(sc.images, sc.boxes, strict=True):
        for x1, y1, x2, y2 in boxes.int().tolist():  # a smooth gradient but for the object
            assert img[:, y1:y2, x1:x2].float().std() > 10
            grown = img[:, max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2].float()
            assert grown.std() > 10


def test_synthetic_detection_targets_follow_torchvision():
    ds = synthetic_detection("train", size=8, img_size=64, num_classes=3, flip=False)
    assert len(ds) == 8 and ds.num_classes == 4 and ds.classes == ["disk", "ring", "square"]
    image, target = ds[5]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert image.min() >= 0 and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64
    assert target["labels"].min() >= 1 and target["labels"].max() <= 3
    assert int(target["image_id"]) == 5 and (target["iscrowd"] == 0).all()


def test_hflip_mirrors_boxes():
    image = torch.zeros(3, 10, 20)
    image[:, 2:5, 1:4] = 1
    flipped, t = hflip(
        image, {"boxes": torch.tensor([[1.0, 2, 4, 5]]), "labels": torch.tensor([1])}
    )
    assert t["boxes"].tolist() == [[16.0, 2.0, 19.0, 5.0]]
    assert flipped[:, 2:5, 16:19].min() == 1 and flipped.sum() == image.sum()


def test_loader_yields_lists_and_repeats_its_shuffle():
    ds = synthetic_detection("train", size=10, img_size=32, flip=False)
    loader = build_detection_loader(ds, 4, train=True, seed=3)
    first = [int(t["image_id"]) for _, ts in loader for t in ts]
    again = build_detection_loader(ds, 4, train=True, seed=3)
    images, targets = next(iter(again))
    assert isinstance(images, list) and len(images) == 4 and isinstance(targets[0], dict)
    assert [int(t["image_id"]) for t in targets] == first[:4]
    assert len(first) == 8 and len(set(first)) == 8  # the last incomplete batch is dropped
    assert [int(t["image_id"]) for _, ts in loader for t in ts] != first  # the next epoch


def _jpeg(path: Path, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)


def _coco_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    _jpeg(images / "a.jpg")
    _jpeg(images / "b.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "missing.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12]},  # good
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40.5, 30]},  # clipped
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [35, 5, 20, 5]},  # outside
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 8]},  # zero area
            {"id": 14, "image_id": 2, "category_id": 7, "bbox": [5, 5, -4, 8]},  # inverted
            {"id": 15, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},  # category
            {"id": 16, "image_id": 3, "category_id": 7, "bbox": [1, 1, 5, 5]},  # no image
            {"id": 17, "image_id": 2, "category_id": 3, "bbox": [1, 1, "x", 5]},  # malformed
            {"id": 18, "image_id": 2, "category_id": 3, "bbox": [4, 4, 6, 6], "iscrowd": 1},
        ],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data, indent=1))
    return ann, images


def test_coco_reader_keeps_good_records_and_reports_each_bad_one(tmp_path, caplog):
    ann, images = _coco_fixture(tmp_path)
    with caplog.at_level(logging.WARNING, logger="convattn"):
        ds = read_coco(ann, images)
    assert ds.classes == ["dog", "cat"]  # category ids 3, 7 -> labels 1, 2
    assert [r.name for r in ds.records] == ["a.jpg", "b.jpg"]
    _, t = ds[0]
    assert t["boxes"].tolist() == [[2.0, 3.0, 12.0, 15.0], [0.0, 0.0, 40.0, 30.0]]
    assert t["labels"].tolist() == [2, 1]
    _, t = ds[1]
    assert t["boxes"].tolist() == [[4.0, 4.0, 10.0, 10.0]] and t["iscrowd"].tolist() == [1]
    reasons = {
        "image listed but missing": "missing.jpg",
        "duplicate image id 2": "b.jpg",
        "box outside the 40x30 image": "'id': 12",
        "zero-area or inverted box": "'id': 13",
        "unknown category id 99": "'id': 15",
        "unknown or skipped image_id 3": "'id': 16",
        "malformed bbox": "'id': 17",
    }
    for why, record in reasons.items():
        hits = [p for p in ds.problems if why in p and record in p]
        assert hits and str(ann) in hits[0], why
    assert sum("zero-area or inverted" in p for p in ds.problems) == 2  # ids 13 and 14
    assert len(ds.problems) == 8 == ds.num_skipped
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 8


def test_coco_reader_salvages_a_truncated_json(tmp_path, caplog):
    ann, images = _coco_fixture(tmp_path)
    text = ann.read_text()
    cut = text.index('"id": 13')  # inside the fourth annotation
    ann.write_text(text[:cut])
    with caplog.at_level(logging.WARNING, logger="convattn"):
        ds = read_coco(ann, images)
    broken = [p for p in ds.problems if "broken JSON" in p]
    assert len(broken) == 1 and str(ann) in broken[0] and "'annotations': 3" in broken[0]
    # b.jpg's annotations came after the cut: kept, it would be learned as background
    assert [r.name for r in ds.records] == ["a.jpg"] and len(ds.records[0].labels) == 2
    lost = [p for p in ds.problems if "no annotation before the damage" in p]
    assert len(lost) == 1 and "b.jpg" in lost[0]


def test_coco_reader_keeps_empty_images_of_a_file_damaged_after_its_annotations(tmp_path):
    ann, images = _coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][:3]  # image 2 has no objects at all
    text = json.dumps({**data, "info": {"year": 2024}})
    ann.write_text(text[: text.index('"year"')])  # the damage is in "info", after them
    ds = read_coco(ann, images)
    assert [r.name for r in ds.records] == ["a.jpg", "b.jpg"]
    assert not any("no annotation before the damage" in p for p in ds.problems)


def test_coco_reader_reports_ids_that_cannot_be_keys(tmp_path):
    ann, images = _coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["images"].append({"id": [4], "file_name": "a.jpg"})
    data["annotations"] += [
        {"id": 20, "image_id": [1], "category_id": 7, "bbox": [1, 1, 5, 5]},
        {"id": 21, "image_id": 1, "category_id": {"id": 7}, "bbox": [1, 1, 5, 5]},
    ]
    ann.write_text(json.dumps(data))
    ds = read_coco(ann, images)
    assert [r.name for r in ds.records] == ["a.jpg", "b.jpg"] and len(ds[0][1]["labels"]) == 2
    for why, record in (
        ("image id is not an integer or a string", "[4]"),
        ("unknown or skipped image_id [1]", "'id': 20"),
        ("unknown category id {'id': 7}", "'id': 21"),
    ):
        assert any(why in p and record in p for p in ds.problems), why
    assert len(ds.problems) == 8 + 3


def test_coco_reader_takes_the_image_files_size_over_the_listed_one(tmp_path, caplog):
    ann, images = _coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["images"][1].update(width=400, height=300)  # b.jpg is 40 x 30
    data["annotations"].append({"id": 30, "image_id": 2, "category_id": 7, "bbox": [1, 1, 60, 5]})
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="convattn"):
        ds = read_coco(ann, images)
    assert (ds.records[1].width, ds.records[1].height) == (40, 30)
    assert any("b.jpg is 40x30, not the listed 400x300" in r.message for r in caplog.records)
    assert any("box outside the 40x30 image" in p and "'id': 30" in p for p in ds.problems)


def test_salvage_json_keeps_complete_entries_and_names_the_cut_one():
    data, damage, cut = salvage_json('{"a": [1, {"b": 2}, [3, 4]], "c": {"d": 1}, "e": [5, {"f"')
    assert data == {"a": [1, {"b": 2}, [3, 4]], "c": {"d": 1}, "e": [5]}
    assert "line 1" in damage and cut == "e"
    cut_value, cut_key = salvage_json('{"a": [1], "b": {"c": '), salvage_json('{"a": [1], "b')
    assert (cut_value.data, cut_value.cut) == ({"a": [1]}, "b")
    assert (cut_key.data, cut_key.cut) == ({"a": [1]}, None)  # between entries
    assert salvage_json('{"a": [1] "b": 2}').cut is None  # a complete list, then damage
    assert salvage_json('{"x": 1}') == ({"x": 1}, None, None)
    assert salvage_json("")[0] == {}


@pytest.mark.parametrize(
    "box",
    [
        (-0.9, 0, -0.1, 5),  # left of the image, within the tolerance: inverted once clipped
        (40, 0, 40.5, 5),  # starts at the right edge: zero width once clipped
        (3, 30, 8, 31),  # starts at the bottom edge: zero height once clipped
    ],
)
def test_a_box_within_the_tolerance_with_nothing_inside_the_image_is_refused(box):
    clipped, why = check_box(box, 40, 30)
    assert clipped is None and "zero-area" in why and "40x30" in why


def test_a_box_within_the_tolerance_is_clipped_to_the_image():
    assert check_box((-0.9, -1.0, 40.9, 31.0), 40, 30) == ([0.0, 0.0, 40.0, 30.0], None)
    assert check_box((-1.1, 0, 5, 5), 40, 30)[1] == "box outside the 40x30 image"


def _voc_xml(objects: str, filename: str = "") -> str:
    name = f"<filename>{filename}</filename>" if filename else ""
    return (
        f"<annotation>{name}<size><width>40</width><height>30</height></size>{objects}</annotation>"
    )


def _obj(name: str, box: tuple, difficult: int = 0) -> str:
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></object>"
    )


def test_voc_reader_keeps_good_records_and_reports_each_bad_one(tmp_path, caplog):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _jpeg(root / "JPEGImages" / "000001.jpg")
    _jpeg(root / "JPEGImages" / "000002.jpg")
    objs = (
        _obj("cat", (1, 2, 10, 12))
        + _obj("dog", (5, 5, 8, 9), difficult=1)
        + _obj("dog", (30, 5, 60, 9))
        + _obj("cat", (9, 9, 3, 12))
        + _obj("unicorn", (1, 1, 5, 5))
    )
    (root / "Annotations" / "000001.xml").write_text(_voc_xml(objs))
    (root / "Annotations" / "000002.xml").write_text("<annotation><object>")  # broken
    (root / "Annotations" / "000003.xml").write_text(_voc_xml(_obj("cat", (1, 1, 5, 5))))
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n000002\n000003\n")
    with caplog.at_level(logging.WARNING, logger="convattn"):
        ds = read_voc(root, "train", classes=["cat", "dog"])
    assert [r.name for r in ds.records] == ["000001"]
    _, t = ds[0]
    assert t["boxes"].tolist() == [[0.0, 1.0, 10.0, 12.0], [4.0, 4.0, 8.0, 9.0]]
    assert t["labels"].tolist() == [1, 2] and t["iscrowd"].tolist() == [0, 1]
    for why in (
        "box outside the 40x30 image",
        "zero-area or inverted box",
        "unknown category 'unicorn'",
        "000002.xml unreadable",
        "000003.jpg listed but missing",
    ):
        assert any(why in p for p in ds.problems), why
    assert all(p.startswith(str(root)) for p in ds.problems)
    assert len(ds.problems) == 5
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 5


def test_voc_reader_without_a_split_list_reads_every_annotation(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    _jpeg(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(_voc_xml(_obj("person", (1, 1, 5, 5))))
    ds = read_voc(root, "trainval")
    assert len(ds) == 1 and ds.classes[14] == "person" and ds[0][1]["labels"].tolist() == [15]


def test_file_datasets_load_images_as_floats(tmp_path):
    ann, images = _coco_fixture(tmp_path)
    image, _ = read_coco(ann, images)[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert image[0, 0, 0] == pytest.approx(120 / 255, abs=2 / 255)


@pytest.mark.parametrize("flip", [False, True])
def test_file_datasets_flip_pixels_and_boxes_together(tmp_path, flip):
    ann, images = _coco_fixture(tmp_path)
    left, right = (120, 30, 200), (10, 200, 40)
    asym = Image.new("RGB", (40, 30), right)
    asym.paste(Image.new("RGB", (16, 30), left))  # columns 0..15 left's colour
    asym.save(images / "a.jpg", quality=95)
    ds = read_coco(ann, images, flip=flip)
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, t = ds[0]
        mirrored = image[1, 15, 36] < 0.5  # green of left's colour at column 36 (= 39 - 3)
        seen.add(bool(mirrored))
        near, far = (right, left) if mirrored else (left, right)
        assert image[:, 15, 3].mul(255).tolist() == pytest.approx(near, abs=6)
        assert image[:, 15, 36].mul(255).tolist() == pytest.approx(far, abs=6)
        # boxes (2, 3, 12, 15) and (0, 0, 40, 30) of the 40 px wide image, mirrored: x -> 40 - x
        want = [[28.0, 3.0, 38.0, 15.0], [0.0, 0.0, 40.0, 30.0]] if mirrored else [
            [2.0, 3.0, 12.0, 15.0], [0.0, 0.0, 40.0, 30.0]]  # fmt: skip
        assert t["boxes"].tolist() == want
    assert seen == ({False, True} if flip else {False})
