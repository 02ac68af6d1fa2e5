from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.engine.ema import ModelEma


def test_ema_follows_the_formula_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update()
    d = min(0.5, 2 / 11)  # warm-up: (1 + t) / (10 + t) after the first update
    assert ema.current_decay() == pytest.approx(d) and ema.updates == 1
    want = d * start["0.weight"] + (1 - d) * model[0].weight
    assert torch.allclose(ema.module[0].weight, want)
    assert torch.equal(ema.module[0].bias, model[0].bias)  # unchanged source: the average stays put
    assert int(ema.module[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, decay=1.0)
