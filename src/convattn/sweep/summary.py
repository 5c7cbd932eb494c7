"""Per-grid summaries of a sweep folder: tables of mean and spread over seeds, and a plot.

A sweep folder holds ``runs/`` (one ordinary run folder per run, shared by every grid
that needs it) and, per grid and preset, an index ``grids/<grid>-<preset>.json`` naming
the run folder of each variant and seed. :func:`summarize` reads the indexes and the runs'
``summary.json`` and ``metrics.jsonl`` and writes, per grid and preset,
``summary-<grid>-<preset>.md``, ``.json`` and ``.png``:

- one row per variant: the number of finished seeds, the final-epoch validation top-1 and
  top-5 error as mean and sample standard deviation (``ddof=1``; with one seed there is
  none, shown "-"), the same of the last epoch's training loss (the mean over that
  epoch's steps, as ``metrics.jsonl`` records it: far less noisy than the validation
  error, so it shows how well each variant fits its training set), parameters (M),
  GFLOPs (multiply-accumulates, as the paper counts), training and evaluation images/s
  (means over seeds);
- the difference of each variant's mean error from the baseline's, with its spread
  ``sqrt(s1^2 / n1 + s2^2 / n2)`` (the standard error of a difference of two independent
  means, as in Welch's t-test; "-" unless both have two seeds or more);
- the plot: top-1 error per variant with its standard deviation as error bar, and the
  mean validation (solid) and training (dashed) top-1 error per epoch over the seeds.

Files are replaced atomically, so several machines finishing runs at once leave whole
files behind.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write
from ..engine.run import read_metrics
from .grid import Grid, RunSpec
from .runner import FAILED_FILE

__all__ = [
    "INDEX_DIR",
    "format_summary",
    "grid_summary",
    "read_index",
    "spread",
    "summarize",
    "write_index",
]

log = logging.getLogger("convattn")

#: The folder of a sweep's grid indexes.
INDEX_DIR = "grids"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_index(sweep_dir: str | Path, grid: Grid, runs: Sequence[RunSpec]) -> Path:
    """Write ``grids/<grid>-<preset>.json``: each variant's run folders by seed."""
    variants: dict[str, list[dict[str, Any]]] = {v: [] for v in grid.variants}
    for r in runs:
        variants[r.variant].append({"seed": r.seed, "run": f"runs/{r.name}"})
    index = {
        "grid": grid.name,
        "preset": grid.preset,
        "description": grid.description,
        "baseline": grid.baseline,
        "epochs": runs[0].config.schedule.epochs if runs else None,
        "variants": variants,
    }
    path = Path(sweep_dir) / INDEX_DIR / f"{grid.label}.json"
    _write_text(path, json.dumps(index, indent=2) + "\n")
    return path


def read_index(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def spread(s1: float | None, n1: int, s2: float | None, n2: int) -> float | None:
    """``sqrt(s1^2 / n1 + s2^2 / n2)``, or None without both standard deviations."""
    if s1 is None or s2 is None:
        return None
    return math.sqrt(s1**2 / n1 + s2**2 / n2)


def _finished(folder: Path, epochs: int | None) -> dict[str, Any] | None:
    """The summary row of a finished run, else None."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())[0]
        records = read_metrics(folder)
    except (ValueError, IndexError, KeyError) as err:
        log.warning("%s: left out of the summary: %s", folder, err)
        return None
    if not records or (epochs is not None and records[-1].get("epoch") != epochs):
        return None
    return {**row, "train_loss": records[-1].get("train_loss")}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def _curves(folders: list[Path]) -> dict[str, list[float]]:
    """Mean per-epoch validation and training top-1 error over the runs' metrics (epochs
    every run has evaluated)."""
    per_run = [
        {r["epoch"]: r for r in read_metrics(f) if r.get("val_top1_err") is not None}
        for f in folders
    ]
    if not per_run:
        return {"epoch": [], "val_top1_err": [], "train_top1_err": []}
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    out: dict[str, list[float]] = {"epoch": [float(e) for e in epochs]}
    for key in ("val_top1_err", "train_top1_err"):
        values = ([v for p in per_run if (v := p[e].get(key)) is not None] for e in epochs)
        out[key] = [statistics.fmean(v) if v else math.nan for v in values]  # None: not finite
    return out


def _variant_row(
    name: str, entries: list[dict[str, Any]], sweep: Path, epochs: int | None
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The table row of one variant and its mean curves."""
    done = [(e, _finished(sweep / e["run"], epochs)) for e in entries]
    rows = [(e, r) for e, r in done if r is not None]
    failed = sum(r is None and (sweep / e["run"] / FAILED_FILE).is_file() for e, r in done)
    out: dict[str, Any] = {"variant": name, "n": len(rows), "failed": failed}
    out["pending"] = len(entries) - len(rows) - failed
    out["seeds"] = [e["seed"] for e, _ in rows]
    out["runs"] = [e["run"] for e, _ in rows]
    out["model"] = rows[0][1]["model"] if rows else None
    out["code"] = sorted({r.get("code", "not recorded") for _, r in rows})
    for key in ("top1_err", "top5_err"):
        out[f"{key}_mean"], out[f"{key}_std"] = _mean_std([r[key] for _, r in rows])
    losses = [r["train_loss"] for _, r in rows if r["train_loss"] is not None]
    out["train_loss_mean"], out["train_loss_std"] = _mean_std(losses)
    for key in ("params_m", "gmacs", "train_images_per_s", "eval_images_per_s"):
        vals = [r[key] for _, r in rows if r.get(key) is not None]
        out[key] = statistics.fmean(vals) if vals else None
    return out, _curves([sweep / e["run"] for e, _ in rows])


