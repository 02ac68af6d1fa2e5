"""`--bn-stats epoch`: each epoch's running BatchNorm statistics start afresh, so validation sees current weights."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from resnetlab.config import TrainConfig
from resnetlab.engine.optim import Schedule, set_train_mode
from resnetlab.engine.precision import resolve_precision
from resnetlab.engine.train import fresh_bn_stats, train_one_epoch
from resnetlab.errors import ResnetlabError


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    # Each batch has its own offset and scale, so an average that weights batches unequally shows.
    return [
        (torch.randn(8, 3, 6, 6, generator=gen) * (1 + i) + i, torch.randint(0, 2, (8,), generator=gen))
        for i in range(n)
    ]


def _epoch(model: nn.Module, batches: list, bn_stats: str, eval_modules=()) -> list[torch.Tensor]:
    """One epoch with a zero learning rate (the weights stay put); returns what entered the BatchNorm per batch."""
    seen: list[torch.Tensor] = []
    hook = model[1].register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    # As `Trainer.run_epoch` does: the window wraps the epoch, over the BatchNorms in training mode.
    window = fresh_bn_stats(set_train_mode(model, eval_modules)) if bn_stats == "epoch" else nullcontext()
    with window:
        train_one_epoch(
            model, batches, opt, Schedule(), nn.CrossEntropyLoss(), resolve_precision("cpu", "off", False),
            eval_modules=eval_modules,
        )  # fmt: skip
    hook.remove()
    return seen


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.transpose(0, 1).flatten(1)  # (C, N*H*W)
    return flat.mean(1), flat.var(1)  # unbiased, as BatchNorm's running variance


@pytest.mark.parametrize("n_batches", [2, 12])
def test_epoch_stats_are_the_epochs_own_moving_average_bias_corrected(n_batches):
    model = _model()
    bn = model[1]
    bn.momentum = 0.25
    bn.running_mean.fill_(100.0)  # what older weights left behind: must not survive the epoch
    bn.running_var.fill_(1e4)
    seen = _epoch(model, _batches(n_batches), "epoch")

    weights = [0.25 * 0.75 ** (n_batches - 1 - i) for i in range(n_batches)]  # batch i's share, newest largest
    stats = [_stats(x) for x in seen]
    mean = sum(w * m for w, (m, _) in zip(weights, stats)) / sum(weights)
    var = sum(w * v for w, (_, v) in zip(weights, stats)) / sum(weights)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.25 and int(bn.num_batches_tracked) == n_batches


def test_an_epoch_without_batches_keeps_the_statistics():
    model = _model()
    bn = model[1]
    bn.running_mean.fill_(3.0)
    _epoch(model, [], "epoch")
    assert torch.equal(bn.running_mean, torch.full((4,), 3.0)) and torch.equal(bn.running_var, torch.ones(4))


def test_running_stats_keep_pytorchs_moving_average():
    model = _model()
    bn = model[1]
    bn.running_mean.fill_(100.0)
    seen = _epoch(model, _batches(3), "running")
    mean = torch.full((4,), 100.0)
    for x in seen:
        mean = 0.9 * mean + 0.1 * _stats(x)[0]
    torch.testing.assert_close(bn.running_mean, mean)
    assert bn.momentum == 0.1


def test_frozen_batchnorm_is_left_alone():
    model = _model()
    bn = model[1]
    bn.num_batches_tracked.fill_(7)  # as trained weights have it
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    _epoch(model, _batches(3), "epoch", eval_modules=[bn])  # a frozen backbone's BatchNorm stays in eval mode
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bn.momentum == 0.1


def test_epoch_is_the_default_and_running_can_be_chosen():
    assert TrainConfig().bn_stats == "epoch"
    assert TrainConfig.from_dict({"bn_stats": "running"}).bn_stats == "running"
    with pytest.raises(ResnetlabError, match="bn_stats 'ema': choose one of epoch, running"):
        TrainConfig.from_dict({"bn_stats": "ema"})


def assert_fit_saves_each_epochs_own_statistics(digits_dir, tmp_path, **overrides) -> None:
    """The same training with either setting (statistics never feed back into training mode), so the epoch's own
    statistics follow from the moving average's: running = 0.9^n * (0, 1) + (1 - 0.9^n) * epoch's, n batches."""
    from resnetlab.engine.checkpoint import load_checkpoint
    from resnetlab.engine.fit import fit
    from tests.engine.conftest import tiny_config

    for setting in ("running", "epoch"):
        fit(tiny_config(digits_dir, tmp_path / setting, epochs=1, bn_stats=setting, **overrides), log=lambda _: None)
    running, epoch = (load_checkpoint(tmp_path / s / "last.pt")["model"] for s in ("running", "epoch"))
    keys = [k[: -len(".running_var")] for k in running if k.endswith(".running_var")]
    assert keys
    for key in keys:
        n = int(running[f"{key}.num_batches_tracked"])
        old = 0.9**n
        torch.testing.assert_close(epoch[f"{key}.running_mean"], running[f"{key}.running_mean"] / (1 - old))
        torch.testing.assert_close(epoch[f"{key}.running_var"], (running[f"{key}.running_var"] - old) / (1 - old))


def test_fit_saves_each_epochs_own_statistics(digits_dir, tmp_path):
    assert_fit_saves_each_epochs_own_statistics(digits_dir, tmp_path)


def test_fit_with_ema_keeps_the_epochs_corrected_statistics(digits_dir, tmp_path):
    from resnetlab.engine.checkpoint import load_checkpoint
    from resnetlab.engine.fit import fit
    from tests.engine.conftest import tiny_config

    fit(tiny_config(digits_dir, tmp_path / "run", epochs=1, ema=0.99), log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    stats = [k for k in ckpt["model"] if k.endswith((".running_mean", ".running_var"))]
    assert stats
    for key in stats:  # the averaged model's statistics are the trained model's, not an average of partial sums
        assert torch.equal(ckpt["model"][key], ckpt["train_model"][key]), key
