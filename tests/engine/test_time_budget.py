"""`--time`: a wall-clock budget that plans the run's length after each epoch and re-targets the LR schedule."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import resnetlab.engine.fit as fit_module
from resnetlab.config import TrainConfig, parse_duration
from resnetlab.engine.budget import UNFROZEN_COST, costs_ahead, epochs_that_fit, plan_epochs, seconds_per_epoch
from resnetlab.engine.checkpoint import load_checkpoint
from resnetlab.engine.fit import fit
from resnetlab.engine.optim import (
    LENGTH_FREE_SCHEDULES,
    SCHEDULERS,
    build_optimizer,
    build_schedule,
    param_groups,
    retarget_schedule,
)
from resnetlab.errors import ResnetlabError
from tests.engine.conftest import Killed, kill_after, tiny_config


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("20m", 1200.0), ("1.5h", 5400.0), (" 2M ", 120.0), ("1h30m", 5400.0), ("2m 30s", 150.0)]
    + [("1:30:00", 5400.0), ("45:00", 2700.0)],  # H:MM:SS and M:SS, as job schedulers write time limits
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5", "0.5", "m", "-1m", "0s", "tenm", "infh", "", "1m1h", "1:75", "1:60:00"])
def test_bad_durations_name_the_option(text):
    # A bare number is refused: Ultralytics reads it as hours, a CPU user may mean minutes.
    with pytest.raises(ResnetlabError, match=r"^time .*: give a positive duration with a unit, e.g. 90s"):
        TrainConfig.from_dict({"time": text})


def test_cli_rejects_a_time_without_unit(digits_dir, capsys):
    from resnetlab.cli import main

    assert main(["train", str(digits_dir), "--time", "5"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time '5'" in err[0] and "Traceback" not in err[0]


def test_epoch_costs_leave_out_first_epochs_and_price_unfrozen_epochs():
    assert seconds_per_epoch([30.0]) == 30.0
    assert seconds_per_epoch([30.0, 10.0, 12.0]) == 11.0  # the first epoch's one-off costs are not repeated
    assert costs_ahead([("all", 30.0), ("all", 10.0), ("all", 12.0)], ["all"] * 3) == [11.0, 11.0, 11.0]
    # Staged: two head-only epochs timed, the unfrozen ones not yet: priced at UNFROZEN_COST times a head epoch.
    timed = [("head", 5.0), ("head", 2.0)]
    assert costs_ahead(timed, ["head", "unfrozen"]) == [2.0, UNFROZEN_COST * 2.0]
    # Once an unfrozen epoch is timed, it is its own estimate.
    assert costs_ahead([*timed, ("unfrozen", 7.0)], ["unfrozen"]) == [7.0]
    assert epochs_that_fit(100.0, [11.0] * 20) == 9
    assert epochs_that_fit(10.0, [2.0, 6.0, 6.0]) == 2
    assert epochs_that_fit(-5.0, [10.0]) == 0  # over budget: stop now


def test_plan_shortens_at_once_and_lengthens_only_with_slack():
    # done, planned, seconds left, cost of each epoch ahead (up to --epochs)
    assert plan_epochs(1, 20, 160.0, [12.0] * 19) == 14  # 13 more fit
    assert plan_epochs(2, 14, 150.0, [12.8] * 18) == 13  # 11.7 fit: shorten at once
    assert plan_epochs(3, 13, 139.0, [12.4] * 17) == 13  # 11.2 fit, 10.7 with half an epoch spare: keep
    assert plan_epochs(3, 13, 147.0, [12.0] * 17) == 14  # 12.25 fit, 11.75 with half an epoch spare
    assert plan_epochs(3, 13, 150.0, [12.0] * 17) == 15  # 12.5 fit, 12.0 with half an epoch spare
    assert plan_epochs(3, 13, 500.0, [12.0] * 11) == 14  # never past --epochs
    assert plan_epochs(5, 13, -3.0, [12.0] * 15) == 5  # over budget: stop now


def _lr_after(schedule_fn, steps: int) -> list[float]:
    """Each group's LR at optimizer step `steps` of a schedule stepped there one step at a time."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = build_optimizer("adamw", param_groups([(model[0], 1e-3), (model[1], 4e-3)], 0.01), 1e-3)
    sched = schedule_fn(opt)
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt, sched


