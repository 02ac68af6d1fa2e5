"""Whole training steps with oneDNN's 1x1 convolutions against 1x1 convolutions as matrix products
(`resnetlab/engine/conv1x1.py`).

Both models are the same network set up as `fit` sets it up on the CPU (same weights, channels_last, bf16 autocast
with GEMM weight gradients or `--fp32`, the fused BatchNorm kernels, fused AdamW, the allocator setting); they
differ only in `enable_matmul_1x1`. Steps alternate between the two in one process, so machine drift hits both; the
best of each round is reported with the ratio.

    .venv/bin/python benchmarks/bench_conv1x1.py                  # ResNet-50 at 224 (batch 64), ResNet-18 at 96
    .venv/bin/python benchmarks/bench_conv1x1.py --cases mobilenet_v2:32:224,googlenet:32:224,resnext50_32x4d:32:224
    .venv/bin/python benchmarks/bench_conv1x1.py --fp32           # what a CPU without bf16 trains in
"""

from __future__ import annotations

import argparse
import copy

import torch
from bench_bn_act import alternate, make_step

from resnetlab.engine.allocator import keep_freed_memory
from resnetlab.engine.bn_act import enable_fused_bn_act
from resnetlab.engine.conv1x1 import enable_matmul_1x1
from resnetlab.engine.conv_wgrad import enable_gemm_weight_grad
from resnetlab.models import create_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet50:64:224,resnet18:64:96", help="model:batch:size, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument("--fp32", action="store_true", help="fp32 steps (what CPUs without bf16 train in), no autocast")
    return p.parse_args(argv)


def bench_case(name: str, batch: int, size: int, rounds: int, steps: int, bf16: bool) -> None:
    torch.manual_seed(0)
    conv = create_model(name, num_classes=6).to(memory_format=torch.channels_last).train()
    if bf16:
        enable_gemm_weight_grad(conv)  # as `fit` does
    enable_fused_bn_act(conv)
    matmul = copy.deepcopy(conv)
    switched = enable_matmul_1x1(matmul)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,))
    best = alternate({"conv": make_step(conv, x, y, bf16), "matmul": make_step(matmul, x, y, bf16)}, rounds, steps)
    rate = {k: batch / v for k, v in best.items()}
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
    for case in args.cases.split(","):
        name, batch, size = case.split(":")
        bench_case(name, int(batch), int(size), args.rounds, args.steps, bf16=not args.fp32)


if __name__ == "__main__":
    main()
