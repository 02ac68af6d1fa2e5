"""Training steps with fused AdamW against Muon (`resnetlab/engine/muon.py`), and the optimizer step alone.

Both copies of the model start from the same weights and train as `fit` does on this CPU (channels_last, bf16 autocast
with GEMM weight gradients and the fused BatchNorm kernels, or `--fp32`); they differ only in the optimizer. Steps
alternate between the two in one process, so machine drift hits both; the best of each round is reported.

    .venv/bin/python benchmarks/bench_optim.py                         # ResNet-18 at 96 px (the recipe), ResNet-50
    .venv/bin/python benchmarks/bench_optim.py --cases resnet18:64:96 --rounds 5
    .venv/bin/python benchmarks/bench_optim.py --fp32 --opts adamw,muon:standard,muon   # Gram Newton-Schulz's gain
    .venv/bin/python benchmarks/bench_optim.py --opts adamw,muon:standard,muon   # eigh's gain: AVX-512 BF16, no AMX
    python benchmarks/bench_optim.py --device cuda --cases resnet50:128:224   # on a GPU: bf16 autocast, cuDNN
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from resnetlab.engine.allocator import keep_freed_memory
from resnetlab.engine.bn_act import enable_fused_bn_act
from resnetlab.engine.conv_wgrad import enable_gemm_weight_grad
from resnetlab.engine.optim import build_optimizer, param_groups
from resnetlab.models import create_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet18:64:96,resnet50:32:224", help="model:batch:size, comma-separated")
    p.add_argument(
        "--opts",
        default="adamw,muon",
        help="optimizers to alternate, the first is the baseline; muon:standard, muon:gram, muon:eigh force a form",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per optimizer per round")
    p.add_argument("--fp32", action="store_true", help="fp32 steps and Muon iterations (CPUs without bf16)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p.parse_args(argv)


def make_step(model: nn.Module, opt_name: str, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> tuple[Callable, ...]:
    opt_name, _, ns_method = opt_name.partition(":")
    opt = build_optimizer(opt_name, param_groups([(model, 1e-3)], 0.05), 1e-3)
    if ns_method:
        opt.ns_method = ns_method  # see `orthogonalize`
    if not bf16 and hasattr(opt, "ns_dtype"):
        opt.ns_dtype = torch.float32  # as on a CPU without native bf16, which `--fp32` stands for

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, opt.step


def timed(fn: Callable[[], None], n: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def bench_case(
    name: str, batch: int, size: int, opts: list[str], rounds: int, steps: int, bf16: bool, device: torch.device
) -> None:
    torch.manual_seed(0)
    base = create_model(name, num_classes=6).to(device, memory_format=torch.channels_last).train()
    if device.type == "cpu":  # as `fit` does on a CPU; cuDNN needs neither
        if bf16:
            enable_gemm_weight_grad(base)
        enable_fused_bn_act(base)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,), device=device)
    runs = {k: make_step(copy.deepcopy(base), k, x, y, bf16) for k in opts}
    for step, _ in runs.values():  # warm-up: oneDNN primitives, allocator, optimizer state
        step()
        step()
    best = {k: [float("inf"), float("inf")] for k in runs}
    for r in range(rounds):
        line = []
        for k, (step, opt_step) in runs.items():
            # the lone optimizer steps reuse the last grads
            dt, dt_opt = timed(step, steps, device), timed(opt_step, steps, device)
            best[k] = [min(best[k][0], dt), min(best[k][1], dt_opt)]
            line.append(f"{k} {dt * 1000:.0f} ms (optimizer {dt_opt * 1000:.1f} ms)")
        print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    ref = opts[0]
    parts = [
        f"{k} {batch / v[0]:.1f} img/s, step {v[1] * 1000:.1f} ms, {best[ref][0] / v[0]:.2f}x {ref}'s speed"
        for k, v in best.items()
    ]
    print(f"{name} batch {batch} at {size} px: " + "; ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()
    mode = "fp32" if args.fp32 else "bf16 autocast"
    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, {mode}, channels_last", flush=True)
    opts = args.opts.split(",")
    for case in args.cases.split(","):
        name, batch, size = case.split(":")
        bench_case(name, int(batch), int(size), opts, args.rounds, args.steps, not args.fp32, device)


if __name__ == "__main__":
    main()