@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) - LENGTH_FREE_SCHEDULES))
def test_retargeted_schedule_continues_like_one_built_for_the_new_length(name):
    # 4 steps per epoch, planned for 10 epochs, re-planned to 5 after 2 epochs: from step 8 on, the LRs must be those
    # of a schedule built for 5 epochs from the start (same warm-up), to its very end.
    args = dict(steps_per_epoch=4, warmup_epochs=1, min_lr_ratio=0.01)
    opt, sched = _lr_after(lambda o: build_schedule(name, o, 10, **args), 8)
    sched = retarget_schedule(sched, opt, name, 5, **args)
    ref_opt, ref = _lr_after(lambda o: build_schedule(name, o, 5, **args), 8)
    assert sched.steps == 8
    for _ in range(12):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
        opt.step(), sched.step(), ref_opt.step(), ref.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
    assert opt.param_groups[1]["lr"] < 4e-3 * 0.05  # annealed by the new end


@pytest.mark.parametrize("name", sorted(LENGTH_FREE_SCHEDULES))
def test_length_free_schedules_are_kept(name):
    opt, sched = _lr_after(lambda o: build_schedule(name, o, 10, steps_per_epoch=4), 8)
    assert retarget_schedule(sched, opt, name, 5, steps_per_epoch=4) is sched


@pytest.fixture
def fake_clock(monkeypatch):
    """Every epoch takes 10 s of a fake wall clock, step by step; nothing else takes time."""
    now = [0.0]
    real = fit_module.train_one_epoch

    def ten_seconds(model, loader, *args, stop=None, **kwargs):
        def tick(done: int) -> bool:
            now[0] += 10.0 / len(loader)
            return stop(done) if stop is not None else False

        return real(model, loader, *args, stop=tick, **kwargs)

    monkeypatch.setattr(fit_module, "clock", lambda: now[0])
    monkeypatch.setattr(fit_module, "train_one_epoch", ten_seconds)
    return now


def test_budget_ends_the_run_like_a_run_planned_that_long(digits_dir, tmp_path, fake_clock):
    # 35 s at 10 s per epoch: after epoch 1 three epochs fit, so the 10-epoch cosine is re-targeted to 3 epochs.
    # The warm-up (epoch 1) is the same in both plans, so the weights must equal a plain 3-epoch run's exactly.
    lines: list[str] = []
    summary = fit(tiny_config(digits_dir, tmp_path / "timed", epochs=10, time="35s"), log=lines.append)
    fit(tiny_config(digits_dir, tmp_path / "plain", epochs=3), log=lambda _: None)

    timed, plain = load_checkpoint(tmp_path / "timed" / "last.pt"), load_checkpoint(tmp_path / "plain" / "last.pt")
    assert timed["epoch"] == 3 and timed["planned_epochs"] == 3 and timed["elapsed_seconds"] == 30.0
    for key, value in plain["model"].items():
        assert torch.equal(value, timed["model"][key]), key
    assert summary["epochs_run"] == 3 and summary["epochs_planned"] == 3 and summary["time_budget_s"] == 35.0
    assert json.loads((tmp_path / "timed" / "summary.json").read_text())["epochs_planned"] == 3
    assert "time budget 35s" in lines[0]
    assert [line for line in lines if line.startswith("time budget")] == [
        "time budget 35s: 10 s used, 10.0 s for the next epoch; the run now ends after epoch 3"
    ]
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]


