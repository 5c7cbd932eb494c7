"""``convattn detect train / evaluate / predict`` as a user runs them (subprocesses) on a
tiny run of the generated set, and their one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from convattn.cli import main
from convattn.data.scenes import render_scenes
from convattn.detection.draw import COLOURS, draw_detections

# One shape per scene: mAP leaves 0 within an epoch, and the two epochs' records differ.
DATA = "synthetic:train=8,val=4,img_size=64,classes=1,objects=1"
TINY = ["--model", "resnet18_cbam", "--min-size", "64", "--max-size", "64",
        "--fpn-channels", "16", "--representation-size", "32", "--data", DATA,
        "--batch-size", "2", "--lr", "0.05", "--epochs", "2", "--threads", "1",
        "--no-progress"]  # fmt: skip


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "convattn", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    done = _cli("detect", "train", "--config", "demo", *TINY, "--output", out,
                "--run-name", "r", cwd=out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| backbone | detector |" in done.stdout and "run folder:" in done.stdout
    return out / "r"


def _scene_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i, img in enumerate(render_scenes(range(n), img_size=64).images):
        files.append(folder / f"scene{i}.jpg")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(files[-1])  # (3, H, W) -> (H, W, 3)
    return files


def test_train_takes_a_packaged_recipe_by_name_under_the_options(run_dir):
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["schedule"]["warmup_epochs"] == 0.25  # from the demo recipe
    assert cfg["schedule"]["epochs"] == 2 and cfg["detector"]["fpn_channels"] == 16  # options
    row = json.loads((run_dir / "summary.json").read_text())[0]
    assert row["task"] == "detection" and row["model"] == "resnet18_cbam"


def test_resume_may_add_epochs_but_not_change_the_recipe(run_dir, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    refused = _cli("detect", "train", "--resume", run, "--lr", "0.5", cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "optim.lr" in refused.stderr
    done = _cli("detect", "train", "--resume", run, "--epochs", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]


def test_evaluate_prints_and_writes_coco_and_voc_figures(run_dir, tmp_path):
    maps = [json.loads(line)["val_map"] for line in (run_dir / "metrics.jsonl").open()]
    assert len(set(maps)) == len(maps) and max(maps) > 0  # records that tell epochs apart
    done = _cli("detect", "evaluate", run_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mAP@[.5:.95]" in done.stdout and "VOC07 mAP" in done.stdout
    assert "disk" in done.stdout  # a class line
    written = json.loads((run_dir / "evaluation-val.json").read_text())
    assert written["images"] == 4 and written["map"] == pytest.approx(max(maps))
    assert {"map_50", "map_small", "voc07_map", "voc_map", "ap_per_class"} <= set(written)
    done = _cli("detect", "evaluate", run_dir, "--last", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = json.loads((run_dir / "evaluation-val-last.json").read_text())
    assert json.loads(done.stdout) == written and written["weights"] == "checkpoint.pt"
    assert written["map"] == pytest.approx(maps[-1])


def test_evaluate_on_other_data_writes_its_own_file(run_dir, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    (run / "evaluation-val.json").write_text("{}")
    other = DATA.replace("train=8,", "") + ",seed=1"
    assert main(["detect", "evaluate", str(run), "--data", other, "--device", "cpu"]) == 0
    name = "evaluation-synthetic_val_4_img_size_64_classes_1_objects_1_seed_1-val.json"
    written = json.loads((run / name).read_text())
    assert written["data"] == other and written["device"] == "cpu"
    assert (run / "evaluation-val.json").read_text() == "{}"  # the run's own, untouched
    assert main(["detect", "evaluate", str(run), "--data", DATA]) == 0  # the run's data
    assert json.loads((run / "evaluation-val.json").read_text())["data"] == DATA
    capsys.readouterr()


def test_predict_writes_one_png_per_image_of_a_folder(run_dir, tmp_path):
    _scene_files(tmp_path / "images", 2)
    out = tmp_path / "pred"
    done = _cli("detect", "predict", run_dir, tmp_path / "images", "--out", out,
                "--score-thresh", "0.0", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scene0.png", "scene1.png"]
    assert Image.open(out / "scene0.png").size == (64, 64)
    assert done.stdout.count("boxes at score >= 0.0") == 2


def test_a_drawn_box_outlines_its_edges_in_its_class_colour_and_keeps_the_inside():
    image = torch.zeros(3, 40, 60)
    output = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 5.0, 5.0]]),
              "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.2])}  # fmt: skip
    drawn = draw_detections(image, output, ["disk", "square"], score_thresh=0.5)
    cyan = torch.tensor([0x00, 0xE5, 0xFF], dtype=torch.uint8)  # label 2's colour
    assert COLOURS[1] == "#00e5ff"
    assert torch.equal(drawn[:, 15, 10], cyan) and torch.equal(drawn[:, 25, 20], cyan)
    assert torch.equal(drawn[:, 20, 20], torch.zeros(3, dtype=torch.uint8))  # inside, below label
    assert drawn[:, :5, :5].sum() == 0  # the 0.2 box is under the threshold
    assert drawn[:, 27:, :].sum() == 0  # nothing below the box


def test_errors_are_one_line(run_dir, tmp_path, capsys):
    def fails(argv: list[str], named: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err

    fails(["detect", "train", "--config", "nope"], "named without a folder: demo, ssd_demo")
    fails(["detect", "train", *TINY, "--detector", "yolo", "--output", str(tmp_path)],
          "'faster_rcnn'")  # fmt: skip
    fails(["detect", "train", "--config", "ssd_demo", "--size", "64", "--output", str(tmp_path)],
          "needs size >= 268")  # fmt: skip
    assert not any(tmp_path.iterdir())  # both refused before a run folder was made
    fails(["detect", "evaluate", str(tmp_path)], "no run folder")
    classification = tmp_path / "cls"
    classification.mkdir()
    (classification / "config.yaml").write_text("model: cifar_resnet20\n")
    (classification / "dataset.json").write_text('{"kind": "cifar-like", "classes": ["a"]}')
    fails(["detect", "evaluate", str(classification)], "not a detection run")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    fails(["detect", "predict", str(run_dir), str(bad)], "broken.jpg")
    fails(["detect", "predict", str(run_dir), str(tmp_path / "gone.png")], "gone.png")
    with pytest.raises(SystemExit):
        main(["detect", "train", "--label-smoothing", "0.1"])  # not a detection option


def test_packaged_detection_recipes_load():
    from convattn.detection.config import DETECTION_RECIPES, DetectionConfig
    from convattn.engine.recipes import load_config

    names = sorted(p.stem for p in DETECTION_RECIPES.glob("*.yaml"))
    assert {"demo", "ssd_demo"} <= set(names)
    for name in names:
        cfg = load_config(DETECTION_RECIPES / f"{name}.yaml", cls=DetectionConfig)
        assert cfg.data.path == "synthetic" and cfg.schedule.epochs > 0
