"""The GEMM weight gradient of small 3x3 convolutions (`resnetlab/engine/conv_wgrad.py`) against oneDNN's.

Per shape: oneDNN's weight gradient (`aten.convolution_backward`) and `weight_grad_3x3`, bf16 channels_last, both
timed in this process. Then whole training steps of ResNet-18 (cl + bf16 autocast + fused AdamW, synthetic batch)
with and without `enable_gemm_weight_grad`, alternated.

    .venv/bin/python benchmarks/bench_conv_wgrad.py [--sizes 96,128,224] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from resnetlab.engine.conv_wgrad import enable_gemm_weight_grad, use_gemm, weight_grad_3x3
from resnetlab.models import create_model


def _ms(fn, reps: int = 6) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _onednn_weight_grad(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mask = [False, True, False]
    return torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)[1]


def shapes(batch: int) -> None:
    print(f"weight gradient of a CxC 3x3 conv, batch {batch}, bf16 channels_last (ms; ratio = oneDNN / GEMM)")
    for c in (128, 256, 512):
        for hw in (3, 4, 5, 6, 7, 8, 10):
            x, dy = (
                torch.randn(batch, c, hw, hw, dtype=torch.bfloat16).to(memory_format=torch.channels_last) for _ in "ab"
            )
            w = torch.randn(c, c, 3, 3, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            onednn = _ms(functools.partial(_onednn_weight_grad, x, dy, w))
            gemm = _ms(functools.partial(weight_grad_3x3, x, dy))
            uses = "GEMM" if use_gemm(c, hw, hw) else "oneDNN"
            print(
                f"  C={c:3d} {hw:2d}x{hw:<2d} oneDNN {onednn:6.2f} GEMM {gemm:6.2f} ratio {onednn / gemm:5.2f} {uses}"
            )


def steps(size: int, batch: int, rounds: int = 3) -> None:
    def make(gemm: bool):
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=10).train().to(memory_format=torch.channels_last)
        switched = enable_gemm_weight_grad(model) if gemm else 0
        opt = torch.optim.AdamW(model.parameters(), fused=True)
        x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        return step, switched

    (plain, _), (fast, n) = make(False), make(True)
    for r in range(rounds):
        a, b = batch / _ms(plain, 4) * 1e3, batch / _ms(fast, 4) * 1e3
        print(
            f"  resnet18 {size}px b{batch} round {r + 1}: oneDNN {a:6.1f} img/s, GEMM ({n} convs) {b:6.1f} img/s, "
            f"ratio {b / a:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="96,128,224")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shapes(args.batch_size)
    print("training steps (cl + bf16 autocast, fused AdamW, synthetic batch)")
    for size in (int(s) for s in args.sizes.split(",")):
        steps(size, args.batch_size)


if __name__ == "__main__":
    main()
