"""Whole training steps with PyTorch's BatchNorm/add/ReLU against the fused kernels (`resnetlab/engine/bn_act.c`).

Both models are the same network (same weights, channels_last, bf16 autocast with GEMM weight gradients or `--fp32`,
fused AdamW, the allocator setting `fit` uses); they differ only in `enable_fused_bn_act`. Steps alternate between the
two in one process, so machine drift hits both; the best of each round is reported with the ratio.

    .venv/bin/python benchmarks/bench_bn_act.py                          # ResNet-50 at 224 (batch 32), ResNet-18 at 96
    .venv/bin/python benchmarks/bench_bn_act.py --cases resnet50:32:224 --rounds 5
    .venv/bin/python benchmarks/bench_bn_act.py --cases mobilenet_v2:32:224,googlenet:32:224,resnet20:128:32
    .venv/bin/python benchmarks/bench_bn_act.py --fp32                   # what a CPU without bf16 trains in
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from resnetlab.engine.allocator import keep_freed_memory
from resnetlab.engine.bn_act import enable_fused_bn_act, load_library
from resnetlab.engine.conv_wgrad import enable_gemm_weight_grad
from resnetlab.models import create_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet50:32:224,resnet18:64:96", help="model:batch:size, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument("--fp32", action="store_true", help="fp32 steps (what CPUs without bf16 train in), no autocast")
    return p.parse_args(argv)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            outs = list(out) if isinstance(out, tuple) else [out]  # GoogLeNet: logits and two auxiliary heads
            loss = sum(w * nn.functional.cross_entropy(o, y) for w, o in zip([1.0, 0.3, 0.3], outs) if o is not None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def alternate(runs: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, float]:
    """Time each step function `steps` times per round, taking turns so machine drift hits all; best s/step each."""
    for step in runs.values():  # warm-up: oneDNN primitives, allocator
        step()
        step()
    best = {k: float("inf") for k in runs}
    for r in range(rounds):
        line = []
        for k, step in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            dt = (time.perf_counter() - t) / steps
            best[k] = min(best[k], dt)
            line.append(f"{k} {dt * 1000:.0f} ms")
        print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    return best


def compare_models(
    name: str, batch: int, size: int, rounds: int, steps: int, bf16: bool,
    prepare: Callable[[nn.Module], object], switch: Callable[[nn.Module], int], labels: tuple[str, str],
) -> tuple[dict[str, float], int]:  # fmt: skip
    """Build `name`, `prepare` it, copy it and `switch` the copy; alternate their training steps. Returns images/s
    per label (the plain model first) and what `switch` returned."""
    torch.manual_seed(0)
    plain = create_model(name, num_classes=6).to(memory_format=torch.channels_last).train()
    if bf16:
        enable_gemm_weight_grad(plain)  # as `fit` does
    prepare(plain)
    other = copy.deepcopy(plain)
    switched = switch(other)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,))
    runs = {labels[0]: make_step(plain, x, y, bf16), labels[1]: make_step(other, x, y, bf16)}
    return {k: batch / v for k, v in alternate(runs, rounds, steps).items()}, switched


def bench_case(name: str, batch: int, size: int, rounds: int, steps: int, bf16: bool) -> None:
    labels = ("pytorch", "fused")
    rate, switched = compare_models(name, batch, size, rounds, steps, bf16, lambda m: m, enable_fused_bn_act, labels)
    print(
        f"{name} batch {batch} at {size} px ({switched} modules fused): PyTorch ops {rate['pytorch']:.1f} img/s, "
        f"fused {rate['fused']:.1f} img/s, speed-up {rate['fused'] / rate['pytorch']:.2f}x",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    if load_library(dtype) is None:
        raise SystemExit("the fused kernels could not be built (no gcc?) or RESNETLAB_FUSED_BN=0 is set")
    mode = "fp32" if args.fp32 else "bf16 autocast"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {mode}, channels_last", flush=True)
    for case in args.cases.split(","):
        name, batch, size = case.split(":")
        bench_case(name, int(batch), int(size), args.rounds, args.steps, bf16=not args.fp32)


if __name__ == "__main__":
    main()
