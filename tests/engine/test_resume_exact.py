"""`--resume` continues exactly: 3 epochs == 2 epochs, a kill, and a resumed third epoch (same final weights)."""

from __future__ import annotations

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint
from resnetlab.engine.fit import fit
from tests.engine.conftest import Killed, kill_after, tiny_config


@pytest.mark.parametrize("ema", [0.0, 0.99])
def test_resume_reaches_same_weights(digits_dir, tmp_path, ema):
    # Random crops, flips, dropout and mixup are all on, so every random stream must replay. Staged mode with one
    # head-only epoch makes the resume land mid-phase: optimizer and schedule state must come back too. With EMA,
    # both the average ("model") and the trained weights ("train_model") must come back.
    overrides = {"mode": "staged", "freeze_epochs": 1, "dropout": 0.2, "mixup": 0.4, "ema": ema}
    full = tiny_config(digits_dir, tmp_path / "full", epochs=3, **overrides)
    fit(full, log=lambda _: None)

    cut = tiny_config(digits_dir, tmp_path / "cut", epochs=3, **overrides)
    with pytest.raises(Killed):
        fit(cut, log=kill_after(2, 3))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    fit(cut.merge({"resume": str(tmp_path / "cut")}), log=lambda _: None)

    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert b["epoch"] == 3
    for part in ("model", "train_model") if ema else ("model",):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    if ema:
        assert a["ema"] == b["ema"] and a["ema"]["updates"] > 0
        assert any(not torch.equal(v, a["train_model"][k]) for k, v in a["model"].items() if v.is_floating_point())
    assert a["metrics"]["val_acc"] == b["metrics"]["val_acc"]
    assert (tmp_path / "cut" / "history.csv").read_text().count("\n") == 4  # header + 3 epochs, no duplicates
