"""Optimizer groups, schedules (shape, warm-up, weights_only state round trip), staged LRs, GoogLeNet aux loss."""

from __future__ import annotations

import io
from collections import namedtuple

import pytest
import torch
from torch import nn

from resnetlab.engine.optim import (
    SCHEDULERS,
    build_optimizer,
    build_schedule,
    configure_phase,
    param_groups,
    plan_phases,
    stage_lrs,
)
from resnetlab.engine.train import compute_loss
from resnetlab.models import create_model


def _lrs(name: str, epochs: int = 4, spe: int = 10, **kw) -> list[float]:
    opt = build_optimizer("sgd", param_groups([(nn.Linear(2, 2), 1.0)], 0.0), 1.0)
    sched = build_schedule(name, opt, epochs, spe, **kw)
    out = []
    for _ in range(epochs * spe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_no_weight_decay_on_norms_and_biases():
    model = create_model("resnet20", num_classes=3)
    groups = param_groups([(model, 0.1)], 5e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


def test_cosine_with_warmup():
    lrs = _lrs("cosine", warmup_epochs=1, min_lr_ratio=0.01)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear ramp over the first epoch
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays monotonically
    assert lrs[-1] == pytest.approx(0.01, abs=0.01)


def test_step_and_onecycle_shapes():
    step = _lrs("step", warmup_epochs=0, step_size=2, gamma=0.1)
    assert step[0] == 1.0 and step[19] == 1.0 and step[20] == pytest.approx(0.1)
    one = _lrs("onecycle", warmup_epochs=1)
    peak = one.index(max(one))
    assert 5 <= peak <= 15 and one[0] < 0.1 and one[-1] < 1e-3


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedule_state_loads_with_weights_only(name):
    model = nn.Linear(3, 2)
    opt = build_optimizer("adamw", param_groups([(model, 1e-3)], 0.01), 1e-3)
    sched = build_schedule(name, opt, 3, 5, warmup_epochs=1)
    for _ in range(7):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    sched.epoch_end(0.5)
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer("adamw", param_groups([(model, 1e-3)], 0.01), 1e-3)
    sched2 = build_schedule(name, opt2, 3, 5, warmup_epochs=1)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])


def test_phases_and_discriminative_lrs():
    assert plan_phases("finetune", 5, 1) == [("all", 0, 5)]
    assert plan_phases("staged", 5, 2) == [("head", 0, 2), ("unfrozen", 2, 5)]
    assert plan_phases("staged", 2, 3) == [("head", 0, 2)]
    model = create_model("resnet18", num_classes=4)
    pairs = stage_lrs(model, 1e-3, 100.0)
    lrs = [lr for _, lr in pairs]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    assert lrs == sorted(lrs)
    pairs, eval_modules = configure_phase(model, "head", 1e-3, 100.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"} and eval_modules


def test_googlenet_aux_losses_weighted():
    Out = namedtuple("Out", ["logits", "aux_logits2", "aux_logits1"])
    logits, aux2, aux1 = torch.randn(3, 4, 5).unbind(0)
    target = torch.tensor([0, 1, 2, 3])
    ce = nn.CrossEntropyLoss()
    loss, main = compute_loss(Out(logits, aux2, aux1), target, ce, 0.3)
    assert torch.equal(main, logits)
    assert loss.item() == pytest.approx((ce(logits, target) + 0.3 * ce(aux2, target) + 0.3 * ce(aux1, target)).item())
    plain, _ = compute_loss(logits, target, ce, 0.3)
    assert plain.item() == pytest.approx(ce(logits, target).item())


def test_googlenet_trains_one_step():
    from resnetlab.engine.optim import Schedule
    from resnetlab.engine.precision import resolve_precision
    from resnetlab.engine.train import train_one_epoch

    model = create_model("googlenet", num_classes=3)
    opt = build_optimizer("sgd", param_groups([(model, 0.01)], 0.0), 0.01)
    loader = [(torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))]
    stats = train_one_epoch(model, loader, opt, Schedule(), nn.CrossEntropyLoss(), resolve_precision("cpu", "off"))
    assert stats["n"] == 2 and stats["loss"] > 0


def test_googlenet_frozen_aux_heads_add_no_loss():
    # A frozen backbone holds the aux heads in eval mode: they learn nothing, so they give no outputs to weigh in.
    from resnetlab.engine.optim import head_and_body, set_train_mode

    model = create_model("googlenet", num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    assert len(model.train()(x)) == 3  # logits, aux2, aux1
    _, body = head_and_body(model)
    out = set_train_mode(model, body)(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_multistep_milestones_and_nesterov_switch():
    lrs = _lrs("multistep", epochs=4, spe=10, warmup_epochs=0, milestones=[2, 3], gamma=0.1)
    assert lrs[19] == 1.0 and lrs[20] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)
    default = _lrs("multistep", epochs=4, spe=10, warmup_epochs=0)  # 50% and 75% of the run
    assert default[19] == 1.0 and default[20] == pytest.approx(0.1) and default[30] == pytest.approx(0.01)
    groups = param_groups([(nn.Linear(2, 2), 0.1)], 0.0)
    assert build_optimizer("sgd", groups, 0.1, 0.9, nesterov=False).param_groups[0]["nesterov"] is False


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        ({"sched": "multistep", "milestones": [1, 5]}, "warning: --milestones 5: the rate never drops there in a run"),
        ({"sched": "step", "step_size": 3}, "warning: --step-size 3: the rate never drops there in a run of 3 epochs"),
        ({"sched": "multistep", "milestones": [2]}, None),
    ],
)
def test_decays_beyond_the_run_are_warned(digits_dir, tmp_path, flags, warned):
    from resnetlab.engine.fit import fit
    from tests.engine.conftest import tiny_config

    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "run", epochs=3, **flags), log=lines.append)
    found = [line for line in lines if line.startswith("warning: --")]
    if warned is None:
        assert found == [], lines
    else:
        assert len(found) == 1 and found[0].startswith(warned), lines
