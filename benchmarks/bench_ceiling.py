"""How close to the matmul peak can a ResNet-50 training step get on this machine? A measured ceiling.

Every convolution and linear layer of a training step is three matrix products: forward (N*Ho*Wo, Cin*k*k) x
(Cin*k*k, Cout), the input gradient (N*Ho*Wo, Cout) x (Cout, Cin*k*k) and the weight gradient (Cout, N*Ho*Wo) x
(N*Ho*Wo, Cin*k*k). This script records each layer's shapes in one forward pass of the model `bench_train.py`
trains, times every product alone with `torch.mm` on ready operands (the faster of two operand layouts, best of
`--reps`; in the type `resnetlab train` computes in here: bf16 where the CPU has native bf16, else fp32), and adds
them up. That sum is a lower bound on the step's time with this machine's GEMM: it charges
nothing for im2col/col2im, BatchNorm, ReLU, residual adds, pooling, the loss, the optimizer or data loading, and it
skips the stem's input gradient, which training never needs. Dividing the step's useful FLOPs (the 3 x forward MACs
x 2 that `bench_train.py` counts) by it gives the highest fraction of the peak any implementation built on this GEMM
could reach.

It is a bound for convolutions built on this GEMM (im2col, or 1x1 convolutions as matrix products), not for oneDNN's
direct convolution kernels, which do not go through it and can beat it on shapes it handles poorly: on a 2-core AVX2
CPU in fp32, ResNet-18 at 96 px (batch 64) trained whole AdamW steps at 72.5 img/s against this script's 75.8 img/s
with everything else free. Read a ceiling far below a goal as "not with these matrix products", not as a proof.

A second line adds the least memory traffic BatchNorm needs (forward: read the convolution's output, write the
normalised one; backward: read the gradient and the saved input, write the gradient; statistics passes not counted)
at the bandwidth of a plain copy measured here: an estimate, not a bound, since a kernel that fused BatchNorm
into the GEMM's epilogue could save part of it.

    .venv/bin/python benchmarks/bench_ceiling.py                      # ResNet-50, 224 px, batch 64 (minutes)
    .venv/bin/python benchmarks/bench_ceiling.py --model resnet18 --img-size 96
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass

import torch
from bench_conv1x1 import best_ms
from bench_train import DEFAULT_BATCH, matmul_peak_flops
from torch import nn

from resnetlab.engine.allocator import keep_freed_memory
from resnetlab.engine.precision import DTYPE_NAMES, resolve_precision
from resnetlab.models import create_model
from resnetlab.models.summary import count_macs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--num-classes", type=int, default=6, help="TrashNet's six, as bench_train.py trains")
    p.add_argument("--reps", type=int, default=3, help="timings per product (best kept)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Gemm:
    """One (m, k) x (k, n) product."""

    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def record_step(model: nn.Module, img_size: int, batch: int) -> tuple[dict[str, list[Gemm]], int]:
    """One forward pass: the three products of every Conv2d / Linear in a training step, by the layer's name, and
    the number of elements BatchNorm layers output."""
    found: dict[str, list[Gemm]] = {}
    bn_elements = 0

    def hook(name: str, module: nn.Module, out: torch.Tensor) -> None:
        nonlocal bn_elements
        if isinstance(module, nn.BatchNorm2d):
            bn_elements += out.numel()
            return
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            m = out.shape[0] * out.shape[2] * out.shape[3]  # N * Ho * Wo
            k = module.in_channels // groups * module.kernel_size[0] * module.kernel_size[1]
            n = module.out_channels // groups
        else:
            groups, m, k, n = 1, out.shape[0], module.in_features, module.out_features
        gemms = [Gemm(m, k, n)] * groups  # forward
        if found:  # not the stem: its input is the image, which needs no gradient
            gemms += [Gemm(m, n, k)] * groups
        gemms += [Gemm(n, m, k)] * groups  # weight gradient
        found[name] = gemms

    handles = [
        m.register_forward_hook(lambda mod, _i, o, name=name: hook(name, mod, o))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(batch, 3, img_size, img_size))
    for h in handles:
        h.remove()
    return found, bn_elements


def gemm_seconds(g: Gemm, dtype: torch.dtype, reps: int) -> float:
    """Best time of `g` with `dtype` operands, over both layouts of the right operand (contiguous, or a transposed
    view of a contiguous (n, k) tensor, as a channels_last conv weight is)."""
    a, out = torch.randn(g.m, g.k, dtype=dtype), torch.empty(g.m, g.n, dtype=dtype)
    layouts = (torch.randn(g.k, g.n, dtype=dtype), torch.randn(g.n, g.k, dtype=dtype).t())
    return min(best_ms(lambda b=b: torch.mm(a, b, out=out), reps) for b in layouts) / 1000


def copy_bandwidth(nbytes: int = 100 * 2**20) -> float:
    """Bytes/s moved (read + write) by a plain copy of a tensor bigger than the caches."""
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / (best_ms(lambda: dst.copy_(src)) / 1000)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes)
    dtype = resolve_precision("cpu").amp_dtype or torch.float32
    kind = DTYPE_NAMES[dtype]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} at {args.img_size} px, batch "
          f"{args.batch_size}, {kind}", flush=True)  # fmt: skip
    peak = matmul_peak_flops(torch.device("cpu"), dtype)
    useful = 3 * 2 * count_macs(model, (3, args.img_size, args.img_size)) * args.batch_size  # bench_train's count
    print(f"{kind} matmul peak (2048^3): {peak / 1e12:.2f} TFLOP/s; a step's useful work {useful / 1e9:.0f} GFLOP "
          f"-> {useful / peak:.3f} s at the peak", flush=True)  # fmt: skip

    gemms, bn_elements = record_step(model, args.img_size, args.batch_size)
    timed: dict[Gemm, float] = {}
    by_stage: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # stage -> [seconds, flops]
    for name, layer in gemms.items():
        stage = name.split(".")[0]
        for g in layer:
            if g not in timed:
                timed[g] = gemm_seconds(g, dtype, args.reps)
                print(f"    {g.m:7d} x {g.k:6d} x {g.n:5d}: {timed[g] * 1000:7.2f} ms, "
                      f"{g.flops / timed[g] / 1e12:.2f} TFLOP/s", flush=True)  # fmt: skip
            by_stage[stage][0] += timed[g]
            by_stage[stage][1] += g.flops

    # This machine's speed drifts by 10-20% within minutes: take the peak again after the products, keep the higher.
    peak = max(peak, matmul_peak_flops(torch.device("cpu"), dtype))
    print(f"peak measured again after the products, the higher kept: {peak / 1e12:.2f} TFLOP/s")
    for stage, (sec, flops) in by_stage.items():
        print(f"  {stage:8s} {sec * 1000:8.1f} ms of products, {flops / sec / 1e12:.2f} TFLOP/s "
              f"({flops / sec / peak:.2f} of the peak)", flush=True)  # fmt: skip
    gemm_s = sum(s for s, _ in by_stage.values())
    gemm_flops = sum(f for _, f in by_stage.values())
    print(f"all products: {gemm_s:.3f} s for {gemm_flops / 1e9:.0f} GFLOP ({gemm_flops / gemm_s / 1e12:.2f} TFLOP/s)")
    print(f"ceiling with this GEMM, everything else free: {args.batch_size / gemm_s:.1f} img/s, "
          f"{useful / gemm_s / peak:.2f} of the peak", flush=True)  # fmt: skip

    bw = copy_bandwidth()
    bn_s = 5 * bn_elements * dtype.itemsize / bw  # BatchNorm: forward 2 passes, backward 3, over its output
    step = gemm_s + bn_s
    print(f"plus BatchNorm's least traffic at copy bandwidth ({bw / 1e9:.1f} GB/s, {bn_s:.3f} s), an estimate: "
          f"{args.batch_size / step:.1f} img/s, {useful / step / peak:.2f} of the peak")  # fmt: skip


if __name__ == "__main__":
    main()
