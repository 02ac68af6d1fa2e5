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


def test_with_epoch_bn_stats_the_average_copies_the_corrected_statistics():
    # During an epoch of `--bn-stats epoch` the running statistics are a partial sum from zero: averaging them step by
    # step would pull the EMA's statistics towards zero. They are copied once the epoch has corrected them.
    from resnetlab.engine.optim import Schedule
    from resnetlab.engine.precision import resolve_precision
    from resnetlab.engine.train import fresh_bn_stats, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ema = ModelEma(model, decay=0.9, copy_bn_stats=True)
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 2, torch.randint(0, 2, (8,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with fresh_bn_stats(model.train()):  # as `Trainer.run_epoch` does
        train_one_epoch(
            model, batches, opt, Schedule(), nn.CrossEntropyLoss(), resolve_precision("cpu", "off", False), ema=ema
        )
    ema.copy_bn_stats()
    assert torch.equal(ema.module[1].running_var, model[1].running_var)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not torch.equal(ema.module[0].weight, model[0].weight)  # the weights are still averaged
