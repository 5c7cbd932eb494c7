"""The CBAM paper's Tables 1-4 beside the quick-preset reruns of ``convattn sweep``.

    python docs/results/paper_tables.py [SWEEP_DIR]    # default docs/results/sweeps

Reads each grid's ``summary-<grid>-quick.json`` (written by ``convattn sweep``; rewrite
them with ``convattn sweep --summarize docs/results/sweeps``) and, for the per-seed
column, the ``summary.json`` of each run it lists. Prints one Markdown table
per paper table: our mean ± sample standard deviation over seeds, the difference from the
grid's baseline with its spread, each seed's top-1 error, the mean ± sd of the training
loss of the last epoch (with augmentation, as the run logged it), and the paper's ImageNet
ResNet-50 top-1 / top-5 error with its difference from the paper's row for the same
baseline. Below each table, the variants ranked by mean top-1 error, ours and the paper's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# grid -> (title, {variant: (paper label, top-1 err, top-5 err) or None}); the paper's
# figures are its ImageNet ResNet-50 results (Tables 1-4).
PAPER: dict[str, tuple[str, dict[str, tuple[str, float, float] | None]]] = {
    "table1_channel_pooling": (
        "Table 1: channel pooling (channel attention only)",
        {
            "none": ("ResNet-50", 24.56, 7.50),
            "avg": ("AvgPool (SE)", 23.14, 6.70),
            "max": ("MaxPool", 23.20, 6.83),
            "avg_max": ("AvgPool & MaxPool", 22.80, 6.52),
        },
    ),
    "table2_spatial": (
        "Table 2: spatial attention after channel (avg & max) attention",
        {
            "channel": ("channel (avg & max)", 22.80, 6.52),
            "conv1x1_k3": ("channel + spatial, 1x1 conv, k=3", 22.96, 6.64),
            "conv1x1_k7": ("channel + spatial, 1x1 conv, k=7", 22.90, 6.47),
            "avgmax_k3": ("channel + spatial, avg & max, k=3", 22.68, 6.41),
            "avgmax_k7": ("channel + spatial, avg & max, k=7 (CBAM)", 22.66, 6.31),
        },
    ),
    "table3_arrangement": (
        "Table 3: arrangement of the channel and spatial branches",
        {
            "channel_se": ("channel only (SE)", 23.14, 6.70),
            "channel_avgmax": ("channel only, avg & max (Table 1)", 22.80, 6.52),
            "channel_spatial": ("channel -> spatial (CBAM)", 22.66, 6.31),
            "spatial_channel": ("spatial -> channel", 22.78, 6.42),
            "parallel": ("channel and spatial in parallel", 22.95, 6.59),
        },
    ),
    "table4_cifar": (
        "Table 4: architectures (ResNet-20 here, ResNet-50 in the paper)",
        {
            "none": ("ResNet-50", 24.56, 7.50),
            "se": ("ResNet-50 + SE", 23.14, 6.70),
            "cbam": ("ResNet-50 + CBAM", 22.66, 6.31),
            "bam": None,
        },
    ),
}


def _pm(mean: float | None, std: float | None, signed: bool = False, digits: int = 2) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _seeds(sweep: Path, row: dict) -> str:
    errs = []
    for run in row["runs"]:
        summary = json.loads((sweep / run / "summary.json").read_text())
        errs.append(f"{summary[0]['top1_err']:.2f}")
    return ", ".join(errs) or "-"


def _paper_cell(paper: dict, variant: str, base: str) -> str:
    entry = paper.get(variant)
    if entry is None:
        return "not in the paper's table"
    label, top1, top5 = entry
    delta = "" if variant == base else f" ({top1 - paper[base][1]:+.2f})"
    return f"{label}: {top1:.2f} / {top5:.2f}{delta}"


def _ranking(names: list[str], key: dict[str, float]) -> str:
    return " < ".join(sorted((n for n in names if n in key), key=key.__getitem__))


def table(sweep: Path, grid: str) -> str:
    """One paper table as Markdown, from ``sweep``'s summary of ``grid``'s quick preset."""
    title, paper = PAPER[grid]
    summary = json.loads((sweep / f"summary-{grid}-quick.json").read_text())
    base = summary["baseline"]
    lines = [
        f"### {title}",
        "",
        "| variant | seeds | top-1 err (%) | top-5 err (%) | Δ top-1 vs "
        f"{base} | per seed (top-1) | train loss, last epoch | paper: top-1 / top-5 (Δ top-1) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    ours: dict[str, float] = {}
    for row in summary["rows"]:
        name = row["variant"]
        if row["top1_err_mean"] is not None:
            ours[name] = row["top1_err_mean"]
        seeds = f"{row['n']}" + (f" (+{row['pending']} pending)" if row["pending"] else "")
        cells = [
            name,
            seeds,
            _pm(row["top1_err_mean"], row["top1_err_std"]),
            _pm(row["top5_err_mean"], row["top5_err_std"]),
            _pm(row["d_top1_err"], row["d_top1_err_spread"], signed=True),
            _seeds(sweep, row),
            _pm(row.get("train_loss_mean"), row.get("train_loss_std"), digits=3),
            _paper_cell(paper, name, base),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    in_paper = {n: e[1] for n, e in paper.items() if e is not None}
    lines += [
        "",
        f"Ranked by top-1 error, ours: {_ranking(list(ours), ours)}.",
        f"The paper's: {_ranking(list(in_paper), in_paper)}.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    sweep = Path(argv[0] if argv else "docs/results/sweeps")
    found = [g for g in PAPER if (sweep / f"summary-{g}-quick.json").exists()]
    if not found:
        sys.exit(f"no summary-<grid>-quick.json of Tables 1-4 in {sweep}")
    print("\n\n".join(table(sweep, g) for g in found))


if __name__ == "__main__":
    main(sys.argv[1:])
