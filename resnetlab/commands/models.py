"""`resnetlab models [PATTERN]`: the model zoo as a table of parameters, MACs, input size and ImageNet weights."""

from __future__ import annotations

import argparse

from resnetlab.errors import ResnetlabError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the available models",
        description="List registered models with parameters and MACs at their default input size (ImageNet models"
        " at 1000 classes, the CIFAR ones at 10), "
        "and the ImageNet weights `--pretrained imagenet` downloads for them.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*' (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.models import get_builder, list_models
    from resnetlab.models.summary import build_for_summary, count_macs, count_params, human
    from resnetlab.models.weights import IMAGENET_WEIGHTS

    names = list_models(args.pattern)
    if not names:
        if not any(c in args.pattern for c in "*?["):
            get_builder(args.pattern)  # raises the registry's error with the closest names
        raise ResnetlabError(f"no model matches {args.pattern!r}; run `resnetlab models` for the full list")

    rows = [("name", "params", "MACs", "input", "imagenet weights")]
    for name in names:
        model = build_for_summary(name)  # on the meta device: fast, nothing allocated
        size = tuple(model.default_cfg["input_size"])
        src = IMAGENET_WEIGHTS.get(name)
        rows.append(
            (
                name,
                f"{count_params(model) / 1e6:.2f} M",
                human(count_macs(model, size)),
                "x".join(map(str, size)),
                src.tag if src else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:<{widths[3]}}  {row[4]}")
        if i == 0:
            print("-" * (sum(widths) + 8))
    return 0