def _add_differences(rows: list[dict[str, Any]], baseline: str) -> None:
    base = next(r for r in rows if r["variant"] == baseline)
    for row in rows:
        for key in ("top1_err", "top5_err"):
            mean, b = row[f"{key}_mean"], base[f"{key}_mean"]
            ok = row is not base and mean is not None and b is not None
            row[f"d_{key}"] = mean - b if ok else None
            s = spread(row[f"{key}_std"], row["n"], base[f"{key}_std"], base["n"]) if ok else None
            row[f"d_{key}_spread"] = s


def grid_summary(sweep_dir: str | Path, index: dict[str, Any]) -> dict[str, Any]:
    """The summary of one grid index: rows per variant (see the module docstring)."""
    sweep = Path(sweep_dir)
    rows, curves = [], {}
    for name, entries in index["variants"].items():
        row, curve = _variant_row(name, entries, sweep, index.get("epochs"))
        rows.append(row)
        curves[name] = curve
    _add_differences(rows, index["baseline"])
    keys = ("grid", "preset", "description", "baseline", "epochs")
    return {**{k: index.get(k) for k in keys}, "rows": rows, "curves": curves}


def _pm(mean: float | None, std: float | None, signed: bool = False, digits: int = 2) -> str:
    if mean is None:
        return "-"
    m = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{m} ± {'-' if std is None else f'{std:.{digits}f}'}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


_HEAD = ("variant", "model", "seeds", "top-1 err (%)", "top-5 err (%)", "Δ top-1", "Δ top-5",
         "train loss", "params (M)", "GFLOPs", "train img/s", "eval img/s")  # fmt: skip


def format_summary(summary: dict[str, Any]) -> str:
    """The Markdown page of a grid summary."""
    base = summary["baseline"]
    lines = [f"# {summary['grid']} ({summary['preset']})", ""]
    if summary.get("description"):
        lines += [summary["description"].strip(), ""]
    lines += [
        f"Validation error after the last epoch ({summary.get('epochs')}), mean ± sample "
        f"standard deviation (ddof = 1) over the seeds. Δ: difference of the means from the "
        f'baseline `{base}`, ± sqrt(s1²/n1 + s2²/n2). "-": not available (one seed). '
        "Train loss: the mean over the last epoch's steps, mean ± standard deviation over "
        "the seeds.",
        "",
        "| " + " | ".join(_HEAD) + " |",
        "| --- | --- |" + " ---: |" * (len(_HEAD) - 2),
    ]
    for r in summary["rows"]:
        seeds = f"{r['n']}" + "".join(f" (+{r[k]} {k})" for k in ("pending", "failed") if r.get(k))
        cells = [
            r["variant"] + (" (baseline)" if r["variant"] == base else ""),
            r["model"] or "-",
            seeds,
            _pm(r["top1_err_mean"], r["top1_err_std"]),
            _pm(r["top5_err_mean"], r["top5_err_std"]),
            _pm(r["d_top1_err"], r["d_top1_err_spread"], signed=True),
            _pm(r["d_top5_err"], r["d_top5_err_spread"], signed=True),
            _pm(r.get("train_loss_mean"), r.get("train_loss_std"), digits=3),
            _num(r["params_m"], "{:.3f}"),
            _num(r["gmacs"], "{:.4f}"),
            _num(r["train_images_per_s"], "{:.0f}"),
            _num(r["eval_images_per_s"], "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    codes = sorted({c for r in summary["rows"] for c in r.get("code", [])})
    if codes:
        lines += ["", "Code of the finished runs: " + "; ".join(codes) + "."]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    """Error per variant with error bars, and the mean curves (matplotlib, off-screen)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    bars, lines = fig.subplots(1, 2)
    rows = summary["rows"]
    x = range(len(rows))
    means = [math.nan if r["top1_err_mean"] is None else r["top1_err_mean"] for r in rows]
    stds = [r["top1_err_std"] or 0.0 for r in rows]
    bars.errorbar(x, means, yerr=stds, fmt="o", capsize=4)
    bars.set_xlim(-0.5, len(rows) - 0.5)
    bars.set_xticks(list(x), [r["variant"] for r in rows], rotation=30, ha="right")
    bars.set_ylabel("top-1 error (%)")
    bars.set_title("final validation error (mean ± std over seeds)")
    for i, (name, c) in enumerate(summary["curves"].items()):
        color = f"C{i % 10}"
        lines.plot(c["epoch"], c["val_top1_err"], color=color, marker=".", label=name)
        lines.plot(c["epoch"], c["train_top1_err"], color=color, marker=".", linestyle="--")
    lines.set_xlabel("epoch")
    lines.set_ylabel("top-1 error (%)")
    lines.set_title("mean curves: validation (solid), training (dashed)")
    if summary["curves"]:
        lines.legend(fontsize="small")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def summarize(sweep_dir: str | Path, labels: Sequence[str] | None = None) -> list[Path]:
    """Write the summary files of every grid index in ``sweep_dir`` (or of those named
    ``<grid>-<preset>`` in ``labels``); return the Markdown files written."""
    sweep = Path(sweep_dir)
    indexes = sorted((sweep / INDEX_DIR).glob("*.json"))
    if not indexes:
        raise FileNotFoundError(f"{sweep} holds no sweep (no {INDEX_DIR}/*.json)")
    written = []
    for path in indexes:
        if labels is not None and path.stem not in labels:
            continue
        summary = grid_summary(sweep, read_index(path))
        md = sweep / f"summary-{path.stem}.md"
        _write_text(sweep / f"summary-{path.stem}.json", json.dumps(summary, indent=2) + "\n")
        _write_text(md, format_summary(summary))
        _plot(summary, sweep / f"summary-{path.stem}.png")
        written.append(md)
    return written