def test_budget_caps_at_epochs_and_spans_resume(digits_dir, tmp_path, fake_clock):
    # Plenty of time: --epochs still caps the run (no re-planning line).
    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "roomy", epochs=2, time="1h"), log=lines.append)
    assert not any(line.startswith("time budget") for line in lines)
    assert load_checkpoint(tmp_path / "roomy" / "last.pt")["planned_epochs"] == 2

    # Killed after epoch 2 of a 45 s budget (plan: 4 epochs), resumed: the plan and the 20 s already used come back,
    # so the resumed process stops at epoch 4 as the uninterrupted run does, with the same weights.
    full = fit(tiny_config(digits_dir, tmp_path / "full", epochs=10, time="45s"), log=lambda _: None)
    cut = tiny_config(digits_dir, tmp_path / "cut", epochs=10, time="45s")
    with pytest.raises(Killed):
        fit(cut, log=kill_after(2, 4))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["elapsed_seconds"] == 20.0
    fit(cut.merge({"resume": str(tmp_path / "cut")}), log=lambda _: None)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert full["epochs_run"] == 4 and a["epoch"] == b["epoch"] == 4 and b["elapsed_seconds"] == 40.0
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_larger_budget_on_resume_trains_on(digits_dir, tmp_path, fake_clock):
    # 35 s at 10 s an epoch ended the run after 3 epochs. Resumed with the same budget it is finished; with 65 s the
    # 30 s already used count, so 3 more epochs fit, planned from the start at the pace the checkpoint recorded.
    from resnetlab.engine.fit import RunFinished

    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=10, time="35s")
    fit(cfg, log=lambda _: None)
    resumed = cfg.merge({"resume": str(tmp_path / "run")})
    lines: list[str] = []
    fit(resumed, log=lines.append)
    assert lines == [
        f"{tmp_path / 'run'} already finished: last.pt holds its last epoch, 3; nothing to resume (the --time budget"
        " ended it; to train on, resume with a larger --time)"
    ]
    with pytest.raises(RunFinished):  # a new budget that is already spent: finished too
        fit_module.Trainer(resumed.merge({"time": "20s"}), fit_module.ddp.DistInfo(), lambda _: None)
    summary = fit(resumed.merge({"time": "65s"}), log=lines.append)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert summary["epochs_run"] == 6 and ckpt["epoch"] == 6 and ckpt["elapsed_seconds"] == 60.0
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["4/6", "5/6", "6/6"]


def test_a_larger_budget_on_resume_is_planned_at_the_runs_pace_from_the_start():
    # Planned at --epochs until the first resumed epoch was timed, an annealed run's LR went back up near its peak
    # for that epoch (6.8e-05 -> 1.8e-03 seen) before the plan shrank again.
    from resnetlab.engine.fit import planned_epochs

    ckpt = {"planned_epochs": 3, "epoch": 3, "elapsed_seconds": 30.0, "config": {"time": "35s"}, "metrics": {}}
    ckpt["metrics"]["seconds"] = 10.0
    cfg = tiny_config(None, None, epochs=10, time="65s")
    assert planned_epochs(cfg, ckpt) == 6  # 35 s left at 10 s an epoch
    assert planned_epochs(cfg.merge({"time": "32s"}), ckpt) == 4  # 2 s left: one epoch, which the budget cuts
    assert planned_epochs(cfg.merge({"time": "20s"}), ckpt) == 3  # spent: the epochs done
    assert planned_epochs(cfg.merge({"time": "35s"}), ckpt) == 3  # the same budget: the plan it made
    # An epoch the budget cut short: its row's seconds are the part that ran; the whole epoch's estimate is saved.
    cut = {**ckpt, "metrics": {"seconds": 3.4}, "epoch_pace_s": 16.0}
    assert planned_epochs(cfg.merge({"time": "75s"}), cut) == 5  # 45 s left at 16 s an epoch, not at 3.4 s


def test_staged_budget_prices_unfrozen_epochs_before_they_run(digits_dir, tmp_path, monkeypatch):
    # Head-only epochs take 10 s, unfrozen ones 30 s (UNFROZEN_COST times as long). A 100 s budget fits 2 head and 2
    # unfrozen epochs, and the plan must know it from epoch 1, before any unfrozen epoch ran: then the unfrozen phase's
    # schedule is built for its 2 epochs from its start, and the weights equal a plain 4-epoch staged run's.
    now, calls = [0.0], [0]
    real = fit_module.train_one_epoch

    def timed(model, loader, *args, stop=None, **kwargs):
        calls[0] += 1
        seconds = 10.0 if calls[0] <= 2 else 10.0 * UNFROZEN_COST

        def tick(done: int) -> bool:  # the epoch's time passes step by step, as the budget's pace sees it
            now[0] += seconds / len(loader)
            return stop(done) if stop is not None else False

        return real(model, loader, *args, stop=tick, **kwargs)

    monkeypatch.setattr(fit_module, "clock", lambda: now[0])
    monkeypatch.setattr(fit_module, "train_one_epoch", timed)
    staged = {"mode": "staged", "freeze_epochs": 2}
    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "timed", epochs=10, time="100s", **staged), log=lines.append)
    calls[0] = 0
    fit(tiny_config(digits_dir, tmp_path / "plain", epochs=4, **staged), log=lambda _: None)

    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/4", "2/4", "3/4", "4/4"]
    timed_ckpt, plain = load_checkpoint(tmp_path / "timed" / "last.pt"), load_checkpoint(tmp_path / "plain" / "last.pt")
    for key, value in plain["model"].items():
        assert torch.equal(value, timed_ckpt["model"][key]), key


