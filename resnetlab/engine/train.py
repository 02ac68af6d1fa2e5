"""One training epoch: autocast, channels_last, optional grad scaler, mixup/cutmix, GoogLeNet auxiliary losses."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from resnetlab.engine.distributed import DistInfo, all_reduce_sum
from resnetlab.engine.optim import Schedule, set_train_mode
from resnetlab.engine.precision import Precision

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def progress_enabled(progress: bool | None, info: DistInfo = DistInfo()) -> bool:
    """Bars only on rank 0 and, unless forced, only when stdout is a terminal (quiet in logs and CI)."""
    if not info.is_main:
        return False
    return sys.stdout.isatty() if progress is None else progress


def split_outputs(out: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and auxiliary logits: GoogLeNet returns a namedtuple (logits, aux2, aux1) while training."""
    if isinstance(out, torch.Tensor):
        return out, []
    return out[0], [a for a in out[1:] if a is not None]


def compute_loss(
    out: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, criterion: nn.Module, aux_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): the main loss plus `aux_weight` times each auxiliary loss."""
    logits, aux = split_outputs(out)
    loss = criterion(logits, target)
    for a in aux:
        loss = loss + aux_weight * criterion(a, target)
    return loss, logits


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    # The highest group LR is the head's: the number users set with --lr.
    return max(g["lr"] for g in optimizer.param_groups)


@contextmanager
def fresh_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block (one epoch), the running statistics of `model`'s training BatchNorms start afresh.

    They are zeroed on entry and, on leaving, divided by the weight the epoch's n batches carry in the moving average,
    1 - (1 - momentum)^n (Adam's bias correction): each layer keeps its own momentum, but nothing from earlier epochs
    remains. With momentum 0.1 over few batches an epoch, the plain moving average still carries the statistics of
    much older weights when the epoch is validated: after the first epoch of MobileNet V2 on the demo data (9 batches
    an epoch) its variances were up to 766x those of the current weights, and validation predicted one class for 6
    epochs (benchmarks/RESULTS.md). Momenta stay put, so a compiled model is not recompiled, and nothing is read back
    from the device.
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats and m.momentum
    ]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.running_mean.zero_()
        m.running_var.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(layers, saved):
                n = (m.num_batches_tracked - count).to(mean.dtype)  # batches this epoch
                weight = (1 - (1 - m.momentum) ** n).clamp(min=1e-12)
                m.running_mean.copy_(torch.where(n > 0, m.running_mean / weight, mean))  # no batch: as it was
                m.running_var.copy_(torch.where(n > 0, m.running_var / weight, var))


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    criterion: nn.Module,
    precision: Precision,
    scaler: torch.amp.GradScaler | None = None,
    mixer: Mixer | None = None,
    aux_weight: float = 0.3,
    grad_clip: float | None = None,
    eval_modules: Sequence[nn.Module] = (),
    freeze_bn: bool = False,
    info: DistInfo = DistInfo(),
    desc: str = "train",
    progress: bool = False,
    ema: Any = None,
    stop: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """Train for one pass over `loader`; returns the epoch's mean loss, accuracy, images/s and final LR (all ranks).

    `stop`, called with the number of steps taken after each one, ends the pass early when it returns True.
    """
    from tqdm import tqdm

    set_train_mode(model, eval_modules, freeze_bn)
    device = precision.device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    start = time.perf_counter()
    last_lr = current_lr(optimizer)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress, file=sys.stdout)
    for step, (images, labels) in enumerate(bar):
        images = precision.prepare_batch(images)  # (B, C, H, W)
        labels = labels.to(device, non_blocking=True)
        target = labels
        if mixer is not None:
            images, target = mixer(images, labels)  # target: (B, num_classes) soft labels
        with precision.autocast():
            out = model(images)
            loss, logits = compute_loss(out, target, criterion, aux_weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        last_lr = current_lr(optimizer)  # the rate this step used, before the schedule moves it
        schedule.step()
        if ema is not None:
            ema.update()

        n = labels.numel()
        hard = target.argmax(1) if target.ndim == 2 else target  # mixup: the dominant label
        correct = (logits.argmax(1) == hard).sum()
        totals += torch.stack([loss.detach().double() * n, correct.double(), totals.new_tensor(n)])
        if progress and (step % 5 == 0 or step == len(bar) - 1):
            seen = totals[2].item()
            bar.set_postfix(
                loss=f"{totals[0].item() / seen:.3f}",
                acc=f"{totals[1].item() / seen:.3f}",
                lr=f"{current_lr(optimizer):.2e}",
                img_s=f"{seen * info.world_size / (time.perf_counter() - start):.1f}",
            )
        if stop is not None and stop(step + 1):
            break
    bar.close()
    seconds = time.perf_counter() - start
    loss_sum, correct, count = all_reduce_sum(totals, info).tolist()
    count = max(count, 1.0)
    return {
        "loss": loss_sum / count,
        "acc": correct / count,
        "n": int(count),
        "seconds": seconds,
        "img_s": count / max(seconds, 1e-9),
        "lr": last_lr,  # the rate of the epoch's last step
    }
