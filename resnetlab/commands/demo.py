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
# Chosen by measurement (benchmarks/RESULTS.md): 20 epochs fit the 5-minute budget on a 2-core CPU with native bf16
# (the whole demo 77-81 s). A CPU without it trains in fp32 at about a sixth of the speed (20 epochs took the demo to
# 324 s on a 2-core AVX2 EPYC), so training also gets a wall-clock budget: as many of the 20 epochs as fit in 3
# minutes, the LR schedule shortened to end there (`train --time`), which leaves about a minute for the other steps
# on a laptop twice as slow as that EPYC.
DEMO_RECIPE = {"model": "resnet18", "img_size": 96, "epochs": 20, "time": "3m"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="check, train, evaluate and predict on the bundled sample", description=__doc__
    )
    p.add_argument("--data", type=Path, default=DEMO_DATA, help=f"class folder to use (default: {DEMO_DATA})")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="run folder (default: runs/demo; an earlier run there is replaced)",
    )
    p.add_argument("--epochs", type=int, default=DEMO_RECIPE["epochs"], help="training epochs (default: %(default)s)")
    p.add_argument(
        "--time",
        default=DEMO_RECIPE["time"],
        help="wall-clock budget for training, e.g. 90s or 5m: fewer epochs where they would not fit "
        "(default: %(default)s)",
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


DEMO_MARK = ".resnetlab-demo"  # written into the run folder when the demo has trained there


def _earlier_demo(out: Path, data: Path) -> bool:
    """An empty folder, one the demo marked, or a run trained on the demo's data (a demo's from before the mark)."""
    import yaml

    if not any(out.iterdir()) or (out / DEMO_MARK).is_file():
        return True
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and saved.get("data") == str(data.resolve()) and (out / "last.pt").is_file()


def run(args: argparse.Namespace) -> int:
    import shutil

    from resnetlab.cli import main
    from resnetlab.errors import ResnetlabError

    if not args.data.is_dir():
        raise ResnetlabError(
            f"{args.data}: demo data not found; pass --data DIR (a folder with one sub-folder per class)"
        )
    out_dir, data_dir = args.out.resolve(), args.data.resolve()
    if out_dir == data_dir or out_dir in data_dir.parents:
        raise ResnetlabError(
            f"--out {args.out} holds the data ({args.data}), which the demo would replace; choose another"
        )
    if args.out.is_symlink() or args.out.exists():
        # The demo starts from scratch so its numbers are reproducible, but replaces only an earlier demo's folder:
        # `--out precious` deleted whatever was there, and a folder holding a config.yaml was taken for a run.
        if args.out.is_symlink() or not args.out.is_dir() or not _earlier_demo(args.out, args.data):
            raise ResnetlabError(
                f"--out {args.out}: exists and is not an earlier demo's run folder, which the demo would replace;"
                " choose another"
            )
        shutil.rmtree(args.out)
    started = time.perf_counter()
    out = str(args.out)
    recipe = {**DEMO_RECIPE, "epochs": args.epochs, "time": args.time}

    _step(f"1/4 check the data: resnetlab data check {args.data}")
    code = main(["data", "check", str(args.data), "--grid", f"{out}-samples.png"])
    if code != 0:
        return code

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()]
    _step(f"2/4 train from scratch: resnetlab train {args.data} {' '.join(flags)} --out {out}")
    code = main(["train", str(args.data), *flags, "--out", out])
    if (Path(out) / "config.yaml").is_file():  # what a later demo may replace
        (Path(out) / DEMO_MARK).write_text("made by resnetlab demo\n")
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
