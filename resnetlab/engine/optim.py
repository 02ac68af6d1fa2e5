"""Optimizers, learning-rate schedules and layer freezing, as lookup tables and short helpers.

Parameter groups never decay norm weights and biases (1-D tensors). Schedules step once per iteration so warm-up and
cosine decay are smooth even for short runs; `plateau` steps once per epoch on the validation accuracy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from resnetlab.engine.muon import Muon
from resnetlab.errors import ResnetlabError

# ---------------------------------------------------------------------------------------------- optimizers

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, momentum, nesterov, fused: torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused
    ),
    "adam": lambda groups, lr, momentum, nesterov, fused: torch.optim.Adam(groups, lr=lr, fused=fused),
    "adamw": lambda groups, lr, momentum, nesterov, fused: torch.optim.AdamW(groups, lr=lr, fused=fused),
    "muon": lambda groups, lr, momentum, nesterov, fused: Muon(groups, lr=lr),  # its own momentum (0.95)
}
# Fused kernels update every parameter in one pass: measured for ResNet-50's 25.6M parameters on this 2-core CPU,
# AdamW's step takes 16.7 ms fused against 71.9 ms with the default foreach loop (benchmarks/RESULTS.md).
FUSED_DEVICES = ("cpu", "cuda")


def param_groups(
    modules: Sequence[tuple[nn.Module | Iterable[nn.Parameter], float]], weight_decay: float
) -> list[dict[str, Any]]:
    """Groups from (module or parameters, lr) pairs: each split into decayed weights and undecayed norms/biases."""
    groups = []
    seen: set[int] = set()
    for source, lr in modules:
        params = source.parameters() if isinstance(source, nn.Module) else source
        decay, no_decay = [], []
        for p in params:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups += [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ResnetlabError(f"--opt {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not groups:
        raise ResnetlabError("nothing to train: every parameter is frozen")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params) or None
    try:
        return OPTIMIZERS[name](groups, lr, momentum, nesterov, fused)
    except (RuntimeError, ValueError):  # an older torch or a device/dtype without a fused kernel
        return OPTIMIZERS[name](groups, lr, momentum, nesterov, None)


# ---------------------------------------------------------------------------------------------- schedules


def _warmup(step: int, warmup_steps: int) -> float:
    # Starts at 1/warmup_steps rather than 0 so the first step already moves.
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def cosine_factor(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return _warmup(step, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def step_factor(steps_per_epoch: int, warmup: int, step_epochs: int, gamma: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return _warmup(step, warmup) * gamma ** (step // (steps_per_epoch * step_epochs))

    return factor


def multistep_factor(steps_per_epoch: int, warmup: int, milestones: list[int], gamma: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        return _warmup(step, warmup) * gamma ** sum(epoch >= m for m in milestones)

    return factor


def constant_factor(warmup: int) -> Callable[[int], float]:
    return lambda step: _warmup(step, warmup)


class Schedule:
    """An iteration-level scheduler plus an optional epoch-level one (plateau), saved and restored together."""

    def __init__(self, per_step: Any = None, per_epoch: Any = None, warmup_steps: int = 0) -> None:
        self.per_step, self.per_epoch, self.warmup_steps = per_step, per_epoch, warmup_steps
        self.steps = 0
        self.base_lrs: list[float] = []  # each group's peak rate, set by build_schedule

    def fast_forward(self, steps: int) -> None:
        """Stand at optimizer step `steps`, each group's LR set to this schedule's value there (closed form)."""
        self.steps = steps
        if self.per_step is not None and steps:
            self.per_step.last_epoch = steps - 1
            with warnings.catch_warnings():  # on a resumed run the new optimizer has not stepped yet: by design here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.per_step.step()

    def adopt(self, other: Schedule) -> None:
        """Become `other` in place, for a loop that holds this object (a schedule re-targeted mid-epoch)."""
        self.per_step, self.per_epoch, self.warmup_steps = other.per_step, other.per_epoch, other.warmup_steps
        self.steps, self.base_lrs = other.steps, other.base_lrs

    def step(self) -> None:
        self.steps += 1
        # With plateau, the per-step scheduler only ramps up the warm-up and then leaves the LR to the plateau rule.
        if self.per_step is not None and (self.per_epoch is None or self.steps <= self.warmup_steps):
            self.per_step.step()

    def epoch_end(self, val_acc: float | None) -> None:
        if self.per_epoch is not None and self.steps > self.warmup_steps and val_acc is not None:
            self.per_epoch.step(val_acc)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "per_step": self.per_step.state_dict() if self.per_step is not None else None,
            "per_epoch": self.per_epoch.state_dict() if self.per_epoch is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        if self.per_step is not None and state.get("per_step") is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.per_epoch is not None and state.get("per_epoch") is not None:
            self.per_epoch.load_state_dict(state["per_epoch"])


def _default_milestones(epochs: int) -> list[int]:
    # He et al.'s CIFAR schedule: divide at 50% and 75% of the run.
    return [max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))]


def _lambda(opt: torch.optim.Optimizer, factor: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


SCHEDULERS: dict[str, Callable[..., Schedule]] = {
    "cosine": lambda opt, total, spe, warm, c: Schedule(_lambda(opt, cosine_factor(total, warm, c["min_lr_ratio"]))),
    "step": lambda opt, total, spe, warm, c: Schedule(
        _lambda(opt, step_factor(spe, warm, c["step_size"] or max(1, total // spe // 3), c["gamma"]))
    ),
    "multistep": lambda opt, total, spe, warm, c: Schedule(
        _lambda(opt, multistep_factor(spe, warm, c["milestones"] or _default_milestones(total // spe), c["gamma"]))
    ),
    "constant": lambda opt, total, spe, warm, c: Schedule(_lambda(opt, constant_factor(warm))),
    "plateau": lambda opt, total, spe, warm, c: Schedule(
        _lambda(opt, constant_factor(warm)),
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=c["gamma"], patience=2),
        warmup_steps=warm,
    ),
    "onecycle": lambda opt, total, spe, warm, c: Schedule(_one_cycle(opt, total, warm)),
}


def _one_cycle(opt: torch.optim.Optimizer, total: int, warm: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """PyTorch's OneCycleLR, rising for the warm-up (a quarter of the run without one), kept valid on tiny runs.

    Its rise ends at step pct_start * total_steps - 1 and divides by that length: a rise of exactly one step (one
    warm-up step, or 4 steps in all) divided by zero. A rise of at least 1.5 steps over at least 4 steps avoids it;
    a run shorter than that stops before the schedule's end.
    """
    steps = max(total, 4)
    pct = min(0.5, warm / total) if warm else 0.25
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=max(pct, 1.5 / steps)
    )


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
    milestones: list[int] | None = None,
    total_steps: int | None = None,
) -> Schedule:
    """A `Schedule` for `epochs` epochs of `steps_per_epoch` optimizer steps (warm-up capped at half the run), or for
    `total_steps` steps when given (a `--time` budget that ends an epoch early)."""
    if name not in SCHEDULERS:
        raise ResnetlabError(f"--sched {name!r}: choose one of {', '.join(SCHEDULERS)}")
    total = max(1, epochs * steps_per_epoch if total_steps is None else total_steps)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total // 2)
    extra = {"min_lr_ratio": min_lr_ratio, "step_size": step_size, "gamma": gamma, "milestones": milestones or []}
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    schedule = SCHEDULERS[name](optimizer, total, steps_per_epoch, warmup, extra)
    schedule.base_lrs = base_lrs
    return schedule


# Schedules whose shape does not depend on the run's length: a changed epoch plan leaves them as they are.
LENGTH_FREE_SCHEDULES = frozenset({"constant", "plateau"})


def retarget_schedule(
    old: Schedule, optimizer: torch.optim.Optimizer, name: str, epochs: int, **kwargs: Any
) -> Schedule:
    """`old` re-planned over `epochs` epochs and continued at its current step (a `--time` budget moved the end).

    The new schedule is built from the peak rates, then fast-forwarded: the next step's LR is the new shape's value
    there, so a cosine still anneals to its floor at the new end.
    """
    if name in LENGTH_FREE_SCHEDULES:
        return old
    for group, lr in zip(optimizer.param_groups, old.base_lrs):
        group["lr"] = lr
    new = build_schedule(name, optimizer, epochs, **kwargs)
    new.fast_forward(old.steps)
    return new


# ---------------------------------------------------------------------------------------------- freezing


def head_and_body(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The classifier head and the list of modules holding every other parameter (the backbone)."""
    head = model.get_classifier()
    head_ids = {id(p) for p in head.parameters()}
    body = [m for m in model.children() if m is not head and any(id(p) not in head_ids for p in m.parameters())]
    return head, body


