"""`resnetlab demo` (what `make demo` runs) goes end to end on the bundled sample and leaves every file it lists."""

from __future__ import annotations

import json

import pytest

from resnetlab.cli import main
from resnetlab.commands.demo import DEMO_DATA


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
