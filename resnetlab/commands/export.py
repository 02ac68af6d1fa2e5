"""`resnetlab export RUN_OR_CHECKPOINT --format onnx|torchscript`: a deployable file, proven to agree with the model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript",
        description="Export a checkpoint (fp32, eval mode) to ONNX or TorchScript with its class names and "
        "preprocessing stored in the file and beside it as FILE.json. The exported file is then loaded back and "
        "compared with the checkpoint on real photos (max logit difference and top-1 agreement); the command fails "
        "and leaves FILE.parity-failed instead of FILE when they disagree.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder (its best.pt) or checkpoint file")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=("onnx", "torchscript"),
        default=None,
        help="(default: the one --out's ending names, .pt/.pth/.ts TorchScript; else onnx)",
    )
    p.add_argument(
        "--out",
        metavar="FILE_OR_DIR",
        help="output file, or a folder to write it in (default: beside the checkpoint, e.g. best.onnx)",
    )
    p.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ONNX: any batch size (default); --no-dynamic-batch fixes the batch to 1",
    )
    p.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default: 18; below 18 uses the legacy exporter)"
    )
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="DIR_OR_FILE",
        help="photos for the parity check (default: the shared sample photos or the training data)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.errors import ResnetlabError
    from resnetlab.export import DEFAULT_OPSET, export_model, format_for

    fmt = format_for(args.out, args.fmt)
    batch_flag = {True: "--dynamic-batch", False: "--no-dynamic-batch", None: None}[args.dynamic_batch]
    onnx_only = [flag for flag in ("--opset" if args.opset is not None else None, batch_flag) if flag]
    if fmt != "onnx" and onnx_only:  # a traced TorchScript module takes any batch; it has no opset
        raise ResnetlabError(f"{' and '.join(onnx_only)}: ONNX options; TorchScript takes any batch size")
    result = export_model(
        args.checkpoint,
        fmt=fmt,
        out=args.out,
        dynamic_batch=args.dynamic_batch is not False,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        check_images=args.check_images,
    )
    size_mb = result.path.stat().st_size / 2**20
    print(f"wrote {result.path} ({size_mb:.1f} MB, {result.fmt} via {result.exporter}) and {result.sidecar}")
    return 0
