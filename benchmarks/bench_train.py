"""One training epoch of ResNet-50 at 224 px on TrashNet: a tutorial-style loop against `resnetlab train`.

Baseline: the PyTorch transfer-learning tutorial's loop (torchvision ImageFolder, RandomResizedCrop + flip, fp32,
NCHW, num_workers=0, SGD). Ours: `resnetlab.engine.fit.fit` with its defaults (RAM cache, channels_last, bf16
autocast when the CPU has native bf16), the same batch size (`resnetlab train`'s default) and the same training
images (our 80% split). Both are reported in images/s of the training loop; ours also end to end (cache fill and
set-up included), once per optimizer in `--opts` (the default, Muon from scratch, and AdamW: Muon buys accuracy per
epoch with a costlier step). Our rate is also given as a fraction of this machine's matmul peak in the type ours
trains in (bf16; fp32 on a CPU without native bf16, where oneDNN only emulates bf16 at ~1 GFLOP/s), measured here,
converted to images/s with the model's training cost (3 x forward MACs x 2 FLOPs per image).

    .venv/bin/python benchmarks/bench_train.py              # the full measurement (minutes)
    .venv/bin/python benchmarks/bench_train.py --limit 64   # a quick smoke run on 64 images
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from resnetlab.config import TrainConfig
from resnetlab.paths import shared_path

DEFAULT_BATCH: int = TrainConfig.__dataclass_fields__["batch_size"].default  # what `resnetlab train` uses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(shared_path("datasets", "trashnet")))
    p.add_argument("--model", default="resnet50")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"both loops' batch size (default {DEFAULT_BATCH}, `resnetlab train`'s own; until 2026-11-27 the benchmark"
        " ran at 32, where our per-step costs weigh twice as much per image)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only N images (a quick smoke run)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--opts",
        default="auto,adamw",
        help="optimizers to time ours with, one epoch each (auto: the default, Muon from scratch; its orthogonalisation"
        " costs ~0.15 s a ResNet-50 step here, see bench_optim.py)",
    )
    return p.parse_args(argv)


def limited_copy(root: Path, limit: int, dest: Path) -> Path:
    """A folder of symlinks to `limit` images taken round-robin over the classes (deterministic)."""
    from resnetlab.data.folder import scan_images

    by_class = {d.name: scan_images(d) for d in sorted(root.iterdir()) if d.is_dir()}
    picked, i = [], 0
    while len(picked) < limit and any(i < len(v) for v in by_class.values()):
        picked += [(c, files[i]) for c, files in by_class.items() if i < len(files)]
        i += 1
    for cls, path in picked[:limit]:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        (dest / cls / path.name).symlink_to(path)
    return dest


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, reps: int = 5) -> float:
    """FLOP/s of a large `dtype` matmul on `device` (best of `reps`)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epoch(data: Path, train_files: set[str], img_size: int, batch_size: int, device: torch.device) -> float:
    """The tutorial loop, one epoch over `train_files` (on the GPU when there is one, as the tutorial does);
    returns images/s."""
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(img_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    folder = torchvision.datasets.ImageFolder(str(data), tf)
    keep = [i for i, (p, _) in enumerate(folder.samples) if str(Path(p).resolve()) in train_files]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(folder, keep), batch_size=batch_size, shuffle=True, num_workers=0
    )
    model = torchvision.models.resnet50(num_classes=len(folder.classes)).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    model.train()
    seen, start = 0, time.perf_counter()
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    _sync(device)
    return seen / (time.perf_counter() - start)


def model_alone(num_classes: int, img_size: int, batch_size: int, steps: int = 6) -> float:
    """torchvision's ResNet-50 training steps on one synthetic batch (no data loading), channels_last + bf16
    autocast where the CPU has native bf16 + fused AdamW: the ceiling for any loop on this machine. Returns images/s
    after two warm-up steps."""
    from resnetlab.engine.precision import resolve_precision

    precision = resolve_precision()
    model = precision.prepare_model(torchvision.models.resnet50(num_classes=num_classes).train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = precision.prepare_batch(torch.randn(batch_size, 3, img_size, img_size))
    y = torch.randint(0, num_classes, (batch_size,), device=precision.device)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        with precision.autocast():
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()
    return steps * batch_size / _timed(lambda: [step() for _ in range(steps)], precision.device)


def main(argv: list[str] | None = None) -> None:
    from resnetlab.data.folder import make_splits
    from resnetlab.engine.fit import fit
    from resnetlab.engine.precision import DTYPE_NAMES, resolve_precision
    from resnetlab.models import create_model
    from resnetlab.models.summary import count_macs

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        if args.limit:
            data = limited_copy(data, args.limit, Path(tmp) / "data")
        splits = make_splits(data, val_fraction=0.2, seed=0)
        train_files = {str(Path(p).resolve()) for p, _ in splits.train}
        print(f"{len(splits.train)} training images, {args.model} at {args.img_size} px, batch {args.batch_size}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ours: {resolve_precision().describe()}")

        precision = resolve_precision()
        device, dtype = precision.device, precision.amp_dtype or torch.float32
        peak = matmul_peak_flops(device, dtype)
        kind = DTYPE_NAMES[dtype]
        macs = count_macs(create_model(args.model, num_classes=len(splits.classes)), (3, args.img_size, args.img_size))
        train_flops = 3 * macs * 2
        print(
            f"{kind} matmul peak {peak / 1e12:.2f} TFLOP/s -> {peak / train_flops:.1f} img/s at {train_flops / 1e9:.1f}"
        )

        alone = model_alone(len(splits.classes), args.img_size, args.batch_size) if args.model == "resnet50" else None
        if alone:
            print(f"torchvision resnet50 alone (synthetic batch, {precision.describe()}, fused AdamW): {alone:.2f}"
                  " img/s")  # fmt: skip

        base = None
        if not args.skip_baseline:
            base = baseline_epoch(data, train_files, args.img_size, args.batch_size, device)
            print(f"tutorial loop (ImageFolder, fp32, NCHW, 0 workers): {base:.2f} img/s")

        for opt in args.opts.split(","):
            cfg = TrainConfig(
                data=str(data),
                model=args.model,
                img_size=args.img_size,
                epochs=1,
                batch_size=args.batch_size,
                opt=opt,
                out=os.path.join(tmp, f"run-{opt}"),
                progress=False,
            )
            start = time.perf_counter()
            summary = fit(cfg, log=lambda line: print("  " + line))
            wall = time.perf_counter() - start
            ours = summary["train_images_per_s"]
            name = f"resnetlab train --opt {opt} ({cfg.resolved_opt()})"
            print(f"{name}: {ours:.2f} img/s (training loop), {len(splits.train) / wall:.2f} img/s end to end")
            if base:
                print(f"  ratio ours / tutorial: {ours / base:.2f}x")
            print(f"  ours as a fraction of the {kind} matmul peak: {ours * train_flops / peak:.2f}")
            if alone:
                print(f"  ours as a fraction of the model alone (data, loss and bookkeeping cost): {ours / alone:.2f}")


if __name__ == "__main__":
    main()
