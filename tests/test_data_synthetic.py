"""The embedded synthetic dataset: deterministic, balanced, one class object per image
inside its box, distinct flip-symmetric shapes, and no shortcut through colour or clutter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convattn.data import SHAPES, SyntheticShapes, render_shapes
from convattn.data._draw import shape_sdf


def test_same_seed_gives_identical_images_boxes_and_labels():
    a, b = render_shapes(range(30), seed=3), render_shapes(range(30), seed=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_different_seed_or_split_gives_different_images():
    base = render_shapes(range(30), seed=0)[0]
    assert not torch.equal(base, render_shapes(range(30), seed=1)[0])
    assert not torch.equal(base, render_shapes(range(30), seed=0, split="val")[0])


def test_sample_depends_only_on_seed_split_and_index():
    full, _, full_boxes = render_shapes(range(40), seed=5)
    picked, _, picked_boxes = render_shapes([33, 2, 17], seed=5)  # other order and batch
    assert torch.equal(picked, full[[33, 2, 17]])
    assert torch.equal(picked_boxes, full_boxes[[33, 2, 17]])
    small = SyntheticShapes("train", size=20, seed=5)  # other split size, chunking
    assert torch.equal(small.images, full[:20])


def test_labels_are_balanced_and_dtypes_are_as_documented():
    ds = SyntheticShapes("val", size=200, seed=1)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (200, 3, 32, 32)
    assert torch.bincount(ds.targets, minlength=10).tolist() == [20] * 10
    assert ds.classes == list(SHAPES) and len(set(SHAPES)) == 10
    image, label = ds[7]
    assert image.shape == (3, 32, 32) and label == 7


@pytest.mark.parametrize("img_size", [32, 48, 64])
def test_boxes_lie_inside_the_image(img_size):
    _, _, boxes = render_shapes(range(100), img_size=img_size)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x1 <= img_size).all() and (y1 <= img_size).all()
    assert ((x1 - x0) >= 5 * img_size / 32).all() and ((y1 - y0) >= 5 * img_size / 32).all()


@pytest.mark.parametrize("img_size", [32, 64])
def test_the_object_is_inside_its_box_and_visible_there(img_size):
    idx = range(60)
    with_obj, _, boxes = render_shapes(idx, img_size=img_size)
    without, _, boxes2 = render_shapes(idx, img_size=img_size, draw_object=False)
    assert torch.equal(boxes, boxes2)
    changed = (with_obj.int() - without.int()).abs().amax(dim=1) > 0  # (N, H, W)
    for i in range(len(idx)):
        x0, y0, x1, y1 = boxes[i].int().tolist()
        inside = torch.zeros_like(changed[i])
        inside[y0:y1, x0:x1] = True
        assert not changed[i][~inside].any(), f"sample {i}: pixels changed outside the box"
        # Distractors drawn on top hide a little of the object, never most of it.
        assert changed[i][inside].float().mean() > 0.3, f"sample {i}: object barely visible"


def _masks(size: int = 41) -> np.ndarray:
    grid = (np.arange(size, dtype=np.float32) - size // 2) / (size // 2 - 1)
    v, u = np.meshgrid(grid, grid, indexing="ij")
    return np.stack([shape_sdf(k, u, v) < 0 for k in range(len(SHAPES))])


def test_the_ten_shapes_are_distinct():
    masks = _masks()
    for a in range(len(SHAPES)):
        for b in range(a + 1, len(SHAPES)):
            union = (masks[a] | masks[b]).sum()
            differ = (masks[a] ^ masks[b]).sum()
            assert differ > 0.15 * union, f"{SHAPES[a]} and {SHAPES[b]} look alike"


def test_shapes_are_left_right_symmetric_so_flips_keep_the_label():
    masks = _masks()
    assert np.array_equal(masks, masks[:, :, ::-1])


def _nearest_mean_accuracy(train: np.ndarray, y_train, test: np.ndarray, y_test) -> float:
    means = np.stack([train[y_train == k].mean(0) for k in range(10)])
    dist = ((test[:, None, :] - means[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == y_test).mean())


def test_colour_alone_does_not_give_the_class():
    tr_x, tr_y, _ = render_shapes(range(2000))
    te_x, te_y, _ = render_shapes(range(1000), split="val")
    colour = lambda x: x.float().mean(dim=(2, 3)).numpy()  # noqa: E731
    acc = _nearest_mean_accuracy(colour(tr_x), tr_y.numpy(), colour(te_x), te_y.numpy())
    assert acc < 0.2  # chance is 0.1


def test_background_and_clutter_alone_do_not_give_the_class():
    tr_x, tr_y, _ = render_shapes(range(2000), draw_object=False)
    te_x, te_y, _ = render_shapes(range(1000), split="val", draw_object=False)
    pixels = lambda x: x.float().reshape(len(x), -1).numpy()  # noqa: E731
    acc = _nearest_mean_accuracy(pixels(tr_x), tr_y.numpy(), pixels(te_x), te_y.numpy())
    assert acc < 0.2


def test_bad_arguments_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        SyntheticShapes("holdout")
    with pytest.raises(ValueError, match=r"\[16, 128\]"):
        SyntheticShapes(img_size=8)
    with pytest.raises(ValueError, match="noise"):
        SyntheticShapes(size=10, noise=2.0)
