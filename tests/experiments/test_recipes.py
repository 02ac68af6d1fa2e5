"""The paper's CIFAR recipe as TrainConfig overrides, and when it applies by default."""

from __future__ import annotations

import pytest

from resnetlab.config import TrainConfig
from resnetlab.recipes import CIFAR_RESNET, recipe_for, recipe_overrides


def test_recipe_holds_the_paper_values():
    # He et al. 2015, section 4.2.
    assert CIFAR_RESNET["opt"] == "sgd" and CIFAR_RESNET["lr"] == 0.1 and CIFAR_RESNET["momentum"] == 0.9
    assert CIFAR_RESNET["nesterov"] is False and CIFAR_RESNET["wd"] == 1e-4 and CIFAR_RESNET["batch_size"] == 128
    assert CIFAR_RESNET["sched"] == "multistep" and CIFAR_RESNET["gamma"] == 0.1
    assert CIFAR_RESNET["augment"] == "cifar" and CIFAR_RESNET["label_smoothing"] == 0.0


def test_overrides_make_a_valid_config_that_divides_at_half_and_three_quarters():
    import torch

    from resnetlab.engine.optim import build_schedule

    cfg = TrainConfig.from_dict({"data": "x", "model": "resnet56", **recipe_overrides("cifar_resnet", 40)})
    assert (cfg.opt, cfg.lr, cfg.momentum, cfg.wd, cfg.batch_size, cfg.epochs) == ("sgd", 0.1, 0.9, 1e-4, 128, 40)
    assert cfg.resolved_lr() == 0.1  # not rescaled for the batch size: the paper's value at its batch
    assert cfg.warmup_epochs == 0.0 and cfg.label_smoothing == 0.0 and cfg.mixup == 0.0 and not cfg.nesterov
    assert recipe_overrides("cifar_resnet")["epochs"] == 182  # 64k iterations of 128 on 45k images

    # The schedule the engine builds from these values: x0.1 after epoch 20 and after epoch 30.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = build_schedule(
        cfg.sched, opt, cfg.epochs, 10, cfg.warmup_epochs, cfg.min_lr_ratio, cfg.step_size, cfg.gamma, cfg.milestones
    )
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(10):
            opt.step()
            sched.step()
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01)
    assert lrs[29] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)


def test_default_only_for_cifar_resnets_on_cifar10(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("resnet20", "resnet56", "plain56", "resnet110"):
        assert recipe_for("cifar10", model) == "cifar_resnet"
    assert recipe_for("cifar10", "resnet18") is None  # an ImageNet-style ResNet keeps the engine's defaults
    assert recipe_for(str(tmp_path), "resnet20") is None  # a user's folder keeps them too
    assert recipe_for(None, "resnet20") is None


def test_unknown_recipe_is_a_clear_error():
    from resnetlab.errors import ResnetlabError

    with pytest.raises(ResnetlabError, match="choose one of cifar_resnet"):
        recipe_overrides("imagenet")
