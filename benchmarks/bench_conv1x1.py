"""Whole training steps with oneDNN's 1x1 convolutions against 1x1 convolutions as matrix products
(`resnetlab/engine/conv1x1.py`).

Both models are the same network set up as `fit` sets it up on the CPU (same weights, channels_last, bf16 autocast
with GEMM weight gradients or `--fp32`, the fused BatchNorm kernels, fused AdamW, the allocator setting); they
differ only in `enable_matmul_1x1`. Steps alternate between the two in one process, so machine drift hits both; the
best of each round is reported with the ratio.

    .venv/bin/python benchmarks/bench_conv1x1.py                  # ResNet-50 at 224 (batch 64), ResNet-18 at 96
    .venv/bin/python benchmarks/bench_conv1x1.py --cases mobilenet_v2:32:224,googlenet:32:224,resnext50_32x4d:32:224
    .venv/bin/python benchmarks/bench_conv1x1.py --fp32           # what a CPU without bf16 trains in
    .venv/bin/python benchmarks/bench_conv1x1.py --layers         # each of ResNet-50's 1x1 shapes alone, forward +
                                                                  # backward, the rule `use_matmul` follows
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F
from bench_bn_act import compare_models

from resnetlab.engine.allocator import keep_freed_memory
from resnetlab.engine.bn_act import enable_fused_bn_act
from resnetlab.engine.conv1x1 import conv1x1_as_matmul, enable_matmul_1x1, use_matmul


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet50:64:224,resnet18:64:96", help="model:batch:size, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument("--fp32", action="store_true", help="fp32 steps (what CPUs without bf16 train in), no autocast")
    p.add_argument("--layers", action="store_true", help="time ResNet-50's 1x1 shapes one by one instead")
    p.add_argument("--batch-size", type=int, default=64, help="with --layers")
    return p.parse_args(argv)


# ResNet-50's 1x1 convolutions: (in, out, input map side, stride); conv1/conv3 of the bottlenecks and the projections.
RESNET50_1X1: list[tuple[int, int, int, int]] = [
    (64, 64, 56, 1), (64, 256, 56, 1), (256, 64, 56, 1), (256, 128, 56, 1), (256, 512, 56, 2),
    (128, 512, 28, 1), (512, 128, 28, 1), (512, 256, 28, 1), (512, 1024, 28, 2),
    (256, 1024, 14, 1), (1024, 256, 14, 1), (1024, 512, 14, 1), (1024, 2048, 14, 2),
    (512, 2048, 7, 1), (2048, 512, 7, 1),
]  # fmt: skip


def best_ms(fn, reps: int = 5) -> float:
    fn(), fn()  # warm-up: oneDNN primitives, allocator
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def fwd_bwd(op, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, stride: int) -> None:
    torch.autograd.grad(op(x, w, None, (stride, stride)), [x, w], dy)


def bench_layers(batch: int, dtype: torch.dtype) -> None:
    """Forward + both gradients of each shape, oneDNN's convolution against the matrix form, alternated per shape."""
    for cin, cout, side, stride in RESNET50_1X1:
        x = torch.randn(batch, cin, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = (torch.randn(cout, cin, 1, 1, dtype=dtype) * cin**-0.5).requires_grad_()
        out = -(-side // stride)
        dy = torch.randn(batch, cout, out, out, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv, mm = (best_ms(functools.partial(fwd_bwd, op, x, w, dy, stride)) for op in (F.conv2d, conv1x1_as_matmul))
        tflops = 3 * 2 * batch * out * out * cin * cout / 1e9
        rule = "matmul" if use_matmul((stride, stride), side, side) else "conv"
        print(
            f"{cin:5d} -> {cout:5d}, {side:3d}x{side:<3d} stride {stride}: conv {conv:7.2f} ms ({tflops / conv:.2f} "
            f"TFLOP/s), matmul {mm:7.2f} ms ({tflops / mm:.2f}), speed-up {conv / mm:.2f}x; rule: {rule}",
            flush=True,
        )


def bench_case(name: str, batch: int, size: int, rounds: int, steps: int, bf16: bool) -> None:
    labels = ("conv", "matmul")  # both with the fused BatchNorm kernels, as `fit` trains
    rate, switched = compare_models(
        name, batch, size, rounds, steps, bf16, enable_fused_bn_act, enable_matmul_1x1, labels
    )
    print(
        f"{name} batch {batch} at {size} px ({switched} 1x1 convolutions): oneDNN convolution {rate['conv']:.1f} img/s,"
        f" matmul {rate['matmul']:.1f} img/s, speed-up {rate['matmul'] / rate['conv']:.2f}x",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()
    mode = "fp32" if args.fp32 else "bf16 autocast"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {mode}, channels_last", flush=True)
    if args.layers:
        bench_layers(args.batch_size, torch.float32 if args.fp32 else torch.bfloat16)
        return
    for case in args.cases.split(","):
        name, batch, size = case.split(":")
        bench_case(name, int(batch), int(size), args.rounds, args.steps, bf16=not args.fp32)


if __name__ == "__main__":
    main()
