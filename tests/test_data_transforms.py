"""Transforms: uint8 (3, S, S) per sample for every style and size, the 256/224 evaluation
resize, batch normalisation against a float64 re-computation, mixup/cutmix labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from convattn.data import (
    AUTO_AUGMENTS,
    build_mix,
    build_transform,
    eval_resize_size,
    normalize_transform,
)
from convattn.data.mix import BatchCollate


def _pil(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("style", ["imagenet", "cifar", "none"])
@pytest.mark.parametrize("img_size", [32, 224])
def test_every_style_gives_uint8_square_images_from_pil_or_tensor(train, style, img_size):
    t = build_transform(train=train, img_size=img_size, style=style)
    for image in (_pil(300, 200), torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)):
        out = t(image)
        assert type(out) is torch.Tensor and out.dtype == torch.uint8
        assert out.shape == (3, img_size, img_size)


def test_tensor_pipelines_need_no_pil_conversion():
    t = build_transform(train=True, img_size=32, style="cifar", native_size=32, pil_input=False)
    out = t(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert type(out) is torch.Tensor and out.shape == (3, 32, 32)
    assert not any(type(step).__name__ == "PILToTensor" for step in t.transforms)
    identity = build_transform(
        train=False, img_size=32, native_size=32, style="cifar", pil_input=False
    )
    assert isinstance(identity, v2.Identity)


@pytest.mark.parametrize("img_size,short_side", [(224, 256), (160, 183), (32, 37), (288, 329)])
def test_evaluation_resize_keeps_the_papers_256_to_224_ratio(img_size, short_side):
    assert eval_resize_size(img_size) == short_side


def test_evaluation_crop_is_the_centre_of_the_resized_image():
    # A horizontal ramp 0..255 over 512 px: resize to 256, centre crop 224 keeps columns
    # 16..239 of 256, i.e. the middle 87.5% of the ramp.
    ramp = np.tile(np.linspace(0, 255, 512), (512, 1)).astype(np.uint8)
    image = torch.from_numpy(np.stack([ramp] * 3))
    out = build_transform(train=False, img_size=224, style="imagenet")(image).float()
    assert out.shape == (3, 224, 224)
    assert out[0, 100, 0].item() == pytest.approx(255 * 16.5 / 256, abs=2)
    assert out[0, 100, -1].item() == pytest.approx(255 * 239.5 / 256, abs=2)


def test_cifar_style_at_native_size_only_crops_and_flips():
    x = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8)
    x = x.reshape(3, 32, 32)
    assert torch.equal(
        build_transform(train=False, img_size=32, style="cifar", native_size=32)(x), x
    )
    torch.manual_seed(0)
    t = build_transform(train=True, img_size=32, style="cifar", native_size=32)
    outs = [t(x) for _ in range(20)]
    assert any(not torch.equal(o, x) for o in outs)  # random shifts happen
    for o in outs:  # every output is a (possibly flipped) window of the zero-padded image
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        windows = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(torch.equal(o, w) or torch.equal(o, w.flip(-1)) for w in windows)


@pytest.mark.parametrize("policy", AUTO_AUGMENTS)
def test_auto_augment_policies_keep_shape_and_dtype(policy):
    t = build_transform(train=True, img_size=32, style="cifar", native_size=32, auto_augment=policy)
    out = t(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def test_bad_choices_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="'imagenet', 'cifar', 'none'"):
        build_transform(train=True, img_size=32, style="fancy")
    with pytest.raises(ValueError, match="'cifar10'"):
        build_transform(train=True, img_size=32, auto_augment="cifar100")
    with pytest.raises(ValueError, match="training"):
        build_transform(train=False, img_size=32, auto_augment="imagenet")


def test_batch_normalisation_matches_a_float64_computation():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    batch = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    out = normalize_transform(mean, std)(batch)
    ref = (batch.double() / 255 - torch.tensor(mean).double().view(3, 1, 1)) / torch.tensor(
        std
    ).double().view(3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_gives_soft_labels_that_sum_to_one(mixup, cutmix):
    mix = build_mix(5, mixup_alpha=mixup, cutmix_alpha=cutmix)
    collate = BatchCollate(normalize_transform((0.5,) * 3, (0.25,) * 3), mix)
    samples = [(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), i % 5) for i in range(6)]
    images, labels = collate(samples)
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (6, 5)
    torch.testing.assert_close(labels.sum(1), torch.ones(6))
    assert build_mix(5) is None
    with pytest.raises(ValueError, match=">= 0"):
        build_mix(5, mixup_alpha=-1.0)
