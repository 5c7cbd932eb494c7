"""How far training moved the attention layers of CBAM runs from their initialisation.

    .venv/bin/python docs/results/attention_drift.py RUN_DIR...

A run's initial weights are rebuilt from its own records: ``torch.manual_seed(run.seed)``
then the model its ``config.yaml`` describes, as training starts (``engine.setup``). For
each run the table gives, as the median over its CBAM blocks (min-max in brackets): the
relative change ``|W_end - W_0| / |W_0|`` of the spatial 7x7 convolution and of the
channel MLP's first layer, and ``|gamma|``, the spatial BatchNorm's weight at the end
(``W_end``: the run's ``best.safetensors``, the last epoch's under a cosine schedule). A
run trained with lr 0 reads 0 in every column but gamma's (0 or 1 by initialisation). The
spatial gate is ``sigmoid(gamma * z + beta)`` with ``z`` the normalised convolution output
(unit variance over a batch), so ``|gamma|`` is the spread of the gate's logits.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from convattn.engine import load_config
from convattn.engine.setup import build_model
from convattn.models import read_state_dict


def _initial(run: Path) -> dict[str, torch.Tensor]:
    cfg = load_config(run / "config.yaml")
    classes = len(json.loads((run / "dataset.json").read_text())["classes"])
    torch.manual_seed(cfg.run.seed)
    return build_model(cfg, classes).state_dict()


def _cell(values: list[float], fmt: str = "{:.3f}") -> str:
    med = statistics.median(values)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def drift(run: Path) -> list[str]:
    """The table row of one run folder."""
    start, end = _initial(run), read_state_dict(run / "best.safetensors")
    blocks = sorted(
        k[: -len("spatial.conv.weight")] for k in end if k.endswith("spatial.conv.weight")
    )
    if not blocks:
        raise SystemExit(f"{run}: no CBAM spatial gate in its weights")

    def moved(key: str) -> float:
        return float((end[key] - start[key]).norm() / start[key].norm())

    mlp = [
        next(k for k in end if k.startswith(b + "channel.") and k.endswith("weight"))
        for b in blocks
    ]
    return [
        run.name,
        load_config(run / "config.yaml").model_kwargs.get("attn_init", "authors"),
        str(len(blocks)),
        _cell([moved(b + "spatial.conv.weight") for b in blocks]),
        _cell([moved(k) for k in mlp]),
        _cell([abs(float(end[b + "spatial.bn.weight"])) for b in blocks]),
    ]


def main(runs: list[str]) -> None:
    head = [
        "run",
        "attn_init",
        "blocks",
        "spatial conv moved",
        "channel MLP moved",
        "|gamma| at end",
    ]
    print("| " + " | ".join(head) + " |")
    print("| --- | --- |" + " ---: |" * (len(head) - 2))
    for run in runs:
        print("| " + " | ".join(drift(Path(run))) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
