"""Loading weights: foreign state dicts are built here, following the documented layouts."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from convattn import create_model, load_checkpoint
from convattn.cli import main
from convattn.engine.checkpoint import load_training_state
from convattn.models import BasicBlock, Bottleneck, CheckpointError, ResNet, read_state_dict
from convattn.models.weights import convert_authors_keys


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


# The CBAM authors' ResNet + CBAM, written here from their published layout (their
# MODELS/model_resnet.py and MODELS/cbam.py) without any convattn code: torchvision's
# backbone keys, and in every block ``cbam.ChannelGate.mlp`` = (Flatten, Linear(C, C//16),
# ReLU, Linear(C//16, C)), hence ``mlp.1`` and ``mlp.3``, and ``cbam.SpatialGate.spatial``
# = BasicConv(2, 1, 7, padding 3) holding ``conv`` (no bias) and ``bn`` (BatchNorm2d(1)).
# Their released checkpoint is {epoch, arch, state_dict (keys "module.*"), best_prec1,
# optimizer}, saved by PyTorch 0.4 (legacy serialisation, no num_batches_tracked).


def _bn_shapes(shapes, name, channels):
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{suffix}"] = (channels,)
    shapes[f"{name}.num_batches_tracked"] = ()


def _authors_shapes(bottleneck, layers, widths, stem=64, num_classes=1000):
    """Key -> shape of the authors' state dict (before DataParallel's prefix)."""
    shapes = {"conv1.weight": (stem, 3, 7, 7)}
    _bn_shapes(shapes, "bn1", stem)
    inplanes, expansion = stem, 4 if bottleneck else 1
    for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
        for j in range(n):
            p, cout = f"layer{i + 1}.{j}", planes * expansion
            if bottleneck:
                convs = [(inplanes, planes, 1), (planes, planes, 3), (planes, cout, 1)]
            else:
                convs = [(inplanes, planes, 3), (planes, planes, 3)]
            for k, (cin, co, size) in enumerate(convs, 1):
                shapes[f"{p}.conv{k}.weight"] = (co, cin, size, size)
                _bn_shapes(shapes, f"{p}.bn{k}", co)
            if j == 0 and (i > 0 or inplanes != cout):
                shapes[f"{p}.downsample.0.weight"] = (cout, inplanes, 1, 1)
                _bn_shapes(shapes, f"{p}.downsample.1", cout)
            mlp, hidden = f"{p}.cbam.ChannelGate.mlp", cout // 16
            shapes[f"{mlp}.1.weight"], shapes[f"{mlp}.1.bias"] = (hidden, cout), (hidden,)
            shapes[f"{mlp}.3.weight"], shapes[f"{mlp}.3.bias"] = (cout, hidden), (cout,)
            shapes[f"{p}.cbam.SpatialGate.spatial.conv.weight"] = (1, 2, 7, 7)
            _bn_shapes(shapes, f"{p}.cbam.SpatialGate.spatial.bn", 1)
            inplanes = cout
    shapes["fc.weight"], shapes["fc.bias"] = (num_classes, inplanes), (num_classes,)
    return shapes


def _random_state(shapes, *, counters, seed=0):
    """Random float32 values for every key; ``counters=False`` leaves the counters out."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            if counters:
                state[k] = torch.randint(1, 10**6, (), generator=g)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith(("running_mean", "bias")):
            state[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BatchNorm weight; the spatial gate's is not 0, so it matters
            state[k] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:  # conv or linear weight, unit gain
            fan_in = math.prod(shape[1:])
            state[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


def _authors_file(path, state, *, legacy, best_prec1=77.34):
    """Save ``state`` as the authors released it: DataParallel keys, training extras."""
    sgd = {  # a PyTorch 0.4 SGD state dict: parameters named by id(), plain Python values
        "state": {140230000 + i: {"momentum_buffer": torch.zeros(2)} for i in range(2)},
        "param_groups": [
            {
                "lr": 0.001,
                "momentum": 0.9,
                "dampening": 0,
                "weight_decay": 1e-4,
                "nesterov": False,
                "params": [140230000, 140230001],
            }
        ],
    }
    ckpt = {
        "epoch": 100,
        "arch": "resnet",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "best_prec1": best_prec1,
        "optimizer": sgd,
    }
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


def _authors_forward(state, x, *, bottleneck, layers):
    """The authors' network in float64 functional form, reading their keys directly."""
    w = {k: v.double() for k, v in state.items()}

    def bn(t, name):
        mean, var = w[f"{name}.running_mean"], w[f"{name}.running_var"]
        return F.batch_norm(t, mean, var, w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    def mlp(v, gate):  # Flatten, Linear (mlp.1), ReLU, Linear (mlp.3)
        v = F.relu(F.linear(v.flatten(1), w[f"{gate}.mlp.1.weight"], w[f"{gate}.mlp.1.bias"]))
        return F.linear(v, w[f"{gate}.mlp.3.weight"], w[f"{gate}.mlp.3.bias"])

    def cbam(t, p):
        hw = t.shape[2:]
        gate = f"{p}.ChannelGate"
        att = mlp(F.avg_pool2d(t, hw, stride=hw), gate) + mlp(F.max_pool2d(t, hw, stride=hw), gate)
        t = t * torch.sigmoid(att)[:, :, None, None]
        pooled = torch.cat([t.max(dim=1, keepdim=True)[0], t.mean(dim=1, keepdim=True)], dim=1)
        spatial = f"{p}.SpatialGate.spatial"
        s = bn(F.conv2d(pooled, w[f"{spatial}.conv.weight"], padding=3), f"{spatial}.bn")
        return t * torch.sigmoid(s)

    def block(t, p, stride):
        # Bottleneck: 1x1, 3x3 (strided), 1x1; BasicBlock: 3x3 (strided), 3x3.
        strides = (1, stride, 1) if bottleneck else (stride, 1)
        out = t
        for k, s in enumerate(strides, 1):
            conv = w[f"{p}.conv{k}.weight"]
            out = bn(F.conv2d(out, conv, stride=s, padding=conv.shape[-1] // 2), f"{p}.bn{k}")
            out = F.relu(out) if k < len(strides) else out
        if f"{p}.downsample.0.weight" in w:
            t = bn(F.conv2d(t, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
        return F.relu(cbam(out, f"{p}.cbam") + t)

    x = F.relu(bn(F.conv2d(x, w["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for i, n in enumerate(layers):
        for j in range(n):
            x = block(x, f"layer{i + 1}.{j}", 2 if i > 0 and j == 0 else 1)
    x = F.avg_pool2d(x, 7).flatten(1)  # their AvgPool2d(7): the whole 7 x 7 map at 224
    return F.linear(x, w["fc.weight"], w["fc.bias"])


# Tiny networks in the authors' layout: (bottleneck, layers, widths, stem width).
_TINY = {
    "bottleneck": (True, (2, 1, 1, 1), (4, 8, 16, 32), 8),
    "basic": (False, (2, 1, 1, 1), (16, 16, 32, 32), 16),
}


def _tiny_model(name, num_classes=10):
    bottleneck, layers, widths, stem = _TINY[name]
    block = Bottleneck if bottleneck else BasicBlock
    return ResNet(
        block, layers, widths=widths, stem_width=stem, attn_layer="cbam", num_classes=num_classes
    )


@pytest.mark.parametrize(
    "net,counters,legacy,best_prec1",
    [
        ("bottleneck", False, True, torch.tensor(77.34)),
        ("bottleneck", True, False, 77.34),
        ("basic", False, False, torch.tensor(69.1)),
        ("basic", True, True, 69.1),
    ],
)
def test_authors_checkpoint_matches_an_independent_forward_of_their_network(
    tmp_path, net, counters, legacy, best_prec1
):
    bottleneck, layers, widths, stem = _TINY[net]
    state = _random_state(_authors_shapes(bottleneck, layers, widths, stem, 10), counters=counters)
    path = _authors_file(
        tmp_path / "RESNET_CBAM.pth.tar", state, legacy=legacy, best_prec1=best_prec1
    )
    model = _tiny_model(net)
    report = load_checkpoint(model, path)
    assert report.format == "authors" and not report.missing and not report.unexpected
    n_bn = sum(k.endswith("running_mean") for k in state)
    assert len(report.counters_kept) == (0 if counters else n_bn)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model.double().eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), _authors_forward(state, x, bottleneck=bottleneck, layers=layers)
        )
    counts = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert len(counts) == n_bn
    for k, v in counts.items():  # the file's counters, or (as a strict load) a fresh model's
        theirs = k.replace(".attn.spatial.", ".cbam.SpatialGate.spatial.")
        assert int(v) == (int(state[theirs]) if counters else 0), k


def test_authors_resnet50_layout_fits_resnet50_cbam_key_for_key():
    shapes = _authors_shapes(True, (3, 4, 6, 3), (64, 128, 256, 512))
    params = sum(math.prod(s) for k, s in shapes.items() if not re.search(r"running_|num_b", k))
    assert round(params / 1e6, 2) == 28.09  # the authors' ResNet-50 + CBAM count
    theirs = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    ours = create_model("resnet50_cbam").state_dict()
    renamed = convert_authors_keys(theirs)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {
        k: tuple(v.shape) for k, v in ours.items()
    }


@pytest.mark.parametrize("fault", ["unexpected", "missing"])
def test_legacy_authors_file_still_rejects_other_faults(tmp_path, fault):
    bottleneck, layers, widths, stem = _TINY["bottleneck"]
    state = _random_state(_authors_shapes(bottleneck, layers, widths, stem, 10), counters=False)
    if fault == "unexpected":
        state["layer1.0.cbam.ChannelGate.mlp.5.weight"] = torch.zeros(16, 1)
        expected = r"unexpected \['layer1\.0\.cbam\.ChannelGate\.mlp\.5\.weight'\]"
    else:
        del state["layer2.0.downsample.1.running_var"]
        expected = r"missing \['layer2\.0\.downsample\.1\.running_var'\]"
    path = _authors_file(tmp_path / "bad.pth.tar", state, legacy=True)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_checkpoint(_tiny_model("bottleneck"), path)
    assert "num_batches_tracked" not in str(err.value)


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


class _Evil:
    def __reduce__(self):  # unpickling would call print
        return (print, ("pwned",))


class _Opaque:
    """An arbitrary class: unpickling it would import and build it."""


def _one_line_error(read, path):
    with pytest.raises(CheckpointError) as err:
        read(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("obj", [_Evil(), _Opaque()], ids=["reduce", "instance"])
def test_a_pickle_of_python_objects_is_refused_in_one_line(tmp_path, capsys, legacy, obj):
    path = tmp_path / "evil.pt"
    ckpt = {"state_dict": {"w": torch.zeros(1)}, "x": obj}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    for read in (read_state_dict, load_training_state):
        msg = _one_line_error(read, path)
        assert "refused to unpickle" in msg and "would run code" in msg
        assert ("print" if isinstance(obj, _Evil) else "_Opaque") in msg
        assert "weights_only=False" in msg  # how to convert a trusted file
    assert "pwned" not in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "w.safetensors"), "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to unpickle" in err


def test_the_conversion_hint_for_a_trusted_pickle_works(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Evil()}, tmp_path / "evil.pt")
    msg = _one_line_error(read_state_dict, tmp_path / "evil.pt")
    code = re.search(r'python -c "([^"]+)"', msg)[1]
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True)
    assert torch.equal(read_state_dict(tmp_path / "weights.pt")["w"], torch.ones(2))


def _damaged(tmp_path, kind):
    """A file that is no checkpoint, or a checkpoint cut short."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(100)}, good, _use_new_zipfile_serialization=kind != "legacy")
    data = {
        "random": bytes(range(7, 250)),
        "empty": b"",
        "zip": good.read_bytes()[:300],
        "legacy": good.read_bytes()[:300],
    }[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("random", "not a PyTorch checkpoint: neither a zip archive nor a pickle"),
        ("empty", "not a PyTorch checkpoint: an empty file"),
        ("zip", "damaged, truncated or not written by torch.save (a torch.save zip archive"),
        ("legacy", "damaged, truncated or not written by torch.save (a pickle (protocol 2)"),
    ],
    ids=["random", "empty", "zip", "legacy"],
)
def test_a_damaged_or_foreign_file_gives_one_line_naming_it(tmp_path, kind, expected):
    path = _damaged(tmp_path, kind)
    for read in (read_state_dict, load_training_state):
        assert expected in _one_line_error(read, path)


def test_a_damaged_safetensors_file_gives_one_line_naming_it(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(range(7, 250)))
    assert "not a readable safetensors file" in _one_line_error(read_state_dict, path)


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


def test_convert_cli_writes_what_load_checkpoint_loads(tmp_path, capsys):
    shapes = _authors_shapes(False, (2, 2, 2, 2), (64, 128, 256, 512))
    _authors_file(tmp_path / "a.pth.tar", _random_state(shapes, counters=False), legacy=True)
    dst = tmp_path / "out" / "r18.safetensors"
    assert main(["convert", str(tmp_path / "a.pth.tar"), str(dst), "--model", "resnet18_cbam"]) == 0
    assert "authors checkpoint" in capsys.readouterr().out
    direct = create_model("resnet18_cbam")
    load_checkpoint(direct, tmp_path / "a.pth.tar")
    converted = create_model("resnet18_cbam", checkpoint_path=dst)
    torch.testing.assert_close(converted.state_dict(), direct.state_dict(), rtol=0, atol=0)
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
