"""`resnetlab experiment degradation`: tiny real runs through the normal engine, the files, resume and reuse."""

from __future__ import annotations

import json
import math
import re
import tarfile

import pytest
import torch
import yaml
from PIL import Image

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.experiments import degradation as deg

FAST = ["--img-size", "16", "--batch-size", "8", "--workers", "0", "--device", "cpu"]


def _run_cli(data, out, depths: str, capsys) -> tuple[dict, str]:
    args = ["experiment", "degradation", str(data), "--depths", depths, "--epochs", "1", "--out", str(out)]
    assert main(args + FAST) == 0
    return json.loads((out / "degradation.json").read_text()), capsys.readouterr().out


def test_cli_trains_plain_and_residual_and_writes_plot_json_and_table(digit_folder, tmp_path, capsys):
    out = tmp_path / "exp"
    record, printed = _run_cli(digit_folder, out, "20", capsys)
    for name in ("plain20", "resnet20"):
        run = out / name
        for f in ("config.yaml", "history.csv", "last.pt", "best.pt", "summary.json"):
            assert (run / f).is_file(), f"{name}/{f}"
    assert record["depths"] == [20] and record["epochs"] == 1 and record["img_size"] == 16
    assert set(record["models"]) == {"plain20", "resnet20"}
    # One recipe for every model: each run's saved config differs from the shared one only in model and run folder.
    for name, model in record["models"].items():
        saved = yaml.safe_load((out / name / "config.yaml").read_text())
        assert saved["model"] == name and model["residual"] == name.startswith("resnet")
        assert {k: saved[k] for k in record["config"]} == record["config"]
        assert record["config"]["opt"] == "sgd" and record["config"]["wd"] == 1e-4
        assert 0.0 <= model["final_train_err"] <= 1.0 and 0.0 <= model["final_val_err"] <= 1.0
        assert model["epochs"] == 1 and model["curve"]["epoch"] == [1]
        history = (out / name / "history.csv").read_text().splitlines()
        header, first = history[0].split(","), history[1].split(",")
        train_acc = float(first[header.index("train_acc")])
        assert math.isclose(model["final_train_err"], 1 - train_acc)  # training error is the engine's train_acc
    assert "augmented" in record["train_error_note"]
    with Image.open(out / "degradation.png") as im:
        assert im.size[0] >= 800 and im.size[0] > 2 * im.size[1]  # two panels side by side
    assert "plain train err" in printed and "resnet train err" in printed
    assert "degradation: not tested (one depth only" in printed


def test_two_depths_give_a_verdict(digit_folder, tmp_path, capsys):
    out = tmp_path / "exp"
    record, printed = _run_cli(digit_folder, out, "20,32", capsys)
    for name in ("plain20", "resnet20", "plain32", "resnet32"):
        run = out / name
        for f in ("config.yaml", "history.csv", "last.pt", "best.pt", "summary.json"):
            assert (run / f).is_file(), f"{name}/{f}"
    v = record["verdict"]
    assert v["shallow"] == 20 and v["deep"] == 32 and isinstance(v["appeared"], bool)
    expected = (v["plain_train_err_delta"] > v["margin"]) and (v["resnet_train_err_delta"] <= v["margin"])
    assert v["appeared"] == expected
    assert ("degradation APPEARED" in printed) == v["appeared"]
    for d in ("20", "32"):
        assert any(line.split()[0] == d for line in printed.splitlines() if line.strip())


