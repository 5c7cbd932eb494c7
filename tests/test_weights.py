"""Loading weights: foreign state dicts are built here, following the documented layouts."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from convattn import create_model, load_checkpoint
from convattn.cli import main
from convattn.models import CheckpointError, read_state_dict


def _same_outputs(a, b, size=64):
    a.eval(), b.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def _randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
    return model


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet50", torchvision.models.resnet50),
        ("resnext50_32x4d", torchvision.models.resnext50_32x4d),
    ],
)
def test_torchvision_state_dict_loads_and_outputs_match(tmp_path, ours, theirs):
    tv = _randomize_bn(theirs())
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    model = create_model(ours, checkpoint_path=path)
    _same_outputs(model, tv)


def test_torchvision_wide_resnet_matches_our_wide_bottleneck(tmp_path):
    # torchvision's wide_resnet50_2 is a Bottleneck ResNet with base_width 128.
    from convattn.models import Bottleneck, ResNet

    tv = _randomize_bn(torchvision.models.wide_resnet50_2())
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    model = ResNet(Bottleneck, (3, 4, 6, 3), base_width=128)
    load_checkpoint(model, tmp_path / "w.pth")
    _same_outputs(model, tv)


@pytest.mark.parametrize("legacy", [False, True])
def test_torchvision_file_without_batchnorm_counters_loads_as_a_strict_load_does(tmp_path, legacy):
    tv = _randomize_bn(torchvision.models.resnet18())
    state = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "tv.pth", _use_new_zipfile_serialization=not legacy)
    model, strict = create_model("resnet18"), create_model("resnet18")
    for m in (model, strict):  # counters already running: torch keeps them
        for name, buf in m.named_buffers():
            if name.endswith("num_batches_tracked"):
                buf.fill_(len(name))
    strict.load_state_dict(state, strict=True)
    report = load_checkpoint(model, tmp_path / "tv.pth")
    assert not report.missing and len(report.counters_kept) == 20  # every BatchNorm
    assert "20 BatchNorm counters not in the file" in report.summary()
    torch.testing.assert_close(model.state_dict(), strict.state_dict(), rtol=0, atol=0)
    _same_outputs(model, tv)
    cbam = create_model("resnet18_cbam")  # attention still reported missing, counters kept
    report = load_checkpoint(cbam, tmp_path / "tv.pth")
    assert len(report.counters_kept) == 20 and all(".attn." in k for k in report.missing)


def test_torchvision_backbone_into_cbam_model_reports_attention_as_missing(tmp_path):
    tv = _randomize_bn(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = create_model("resnet18_cbam")
    before = model.layer1[0].attn.channel.fc1.weight.clone()
    report = load_checkpoint(model, tmp_path / "tv.pth")
    assert report.format == "torchvision"
    assert report.missing and all(".attn." in k for k in report.missing)
    # 8 blocks x (fc1 w+b, fc2 w+b, conv w, BN w+b, running mean+var, batches tracked)
    assert len(report.missing) == 8 * 10
    torch.testing.assert_close(model.layer1[0].attn.channel.fc1.weight, before)
    torch.testing.assert_close(model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)


def _to_authors_layout(state):
    """Our CBAM model's keys renamed as the authors' released checkpoints name them."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"\.attn\.channel\.fc1\.", ".cbam.ChannelGate.mlp.1.", k)
        k = re.sub(r"\.attn\.channel\.fc2\.", ".cbam.ChannelGate.mlp.3.", k)
        k = re.sub(r"\.attn\.spatial\.", ".cbam.SpatialGate.spatial.", k)
        out["module." + k] = v
    return {"epoch": 90, "arch": "resnet", "best_prec1": 77.34, "state_dict": out}


def test_authors_checkpoint_loads_and_outputs_match(tmp_path):
    src = _randomize_bn(create_model("resnet50_cbam"))
    with torch.no_grad():
        for m in src.modules():
            if hasattr(m, "spatial") and m.spatial is not None:
                m.spatial.bn.weight.normal_()  # open the gates so spatial weights matter
    torch.save(_to_authors_layout(src.state_dict()), tmp_path / "RESNET50_CBAM.pth.tar")
    model = create_model("resnet50_cbam", checkpoint_path=tmp_path / "RESNET50_CBAM.pth.tar")
    assert load_checkpoint(model, tmp_path / "RESNET50_CBAM.pth.tar").format == "authors"
    _same_outputs(model, src)


def test_mismatch_lists_offending_keys_unless_partial(tmp_path):
    torch.save(create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv3\.weight"):
        create_model("resnet50", checkpoint_path=tmp_path / "r18.pth")
    model = create_model("resnet34")
    report = load_checkpoint(model, tmp_path / "r18.pth", strict=False)
    assert "layer1.2.conv1.weight" in report.missing and not report.unexpected
    state = create_model("resnet18", num_classes=10).state_dict()
    torch.save(state, tmp_path / "r18_10.pth")
    with pytest.raises(CheckpointError, match=r"fc\.weight \(10, 512\) vs model \(1000, 512\)"):
        load_checkpoint(create_model("resnet18"), tmp_path / "r18_10.pth")


def test_loading_never_runs_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        read_state_dict(tmp_path / "evil.pt")


def test_safetensors_and_our_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = _randomize_bn(create_model("cifar_resnet20_cbam"))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "m.safetensors")
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for f in ("m.safetensors", "ckpt.pt"):
        model = create_model("cifar_resnet20_cbam", checkpoint_path=tmp_path / f)
        _same_outputs(model, src, size=32)


def test_url_is_fetched_once_into_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    src = create_model("cifar_resnet20")
    torch.save(src.state_dict(), tmp_path / "remote.pth")
    url = (tmp_path / "remote.pth").as_uri()
    model = create_model("cifar_resnet20", checkpoint_path=url)
    cached = tmp_path / "hub" / "checkpoints" / "remote.pth"
    assert cached.is_file()
    (tmp_path / "remote.pth").unlink()  # the second load must come from the cache
    model = create_model("cifar_resnet20", checkpoint_path=url)
    _same_outputs(model, src, size=32)


def test_convert_cli_writes_safetensors(tmp_path, capsys):
    src = _randomize_bn(create_model("resnet18_cbam"))
    torch.save(_to_authors_layout(src.state_dict()), tmp_path / "a.pth.tar")
    dst = tmp_path / "out" / "r18.safetensors"
    assert main(["convert", str(tmp_path / "a.pth.tar"), str(dst), "--model", "resnet18_cbam"]) == 0
    assert "authors checkpoint" in capsys.readouterr().out
    _same_outputs(create_model("resnet18_cbam", checkpoint_path=dst), src)
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.pth.tar"),
                str(tmp_path / "x.pt"),
                "--model",
                "resnet18_cbam",
            ]
        )
        == 2
    )
