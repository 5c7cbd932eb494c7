"""Detection models: registry backbones as torchvision detector bodies (features, freezing,
frozen BatchNorm with the fused tail, weights), and a few training steps of Faster R-CNN
and SSD with small attention backbones that lower the loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from convattn.detection.backbones import build_fpn_backbone, freeze_batchnorm, freeze_stages
from convattn.detection.data import synthetic_detection
from convattn.detection.faster_rcnn import build_faster_rcnn
from convattn.detection.ssd import VGG16SSDFeatures, build_ssd
from convattn.layers import BAM, CBAM, SqueezeExcite, set_impl
from convattn.models import create_model
from fused_spy import spy_fused


def test_fpn_backbone_returns_named_levels_with_the_stages_strides():
    fpn = build_fpn_backbone("resnet18_cbam", out_channels=32)
    out = fpn(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"] and fpn.strides == [4, 8, 16, 32, 64]
    for (name, f), s in zip(out.items(), fpn.strides, strict=True):
        assert f.shape == (1, 32, -(-64 // s), -(-96 // s)), name
    assert fpn.body.in_channels_list == [64, 128, 256, 512]
    mobile = build_fpn_backbone("mobilenet_v1_0p7_se", out_channels=16)
    assert mobile.strides == [4, 8, 16, 32, 64]  # its last four of five stages


def test_frozen_batchnorm_keeps_eval_outputs_and_the_attention_gates_trainable():
    torch.manual_seed(0)
    model = create_model("resnet18_cbam", features_only=True).eval()
    for m in model.modules():  # statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    n = freeze_batchnorm(model)
    assert n == 1 + 8 * 2 + 3  # stem, two per block, three projection shortcuts
    gates = [m.spatial.bn for m in model.modules() if isinstance(m, CBAM)]
    assert len(gates) == 8 and all(type(bn) is nn.BatchNorm2d for bn in gates)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == n
    after = model(x)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _randomise_statistics(model: nn.Module) -> None:
    for m in model.modules():  # statistics and affine parameters that are not the identity
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)


def test_frozen_batchnorm_freezes_the_attention_batchnorms_but_the_spatial_gates():
    torch.manual_seed(0)
    model = create_model("resnet18_bam", features_only=True).eval()
    _randomise_statistics(model)
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    bams = [m for m in model.modules() if isinstance(m, BAM)]
    assert len(bams) == 3  # after layer1..layer3, each with one BatchNorm1d and four 2d
    n = freeze_batchnorm(model)
    assert n == 1 + 8 * 2 + 3 + 3 * 5
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, model(x), strict=True):  # BatchNorm1d's (N, C) input too
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_frozen_batchnorm_keeps_the_statistics_dtype_without_affine_parameters():
    model = nn.Sequential(nn.BatchNorm2d(3, affine=False).double())
    model[0].running_mean.fill_(0.5)
    assert freeze_batchnorm(model) == 1 and isinstance(model[0], FrozenBatchNorm2d)
    assert model[0].running_mean.dtype == torch.float64
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x), torch.full_like(x, 0.5 / (1 + 1e-5) ** 0.5))


@pytest.mark.parametrize("name", ["resnet18_cbam", "resnet18_bam"])
@pytest.mark.parametrize("frozen_bn", [False, True])
def test_a_training_step_changes_no_buffer_of_the_units_not_trained(name, frozen_bn):
    torch.manual_seed(0)
    fpn = build_fpn_backbone(name, trainable_layers=3, frozen_bn=frozen_bn, out_channels=8)
    body = fpn.body.model
    before = {k: v.clone() for k, v in body.named_buffers()}
    opt = torch.optim.SGD([p for p in fpn.parameters() if p.requires_grad], lr=0.1)
    fpn.train()
    sum(f.mean() for f in fpn(torch.randn(2, 3, 64, 64)).values()).backward()
    opt.step()
    changed = {k for k, v in body.named_buffers() if not torch.equal(v, before[k])}
    frozen = {k for k in before if not k.startswith(("layer2", "layer3", "layer4"))}
    assert any(k.startswith("layer1.") for k in frozen) and frozen & changed == set()
    if name == "resnet18_cbam":  # the trained units' spatial gates keep batch statistics
        assert any(".spatial.bn." in k for k in changed)


def test_frozen_batchnorm_runs_eagerly_before_the_fused_attention(monkeypatch):
    seen = spy_fused(monkeypatch, lambda a: a.head)
    if seen is None:
        pytest.skip("fused extension unavailable")
    torch.manual_seed(0)
    model = create_model("resnet18_cbam", features_only=True)
    freeze_batchnorm(model)
    model.train()  # frozen BN is frozen in training too; the gates' BN uses batch stats
    x = torch.randn(4, 3, 64, 64)
    set_impl(model, "fused")
    fused = model(x)
    assert len(seen["forward"]) == 8 and set(seen["forward"]) == {0}  # no BN folded in
    set_impl(model, "eager")
    for a, b in zip(fused, model(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("layers", "trained"),
    [
        (0, []),
        (3, ["layer2", "layer3", "layer4"]),
        (5, ["stem", "layer1", "layer2", "layer3", "layer4"]),
    ],
)
def test_trainable_layers_count_stages_from_the_last_and_the_stem_last(layers, trained):
    model = create_model("resnet18_se", features_only=True)
    freeze_stages(model, layers)
    for name, p in model.named_parameters():
        unit = name.split(".")[0] if name.startswith("layer") else "stem"
        assert p.requires_grad == (unit in trained), name
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        freeze_stages(model, 6)


def test_torchvision_defaults_with_weights_freeze_bn_and_two_units(tmp_path):
    cls = create_model("resnet18_cbam", num_classes=7)
    path = tmp_path / "cls.pt"
    torch.save(cls.state_dict(), path)  # a classifier of 7 classes: its fc is ignored
    fpn = build_fpn_backbone("resnet18_cbam", weights=path, out_channels=16)
    body = fpn.body.model
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    for key, value in body.state_dict().items():
        torch.testing.assert_close(value, cls.state_dict()[key], msg=key)
    plain = build_fpn_backbone("resnet18_cbam", out_channels=16)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in plain.modules())
    assert all(p.requires_grad for p in plain.parameters())


def test_torchvision_classification_weights_load_into_an_attention_body(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    fpn = build_fpn_backbone("resnet18_cbam", weights=path, trainable_layers=5, frozen_bn=False)
    torch.testing.assert_close(fpn.body.model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)


def _scene_batch(n: int, size: int) -> tuple[list, list]:
    ds = synthetic_detection("train", size=n, img_size=size, num_classes=3, flip=False)
    images, targets = zip(*(ds[i] for i in range(n)), strict=True)
    return list(images), [{k: t[k] for k in ("boxes", "labels")} for t in targets]


def _train(model: nn.Module, images, targets, steps: int, lr: float) -> list[float]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_few_faster_rcnn_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_faster_rcnn(
        "resnet18_cbam", 4, min_size=96, max_size=96, fpn_channels=32, representation_size=64
    )
    losses = _train(model, *_scene_batch(2, 96), steps=8, lr=0.01)
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    model.eval()
    with torch.no_grad():
        (pred,) = model([torch.rand(3, 96, 96)])
    assert set(pred) == {"boxes", "labels", "scores"}


@pytest.mark.parametrize("placement", ["heads", "stages"])
def test_a_few_ssd_steps_lower_the_loss(placement):
    torch.manual_seed(0)
    model = build_ssd("vgg16", 4, attn="cbam", attn_placement=placement, width=0.125)
    kinds = {type(m) for m in model.backbone.modules()}
    assert CBAM in kinds
    losses = _train(model, *_scene_batch(2, 128), steps=8, lr=0.005)
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_ssd_layouts_and_attention_counts():
    vgg = VGG16SSDFeatures(width=0.25, attn_layer="se", placement="stages")
    out = vgg(torch.randn(1, 3, 300, 300))
    assert [f.shape[-1] for f in out.values()] == [38, 19, 10, 5, 3, 1]  # SSD300's maps
    assert sum(isinstance(m, SqueezeExcite) for m in vgg.modules()) == 5
    heads = VGG16SSDFeatures(width=0.25, attn_layer="cbam")
    assert sum(isinstance(m, CBAM) for m in heads.modules()) == 6
    mobile = build_ssd("mobilenet_v1_0p7_cbam", 3, attn="se").eval()
    with torch.no_grad():
        feats = mobile.backbone(torch.randn(1, 3, 300, 300))
    assert [f.shape[-1] for f in feats.values()] == [19, 10, 5, 3, 2, 1]


def test_vgg_ssd_loads_torchvision_vgg16_features(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])  # torchvision's VGG-16 features, without classifier
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = build_ssd("vgg16", 3, attn="cbam", weights=path)
    torch.testing.assert_close(model.backbone.features[28].weight, features[28].weight)


def test_bad_detector_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="background"):
        build_faster_rcnn("resnet18", 1)
    with pytest.raises(ValueError, match="mobilenet_v1_cbam"):
        build_ssd("mobilenet_v1", 3, attn="cbam", attn_placement="stages")
    with pytest.raises(ValueError, match="268"):
        build_ssd("vgg16", 3, size=128)
    with pytest.raises(ValueError, match="returned_stages"):
        build_fpn_backbone("resnet18", returned_stages=[2, 1])
