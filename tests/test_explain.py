"""convattn.explain: Grad-CAM and Grad-CAM++ against a computation written out here,
attention maps against the float64 reference of the layers, localisation scores against
hand-worked maps, and the model left exactly as it was found."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import reference as ref
from convattn import add_attention, create_model
from convattn.data import SyntheticShapes
from convattn.explain import (
    GradCAM,
    GradCAMPlusPlus,
    box_mask,
    capture_attention,
    default_target_layer,
    energy_in_box,
    localization_scores,
    normalize_maps,
    pointing_game,
)
from convattn.layers import BAM, CBAM, set_impl
from fused_spy import spy_fused

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def _tiny(name="cifar_resnet20_cbam", impl="eager", dtype=torch.float64, seed=0):
    """A CIFAR ResNet-20 in eval mode with random BatchNorms (spatial gates included, so
    no gate sits at its 0.5 start) and the given attention implementation."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    set_impl(model, impl)
    return model.to(dtype).eval()


def _images(n=2, size=32, dtype=torch.float64, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _upsample(maps, height, width):
    """Bilinear resize with half-pixel centres (align_corners=False), written out as two
    interpolation matrices: source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at
    0; weights 1 - f and f on its two neighbours (the last index repeats at the edge)."""

    def matrix(n_out, n_in):
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        f = src - i0
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m[rows, i0] += 1 - f
        m[rows, i1] += f
        return m

    h, w = maps.shape[1:]
    return matrix(height, h) @ maps.double() @ matrix(width, w).T


def _split(model, layer):
    """(the input -> the layer's output, the layer's output -> logits) of a CIFAR ResNet."""
    stages = model.stage_names
    k = stages.index(layer) + 1

    def front(x):
        x = model.forward_stem(x)
        for name in stages[:k]:
            x = getattr(model, name)(x)
        return x

    def back(a):
        for name in stages[k:]:
            a = getattr(model, name)(a)
        return model.forward_head(a)

    return front, back


def _reference_cam(model, layer, x, targets, method):
    """The map computed without hooks: A from the network's first stages, g = dS/dA by
    torch.autograd.grad, the weights, the ReLU, the resize and the min-max scaling."""
    front, back = _split(model, layer)
    a = front(x).detach().requires_grad_(True)
    logits = back(a)
    (g,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), a)
    a = a.detach()
    if method == "gradcam":
        w = g.mean(dim=(2, 3))
    else:  # alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), 0 where the denominator is 0
        denom = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
        alpha = torch.zeros_like(g)
        alpha[denom != 0] = (g**2)[denom != 0] / denom[denom != 0]
        w = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    raw = (w[:, :, None, None] * a).sum(dim=1).clamp(min=0)  # (N, h, w)
    up = _upsample(raw, *x.shape[-2:])
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return (up - low) / (high - low), raw


# --- Grad-CAM and Grad-CAM++ ------------------------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "fused"])
@pytest.mark.parametrize("layer", [None, "layer2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_cams_equal_the_computation_written_out(monkeypatch, method, layer, impl):
    seen = spy_fused(monkeypatch) if impl == "fused" else None
    if impl == "fused" and seen is None:
        pytest.skip("fused extension unavailable")
    model, x, targets = _tiny(impl=impl), _images(3), torch.tensor([4, 0, 7])
    with METHODS[method](model, layer) as cam:
        got = cam(x, targets)
    want, raw = _reference_cam(model, layer or "layer3", x, targets, method)
    torch.testing.assert_close(got.raw, raw, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.cams, want, rtol=1e-9, atol=1e-12)
    assert got.cams.shape == (3, 32, 32) and got.cams.amin() == 0 and got.cams.amax() == 1
    if seen is not None:  # the fused kernels ran forward (and backward from layer2)
        assert seen["forward"] > 0 and (layer is None or seen["backward"] > 0)


@pytest.mark.parametrize("layer", [None, "layer2", "layer3.0.attn"])
@pytest.mark.parametrize("method", list(METHODS))
def test_cams_are_the_same_with_eager_and_fused_attention(monkeypatch, method, layer):
    """float32; "layer3.0.attn" hooks a module of a fused tail, which makes it eager."""
    if spy_fused(monkeypatch) is None:
        pytest.skip("fused extension unavailable")
    x = _images(2, dtype=torch.float32)
    results = []
    for impl in ("eager", "fused"):
        with METHODS[method](_tiny(impl=impl, dtype=torch.float32), layer) as cam:
            results.append(cam(x, [3, 5]))
    eager, fused = results
    torch.testing.assert_close(fused.logits, eager.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.raw, eager.raw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.cams, eager.cams, rtol=1e-4, atol=1e-4)


def test_default_targets_are_the_predicted_classes_and_probs_their_softmax():
    model, x = _tiny(), _images(4)
    logits = model(x)
    got = GradCAM(model)(x)
    assert torch.equal(got.logits, logits)  # the hook changes no number
    assert torch.equal(got.targets, logits.argmax(dim=1))
    torch.testing.assert_close(got.probs, logits.softmax(dim=1)[torch.arange(4), got.targets])


def test_explicit_targets_are_honoured():
    model, x = _tiny(), _images(2)
    with GradCAMPlusPlus(model) as cam:
        a, b, same = cam(x, [1, 8]), cam(x, torch.tensor([2, 2])), cam(x, 2)
    assert a.targets.tolist() == [1, 8] and same.targets.tolist() == [2, 2]
    assert torch.equal(same.cams, b.cams)
    assert not torch.allclose(a.cams, b.cams)  # another class, another map
    torch.testing.assert_close(a.probs, a.logits.softmax(dim=1)[[0, 1], [1, 8]])


def test_flat_maps_scale_to_zeros_not_nan():
    maps = torch.tensor([[[2.0, 2.0], [2.0, 2.0]], [[0.0, 1.0], [3.0, 1.0]]])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(2, 2))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 1 / 3], [1.0, 1 / 3]]))


