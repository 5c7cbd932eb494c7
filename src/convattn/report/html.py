"""``convattn report``: one static, self-contained HTML page comparing training runs.

The page holds the Table-4-style summary (parameters, GFLOPs, top-1/top-5 error,
images/s), the training curves, Grad-CAM of every run on a fixed sample of validation
images (the CBAM paper's Figure 4 layout, with the target's softmax probability), CBAM's
spatial maps stage by stage, and localisation scores (pointing game, energy in box) when
the dataset keeps object boxes. Detection runs (``convattn detect train``) get their own
part: the mAP table (COCO and VOC figures), AP per class, and predicted boxes with
scores on sample evaluation images (:mod:`convattn.report.detection`). Every picture
is embedded as a PNG ``data:`` URI with an ``alt`` text; nothing is fetched from a
network. The layout reflows from a phone's width to a desktop's.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..engine.run import SUMMARY_COLUMNS
from ..explain import GradCAM, capture_attention, localization_scores
from .detection import (
    DetectionRunView,
    class_rows,
    detection_rows,
    is_detection_run,
    read_detection_run,
    summary_rows,
)
from .figures import CamRow, boxes_grid, cam_grid, curves_figure, maps_grid, to_png
from .runs import Explained, RunView, read_run, sample_val_images

__all__ = ["build_report", "explain_rows"]

log = logging.getLogger("convattn")

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 0 12px 40px;
       max-width: 1100px; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; }
.note { color: #555; font-size: 0.9em; }
.wide img { min-width: 560px; }
"""

_COLUMNS = [*SUMMARY_COLUMNS, ("epochs", "epochs", "{}")]


def _table(head: list[str], rows: list[list[str]], caption: str) -> str:
    th = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return (
        f"<p class='note'>{html.escape(caption)}</p><div class='scroll'><table>"
        f"<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _image(png: bytes, alt: str, *, wide: bool = False) -> str:
    """An embedded PNG; ``wide`` ones keep a legible size and scroll on narrow screens."""
    data = base64.b64encode(png).decode("ascii")
    img = f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt, quote=True)}'>"
    return f"<div class='scroll wide'>{img}</div>" if wide else img


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    v = None if row is None else row.get(key)
    return "-" if v is None else fmt.format(v)


def _summary(runs: list[RunView]) -> str:
    rows = [[r.name] + [_cell(r.summary, k, f) for _, k, f in _COLUMNS] for r in runs]
    head = ["run"] + [c[0] for c in _COLUMNS]
    return _table(head, rows, "From each run's summary.json (the paper's Table 4 columns).")


def explain_rows(
    models: list[Explained], images: torch.Tensor, *, targets: torch.Tensor | None = None
) -> list[CamRow]:
    """Grad-CAM rows (last stage) of ``models`` on ``uint8`` ``images`` (N, 3, S, S)."""
    rows = []
    for m in models:
        with GradCAM(m.model) as cam:
            res = cam(m.preprocess(images), targets)
        caps = [
            f"{m.classes[t]}, P = {p:.2f}"
            for t, p in zip(res.targets.tolist(), res.probs.tolist(), strict=True)
        ]
        rows.append(CamRow(m.label, res.cams, caps))
    return rows


