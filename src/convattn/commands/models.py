"""``convattn models`` and ``convattn summary``: the registry as tables."""

from __future__ import annotations

import argparse

import torch

from ..models import create_model, get_model_spec, list_models, profile


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameters and GFLOPs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*cbam'")
    p.add_argument(
        "--no-flops", action="store_true", help="skip counting multiply-accumulates (faster)"
    )
    p.set_defaults(func=run_models)

    s = sub.add_parser("summary", help="per-layer table (output shape, parameters) of a model")
    s.add_argument("name", help="registered model name")
    s.add_argument("--img-size", type=int, default=None, help="input size (default: model's)")
    s.add_argument("--depth", type=int, default=3, help="nesting depth shown (default: 3)")
    s.set_defaults(func=run_summary)


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    print(
        "| model | params (M) | GFLOPs (GMACs) | GFLOPs, paper's layout | input "
        "| paper params (M) | paper GFLOPs |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name in names:
        spec = get_model_spec(name)
        params = sum(p.numel() for p in _meta(name).parameters()) / 1e6
        ours = paper = None
        if not args.no_flops:
            ours = profile(_meta(name), spec.input_size).gmacs
            paper = profile(_meta(name, **spec.paper_layout), spec.input_size).gmacs
        size = "x".join(map(str, spec.input_size[1:]))
        print(
            f"| {name} | {params:.2f} | {_fmt(ours, 3)} | {_fmt(paper, 3)} | {size} | "
            f"{_fmt(spec.paper_params_m, 2)} | {_fmt(spec.paper_gflops, 3)} |"
        )
    print(
        "\nGFLOPs are multiply-accumulates of the model as built. The paper counted ResNet "
        "and ResNeXt bottlenecks with the stride in the first 1x1 convolution (the original "
        'layout, stride_in_1x1=True); the column "paper\'s layout" counts that layout.'
    )
    return 0


def _meta(name: str, **kwargs: object) -> torch.nn.Module:
    with torch.device("meta"):  # count without allocating or computing
        return create_model(name, **kwargs)


def run_summary(args: argparse.Namespace) -> int:
    from torchinfo import summary

    spec = get_model_spec(args.name)
    size = args.img_size or spec.input_size[1]
    model = create_model(args.name)
    print(
        summary(
            model,
            input_size=(1, spec.input_size[0], size, size),
            depth=args.depth,
            col_names=("output_size", "num_params"),
            verbose=0,
        )
    )
    return 0
