"""`resnetlab demo`: the whole workflow on the TrashNet sample shipped in `demo/trashnet-mini`, in a few minutes.

Check the data, train a ResNet-18 from scratch, evaluate it on the held-out split, predict a few images and say where
every file landed. Each step is the ordinary command a user would type, run in-process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from resnetlab.paths import REPO_ROOT

DEMO_DATA = REPO_ROOT / "demo" / "trashnet-mini"
# Chosen by measurement (benchmarks/RESULTS.md): fits the 5-minute budget on a 2-core CPU.
DEMO_RECIPE = {"model": "resnet18", "img_size": 96, "epochs": 20}
# A CPU without native bf16 (AVX2 laptops) trains in fp32: 20 epochs took 300 s of a 324 s demo on a 2-core AVX2
# EPYC, so it trains 13 (the whole demo 171-228 s there; 0.736-0.750 against 0.785 for 20, seed 0).
FP32_CPU_EPOCHS = 13


def default_epochs() -> int:
    """The demo's epochs on this machine: fewer where training runs in fp32 on the CPU, to stay within 5 minutes."""
    from resnetlab.engine.precision import resolve_precision

    precision = resolve_precision()
    slow = precision.device.type == "cpu" and precision.amp_dtype is None
    return FP32_CPU_EPOCHS if slow else DEMO_RECIPE["epochs"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="check, train, evaluate and predict on the bundled sample", description=__doc__
    )
    p.add_argument("--data", type=Path, default=DEMO_DATA, help=f"class folder to use (default: {DEMO_DATA})")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo, replaced)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (default {DEMO_RECIPE['epochs']}; {FP32_CPU_EPOCHS} on a CPU without native bf16)",
    )
    p.set_defaults(func=run)


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _one_val_image_per_class(run_dir: Path) -> list[str]:
    """The first validation image of each class: photos the model did not train on."""
    from resnetlab.data.folder import DatasetSplits
    from resnetlab.engine.checkpoint import load_checkpoint

    splits = DatasetSplits.from_record(load_checkpoint(run_dir)["data"])
    first: dict[int, str] = {}
    for path, label in splits.val:
        first.setdefault(label, str(path))
    return [first[k] for k in sorted(first)]


def run(args: argparse.Namespace) -> int:
    import shutil

    from resnetlab.cli import main
    from resnetlab.errors import ResnetlabError

    if not args.data.is_dir():
        raise ResnetlabError(
            f"{args.data}: demo data not found; pass --data DIR (a folder with one sub-folder per class)"
        )
    if args.out.exists():
        shutil.rmtree(args.out)  # the demo always starts from scratch so its numbers are reproducible
    started = time.perf_counter()
    out = str(args.out)
    recipe = {**DEMO_RECIPE, "epochs": default_epochs() if args.epochs is None else args.epochs}

    _step(f"1/4 check the data: resnetlab data check {args.data}")
    code = main(["data", "check", str(args.data), "--grid", f"{out}-samples.png"])
    if code != 0:
        return code

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()]
    _step(f"2/4 train from scratch: resnetlab train {args.data} {' '.join(flags)} --out {out}")
    code = main(["train", str(args.data), *flags, "--out", out])
    if code != 0:
        return code

    _step(f"3/4 evaluate on the validation split: resnetlab eval {out}")
    code = main(["eval", out])
    if code != 0:
        return code

    examples = _one_val_image_per_class(Path(out))
    _step(f"4/4 predict one held-out image per class: resnetlab predict {out} ...")
    main(["predict", out, *examples, "--topk", "3", "--grid", f"{out}/predictions.png"])

    _step("done")
    print(f"finished in {time.perf_counter() - started:.0f} s; files:")
    for name in ("best.pt", "history.csv", "curves.png", "eval.json", "confusion_matrix.png", "mistakes.png",
                 "predictions.png"):  # fmt: skip
        path = Path(out) / name
        print(f"  {path}{'' if path.exists() else ' (missing)'}")
    print(f"  {out}-samples.png (sample grid)")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0
