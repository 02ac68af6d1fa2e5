"""`resnetlab summary NAME`: Keras-style layer table with output shapes, parameters and MACs."""

from __future__ import annotations

import argparse

from resnetlab.errors import ResnetlabError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="layer table, parameters and MACs of a model",
        description="Print a model's layers (output shape, parameters, MACs) and totals for one input image. "
        "Nothing is downloaded and no weights are allocated.",
    )
    p.add_argument("model", metavar="NAME", help="model name, see `resnetlab models`")
    p.add_argument("--img-size", type=int, default=None, help="input height and width (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's own)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default: 3)")
    p.add_argument("--depth", type=int, default=2, help="nesting depth of the table (1: top level; default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for option, value, low in (("--img-size", args.img_size, 1), ("--num-classes", args.num_classes, 1),
                               ("--in-chans", args.in_chans, 1), ("--depth", args.depth, 1)):  # fmt: skip
        if value is not None and value < low:
            raise ResnetlabError(f"{option} {value}: must be at least {low}")

    from resnetlab.models.summary import build_for_summary, summary

    model = build_for_summary(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    _, h, w = model.default_cfg["input_size"]
    size = (args.in_chans, args.img_size, args.img_size) if args.img_size else (args.in_chans, h, w)
    try:
        result = summary(model, size, depth=args.depth, model_name=args.model)
    except RuntimeError as exc:  # e.g. an input too small for the network's downsampling
        reason = str(exc).strip().splitlines()[0][:200]
        raise ResnetlabError(
            f"{args.model} cannot take a {size[1]}x{size[2]} input ({reason}); try a larger --img-size"
        ) from exc
    print(result)
    return 0
