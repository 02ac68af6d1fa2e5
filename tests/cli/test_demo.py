"""`resnetlab demo` (what `make demo` runs) goes end to end on the bundled sample and leaves every file it lists."""

from __future__ import annotations

import json

import pytest

from resnetlab.cli import main
from resnetlab.commands.demo import DEMO_DATA, DEMO_RECIPE, FP32_CPU_EPOCHS, default_epochs


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    if not DEMO_DATA.is_dir():
        pytest.skip(f"{DEMO_DATA} missing")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "(missing)" not in text
    for name in ("best.pt", "history.csv", "curves.png", "eval.json", "confusion_matrix.png", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 144 and 0.0 <= report["top1"] <= 1.0  # the 20% held out of 720 photos
    assert (tmp_path / "demo-samples.png").stat().st_size > 0


@pytest.mark.parametrize(("native_bf16", "epochs"), [(True, DEMO_RECIPE["epochs"]), (False, FP32_CPU_EPOCHS)])
def test_demo_trains_fewer_epochs_where_the_cpu_trains_in_fp32(monkeypatch, native_bf16, epochs):
    import resnetlab.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native_bf16)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    assert default_epochs() == epochs
    assert FP32_CPU_EPOCHS < DEMO_RECIPE["epochs"]
