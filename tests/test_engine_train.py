"""Training end to end on small generated data: learning, resume, signals, evaluation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from convattn.engine import StopRequested
from convattn.engine.evaluate_checkpoint import evaluate_weights
from convattn.engine.fit import fit
from convattn.engine.recipes import load_config
from convattn.models import create_model, read_state_dict

DATA = "synthetic:train=256,val=128"


def _cfg(tmp_path, **over):
    base = {
        "model": "cifar_resnet20_cbam",
        "data.path": DATA,
        "data.batch_size": 32,
        "data.workers": 0,
        "optim.lr": 0.05,
        "schedule.epochs": 2,
        "schedule.kind": "cosine",
        "run.output": str(tmp_path),
        "run.name": "run",
        "run.progress": False,
        "run.deterministic": True,
    }
    return load_config(None, {**base, **over})


def _weights(run_dir):
    return read_state_dict(run_dir / "checkpoint.pt")


def test_one_epoch_reduces_the_loss_and_writes_the_run_folder(tmp_path):
    row = fit(_cfg(tmp_path, **{"schedule.epochs": 3, "optim.lr": 0.1}))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for name in ("config.yaml", "train.log", "checkpoint.pt", "best.safetensors", "summary.md"):
        assert (run / name).is_file(), name
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["name"] == "synthetic" and dataset["img_size"] == 32
    assert len(dataset["classes"]) == 10 and dataset["classes"][0] == "disk"
    summary = json.loads((run / "summary.json").read_text())[0]
    assert summary["model"] == "cifar_resnet20_cbam" and summary["params_m"] == row["params_m"]
    assert load_config(run / "config.yaml").model == "cifar_resnet20_cbam"


def test_resume_after_epoch_one_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # A step schedule (halving every epoch) does not depend on the run's length, so run b
    # can stop after epoch 1 and be extended to two epochs from its checkpoint.
    sched = {"schedule.kind": "step", "schedule.step_epochs": 1, "schedule.gamma": 0.5}
    fit(_cfg(tmp_path / "a", **sched))
    fit(_cfg(tmp_path / "b", **sched, **{"schedule.epochs": 1}))
    fit(_cfg(tmp_path / "b", **sched), resume=tmp_path / "b" / "run")
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_signal_saves_a_checkpoint_and_resume_finishes_the_same_run(tmp_path):
    fit(_cfg(tmp_path / "a"))
    cfg = _cfg(tmp_path / "b")
    calls = {"n": 0}

    def interrupt(module, args):  # SIGINT during the 5th training forward of the network
        if type(module).__name__ == "ResNet" and module.training:
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGINT)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(interrupt)
    try:
        with pytest.raises(StopRequested):
            fit(cfg)
    finally:
        handle.remove()
    state = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 5)
    fit(cfg, resume=tmp_path / "b" / "run")
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_evaluate_reproduces_the_accuracy_recorded_at_training_time(tmp_path):
    row = fit(_cfg(tmp_path, **{"schedule.epochs": 1}))
    metrics = evaluate_weights(tmp_path / "run", batch_size=50, workers=0)
    assert metrics["top1_err"] == pytest.approx(row["best_top1_err"], abs=1e-9)
    assert metrics["samples"] == 128


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan"):
        fit(_cfg(tmp_path, **{"optim.lr": float("nan")}))


def test_bf16_autocast_channels_last_ema_and_precise_bn_run(tmp_path):
    row = fit(
        _cfg(
            tmp_path,
            **{
                "schedule.epochs": 1,
                "run.amp": "bf16",
                "run.channels_last": True,
                "run.ema_decay": 0.99,
                "run.precise_bn_batches": 2,
                "optim.label_smoothing": 0.1,
                "data.mixup": 0.2,
            },
        )
    )
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["top1_err"] == record["val_top1_err"]  # the summary reports the evaluation
    for key in ("val_top1_err", "val_top5_err", "ema_val_top1_err", "ema_val_top5_err"):
        wrong = record[key] / 100 * 128  # errors count misclassified images out of 128
        assert 0 <= wrong <= 128 and wrong == pytest.approx(round(wrong), abs=1e-6), key


def test_batch_size_must_divide_and_fit_the_data(tmp_path):
    with pytest.raises(ValueError, match="exceeds the 256 training samples"):
        fit(_cfg(tmp_path, **{"data.batch_size": 512}))


def test_model_built_by_fit_is_the_registered_one(tmp_path):
    fit(_cfg(tmp_path, **{"schedule.epochs": 1, "model": "cifar_resnet20_se"}))
    model = create_model("cifar_resnet20_se", checkpoint_path=tmp_path / "run" / "best.safetensors")
    assert model.num_classes == 10