def _last_stage_maps(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The spatial map of the last CBAM of each stage (``layerN``), by stage."""
    maps = capture_attention(model, x).maps
    out: dict[str, torch.Tensor] = {}
    for name, m in maps.items():
        if m.kind == "cbam" and m.spatial is not None:
            out[name.split(".")[0]] = m.spatial  # later blocks of a stage replace earlier
    return out


def _localization(models: list[Explained], runs: list[RunView], n: int, seed: int) -> str:
    images, labels, boxes = sample_val_images(runs[0], n, seed=seed)
    if boxes is None:
        return "<p class='note'>The dataset keeps no object boxes: no localisation scores.</p>"
    rows = []
    for m in models:
        cams = []
        for start in range(0, n, 64):
            with GradCAM(m.model) as cam:
                cams.append(
                    cam(m.preprocess(images[start : start + 64]), labels[start : start + 64]).cams
                )
        s = localization_scores(torch.cat(cams), boxes)
        rows.append([m.label, f"{100 * s.pointing_mean:.1f}", f"{100 * s.energy_mean:.1f}"])
    caption = (
        f"Grad-CAM of the true class at the last stage on {images.shape[0]} validation "
        "images against the objects' boxes: pointing game (the map's maximum in the "
        "box) and energy in box (the map's mass inside it)."
    )
    return _table(["model", "pointing game (%)", "energy in box (%)"], rows, caption)


def _sections(runs: list[RunView], images: int, samples: int, seed: int) -> list[str]:
    out = ["<h2>Summary</h2>", _summary(runs)]
    curves = to_png(curves_figure([(r.name, r.metrics) for r in runs]))
    out += [
        "<h2>Training curves</h2>",
        _image(curves, "Loss and top-1 error per epoch of every run"),
    ]
    models = [Explained.from_run(r) for r in runs]
    for m, r in zip(models, runs, strict=True):
        m.label = r.name
    x, labels, _ = sample_val_images(runs[0], images, seed=seed)
    titles = [f"true: {models[0].classes[t]}" for t in labels.tolist()]
    grid = to_png(cam_grid(x, explain_rows(models, x), titles))
    out += [
        "<h2>Grad-CAM</h2>",
        "<p class='note'>Last stage, predicted class, its softmax "
        "probability under each map (the CBAM paper's Figure 4 layout).</p>",
        _image(
            grid,
            f"Grad-CAM of {', '.join(r.name for r in runs)} on {len(labels)} validation images",
            wide=True,
        ),
    ]
    for m in models:
        stages = _last_stage_maps(m.model, m.preprocess(x[:3]))
        if stages:
            pic = to_png(maps_grid(x[:3], stages))
            out += [
                f"<h2>CBAM spatial maps: {html.escape(m.label)}</h2>",
                _image(
                    pic, f"Spatial attention of the last CBAM of each stage of {m.label}", wide=True
                ),
            ]
    out += ["<h2>Localisation</h2>", _localization(models, runs, samples, seed)]
    return out


def _detection_sections(
    runs: list[DetectionRunView], images: int, seed: int, score_thresh: float
) -> list[str]:
    head, rows = summary_rows(runs)
    out = ["<h2>Detection</h2>", _table(head, rows, (
        "From each detection run's summary.json, in percent: COCO mAP@[.5:.95] and AP at "
        "IoU 0.5 and 0.75 (pycocotools), VOC mAP at IoU 0.5 by the 11-point (VOC07) and "
        "area methods, at the last evaluation."))]  # fmt: skip
    head, rows = class_rows(runs)
    caption = "VOC AP at IoU 0.5 (area method, %) of each class at each run's last evaluation."
    out += ["<h2>Detection: AP per class</h2>", _table(head, rows, caption)]
    pics = detection_rows(runs, images, seed=seed, score_thresh=score_thresh)
    alt = (f"Ground-truth boxes, then the boxes of {', '.join(r.name for r in runs)}, "
           f"on {len(pics[0][1])} evaluation images")  # fmt: skip
    out += [
        "<h2>Detection: predicted boxes</h2>",
        f"<p class='note'>Ground truth in the first row, then each run's best weights: "
        f"boxes scoring at least {score_thresh:g}, with class and score.</p>",
        _image(to_png(boxes_grid(pics)), alt, wide=True),
    ]
    return out


def build_report(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    images: int = 6,
    samples: int = 256,
    seed: int = 0,
    score_thresh: float = 0.5,
) -> Path:
    """Write the report of ``run_dirs`` to ``out`` and return its path.

    Args:
        run_dirs: run folders of ``convattn train`` and of ``convattn detect train``, in
            any mix; the first of each kind gives that part's images.
        out: the ``.html`` file to write.
        images: validation images in the Grad-CAM grid and the predicted-boxes rows.
        samples: validation images the localisation scores average over.
        seed: which images (a class-stratified sample; detection: a seeded one).
        score_thresh: detections drawn from this score.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    detect = [is_detection_run(d) for d in run_dirs]
    runs = [read_run(d) for d, det in zip(run_dirs, detect, strict=True) if not det]
    det_runs = [read_detection_run(d) for d, det in zip(run_dirs, detect, strict=True) if det]
    sections = _sections(runs, images, samples, seed) if runs else []
    if det_runs:
        sections += _detection_sections(det_runs, images, seed, score_thresh)
    names = ", ".join(Path(d).name for d in run_dirs)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>convattn report</title><style>{_CSS}</style></head><body>"
        f"<h1>convattn report: {html.escape(names)}</h1>"
        f"<p class='note'>Written {stamp} by convattn {__version__}.</p>"
        f"{chr(10).join(sections)}</body></html>"
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    log.info("report written to %s", path)
    return path
