"""Throughput of resnetlab's models against torchvision's: forward and forward+backward img/s, in one process.

Both models get the same weights and the same batch; their timed runs alternate (ABBA order over several rounds) so
drifting clocks and neighbours hit both alike, and each model's best round counts (as `timeit` advises: slower
rounds measure interference, not the model). Modes: fp32 NCHW, and channels_last with bf16 autocast.

    .venv/bin/python benchmarks/bench_models.py --models resnet18,resnet50 --batch-size 32 --iters 10
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from resnetlab import create_model

TV_KWARGS = {"googlenet": {"aux_logits": True, "init_weights": True}}
# mode -> (channels_last, autocast dtype or None)
MODES: dict[str, tuple[bool, torch.dtype | None]] = {"fp32": (False, None), "cl+bf16": (True, torch.bfloat16)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,googlenet", help="comma-separated names")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=10, help="timed steps per model per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds; the best round is reported")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [
        f"CPU: {cpu}",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"threads: {torch.get_num_threads()}",
    ]
    if device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    return " | ".join(parts)


def build_pair(name: str, device: torch.device, channels_last: bool) -> tuple[nn.Module, nn.Module]:
    """Ours and torchvision's model with identical weights (so both do the very same arithmetic)."""
    ours = create_model(name)
    theirs = torchvision.models.get_model(name, weights=None, **TV_KWARGS.get(name, {}))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return ours.to(device, memory_format=fmt), theirs.to(device, memory_format=fmt)


def total_loss(out: torch.Tensor | tuple) -> torch.Tensor:
    # GoogLeNet in training mode returns (logits, aux2, aux1): backprop through all heads, as training does.
    outs = out if isinstance(out, tuple) else (out,)
    return sum(o.float().mean() for o in outs)


def make_step(model: nn.Module, x: torch.Tensor, train: bool, amp: torch.dtype | None) -> Callable[[], None]:
    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = total_loss(model(x))
        loss.backward()

    model.train(train)
    return forward_backward if train else forward


def timed(step: Callable[[], None], iters: int, device: torch.device) -> float:
    """Seconds per step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def compare(steps: dict[str, Callable[[], None]], iters: int, warmup: int, rounds: int, device: torch.device):
    """Best seconds per step for each of the two steps, run in ABBA order round after round."""
    names = list(steps)
    for name in names:
        timed(steps[name], warmup, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(steps[name], iters, device))
    return {name: min(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}")
    print(hardware(device))
    print(
        f"batch {args.batch_size}, {args.img_size}px, {args.rounds} rounds x {args.iters} iters, warmup {args.warmup}"
    )
    header = f"{'model':<18} {'mode':<8} {'pass':<9} {'ours img/s':>11} {'tv img/s':>11} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            channels_last, amp = MODES[mode]
            ours, theirs = build_pair(name, device, channels_last)
            x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for label, train in (("fwd", False), ("fwd+bwd", True)):
                steps = {"ours": make_step(ours, x, train, amp), "theirs": make_step(theirs, x, train, amp)}
                sec = compare(steps, args.iters, args.warmup, args.rounds, device)
                ips = {k: args.batch_size / v for k, v in sec.items()}
                ratio = ips["ours"] / ips["theirs"]
                print(f"{name:<18} {mode:<8} {label:<9} {ips['ours']:>11.1f} {ips['theirs']:>11.1f} {ratio:>7.3f}")
            del ours, theirs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
