"""Images/s of one full pass over TrashNet at 224: tutorial baseline vs resnetlab's loader (cold and warm RAM cache).

    (a) torchvision ImageFolder + PIL + Resize(256)/CenterCrop(224) (or RandomResizedCrop(224) + flip with
        --train), ToTensor, Normalize; num_workers=0, as in the tutorials
    (b) resnetlab as `resnetlab train` runs it: ImageDataset(cache="ram"), the cache filled by decoding workers
        (`warm_cache`), then the first pass of build_loader + DeviceLoader (auto workers); includes the header scan
        and cache layout
    (c) the same loader, second pass: pixels come from the cache
    Every path yields what a model consumes: normalised float32 batches (B, 3, 224, 224); ours are uint8 until a
    single per-batch BatchNormalize, and channels_last.

Usage: .venv/bin/python benchmarks/bench_data.py [--limit N] [--batch-size 64] [--train] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from resnetlab.data.folder import make_splits
from resnetlab.data.loader import DeviceLoader, ImageDataset, build_loader
from resnetlab.data.transforms import BatchNormalize, build_transform
from resnetlab.paths import shared_path

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed_pass(loader) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for images, _labels in loader:
        assert images.dtype == torch.float32, images.dtype  # model-ready, as the baseline's
        n += images.shape[0]
    return n, time.perf_counter() - start


def baseline(root: Path, limit: int | None, batch_size: int, train: bool) -> tuple[int, float]:
    head = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train else [T.Resize(256), T.CenterCrop(224)]
    transform = T.Compose([*head, T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    if limit:
        dataset = Subset(dataset, range(0, len(dataset), max(1, len(dataset) // limit))[:limit])
    return timed_pass(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0))


def ours(root: Path, limit: int | None, batch_size: int, train: bool, workers: int | None):
    start = time.perf_counter()
    splits = make_splits(root, val_fraction=0.0)
    samples = splits.train
    if limit:
        samples = samples[:: max(1, len(samples) // limit)][:limit]
    transform = build_transform("train" if train else "eval", 224, MEAN, STD, normalize=False)
    dataset = ImageDataset(samples, transform, cache="ram")
    dataset.warm_cache()  # worker processes fill the cache, as `resnetlab train` does before its first epoch
    loader = DeviceLoader(
        build_loader(dataset, batch_size, shuffle=train, num_workers=workers), BatchNormalize(MEAN, STD)
    )
    setup = time.perf_counter() - start
    n, cold = timed_pass(loader)
    n_warm, warm = timed_pass(loader)
    return n, setup + cold, n_warm, warm, setup, loader.num_workers, dataset.estimate_cache_bytes()  # setup: + fill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use only N images (quick smoke run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", action="store_true", help="RandomResizedCrop + flip instead of resize + crop")
    parser.add_argument("--workers", type=int, default=None, help="our loader's workers (default: auto)")
    args = parser.parse_args(argv)
    root = shared_path("datasets", "trashnet")
    if not root.is_dir():
        print(f"bench_data: {root} not found", file=sys.stderr)
        return 2

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"hardware: {cpu_name()}, {len(os.sched_getaffinity(0))} usable CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    kind = "RandomResizedCrop(224)+flip" if args.train else "Resize(256)+CenterCrop(224)"
    print(f"data: {root} at 224, {kind}, batch {args.batch_size}" + (f", limit {args.limit}" if args.limit else ""))

    n_a, t_a = baseline(root, args.limit, args.batch_size, args.train)
    n_b, t_b, n_c, t_c, setup, workers, cache_bytes = ours(root, args.limit, args.batch_size, args.train, args.workers)
    rate_a, rate_b, rate_c = n_a / t_a, n_b / t_b, n_c / t_c
    print(f"(a) ImageFolder+PIL, num_workers=0      {n_a:5d} images {t_a:7.2f} s {rate_a:8.1f} img/s  1.00x")
    print(
        f"(b) resnetlab cold (fill, then {workers} loader workers) {n_b:5d} images {t_b:7.2f} s {rate_b:8.1f} img/s "
        f"{rate_b / rate_a:5.2f}x  (scan + decode {setup:.2f} s, cache {cache_bytes / 2**20:.0f} MiB)"
    )
    print(f"(c) resnetlab warm cache               {n_c:5d} images {t_c:7.2f} s {rate_c:8.1f} img/s", end=" ")
    print(f"{rate_c / rate_a:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
