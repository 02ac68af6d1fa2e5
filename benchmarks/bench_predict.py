"""Predicting a folder of real photos with ResNet-50: the tutorial loop against `Classifier.predict_paths`, one run.

    python benchmarks/bench_predict.py              # 200 TrashNet photos at 224 px
    python benchmarks/bench_predict.py --limit 8    # smoke run

Baseline (what tutorials do): for each file, PIL open + torchvision Resize/CenterCrop/ToTensor/Normalize, then
`model(x.unsqueeze(0))` under `torch.no_grad()`, eager fp32, NCHW, one image at a time.
Ours: `resnetlab.predict.Classifier.predict_paths` on the same files: batched, decoded in threads while the model
runs, channels_last, bf16 autocast on CPUs with native bf16 (see `resolve_precision`).

Both use the same randomly initialised ResNet-50 (no ImageNet weights are reachable here; speed does not depend on
the weights). Each side gets an untimed warm-up at its batch shape. Prints img/s for both, the ratio, and top-1
agreement.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from _common import CLASSES, trashnet_sample
from PIL import Image
from torchvision import transforms

from resnetlab.models import create_model
from resnetlab.predict import Classifier


def tutorial_loop(model: torch.nn.Module, paths: list[Path], cfg: dict) -> list[int]:
    """One image at a time, eager fp32: the loop from the PyTorch transfer-learning tutorial."""
    size = cfg["input_size"][-1]
    preprocess = transforms.Compose(
        [
            transforms.Resize(int(size / cfg["crop_pct"])),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    model.eval()
    top1 = []
    with torch.no_grad():
        for path in paths:
            x = preprocess(Image.open(path).convert("RGB"))
            top1.append(int(model(x.unsqueeze(0)).argmax(1)))
    return top1


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="number of photos (default: 200)")
    parser.add_argument("--batch-size", type=int, default=None, help="our batch size (default: the Classifier's)")
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()

    torch.manual_seed(0)
    paths = trashnet_sample(args.limit)
    model = create_model(args.model, num_classes=len(CLASSES)).eval()
    baseline_model = copy.deepcopy(model)  # the Classifier converts its model to channels_last in place
    clf = Classifier(model, CLASSES)
    args.batch_size = args.batch_size or clf.batch_size
    print(
        f"{args.model} (random init), {len(paths)} TrashNet photos, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; ours: {clf.precision.describe()}, batch {args.batch_size}"
    )

    # Untimed warm-up: each side once at its own batch shape (one image for the loop, one full batch for ours).
    tutorial_loop(baseline_model, paths[:4], clf.default_cfg)
    clf.predict_paths(paths[: args.batch_size], topk=1, batch_size=args.batch_size)

    t_base, base_top1 = timed(tutorial_loop, baseline_model, paths, clf.default_cfg)
    t_ours, results = timed(clf.predict_paths, paths, 1, args.batch_size)
    ours_top1 = [CLASSES.index(r["predictions"][0]["label"]) for r in results]
    agree = sum(a == b for a, b in zip(base_top1, ours_top1)) / len(paths)

    base_ips, ours_ips = len(paths) / t_base, len(paths) / t_ours
    print(f"tutorial loop (per image, eager fp32): {base_ips:7.1f} img/s  ({t_base:.1f} s)")
    print(f"resnetlab predict_paths (batched):     {ours_ips:7.1f} img/s  ({t_ours:.1f} s)")
    print(f"speed-up: {ours_ips / base_ips:.2f}x (goal >= 3x)   top-1 agreement with the fp32 loop: {agree:.1%}")


if __name__ == "__main__":
    main()
