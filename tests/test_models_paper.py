"""The paper's parameter counts (to the 0.01 M it prints) and GFLOPs (multiply-adds)."""

from __future__ import annotations

import pytest
import torch

from convattn.models import create_model, get_model_spec, profile

# Parameters in millions for 1000 classes: the CBAM paper's Table 4 and the authors' code.
PAPER_PARAMS = {
    "resnet18_cbam": 11.78,
    "resnet34_cbam": 21.96,
    "resnet50": 25.56,
    "resnet50_se": 28.09,
    "resnet50_cbam": 28.09,
    "resnet101": 44.55,
    "resnet101_cbam": 49.33,
    "resnext50_32x4d": 25.03,
    "resnext50_32x4d_cbam": 27.56,
    "wide_resnet18_2": 45.62,
    "wide_resnet18_2_cbam": 45.97,
    "mobilenet_v1": 4.23,
    "mobilenet_v1_se": 5.07,
    "mobilenet_v1_cbam": 5.07,
}
# GFLOPs as printed in Table 4. ResNet/ResNeXt figures are those of the original layout
# with the stride in the first 1x1 convolution (see convattn.models.profile).
PAPER_GFLOPS = {
    "resnet50": 3.858,
    "resnet50_se": 3.860,
    "resnet50_cbam": 3.864,
    "resnet101": 7.570,
    "resnet101_cbam": 7.581,
    "resnext50_32x4d": 3.768,
    "resnext50_32x4d_cbam": 3.774,
    "wide_resnet18_2": 6.696,
    "wide_resnet18_2_cbam": 6.697,
    "mobilenet_v1": 0.569,
    "mobilenet_v1_cbam": 0.576,
}


def _meta(name, **kw):
    with torch.device("meta"):  # counting needs shapes only
        return create_model(name, **kw)


@pytest.mark.parametrize("name,params", PAPER_PARAMS.items())
def test_parameter_count_matches_paper(name, params):
    model = _meta(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params


@pytest.mark.parametrize("name,gflops", PAPER_GFLOPS.items())
def test_gmacs_match_paper(name, gflops):
    # The registry's paper_layout is the layout the paper counted (ResNet/ResNeXt
    # bottlenecks: stride in the first 1x1 convolution).
    kw = {"stride_in_1x1": True} if name.startswith(("resnet", "resnext")) else {}
    assert dict(get_model_spec(name).paper_layout) == kw
    assert round(profile(_meta(name, **kw)).gmacs, 3) == gflops


def test_registry_carries_the_paper_figures():
    for name, params in PAPER_PARAMS.items():
        if name != "mobilenet_v1_se":  # the paper gives SE-MobileNet no row of its own
            assert get_model_spec(name).paper_params_m == params
    for name, gflops in PAPER_GFLOPS.items():
        assert get_model_spec(name).paper_gflops == gflops


def test_profile_counts_convolutions_and_linears_by_hand():
    # cifar_resnet20: 3x3 convs 16->16 at 32x32 ... counted by hand from the layer shapes.
    macs = 3 * 16 * 9 * 32 * 32  # stem
    macs += 6 * 16 * 16 * 9 * 32 * 32  # stage 1: 3 blocks x 2 convs
    macs += (16 * 32 + 5 * 32 * 32) * 9 * 16 * 16  # stage 2
    macs += (32 * 64 + 5 * 64 * 64) * 9 * 8 * 8  # stage 3
    macs += 64 * 10  # classifier
    prof = profile(create_model("cifar_resnet20"), (3, 32, 32))
    assert prof.macs == macs
    assert prof.params == 269_722 and prof.gflops == pytest.approx(2 * macs / 1e9)


def test_skresnet_and_resnest_parameter_counts():
    assert round(sum(p.numel() for p in _meta("skresnet50").parameters()) / 1e6, 1) == 27.5
    assert round(sum(p.numel() for p in _meta("resnest50").parameters()) / 1e6, 1) == 27.5


@pytest.mark.parametrize("name,gflops", [("skresnet50", 4.47), ("resnest50", 5.39)])
def test_skresnet_and_resnest_gmacs_within_half_a_percent_of_their_papers(name, gflops):
    # Counted here: convolutions and linear layers (4.463 and 5.371 GMACs). The papers print
    # 4.47 and 5.39 without saying what else they counted (pools and gates would cover it).
    assert get_model_spec(name).paper_gflops == gflops
    assert profile(_meta(name)).gmacs == pytest.approx(gflops, rel=5e-3)