def test_a_slow_first_epoch_does_not_shrink_the_plan_that_later_epochs_fit(digits_dir, tmp_path, monkeypatch):
    # The first epoch pays one-off costs: its first step takes 10 s here, the rest 10 s in all, as every later epoch.
    # Planned on its wall time (20 s) the 60 s budget fitted 3 epochs, the next epoch's 10 s grew the plan to 4 and
    # the LR, annealed for 3, rose again; its pace after the first step says 10 s (plus its validation, estimated),
    # so the plan is 4 from the start.
    now, calls = [0.0], [0]
    real = fit_module.train_one_epoch

    def timed(model, loader, *args, stop=None, **kwargs):
        calls[0] += 1

        def tick(done: int) -> bool:
            now[0] += (10.0 if calls[0] == 1 and done == 1 else 0.0) + 10.0 / len(loader)
            return stop(done) if stop is not None else False

        return real(model, loader, *args, stop=tick, **kwargs)

    monkeypatch.setattr(fit_module, "clock", lambda: now[0])
    monkeypatch.setattr(fit_module, "train_one_epoch", timed)
    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "run", epochs=10, time="60s"), log=lines.append)
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/4", "2/4", "3/4", "4/4"]
    lrs = [float(row["lr"]) for row in csv.DictReader(open(tmp_path / "run" / "history.csv"))]
    assert lrs == sorted(lrs, reverse=True)  # annealing, never rising


