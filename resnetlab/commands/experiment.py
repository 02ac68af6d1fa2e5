"""`resnetlab experiment degradation DIR|cifar10`: see for yourself why residual networks exist.

Also `resnetlab experiment convert-cifar10 FILE...`: turn the CIFAR-10 ResNet files (akamaster's
pytorch_resnet_cifar10) into resnetlab checkpoints that `resnetlab predict`, `eval` and `export` read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetlab.experiments.degradation import DEFAULT_EPOCHS

EXAMPLES = """examples:
  resnetlab experiment degradation ../shared/datasets/trashnet --depths 20,56
  resnetlab experiment degradation cifar10 --depths 20,32,44,56 --epochs 40 --out runs/degradation-cifar10
  resnetlab experiment convert-cifar10 resnet56-4bfd9763.th --out models/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="reproduce experiments from the ResNet paper",
        description="Reproduce experiments from the ResNet paper (He et al. 2015) on your own data or CIFAR-10.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    d = sub.add_parser(
        "degradation",
        help="plain vs residual networks of growing depth (the paper's Figures 1 and 6)",
        description="Train plain-N and ResNet-N for each depth with the paper's CIFAR recipe and one seed, each an "
        "ordinary resumable run folder under --out (finished runs are reused), then plot training and validation "
        "error against epochs (degradation.png), save degradation.json and print the verdict table. Training error "
        "is measured on the augmented images during each epoch, as in the paper's curves.",
    )
    d.add_argument("data", metavar="DIR|cifar10", help="image folder with one sub-folder per class, or cifar10")
    d.add_argument("--depths", default="20,56", help="comma-separated depths of 20, 32, 44, 56, 110 (default: 20,56)")
    d.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per model (default: {DEFAULT_EPOCHS}, about 10 minutes on a 2-core CPU for depths 20,56 on"
        " 2.5k images at 32 px)",
    )
    d.add_argument("--img-size", type=int, default=32, help="training resolution (default: 32)")
    d.add_argument("--out", default=None, help="experiment folder (default: runs/degradation-<data name>)")
    d.add_argument("--seed", type=int, default=0, help="seed shared by every model (default: 0)")
    d.add_argument("--batch-size", type=int, default=None, help="batch size (default: 32; the paper's is 128)")
    d.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.025, the paper's 0.1 per 128)")
    d.add_argument("--workers", type=int, default=None, help="data loader workers (default: automatic)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    d.set_defaults(func=run_degradation_command)

    c = sub.add_parser(
        "convert-cifar10",
        help="make the CIFAR-10 ResNet files usable by `resnetlab predict`",
        description="Convert CIFAR-10 ResNet-20/32/44/56/110 files ({'state_dict', 'best_prec1'}, option-A "
        "shortcuts, `linear` head) into resnetlab checkpoints with the ten class names and the 32 px preprocessing "
        "they were trained with.",
    )
    c.add_argument("weights", nargs="+", metavar="FILE", help="CIFAR-10 ResNet weights (.th)")
    c.add_argument("--out", default=".", help="output folder (default: the current folder)")
    c.set_defaults(func=run_convert_command)


def run_degradation_command(args: argparse.Namespace) -> int:
    from resnetlab.errors import ResnetlabError
    from resnetlab.experiments.degradation import run_degradation

    if args.epochs is not None and args.epochs < 1:
        raise ResnetlabError(f"--epochs {args.epochs}: must be at least 1")
    given = {"batch_size": args.batch_size, "lr": args.lr, "workers": args.workers, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    epochs = {"epochs": args.epochs} if args.epochs is not None else {}
    record = run_degradation(
        args.data, args.depths, img_size=args.img_size, out=args.out, seed=args.seed, overrides=overrides, **epochs
    )
    print()
    print(record["table"])
    out = Path(record["out"])
    print(f"wrote {out / 'degradation.png'} and {out / 'degradation.json'} ({record['wall_seconds']:.0f}s)")
    return 0


def run_convert_command(args: argparse.Namespace) -> int:
    from resnetlab.data.cifar10 import cifar_weights_checkpoint, converted_name
    from resnetlab.engine.checkpoint import save_checkpoint
    from resnetlab.errors import ResnetlabError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ResnetlabError(f"--out {args.out}: a file; give the folder to write the converted checkpoints in")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[Path, str] = {}
    for weights in args.weights:
        ckpt = cifar_weights_checkpoint(weights)
        path = out / converted_name(ckpt["arch"])  # named by the architecture found in the file, not its name
        if path in written:
            raise ResnetlabError(
                f"{weights} and {written[path]} are both {ckpt['arch']}: convert them into separate --out folders"
            )
        written[path] = str(weights)
        save_checkpoint(path, ckpt)
        print(f"wrote {path}  (resnetlab predict {path} IMAGES...)")
    return 0
