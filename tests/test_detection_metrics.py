"""Detection metrics: COCO's through pycocotools and VOC's AP, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convattn.detection.metrics import COCO_FIELDS, coco_evaluate, voc_ap, voc_evaluate


def _t(boxes, labels, crowd=None):
    t = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if crowd is not None:
        t["iscrowd"] = torch.tensor(crowd, dtype=torch.int64)
    return t


def _p(boxes, labels, scores):
    return {**_t(boxes, labels), "scores": torch.tensor(scores, dtype=torch.float32)}


def test_coco_predictions_equal_to_the_ground_truth_score_one():
    targets = [
        _t([[0, 0, 10, 10], [50, 40, 100, 120]], [1, 2]),
        _t([[5, 5, 200, 150]], [3]),
        _t([[30, 30, 40, 60], [60, 10, 70, 20], [0, 100, 64, 164]], [1, 1, 2]),
    ]
    preds = [
        _p(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in targets
    ]
    stats = coco_evaluate(targets, preds, sizes=[(240, 320)] * 3, num_classes=4)
    for name in ("map", "map_50", "map_75", "mar_100", "map_small", "map_medium", "map_large"):
        assert getattr(stats, name) == pytest.approx(1.0), name
    assert list(stats.as_dict()) == list(COCO_FIELDS)


def test_coco_hand_computed_case():
    # One image, two objects A and B of one class. d1 = A exactly (IoU 1), d2 covers half
    # of B (IoU 0.5 exactly). At IoU 0.5 both match: precision 1 at every recall, AP 1.
    # At the nine thresholds 0.55..0.95 only d1 matches: precision 1 up to recall 0.5,
    # then none, so 51 of COCO's 101 recall points (0, 0.01, ..., 0.5) have precision 1:
    # AP 51/101. mAP = (1 + 9 * 51/101) / 10; recall at 100 detections (1 + 9 * 0.5) / 10;
    # with one detection per image (d1) recall is 0.5 at every threshold.
    targets = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    preds = [_p([[0, 0, 10, 10], [20, 20, 30, 25]], [1, 1], [0.9, 0.8])]
    s = coco_evaluate(targets, preds, sizes=[(64, 64)], num_classes=2)
    assert s.map_50 == pytest.approx(1.0)
    assert s.map_75 == pytest.approx(51 / 101)
    assert s.map == pytest.approx((1 + 9 * 51 / 101) / 10)
    assert s.map_small == pytest.approx(s.map)  # both boxes are 10 x 10: "small"
    assert s.map_medium == -1 and s.map_large == -1  # no such objects
    assert s.mar_100 == pytest.approx(0.55) and s.mar_1 == pytest.approx(0.5)


def test_coco_without_detections_is_zero_not_an_error():
    targets = [_t([[0, 0, 10, 10]], [1])]
    empty = [_p([], [], [])]
    assert coco_evaluate(targets, empty, sizes=[(32, 32)], num_classes=2).map == 0.0


def test_coco_crowd_objects_are_ignored():
    targets = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1], crowd=[0, 1])]
    preds = [_p([[0, 0, 10, 10]], [1], [0.9])]  # the crowd region is not missed
    assert coco_evaluate(targets, preds, sizes=[(64, 64)], num_classes=2).map == pytest.approx(1)


def test_coco_a_detection_on_a_crowd_region_is_no_false_positive():
    # Object A (0, 0, 10, 10) and a 20 x 20 region C at (20, 20). d1 (score 0.95) lies
    # inside C: IoU 100/400 = 0.25 with it, but COCO measures a crowd region by the
    # detection's own area (100/100 = 1), so d1 matches C and is ignored; d2 = A: AP 1.
    # Were C an object, d1 would be a false positive ranked first and C missed:
    # precision 1/2 at recall 1/2, so 51 of 101 recall points at 1/2: AP 51/202.
    boxes = [[0, 0, 10, 10], [20, 20, 40, 40]]
    preds = [_p([[25, 25, 35, 35], [0, 0, 10, 10]], [1, 1], [0.95, 0.5])]
    crowd = coco_evaluate([_t(boxes, [1, 1], crowd=[0, 1])], preds, sizes=[(64, 64)], num_classes=2)
    assert crowd.map == pytest.approx(1.0) and crowd.map_50 == pytest.approx(1.0)
    plain = coco_evaluate([_t(boxes, [1, 1], crowd=[0, 0])], preds, sizes=[(64, 64)], num_classes=2)
    assert plain.map == pytest.approx(51 / 202) and plain.map_50 == pytest.approx(51 / 202)


def _voc_case():
    # Class "a": image 0 holds G1, G2; image 1 holds G3 (difficult) and G4; 3 counted.
    # Ranked: d1 = G1 (TP), d2 = G1 again (duplicate: FP), d3 = G3 (difficult: not
    # counted), d4 = G4 (TP), d5 overlaps G2 with IoU 0.4 (FP). Class "b": one object,
    # no detection (AP 0). Class "c": no objects (NaN, left out of the mean).
    targets = [
        _t([[0, 0, 10, 10], [20, 20, 30, 30], [0, 50, 10, 60]], [1, 1, 2]),
        _t([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], crowd=[1, 0]),
    ]
    preds = [
        _p([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 24]], [1, 1, 1], [0.9, 0.8, 0.4]),
        _p([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 1], [0.7, 0.6]),
    ]
    return targets, preds


def test_voc_hand_computed_case_both_methods():
    # Counted: TP, FP, TP, FP; recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    # Area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 beyond: 1/3 + 2/9 = 5/9.
    # 11-point: precision 1 at recall >= 0, .1, .2, .3; 2/3 at .4, .5, .6; 0 at .7..1:
    # (4 + 3 * 2/3) / 11 = 6/11.
    targets, preds = _voc_case()
    area = voc_evaluate(targets, preds, ["a", "b", "c"], method="area")
    assert area.per_class["a"] == pytest.approx(5 / 9)
    assert area.per_class["b"] == 0.0 and math.isnan(area.per_class["c"])
    assert area.map == pytest.approx((5 / 9 + 0) / 2)
    eleven = voc_evaluate(targets, preds, ["a", "b", "c"], method="11point")
    assert eleven.per_class["a"] == pytest.approx(6 / 11)
    assert eleven.map == pytest.approx(3 / 11)


def test_voc_ap_formulas_on_given_curves():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, "area") == pytest.approx(0.5 + 0.5 * 0.5)
    assert voc_ap(rec, prec, "11point") == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    with pytest.raises(ValueError, match="11point"):
        voc_ap(rec, prec, "12point")


def test_voc_perfect_predictions_score_one():
    targets, _ = _voc_case()
    preds = [
        _p(t["boxes"].tolist(), t["labels"].tolist(), [1.0] * len(t["labels"])) for t in targets
    ]
    for method in ("area", "11point"):
        assert voc_evaluate(targets, preds, ["a", "b"], method=method).map == pytest.approx(1.0)