def test_rerun_reuses_finished_runs_and_resumes_interrupted_ones(digit_folder, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    kw = dict(depths=[20], epochs=2, img_size=16, out=out, overrides={"batch_size": 8, "workers": 0})

    class Stop(Exception):
        pass

    def interrupting_log(msg: str) -> None:
        if re.match(r"\[resnet20\] epoch\s+1/2", msg):
            raise Stop  # killed after resnet20's first epoch was saved

    with pytest.raises(Stop):
        deg.run_degradation(str(digit_folder), log=interrupting_log, **kw)
    assert (out / "plain20" / "summary.json").is_file()
    assert not (out / "resnet20" / "summary.json").exists() and (out / "resnet20" / "last.pt").is_file()

    plain_mtime = (out / "plain20" / "last.pt").stat().st_mtime_ns
    lines: list[str] = []
    record = deg.run_degradation(str(digit_folder), log=lines.append, **kw)
    assert (out / "plain20" / "last.pt").stat().st_mtime_ns == plain_mtime  # not retrained
    assert record["models"]["plain20"]["reused"] and not record["models"]["resnet20"]["reused"]
    assert any("resuming after epoch 1" in line for line in lines)
    assert record["models"]["resnet20"]["curve"]["epoch"] == [1, 2]
    assert record["verdict"]["appeared"] is None  # one depth: nothing to compare

    # Other settings in the same folder would mix recipes: refused with a clear message.
    with pytest.raises(ResnetlabError, match="other settings \\(epochs"):
        deg.run_degradation(str(digit_folder), log=lines.append, **{**kw, "epochs": 3})
    # The same data given as a relative path (the README's example) is the same experiment: reused.
    monkeypatch.chdir(digit_folder.parent)
    again = deg.run_degradation(digit_folder.name, log=lines.append, **kw)
    assert again["models"]["plain20"]["reused"] and again["models"]["resnet20"]["reused"]


def test_verdict_and_table_on_paper_like_numbers(tmp_path):
    def result(kind, depth, train, val):
        return deg.ModelResult(f"{kind}{depth}", depth, kind == "resnet", tmp_path, [1, 2], train, val)

    results = {
        "plain20": result("plain", 20, [0.5, 0.10], [0.5, 0.15]),
        "plain56": result("plain", 56, [0.6, 0.20], [0.6, 0.25]),
        "resnet20": result("resnet", 20, [0.5, 0.09], [0.5, 0.13]),
        "resnet56": result("resnet", 56, [0.5, 0.05], [0.5, 0.11]),
    }
    v = deg.verdict(results, [20, 56])
    assert v["appeared"] and v["plain_train_err_delta"] == pytest.approx(0.10)
    table = deg.format_table(results, [20, 56], v)
    assert "20.0%" in table and "5.0%" in table and "APPEARED" in table
    results["resnet56"].train_err[-1] = 0.15  # the deeper ResNet also trains worse: no clean degradation story
    assert deg.verdict(results, [20, 56])["appeared"] is False
    # On 25 training images one image is 4 points: a 10-point gap (2.5 images) is within the 3-image noise margin.
    results["resnet56"].train_err[-1] = 0.05
    for r in results.values():
        r.images_per_epoch = 25
    small = deg.verdict(results, [20, 56])
    assert small["margin"] == pytest.approx(0.12) and small["appeared"] is False


def test_bad_depths_and_data_are_clear_errors(tmp_path):
    with pytest.raises(ResnetlabError, match="choose from 20, 32, 44, 56, 110"):
        deg.parse_depths("20,50")
    with pytest.raises(ResnetlabError, match="comma-separated integers"):
        deg.parse_depths("twenty")
    assert deg.parse_depths("56,20") == [20, 56]
    assert main(["experiment", "degradation", str(tmp_path / "nope"), "--epochs", "1"]) == 2


def test_cifar10_name_trains_on_train_and_plots_test_error(cifar_tarball, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    with tarfile.open(cifar_tarball[0]) as tar:
        tar.extractall(tmp_path / "cache" / "cifar10", filter="data")
    out = tmp_path / "exp"
    record = deg.run_degradation(
        "cifar10", depths=[20], epochs=1, img_size=32, out=out,
        overrides={"batch_size": 25, "workers": 0}, log=lambda _m: None,
    )  # fmt: skip
    images = tmp_path / "cache" / "cifar10" / "images"
    assert record["dataset"] == "cifar10"
    assert record["data"] == str(images / "train") and record["val_dir"] == str(images / "test")
    summary = json.loads((out / "resnet20" / "summary.json").read_text())
    assert summary["epochs_run"] == 1
    ckpt_data = torch.load(out / "resnet20" / "last.pt", weights_only=True)["data"]
    assert ckpt_data["counts"]["train"] == 100 and ckpt_data["counts"]["val"] == 20  # all train, official test
