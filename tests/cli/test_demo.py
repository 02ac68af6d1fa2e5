"""`resnetlab demo` (what `make demo` runs) goes end to end on the bundled sample and leaves every file it lists."""

from __future__ import annotations

import argparse
import json

import pytest

from resnetlab.cli import main
from resnetlab.commands.demo import DEMO_DATA, register, run


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
    assert (out / ".resnetlab-demo").is_file()  # what lets the next demo replace the folder


@pytest.mark.parametrize(
    ("flags", "expected"), [([], ["--epochs=20", "--time=3m"]), (["--time", "90s"], ["--time=90s"])]
)
def test_demo_trains_within_a_time_budget(monkeypatch, tmp_path, flags, expected):
    # The demo's train step gets a wall-clock budget so a CPU without native bf16 (fp32, ~6x slower) still finishes
    # within 5 minutes: the recorded train command must carry it. A failing train step ends the demo there.
    import resnetlab.cli

    calls: list[list[str]] = []

    def record(argv: list[str]) -> int:
        calls.append(argv)
        return 1 if argv[0] == "train" else 0

    monkeypatch.setattr(resnetlab.cli, "main", record)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--data", str(DEMO_DATA), "--out", str(tmp_path / "demo"), *flags])
    assert run(args) == 1
    train = next(argv for argv in calls if argv[0] == "train")
    assert set(expected) <= set(train) and "--model=resnet18" in train


def test_demo_replaces_only_an_earlier_run(tmp_path, capsys):
    # `--out precious` deleted whatever was there; and `--out` above the data deleted the data before reading it.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    (precious / "config.yaml").write_text("lr: 1\n")  # not a run for all that
    assert main(["demo", "--out", str(precious), "--epochs", "1"]) == 2
    assert "exists and is not an earlier demo's run folder" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "years of work"
    link = tmp_path / "link"
    link.symlink_to(precious)
    assert main(["demo", "--out", str(link), "--epochs", "1"]) == 2
    assert "not an earlier demo's run folder" in capsys.readouterr().err
    data = tmp_path / "photos"
    (data / "a").mkdir(parents=True)
    for out in (data, tmp_path):
        assert main(["demo", "--data", str(data), "--out", str(out)]) == 2
        assert "holds the data" in capsys.readouterr().err
    assert (data / "a").is_dir()