def test_a_layer_given_as_a_module_is_the_same_as_its_path():
    model, x = _tiny(), _images(2)
    by_path, by_module = GradCAM(model, "layer2.1"), GradCAM(model, model.layer2[1])
    assert by_module.layer_name == "layer2.1"
    assert torch.equal(by_path(x, [0, 1]).cams, by_module(x, [0, 1]).cams)


def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def _assert_unchanged(model, before):
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key  # bitwise
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


@pytest.mark.parametrize("eval_mode", [True, False])
@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_the_model_is_left_as_it_was_found(impl, eval_mode):
    """Training mode with one BatchNorm frozen in eval mode and some parameters frozen:
    modes, requires_grad, .grad, weights and running statistics stay bitwise the same."""
    model = _tiny(impl=impl).train()
    model.layer2[0].bn1.eval()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    before = _snapshot(model)
    for method in METHODS.values():
        method(model, "layer2", eval_mode=eval_mode)(_images(2), [1, 2])
    capture_attention(model, _images(2), eval_mode=eval_mode)
    _assert_unchanged(model, before)


class _InPlaceAfterConv(nn.Module):
    """conv, then an in-place addition on its output (as ``out += identity`` after a
    torchvision block's last BatchNorm), pooling and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv(x)
        a += 1.0
        return self.fc(a.mean(dim=(2, 3)))


def test_the_activation_is_the_layers_output_before_later_in_place_operations():
    model, x = _InPlaceAfterConv().double(), _images(2, size=6)
    got = GradCAM(model, "conv")(x, [0, 2])
    a = model.conv(x).detach()  # (N, 4, 6, 6), without the + 1
    w = model.fc.weight.detach()[[0, 2]] / 36  # dS/dA is W_ck / (h w) at every position
    torch.testing.assert_close(got.raw, (w[:, :, None, None] * a).sum(dim=1).clamp(min=0))


def test_a_frozen_model_gives_the_same_maps():
    model, x = _tiny(), _images(2)
    want = GradCAMPlusPlus(model, "layer2")(x, [3, 4])
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # the call takes its gradient whatever the caller's grad mode
        got = GradCAMPlusPlus(model, "layer2")(x, [3, 4])
    assert torch.equal(got.cams, want.cams) and torch.equal(got.raw, want.raw)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_hooks_are_removed_after_an_exception():
    model = _tiny().train()
    before = _snapshot(model)
    wrong_channels = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    # raised inside the forward, by the first conv
    with pytest.raises(RuntimeError), GradCAM(model) as cam:
        cam(wrong_channels)
    _assert_unchanged(model, before)
    with pytest.raises(KeyError), GradCAMPlusPlus(model, "layer2"):  # the caller's own
        raise KeyError("caller")
    _assert_unchanged(model, before)
    with pytest.raises(RuntimeError):
        capture_attention(model, wrong_channels)
    _assert_unchanged(model, before)


def test_other_forwards_inside_the_block_are_untouched():
    """The hook acts only during the object's own calls: a training step inside the block
    still reaches every parameter."""
    model, x = _tiny(), _images(2)
    with GradCAM(model, "layer2") as cam:
        cam(x)
        model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_repeated_calls_give_the_same_maps():
    """Nothing accumulates between calls: the same maps twice, and those of a fresh copy."""
    model, x = _tiny(), _images(2)
    twin = copy.deepcopy(model)
    with GradCAMPlusPlus(model, "layer2") as cam:
        first, second = cam(x), cam(x)
    assert torch.equal(first.cams, second.cams)
    assert torch.equal(first.cams, GradCAMPlusPlus(twin, "layer2")(x).cams)


@pytest.mark.parametrize("attention", [None, "cbam"])
def test_torchvision_resnets_with_and_without_attention(attention):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    if attention:
        add_attention(model, attention)
    assert default_target_layer(model) == "layer4"
    x = torch.randn(2, 3, 64, 64)  # layer4 is 2 x 2
    for method in METHODS.values():
        got = method(model)(x)
        assert got.cams.shape == (2, 64, 64) and got.raw.shape == (2, 2, 2)
        assert bool(((got.cams >= 0) & (got.cams <= 1)).all())
    assert model.training  # as torchvision built it, though the forwards ran in eval mode
    maps = capture_attention(model, x).maps
    assert len(maps) == (8 if attention else 0)
    if attention:
        assert maps["layer4.1.bn2.1"].spatial.shape == (2, 1, 2, 2)


def test_default_target_layer_of_convattn_and_timm_style_models():
    assert default_target_layer(_tiny()) == "layer3"
    timm_like = nn.Module()
    timm_like.feature_info = [{"module": "act1"}, {"module": "stages.3"}]
    assert default_target_layer(timm_like) == "stages.3"
    with pytest.raises(ValueError, match="pass target_layer"):
        default_target_layer(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_bad_input_is_refused_with_clear_errors():
    model, x = _tiny(), _images(2)
    with pytest.raises(ValueError, match=r"close matches: layer3\.0\.attn"):
        GradCAM(model, "layer3.0.atn")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"one class per image \(2\), got \(3,\)"):
        GradCAM(model)(x, [1, 2, 3])
    with pytest.raises(ValueError, match="integer class indices"):
        GradCAM(model)(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        GradCAM(model)(x, [1, 10])
    with pytest.raises(ValueError, match="images must be a batch"):
        GradCAM(model)(x[0])
    with pytest.raises(ValueError, match="must output"):
        GradCAM(model, "fc")(x)
    with pytest.raises(ValueError, match="ran 2 times"):
        GradCAM(model, "layer1.0.relu")(x)  # one ReLU module, after bn1 and in the tail
    for m in model.modules():
        assert not m._forward_hooks


# --- attention maps ---------------------------------------------------------------------


@pytest.mark.parametrize("arrangement", ["channel-spatial", "spatial-channel", "parallel"])
def test_cbam_gates_equal_the_float64_reference(arrangement):
    module = ref.randomize_(CBAM(8, reduction=2, arrangement=arrangement)).double()
    model = nn.Sequential(module)
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    got = capture_attention(model, x).maps["0"]
    xs = ref.arr(x)
    mc = ref.channel_gate(xs, module.channel, module.channel.pool_types)  # (N, C, 1, 1)
    if arrangement == "channel-spatial":
        ms = ref.spatial_gate(xs * mc, module.spatial)
    elif arrangement == "spatial-channel":
        ms = ref.spatial_gate(xs, module.spatial)
        mc = ref.channel_gate(xs * ms, module.channel, module.channel.pool_types)
    else:
        ms = ref.spatial_gate(xs, module.spatial)
    assert got.kind == "cbam" and got.joint is None
    np.testing.assert_allclose(got.channel.numpy(), mc[:, :, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(got.spatial.numpy(), ms, rtol=1e-12)


def test_bam_branches_rebuild_the_float64_reference():
    module = ref.randomize_(BAM(16, reduction=4, dilation=2)).double()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    got = capture_attention(nn.Sequential(module), x).maps["0"]
    assert got.kind == "bam" and got.channel.shape == (2, 16) and got.spatial.shape == (2, 1, 9, 9)
    gate = torch.sigmoid(got.channel[:, :, None, None] + got.spatial)  # (N, C, H, W)
    want = ref.bam(ref.arr(x), module, r=4, d=2)
    np.testing.assert_allclose((x + x * gate).numpy(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.joint, gate.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_capture_keeps_the_output_and_names_every_block(monkeypatch, impl):
    seen = spy_fused(monkeypatch) if impl == "fused" else None
    if impl == "fused" and seen is None:
        pytest.skip("fused extension unavailable")
    model, x = _tiny(impl=impl, dtype=torch.float32), _images(2, dtype=torch.float32)
    with torch.no_grad():
        plain = model(x)
    got = capture_attention(model, x)
    torch.testing.assert_close(got.output, plain, rtol=1e-5, atol=1e-5)
    names = [f"layer{s}.{b}.attn" for s in (1, 2, 3) for b in range(3)]
    assert list(got.maps) == names
    assert got.maps["layer2.0.attn"].channel.shape == (2, 32)
    assert got.maps["layer2.0.attn"].spatial.shape == (2, 1, 16, 16)
    if seen is not None:
        assert seen["forward"] > 0


def test_capture_reads_bam_between_stages():
    model, x = _tiny("cifar_resnet20_bam"), _images(2)
    got = capture_attention(model, x)
    torch.testing.assert_close(got.output, model(x))
    assert list(got.maps) == ["layer1.attn", "layer2.attn"]
    joint = got.maps["layer2.attn"].joint
    assert joint.shape == (2, 1, 16, 16) and bool(((joint > 0) & (joint < 1)).all())


# --- localisation -----------------------------------------------------------------------

# Sum 10; the maximum 4 is at row 2, column 2 (pixel centre x = 2.5, y = 2.5).
CAM = torch.tensor(
    [
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 2.0, 0.0],
        [0.0, 3.0, 4.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


@pytest.mark.parametrize(
    ("box", "hit", "energy"),
    [
        ((1, 1, 3, 3), True, 1.0),  # columns 1-2, rows 1-2: 1 + 2 + 3 + 4 = 10
        ((2, 2, 4, 4), True, 0.4),  # columns 2-3, rows 2-3: 4
        ((0, 0, 2, 2), False, 0.1),  # columns 0-1, rows 0-1: 1
        ((0, 0, 2.5, 2.5), True, 1.0),  # the centre 2.5 on the edge is inside: all 10
        ((0, 0, 2.4, 2.4), False, 0.1),  # edge before the centre 2.5: columns, rows 0-1
        ((1, 2, 2, 3), False, 0.3),  # column 1, row 2: 3
    ],
)
def test_one_box_by_hand(box, hit, energy):
    boxes = torch.tensor([box], dtype=torch.float32)
    assert pointing_game(CAM[None], boxes).tolist() == [hit]
    torch.testing.assert_close(energy_in_box(CAM[None], boxes), torch.tensor([energy]))


def test_ties_go_to_the_first_maximum_in_row_major_order():
    cam = torch.zeros(1, 4, 4)
    cam[0, 0, 3] = cam[0, 3, 0] = 1.0  # (row 0, column 3) comes first
    assert pointing_game(cam, torch.tensor([[3, 0, 4, 1]])).tolist() == [True]
    assert pointing_game(cam, torch.tensor([[0, 3, 1, 4]])).tolist() == [False]


def test_boxes_per_image_union_and_empty():
    cams = torch.stack([CAM, CAM, torch.zeros(4, 4)])
    boxes = [
        torch.tensor([[1, 1, 3, 3], [2, 1, 3, 3]]),  # overlapping: 10 counted once -> 1.0
        torch.zeros(0, 4),  # no box: a miss, energy 0
        torch.tensor([0, 0, 4, 4]),  # a zero map: a miss, energy 0
    ]
    scores = localization_scores(cams, boxes)
    assert scores.pointing.tolist() == [True, False, False]
    torch.testing.assert_close(scores.energy, torch.tensor([1.0, 0.0, 0.0]))
    assert scores.pointing_mean == pytest.approx(1 / 3)
    assert scores.energy_mean == pytest.approx(1 / 3)


def test_synthetic_boxes_are_pixel_edges():
    """A box of integer edges x0..x1 covers exactly x1 - x0 columns; a map equal to the
    object's box scores energy 1 and a hit."""
    data = SyntheticShapes("val", size=10)
    boxes = data.boxes  # (N, 4)
    masks = torch.stack([box_mask(b[None], 32, 32) for b in boxes])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert torch.equal(masks.sum(dim=(1, 2)).float(), areas)
    scores = localization_scores(masks.float(), boxes)
    assert scores.pointing.all() and scores.energy_mean == 1.0


def test_localisation_refuses_bad_input():
    cams = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="one entry per map"):
        pointing_game(cams, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"boxes\[1\] must be \(K, 4\)"):
        energy_in_box(cams, [torch.zeros(1, 4), torch.zeros(1, 5)])
    with pytest.raises(ValueError, match="x1 < x0"):
        energy_in_box(cams, torch.tensor([[0, 0, 1, 1], [3, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"maps \(N, H, W\)"):
        pointing_game(cams[0], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_box(-cams, torch.zeros(2, 4))


def test_gradcam_maps_feed_the_scores():
    """End to end on the embedded data: maps at the input size, scored against its boxes."""
    data = SyntheticShapes("val", size=4)
    x = data.images.float() / 255  # (4, 3, 32, 32)
    result = GradCAM(_tiny(dtype=torch.float32))(x, data.targets)
    scores = localization_scores(result.cams, data.boxes)
    assert scores.pointing.shape == (4,) and 0 <= scores.energy_mean <= 1
