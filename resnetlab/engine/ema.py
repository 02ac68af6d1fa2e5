"""An exponential moving average of the model's weights, the copy that is validated, saved and deployed.

Averaging the last few hundred optimizer steps smooths out the noise of small batches and of the final, still large
learning rates; timm and Ultralytics keep one by default. The decay ramps up as `(1 + t) / (10 + t)` (timm's
warm-up), capped at `decay`, so short runs average over roughly their last epoch or two rather than their start.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """`module` follows `source` (the trained model) by `update()` after every optimizer step.

    With `copy_bn_stats=True` BatchNorm running statistics are not averaged but copied by `copy_bn_stats()` once the
    source's are final: with `--bn-stats epoch` they are only a partial, uncorrected sum during an epoch.
    """

    def __init__(self, source: nn.Module, decay: float = 0.998, copy_bn_stats: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}: must be in (0, 1)")
        self.source, self.decay, self.updates = source, decay, 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self._pairs(copy_bn_stats)

    def _pairs(self, copy_bn_stats: bool) -> None:
        # state_dict() tensors share storage with the live parameters and buffers: pair them up once.
        ema, src = self.module.state_dict(), self.source.state_dict()
        stats = set()
        if copy_bn_stats:
            stats = {
                f"{name}.{stat}".lstrip(".")
                for name, m in self.source.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                for stat in ("running_mean", "running_var")
            }
        averaged = [k for k in ema if ema[k].is_floating_point() and k not in stats]
        self._float = ([ema[k] for k in averaged], [src[k] for k in averaged])
        self._other = [(ema[k], src[k]) for k in ema if not ema[k].is_floating_point()]
        self._bn_stats = [(ema[k], src[k]) for k in ema if k in stats]

    @torch.no_grad()
    def copy_bn_stats(self) -> None:
        """The source's BatchNorm running statistics, as they are now (only those `copy_bn_stats=True` set apart)."""
        for e, s in self._bn_stats:
            e.copy_(s)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        ema, src = self._float
        torch._foreach_lerp_(ema, src, 1.0 - self.current_decay())  # ema += (1 - d) * (src - ema)
        for e, s in self._other:  # e.g. BatchNorm's num_batches_tracked
            e.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore the averaged `weights` and the update count (resume)."""
        self.module.load_state_dict(weights)
        self.updates = int(state.get("updates", 0))