def test_cli_says_how_many_epochs_fit(digits_dir, tmp_path, fake_clock, capsys):
    from resnetlab.cli import main

    out = tmp_path / "cli"
    flags = ["--model", "resnet20", "--img-size", "16", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert main(["train", str(digits_dir), *flags, "--epochs", "10", "--time", "35s", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done in 30s (3 of 10 epochs fit the 35s budget): best val accuracy")


def _epoch_cut(steps: int, deadline: float, tail: float | None = 0.0, val_steps: int = 0, budget: float = 100.0):
    """An EpochCut over `steps` steps, a fake clock starting at 0, and the cuts it asked for."""
    from resnetlab.engine.budget import EpochCut
    from resnetlab.engine.distributed import DistInfo

    now, cuts = [0.0], []
    guard = EpochCut(
        steps, deadline, budget, tail, val_steps, cuts.append, DistInfo(), torch.device("cpu"), lambda: now[0]
    )
    return guard, now, cuts


def _run(guard, now, pace) -> int:
    """Steps taken before `guard` stops the epoch, each taking pace(step) seconds of the fake clock."""
    for step in range(1, guard.steps + 1):
        now[0] += pace(step)
        if guard(step):
            return step
    return guard.steps


def test_epoch_cut_ends_an_epoch_where_the_budget_runs_out():
    # 100 steps of 1 s against a deadline at 60 s: at step 3 the end is predicted at 100 s, so the epoch is to end
    # at step 60, and the schedule is told so once.
    guard, now, cuts = _epoch_cut(100, deadline=60.0)
    assert guard.checks == {3, 10, 25, 50, 75}
    assert _run(guard, now, lambda _: 1.0) == 60 and cuts == [60]


def test_epoch_cut_leaves_time_to_validate():
    # Validation not timed yet: 30 batches at a third of a 1 s step, 10 s, come off the deadline.
    guard, now, cuts = _epoch_cut(100, deadline=60.0, tail=None, val_steps=30)
    assert _run(guard, now, lambda _: 1.0) == 50 and cuts == [50]
    # Timed in an earlier epoch: that is used instead.
    guard, now, cuts = _epoch_cut(100, deadline=60.0, tail=4.0, val_steps=30)
    assert _run(guard, now, lambda _: 1.0) == 56


def test_epoch_cut_follows_the_pace_after_slow_first_steps():
    # The first 10 steps pay one-off costs (3 s each): the first estimates cut at step 20. There the pace since the
    # last check is 1 s a step, so the epoch runs on to where the 60 s really end, step 40.
    guard, now, cuts = _epoch_cut(100, deadline=60.0)
    assert _run(guard, now, lambda step: 3.0 if step <= 10 else 1.0) == 40 and cuts == [20, 40] and now[0] == 60.0


def test_epoch_cut_times_the_pace_from_the_end_of_the_first_step():
    # A 30 s first step (set-up, kernel selection) is spent, not a pace: from step 1 on a step takes 1 s, so the first
    # estimate already cuts where the 60 s end.
    guard, now, cuts = _epoch_cut(100, deadline=60.0)
    assert _run(guard, now, lambda step: 30.0 if step == 1 else 1.0) == 31 and cuts == [31] and now[0] == 60.0


def test_epoch_cut_is_lifted_when_the_whole_epoch_fits_after_all():
    # Three 10 s steps cut the epoch at step 14; from step 4 on a step takes 1 s, and at the step-10 check the whole
    # epoch fits: the cut is lifted.
    guard, now, cuts = _epoch_cut(100, deadline=140.0)
    assert _run(guard, now, lambda step: 10.0 if step <= 3 else 1.0) == 100 and cuts == [14, 100]


def test_epoch_cut_keeps_epochs_that_end_within_the_slack():
    # 100 s of steps, a deadline at 97 s: 3 s over, under 5% of the 100 s budget, so the epoch ends whole.
    guard, now, cuts = _epoch_cut(100, deadline=97.0)
    assert _run(guard, now, lambda _: 1.0) == 100 and cuts == []
    # An epoch under a tenth of the budget is never cut, however late: the plan between epochs keeps such epochs in
    # it (the demo's 9 steps of 1.3 s against its 3 minutes).
    guard, now, cuts = _epoch_cut(9, deadline=1.0, budget=180.0)
    assert guard.checks == {3, 4, 6} and _run(guard, now, lambda _: 1.3) == 9 and cuts == []
    # A few slow steps are cut: 15 steps of 2.8 s (ResNet-50 at batch 16 on this CPU) against 30 s.
    guard, now, cuts = _epoch_cut(15, deadline=30.0, budget=30.0)
    assert _run(guard, now, lambda _: 2.8) == 10 and cuts == [10]


def _steps_on_a_fake_clock(monkeypatch, seconds):
    """Each training step of `fit` takes seconds(n) of a fake clock, n counting steps across epochs from 1."""
    now, count = [0.0], [0]
    real = fit_module.train_one_epoch

    def timed_steps(model, loader, *args, **kwargs):
        def timed():
            for batch in loader:
                count[0] += 1
                now[0] += seconds(count[0])
                yield batch

        return real(model, timed(), *args, **kwargs)

    monkeypatch.setattr(fit_module, "clock", lambda: now[0])
    monkeypatch.setattr(fit_module, "train_one_epoch", timed_steps)
    return now


def test_a_lifted_cut_restores_the_planned_schedule(digits_dir, tmp_path, monkeypatch):
    # 19 steps an epoch; the first 3 take 10 s, every other 1 s, against 100 s for 2 epochs. The estimate at step 3
    # cuts epoch 1 at step 8; at the next check (step 4) the pace is 1 s and the cut is lifted. The schedule must be
    # the 2-epoch cosine again, not one that ends with epoch 1: epoch 1's last step then runs at about half the peak.
    _steps_on_a_fake_clock(monkeypatch, lambda n: 10.0 if n <= 3 else 1.0)
    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "run", epochs=2, batch_size=2, time="100s", warmup_epochs=0), lines.append)
    assert not any(line.startswith("time budget") for line in lines)  # neither cut nor re-planned
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    peak = ckpt["optimizer"]["param_groups"][0]["initial_lr"]
    assert ckpt["epoch"] == 2 and ckpt["scheduler"]["steps"] == 38
    assert 0.4 * peak < float(rows[0]["lr"]) < 0.6 * peak


def test_budget_shorter_than_one_epoch_ends_it_annealed(digits_dir, tmp_path, monkeypatch):
    # Batches of 2: 19 steps an epoch, each taking 1 s of a fake clock, against a 12 s budget. The first epoch is cut
    # at the step where the budget runs out, its cosine re-targeted to end there: the last step runs at the floor.
    _steps_on_a_fake_clock(monkeypatch, lambda _: 1.0)
    lines: list[str] = []
    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=5, batch_size=2, time="12s", warmup_epochs=0)
    summary = fit(cfg, log=lines.append)

    # At step 3 (3 s): 16 steps and 5 validation batches (1.7 s) to go end at 20.7 s, past 12 s: cut at step 10.
    assert [line for line in lines if line.startswith("time budget 12s:")] == [
        "time budget 12s: 10 s used; epoch 1 ended after 10 of its 19 steps, where the budget runs out, "
        "and the run ends with it"
    ]
    assert summary["epochs_run"] == 1 and summary["epochs_planned"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["planned_epochs"] == 1 and ckpt["scheduler"]["steps"] == 10
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(group["initial_lr"] * cfg.min_lr_ratio)  # annealed to the cosine's floor


def test_a_budget_far_below_one_epoch_says_what_would_do(digits_dir, tmp_path, monkeypatch):
    # 5 s against 19 steps of 1 s: cut at step 3, the first estimate. The log says what a whole epoch takes (19 steps
    # and 5 validation batches at a third of a step: 20.7 s) and a budget for a few epochs (3 x 20.7 s = 62 s).
    _steps_on_a_fake_clock(monkeypatch, lambda _: 1.0)
    lines: list[str] = []
    fit(tiny_config(digits_dir, tmp_path / "run", epochs=5, batch_size=2, time="5s"), log=lines.append)
    assert [line for line in lines if line.startswith("time budget 5s:")] == [
        "time budget 5s: 3 s used; epoch 1 ended after 3 of its 19 steps, where the budget runs out, and the run ends"
        " with it; a whole epoch takes about 30s here, so a model this far from one pass over its data is barely"
        " trained: give --time 70s or more for a few epochs"
    ]


def test_a_cut_epoch_resumed_with_more_time_ends_annealed_again(digits_dir, tmp_path, monkeypatch):
    # 12 s cut epoch 1 after 10 of its 19 steps. Resumed with 25 s, epoch 2 is cut after 13 steps: its cosine must
    # end at the phase's 23rd step, as taken, not at 19 + 13 (epoch 1 counted whole).
    _steps_on_a_fake_clock(monkeypatch, lambda _: 1.0)
    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=5, batch_size=2, time="12s", warmup_epochs=0)
    fit(cfg, log=lambda _: None)
    lines: list[str] = []
    fit(cfg.merge({"resume": str(tmp_path / "run"), "time": "25s"}), log=lines.append)
    assert "time budget 25s: 23 s used; epoch 2 ended after 13 of its 19 steps" in "\n".join(lines)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    group = ckpt["optimizer"]["param_groups"][0]
    assert ckpt["epoch"] == 2 and ckpt["scheduler"]["steps"] == 23
    assert group["lr"] == pytest.approx(group["initial_lr"] * cfg.min_lr_ratio)


