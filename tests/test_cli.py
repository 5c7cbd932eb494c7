"""The command line through ``main(argv)``: help, errors, train, evaluate, demo, models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from convattn import __version__
from convattn.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_train_help_is_grouped_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for section in ("data:", "optim:", "schedule:", "run:"):
        assert section in out
    assert "--weight-decay" in out and "(default: 0.0001)" in out and "--sched" in out


def test_config_typo_is_an_error_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  epoch: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "'epoch'" in capsys.readouterr().err


def test_missing_dataset_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def _tree(root, broken: bool):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8)
                pixels[..., c] += 127  # class 0 is reddish, class 1 greenish
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    if broken:
        (root / "train" / "class0" / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_train_on_a_folder_skips_and_counts_a_corrupt_file_then_evaluate(tmp_path, capsys):
    _tree(tmp_path / "data", broken=True)
    args = ["train", "--model", "cifar_resnet20", "--data", str(tmp_path / "data"),
            "--batch-size", "8", "--workers", "0", "--epochs", "1", "--no-progress",
            "--output", str(tmp_path / "runs"), "--run-name", "r", "--lr", "0.05"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr()
    assert "broken.jpg" in out.err  # reported with its path
    record = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text())
    assert record["skipped_files"] == 1
    assert main(["evaluate", str(tmp_path / "runs" / "r"), "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == 16 and metrics["top1_err"] == pytest.approx(record["val_top1_err"])


def test_demo_quick_trains_three_models_and_prints_their_summaries(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    models = ["cifar_resnet20", "cifar_resnet20_se", "cifar_resnet20_cbam"]
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("demo-")
    rows = json.loads((folder / "summary.json").read_text())
    assert [r["model"] for r in rows] == models
    # | model | params (M) | GFLOPs | top-1 err (%) | top-5 err (%) | train img/s | eval img/s |
    printed = [
        line.strip("|").split("|") for line in out.splitlines() if line.startswith("| cifar")
    ]
    assert [cells[0].strip() for cells in printed] == models
    for cells, row in zip(printed, rows, strict=True):
        assert json.loads((folder / row["model"] / "summary.json").read_text()) == [row]
        params, gflops, top1, top5, train_ips, eval_ips = (float(c) for c in cells[1:])
        assert all(math.isfinite(v) for v in (params, gflops, top1, top5, train_ips, eval_ips))
        assert params > 0 and gflops > 0 and train_ips > 0 and eval_ips > 0
        assert 0 <= top5 <= top1 <= 100
        for value, key, digits in (
            (params, "params_m", 2),
            (gflops, "gmacs", 3),
            (top1, "top1_err", 2),
            (top5, "top5_err", 2),
        ):
            assert value == round(row[key], digits), key
    # SE adds the channel MLPs to the baseline, CBAM also the spatial convolutions.
    assert rows[0]["params_m"] < rows[1]["params_m"] < rows[2]["params_m"]
    # It ends with the report of its three runs.
    report = folder / "report.html"
    assert f"report: {report}" in out
    page = report.read_text(encoding="utf-8")
    assert all(f"<td>{m}</td>" in page for m in models) and page.count("<img ") == 3


def test_models_and_summary(capsys):
    assert main(["models", "*resnet50_cbam", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "| resnet50_cbam | 28.09 | - | - | 224x224 | 28.09 |" in out
    assert main(["models", "resnet50_cbam"]) == 0
    out = capsys.readouterr().out  # our layout, then the stride-in-1x1 layout the paper counted
    assert "| resnet50_cbam | 28.09 | 4.096 | 3.864 | 224x224 | 28.09 | 3.864 |" in out
    assert "stride_in_1x1=True" in out
    assert main(["summary", "cifar_resnet20_cbam", "--depth", "1"]) == 0
    assert "Total params: 272" in capsys.readouterr().out


def test_benchmark_prints_a_table_for_user_shapes(tmp_path, capsys):
    out_json = tmp_path / "b.json"
    argv = ["benchmark", "--shape", "2", "16", "8", "8", "--shape", "2", "32", "4", "4",
            "--rounds", "1", "--candidates", "pass", "read", "fused", "eager",
            "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("| shape | format | pass (ms) | read (ms) | fused (ms) | eager (ms)")
    assert lines[3].startswith("| 2x16x8x8 | NCHW |") and lines[4].startswith("| 2x32x4x4 |")
    rows = json.loads(out_json.read_text())
    assert rows[0]["saved_x_input"]["eager"] > rows[0]["saved_x_input"]["fused"]
    assert main(["benchmark", "--candidates", "nope"]) == 2
