"""The detection engine: a run folder, and resuming it (after an epoch, or after SIGTERM in
the middle of one) ends with exactly the uninterrupted run's weights and records."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from convattn.detection.config import DetectionConfig
from convattn.detection.engine import fit_detection
from convattn.detection.evaluate import evaluate_run
from convattn.detection.setup import check_supported
from convattn.engine import StopRequested
from convattn.engine.recipes import load_config
from convattn.engine.resume import resume_config

# One shape per scene: mAP leaves 0 within an epoch, and the two epochs' records differ.
RECIPE = {
    "model": "resnet18_cbam",
    "detector.min_size": 64,
    "detector.max_size": 64,
    "detector.fpn_channels": 16,
    "detector.representation_size": 32,
    "data.path": "synthetic:train=8,val=4,img_size=64,classes=1,objects=1",
    "data.batch_size": 2,
    "schedule.epochs": 2,
    "optim.lr": 0.05,
    "run.threads": 1,
    "run.progress": False,
}  # fmt: skip
TIMING = ("images_per_s",)


def _cfg(out: Path, name: str, **extra) -> DetectionConfig:
    over = {**RECIPE, "run.output": str(out), "run.name": name, **extra}
    return load_config(None, over, cls=DetectionConfig)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def _same_run(a: Path, b: Path) -> None:
    assert _metrics(a) == _metrics(b)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("det")
    row = fit_detection(_cfg(out, "full"))
    assert row["epochs"] == 2 and row["detector"] == "faster_rcnn"
    return out / "full"


def test_a_run_folder_holds_everything(uninterrupted):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"config.yaml", "dataset.json", "metrics.jsonl", "checkpoint.pt", "best.safetensors",
            "summary.json", "summary.md", "train.log"} <= names  # fmt: skip
    info = json.loads((uninterrupted / "dataset.json").read_text())
    assert info["task"] == "detection" and info["classes"] == ["disk"]
    rows = _metrics(uninterrupted)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"val_map", "val_map_50", "val_voc07_map", "val_voc_map", "val_ap_per_class"} <= set(
        rows[-1]
    )
    assert rows[-1]["best_map"] == max(r["val_map"] for r in rows)
    assert "mAP" in (uninterrupted / "summary.md").read_text()


def test_resume_after_an_epoch_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    fit_detection(_cfg(tmp_path, "part", **{"schedule.epochs": 1}))
    cfg = resume_config(tmp_path / "part", {"schedule.epochs": 2}, cls=DetectionConfig)
    fit_detection(cfg, resume=tmp_path / "part")
    _same_run(uninterrupted, tmp_path / "part")


def test_resume_after_sigterm_mid_epoch_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    seen = [0]

    def hook(module, args):  # a real signal during the 6th training forward (epoch 2)
        if type(module).__name__ == "FasterRCNN" and module.training:
            seen[0] += 1
            if seen[0] == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with pytest.raises(StopRequested):
            fit_detection(_cfg(tmp_path, "stopped"))
    finally:
        handle.remove()
    ckpt = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    fit_detection(resume_config(tmp_path / "stopped", cls=DetectionConfig),
                  resume=tmp_path / "stopped")  # fmt: skip
    _same_run(uninterrupted, tmp_path / "stopped")


def test_resume_refuses_another_recipe(uninterrupted):
    with pytest.raises(ValueError, match=r"optim.lr 0.05 -> 0.5"):
        resume_config(uninterrupted, {"optim.lr": 0.5}, cls=DetectionConfig)


def test_best_weights_are_the_best_epochs_and_evaluate_run_scores_both(uninterrupted):
    maps = [r["val_map"] for r in _metrics(uninterrupted)]
    assert len(set(maps)) == len(maps) and max(maps) > 0  # records that tell epochs apart
    with safe_open(uninterrupted / "best.safetensors", "pt") as f:
        assert float(f.metadata()["map"]) == pytest.approx(max(maps), abs=1e-4)
    best = evaluate_run(uninterrupted)
    assert best["images"] == 4 and best["device"] == "cpu" and best["weights"] == "best.safetensors"
    assert best["map"] == pytest.approx(max(maps))
    assert evaluate_run(uninterrupted, last=True)["map"] == pytest.approx(maps[-1])


def test_evaluate_run_takes_the_runs_evaluation_subset_and_a_device(uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["limit_val"], cfg["run"]["device"] = 3, "cuda"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    scored = evaluate_run(run)  # the run's device where there is one, else the CPU
    assert scored["images"] == 3
    assert scored["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert evaluate_run(run, split="train")["images"] == 8  # another split: all of it
    assert evaluate_run(run, device="cpu")["device"] == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        evaluate_run(run, device="tpu")


def test_unsupported_recipe_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"run\.ema_decay"):
        fit_detection(_cfg(tmp_path, "x", **{"run.ema_decay": 0.99}))


@pytest.mark.parametrize(
    ("kind", "extra", "named"),
    [
        ("ssd", {"detector.fpn_channels": 16, "detector.trainable_layers": 2},
         "detector.kind='ssd' does not take detector.trainable_layers=2, detector.fpn_channels=16"),
        ("faster_rcnn", {"detector.width": 0.5, "detector.ssd_attn": "cbam"},
         "detector.kind='faster_rcnn' does not take detector.ssd_attn='cbam', detector.width=0.5"),
    ],
)  # fmt: skip
def test_options_of_the_other_detector_kind_are_refused(tmp_path, kind, extra, named):
    base = {"model": "vgg16", "detector.kind": "ssd"} if kind == "ssd" else {}
    cfg = load_config(None, {**base, **extra}, cls=DetectionConfig)
    with pytest.raises(ValueError, match=re.escape(named) + "$"):
        check_supported(cfg)
    check_supported(load_config(None, base, cls=DetectionConfig))  # defaults are fine