def test_resumed_plan_follows_the_budget_it_was_made_with(digits_dir, tmp_path):
    from resnetlab.engine.fit import planned_epochs

    cfg = tiny_config(digits_dir, tmp_path, epochs=20, time="10m")
    made = {"config": {"time": "10m"}, "planned_epochs": 12, "epoch": 5, "elapsed_seconds": 300.0}
    assert planned_epochs(cfg, None) == 20  # a fresh run plans after its first epochs
    assert planned_epochs(cfg, made) == 12  # the same budget: the plan it made
    spent = {**made, "config": {"time": "4m"}, "elapsed_seconds": 700.0}
    assert planned_epochs(tiny_config(digits_dir, tmp_path, epochs=20, time="5m"), spent) == 5  # spent: what was done
    assert planned_epochs(cfg, {**made, "config": {"time": "4m"}}) == 20  # larger: planned afresh from --epochs
    assert planned_epochs(tiny_config(digits_dir, tmp_path, epochs=8, time="10m"), made) == 8  # never past --epochs
    assert planned_epochs(tiny_config(digits_dir, tmp_path, epochs=20), made) == 20  # no budget now


@pytest.mark.parametrize(
    ("seconds", "text"), [(20.7, "30s"), (62.0, "70s"), (95.0, "2m"), (3000.0, "50m"), (9000.0, "2.5h")]
)
def test_suggested_budgets_round_up_to_a_time_value(seconds, text):
    from resnetlab.config import parse_duration
    from resnetlab.engine.budget import as_time_value

    assert as_time_value(seconds) == text and parse_duration(text) >= seconds
