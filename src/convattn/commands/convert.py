"""``convattn convert``: any supported checkpoint -> our ``.safetensors``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import create_model, load_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (authors', torchvision, convattn) to .safetensors",
    )
    p.add_argument("src", help="source checkpoint file or URL")
    p.add_argument("dst", help="destination .safetensors file")
    p.add_argument("--model", required=True, help="registered model name the weights are for")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs")
    p.add_argument(
        "--partial", action="store_true", help="allow missing/unexpected keys (partial load)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import export_safetensors

    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"destination must end in .safetensors, got {dst}")
    model = create_model(args.model, num_classes=args.num_classes)
    report = load_checkpoint(model, args.src, strict=not args.partial)
    state = model.state_dict()
    dst.parent.mkdir(parents=True, exist_ok=True)
    export_safetensors(state, dst, model=args.model, source_format=report.format)
    print(report.summary())
    print(f"wrote {dst} ({len(state)} tensors, model {args.model})")
    return 0
