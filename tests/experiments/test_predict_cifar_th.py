"""`resnetlab predict FILE.th` reads akamaster's CIFAR-10 files directly, same as their converted checkpoint."""

from __future__ import annotations

import json

import pytest

import resnetlab
from resnetlab.cli import main
from resnetlab.data.cifar10 import checkpoint_from_cifar_weights


def test_th_file_predicts_like_its_converted_checkpoint(shared, tmp_path, capsys):
    weights = sorted((shared / "weights" / "cifar10-resnet").glob("resnet20-*.th"))
    if not weights:
        pytest.skip("no CIFAR-10 ResNet-20 file in shared/weights")
    cat = shared / "images" / "chelsea.png"
    direct = resnetlab.load(weights[0], device="cpu").predict([cat], topk=3)[0]
    converted = resnetlab.load(checkpoint_from_cifar_weights(weights[0], tmp_path / "r20.pt"), device="cpu")
    assert [p["label"] for p in direct] == [p["label"] for p in converted.predict([cat], topk=3)[0]]
    assert direct[0]["label"] == "cat"

    assert main(["predict", str(weights[0]), str(cat), "--json", "--topk", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["predictions"][0]["label"] == "cat"


def test_th_file_exports_as_predict_reads_it(shared, tmp_path, capsys):
    weights = sorted((shared / "weights" / "cifar10-resnet").glob("resnet20-*.th"))
    if not weights:
        pytest.skip("no CIFAR-10 ResNet-20 file in shared/weights")
    cat = shared / "images" / "chelsea.png"
    out = tmp_path / "r20.torchscript.pt"
    assert main(["export", str(weights[0]), "--out", str(out), "--check-images", str(cat)]) == 0
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["arch"] == "resnet20" and sidecar["classes"][3] == "cat" and sidecar["parity"]["top1_agree"] == 1
