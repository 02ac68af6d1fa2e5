"""`resnetlab data check DIR` and `resnetlab data split DIR`: inspect a dataset folder, or freeze its split."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_layout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="dataset folder: DIR/<class>/*, or DIR/train + DIR/val (+ DIR/test)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share per class (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    p.add_argument("--val-dir", default=None, help="separate validation folder with the same class folders")
    p.add_argument("--split-file", default=None, help="list of training files (*train*.txt, *val*/*test* beside it)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="check a dataset folder or write its split",
        description="Inspect an image-classification folder: counts, sizes, duplicates, corrupt files.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="report on a dataset folder; exit 0 if usable, 2 if not")
    _add_layout_args(check)
    check.add_argument("--grid", default=None, metavar="FILE.png", help="write a sample grid image")
    check.add_argument("--per-class", type=int, default=4, help="images per class in the grid (default 4)")
    check.add_argument("--strict", action="store_true", help="corrupt files or cross-split duplicates are errors")
    check.add_argument(
        "--decode",
        action="store_true",
        help="decode every image in full, as Keras' and fastai's verify_images do (slower; headers only without it)",
    )
    check.set_defaults(func=run_check)

    split = sub.add_parser("split", help="write the train/val split as list files, usable with --split-file")
    _add_layout_args(split)
    split.add_argument(
        "--out",
        default=None,
        help="output prefix: PREFIX_train.txt, PREFIX_val.txt (default DIR/../<name>_split); a folder (existing, or"
        " written with a trailing /) gets <name>_split_train.txt ... inside it",
    )
    split.set_defaults(func=run_split)


def run_check(args: argparse.Namespace) -> int:
    from resnetlab.data.check import check_dataset, format_report, write_grid
    from resnetlab.report import picture_path

    if args.grid:
        picture_path(args.grid, "--grid")
    from resnetlab.data.cifar10 import resolve_data_root

    data = resolve_data_root(args.dir)  # a folder, or a dataset name such as cifar10
    result = check_dataset(
        data, args.val_fraction, args.seed, args.val_dir, args.split_file, args.strict, decode=args.decode
    )
    print(format_report(result))
    if args.grid:
        print(f"grid: {write_grid(result.splits, args.grid, per_class=max(1, args.per_class))}")
    if not result.usable:
        print(f"resnetlab data check: not usable: {'; '.join(result.problems)}", file=sys.stderr)
        return 2
    return 0


def run_split(args: argparse.Namespace) -> int:
    from resnetlab.data.folder import SPLIT_NAMES, make_splits
    from resnetlab.errors import ResnetlabError

    if args.val_dir:
        raise ResnetlabError("data split: with --val-dir the split is already fixed by the folders; nothing to write")
    splits = make_splits(args.dir, args.val_fraction, args.seed, None, args.split_file)
    default_name = f"{splits.root.name}_split"
    if not args.out:
        prefix = splits.root.parent / default_name
    elif args.out.endswith(("/", os.sep)) or Path(args.out).is_dir():
        prefix = Path(args.out) / default_name
    else:
        prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        samples = splits.split(name)
        if not samples:
            continue
        path = prefix.with_name(f"{prefix.name}_{name}.txt")
        lines = [f"{p.relative_to(splits.root).as_posix()}\t{label}" for p, label in samples]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name}: {len(samples)} files -> {path}")
    return 0
