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
    """`module` follows `source` (the trained model) by `update()` after every optimizer step."""

    def __init__(self, source: nn.Module, decay: float = 0.998) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}: must be in (0, 1)")
        self.source, self.decay, self.updates = source, decay, 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self._pairs()

    def _pairs(self) -> None:
        # state_dict() tensors share storage with the live parameters and buffers: pair them up once.
        ema, src = self.module.state_dict(), self.source.state_dict()
        self._float = (
            [ema[k] for k in ema if ema[k].is_floating_point()],
            [src[k] for k in ema if ema[k].is_floating_point()],
        )
        self._other = [(ema[k], src[k]) for k in ema if not ema[k].is_floating_point()]

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