def freeze(modules: Iterable[nn.Module], frozen: bool = True) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(not frozen)


def set_train_mode(model: nn.Module, eval_modules: Sequence[nn.Module] = (), freeze_bn: bool = False) -> nn.Module:
    """`model.train()`, but `eval_modules` (a frozen backbone) and, with `freeze_bn`, all BatchNorms stay in eval."""
    model.train()
    for m in eval_modules:
        m.eval()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def stage_lrs(model: nn.Module, lr: float, lr_mult: float) -> list[tuple[nn.Module, float]]:
    """Discriminative LRs: `model.stages()` from input to head get lr/lr_mult rising geometrically to lr.

    Parameters outside every stage (e.g. GoogLeNet's auxiliary classifiers) train at the first stage's rate.
    """
    stages = [m for _, m in model.stages()]
    n = len(stages)
    pairs = [(m, lr / lr_mult ** ((n - 1 - i) / max(1, n - 1))) for i, m in enumerate(stages)]
    in_stage = {id(p) for m in stages for p in m.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_stage]
    if rest:
        pairs.insert(0, (rest, pairs[0][1]))
    return pairs


# ---------------------------------------------------------------------------------------------- training phases

# A phase is a span of epochs with one set of trainable parameters and one optimizer + schedule.
# finetune: everything trains; frozen: head only; staged: head-only epochs, then all layers with discriminative LRs.
PHASE_KINDS: dict[str, tuple[str, ...]] = {"finetune": ("all",), "frozen": ("head",), "staged": ("head", "unfrozen")}


def plan_phases(mode: str, epochs: int, freeze_epochs: int) -> list[tuple[str, int, int]]:
    """(kind, first epoch, end epoch) for each non-empty phase of the run."""
    kinds = PHASE_KINDS[mode]
    bounds = [0, min(max(freeze_epochs, 0), epochs), epochs] if len(kinds) == 2 else [0, epochs]
    return [(kind, a, b) for kind, a, b in zip(kinds, bounds, bounds[1:]) if b > a]


def configure_phase(model: nn.Module, kind: str, lr: float, lr_mult: float) -> tuple[list, list[nn.Module]]:
    """Freeze/unfreeze for a phase; returns (module, lr) pairs for `param_groups` and the modules kept in eval."""
    head, body = head_and_body(model)
    if kind == "head":
        freeze(body, True)
        freeze([head], False)
        return [(head, lr)], body
    freeze([model], False)
    if kind == "unfrozen":
        # fastai's fine_tune: after the head-only epochs, half the base LR with lower LRs for earlier stages.
        return stage_lrs(model, lr / 2, lr_mult), []
    return [(model, lr)], []
