"""Model summary: MACs and parameter totals, the layer table, and the `models` / `summary` commands."""

from __future__ import annotations

import pytest
import torchvision

from resnetlab.cli import main
from resnetlab.models import create_model, list_models
from resnetlab.models.summary import build_for_summary, count_macs, count_params, human, summary
from resnetlab.models.weights import IMAGENET_WEIGHTS


@pytest.mark.parametrize(("name", "expected"), [("resnet50", 4.09e9), ("resnet18", 1.82e9)])
def test_macs_match_published(name, expected):
    macs = count_macs(build_for_summary(name), (3, 224, 224))
    assert abs(macs - expected) / expected < 0.01
    assert summary(build_for_summary(name), (3, 224, 224)).macs == macs


def test_macs_agree_with_torchvision_ops():
    """torchvision publishes GFLOPS (really GMACs) per weight; our count on our models matches to 3 digits."""
    for arch in IMAGENET_WEIGHTS:
        ops = torchvision.models.get_model_weights(arch).DEFAULT.meta["_ops"]
        macs = count_macs(build_for_summary(arch), (3, 224, 224))
        assert macs / 1e9 == pytest.approx(ops, abs=0.0015), arch


def test_meta_and_real_forward_agree():
    real = create_model("resnet18", num_classes=10)
    meta = build_for_summary("resnet18", num_classes=10)
    a, b = summary(real, (3, 64, 64)), summary(meta, (3, 64, 64))
    assert a.macs == b.macs > 0
    assert [(r.name, r.output_shape, r.params) for r in a.rows] == [(r.name, r.output_shape, r.params) for r in b.rows]


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "googlenet", "mobilenet_v2", "resnext50_32x4d"])
def test_param_totals(name):
    model = build_for_summary(name)
    model.get_classifier().requires_grad_(False)
    s = summary(model, model.default_cfg["input_size"])
    assert s.total_params == sum(p.numel() for p in model.parameters()) == count_params(model)
    assert s.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert s.non_trainable_params == sum(p.numel() for p in model.get_classifier().parameters()) > 0


def test_rows_shapes_and_depth():
    model = create_model("resnet18")
    model.train()
    s = summary(model, (3, 64, 64), model_name="resnet18")
    assert model.training  # restored after the eval-mode forward
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].output_shape == [(1, 64, 32, 32)] and rows["conv1"].type == "Conv2d"
    assert rows["layer4"].output_shape == [(1, 512, 2, 2)]
    assert rows["fc"].params == 512 * 1000 + 1000 and rows["fc"].macs == 512 * 1000
    assert rows["layer1"].params == sum(p.numel() for p in model.layer1.parameters())
    assert rows["layer1.0"].depth == 2 and rows["layer1.0.conv1"].depth == 3
    # Parents come before their children, in forward order.
    names = [r.name for r in s.rows]
    assert names.index("layer1") < names.index("layer1.0") < names.index("layer1.0.conv1") < names.index("layer2")

    shallow, default, deep = s.table(depth=1), str(s), s.table(depth=3)
    assert "layer1 (Sequential)" in shallow and "layer1.0 (BasicBlock)" not in shallow
    assert "layer1.0 (BasicBlock)" in default and "layer1.0.conv1" not in default
    assert "layer1.0.conv1 (Conv2d)" in deep
    assert f"Total params: {s.total_params:,}" in default


def test_googlenet_summary_in_eval_mode():
    s = summary(build_for_summary("googlenet"), (3, 224, 224))
    assert s.rows[-1].output_shape == [(1, 1000)]
    assert not any(r.name.startswith("aux") for r in s.rows)  # aux heads run only in training mode
    # ... but their parameters are in Total params, so the table says which modules hold the difference.
    top = sum(r.params for r in s.rows if r.depth == 1)
    assert [name for name, _ in s.not_run] == ["aux1", "aux2"] and top + sum(n for _, n in s.not_run) == s.total_params
    assert "Not run by an eval-mode forward (training only), counted below: aux1 (" in s.table()
    assert summary(build_for_summary("resnet18"), (3, 64, 64)).not_run == []


def test_human():
    assert human(4_089_184_256) == "4.09 G"
    assert human(300_774_272) == "300.77 M"
    assert human(512) == "512"


# ----------------------------------------------------------------------------------------------------- the CLI


def test_cli_summary(capsys):
    assert main(["summary", "resnet18"]) == 0
    out = capsys.readouterr().out
    model = create_model("resnet18")
    assert f"Total params: {count_params(model):,}" in out
    assert f"MACs per image: {human(count_macs(model, (3, 224, 224)))}" in out
    assert "layer1.0 (BasicBlock)" in out and "[1, 64, 112, 112]" in out
    assert "Input size: 3 x 224 x 224" in out


def test_cli_summary_options(capsys):
    assert main(["summary", "resnet50", "--img-size", "64", "--num-classes", "10", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    model = create_model("resnet50", num_classes=10)
    assert f"Total params: {count_params(model):,}" in out
    assert "[1, 10]" in out and "[1, 2048, 2, 2]" in out
    assert "layer1.0" not in out


def test_cli_models(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == list_models()
    row = next(line.split() for line in lines if line.startswith("resnet50 "))
    assert row[1:3] == [f"{count_params(create_model('resnet50')) / 1e6:.2f}", "M"]
    assert row[3:5] == ["4.09", "G"] and row[5] == "3x224x224" and row[6] == "IMAGENET1K_V2"
    cifar = next(line.split() for line in lines if line.startswith("resnet20 "))
    assert cifar[5] == "3x32x32" and cifar[6] == "-"


def test_cli_models_pattern(capsys):
    assert main(["models", "resnet5*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["resnet50", "resnet56"]


@pytest.mark.parametrize("argv", [["summary", "resnet5O"], ["models", "resnt50"]])
def test_cli_unknown_model(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "resnet50" in err and "Did you mean" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_no_match_and_bad_option(capsys):
    assert main(["models", "vit*"]) == 2
    assert "no model matches 'vit*'" in capsys.readouterr().err
    assert main(["summary", "resnet18", "--img-size", "0"]) == 2
    assert "--img-size 0" in capsys.readouterr().err
    assert main(["summary", "resnet18", "--depth", "0"]) == 2  # an empty table otherwise
    assert "--depth 0: must be at least 1" in capsys.readouterr().err


def test_summary_handles_meta_without_allocating():
    model = build_for_summary("wide_resnet101_2")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert summary(model, (3, 224, 224)).total_params == count_params(model)
