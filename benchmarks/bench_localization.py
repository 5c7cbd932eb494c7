"""Does CBAM look at the object? Pointing game and energy in box of Grad-CAM for the
baseline, SE and CBAM networks trained with the demo recipe, over several seeds.

Each model and seed is trained with ``convattn train --config demo`` (the embedded
synthetic shapes, whose object boxes are known) into ``--runs`` (finished runs are reused,
interrupted ones resumed), then scored on the whole validation split: Grad-CAM of the true
class at the last stage against the object's box.

    python benchmarks/bench_localization.py --runs benchmarks/results/localization

Prints a Markdown table (mean and sample standard deviation over seeds) and writes JSON
(default ``benchmarks/results/bench_localization.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import torch

from convattn.engine import fit, load_config
from convattn.explain import GradCAM, localization_scores
from convattn.report import Explained, read_run, sample_val_images

MODELS = ("cifar_resnet20", "cifar_resnet20_se", "cifar_resnet20_cbam")


def train(model: str, seed: int, runs: Path) -> Path:
    """The run folder of ``model`` at ``seed``, trained (or resumed) if unfinished."""
    folder = runs / f"{model}-s{seed}"
    if (folder / "summary.json").is_file():
        return folder
    over = {
        "model": model,
        "run.seed": seed,
        "run.output": str(runs),
        "run.name": folder.name,
        "run.progress": False,
    }
    cfg = load_config("demo", over)
    if (folder / "checkpoint.pt").is_file():
        fit(cfg, resume=folder)
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a start that never reached a checkpoint
    fit(cfg)
    return folder


def score(folder: Path, n: int) -> dict[str, float]:
    """Pointing game and energy in box (%) on ``n`` validation images, and the error."""
    run = read_run(folder)
    m = Explained.from_run(run)
    images, labels, boxes = sample_val_images(run, n)
    cams = []
    for start in range(0, len(labels), 100):
        with GradCAM(m.model) as cam:
            cams.append(
                cam(m.preprocess(images[start : start + 100]), labels[start : start + 100]).cams
            )
    s = localization_scores(torch.cat(cams), boxes)
    return {
        "pointing": 100 * s.pointing_mean,
        "energy": 100 * s.energy_mean,
        "top1_err": run.summary["top1_err"],
    }


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="benchmarks/results/localization", help="run folders")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--images", type=int, default=1000, help="validation images scored")
    p.add_argument("--json", default="benchmarks/results/bench_localization.json")
    args = p.parse_args()
    runs = Path(args.runs)
    table = {m: [score(train(m, s, runs), args.images) for s in args.seeds] for m in MODELS}
    print(f"demo recipe, seeds {args.seeds}, {args.images} validation images; mean ± std")
    print("| model | top-1 err (%) | pointing game (%) | energy in box (%) |")
    print("| --- | ---: | ---: | ---: |")
    for m, rows in table.items():
        cells = [_cell([r[k] for r in rows]) for k in ("top1_err", "pointing", "energy")]
        print(f"| {m} | " + " | ".join(cells) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"seeds": args.seeds, "scores": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
