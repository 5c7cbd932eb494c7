"""A detection run's summary row as a Markdown table (``summary.md``, the command line,
the report)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SUMMARY_COLUMNS", "format_detection_table"]

#: (heading, key, format) of a detection run's summary table.
SUMMARY_COLUMNS = [
    ("backbone", "model", "{}"),
    ("detector", "detector", "{}"),
    ("params (M)", "params_m", "{:.2f}"),
    ("mAP", "map", "{:.1f}"),
    ("AP50", "map_50", "{:.1f}"),
    ("AP75", "map_75", "{:.1f}"),
    ("VOC07 mAP", "voc07_map", "{:.1f}"),
    ("VOC mAP", "voc_map", "{:.1f}"),
    ("train img/s", "train_images_per_s", "{:.1f}"),
    ("eval img/s", "eval_images_per_s", "{:.1f}"),
]


def format_detection_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of detection summaries (COCO figures and VOC mAP in percent)."""
    lines = ["| " + " | ".join(c[0] for c in SUMMARY_COLUMNS) + " |"]
    lines.append("| --- | --- |" + " ---: |" * (len(SUMMARY_COLUMNS) - 2))
    for row in rows:
        cells = []
        for _, key, fmt in SUMMARY_COLUMNS:
            v = row.get(key)
            bad = v is None or (isinstance(v, float) and not math.isfinite(v))
            cells.append("-" if bad else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
