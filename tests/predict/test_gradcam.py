"""Grad-CAM: every registered model, the tiny trained run, crop alignment, and `resnetlab explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.transforms import eval_transform_from_cfg
from resnetlab.explain import crop_box, explain, grad_cam, target_layer
from resnetlab.models import create_model, list_models
from resnetlab.predict import load


@pytest.mark.parametrize("name", list_models())
def test_grad_cam_works_for_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    side = 32 if model.default_cfg["input_size"][-1] <= 32 else 64  # CIFAR models at 32 px, the rest at 64
    x = torch.randn(1, 3, side, side)
    feature_map = {}

    def record_shape(module, inputs, output) -> None:
        feature_map["shape"] = output.shape

    handle = target_layer(model).register_forward_hook(record_shape)
    with torch.no_grad():
        model(x)
    handle.remove()
    cam, index, probs = grad_cam(model, x)
    assert cam.shape == feature_map["shape"][-2:]
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert float(probs[index]) == pytest.approx(float(probs.max())) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    cam2, index2, _ = grad_cam(model, x, class_index=3)
    assert index2 == 3 and cam2.shape == cam.shape
    assert not target_layer(model)._forward_hooks  # hooks removed
    assert not model.training and all(p.grad is None for p in model.parameters())  # weights untouched


def test_explain_on_the_trained_run(tiny_run, shared):
    clf = load(tiny_run)  # the default precision (bf16 autocast on this CPU); Grad-CAM's own pass is fp32
    photo = shared / "datasets" / "trashnet" / "glass" / "glass1.jpg"  # 384x288, larger than the 32 px input
    result = explain(clf, photo)
    with Image.open(photo) as im:
        assert result.heatmap.shape == (im.height, im.width)
    assert result.heatmap.std() > 0.01 and 0.9 < result.heatmap.max() <= 1.0
    assert result.label == clf.predict(photo, topk=1)[0][0]["label"]
    assert result.score == clf.predict(photo, topk=1)[0][0]["score"]  # the very number `predict` reports
    # Outside the centre crop the model never looked: no heat there.
    left, top, right, bottom = result.crop
    assert result.heatmap[:, : int(left) - 1].max() == 0 and result.heatmap[:, int(right) + 1 :].max() == 0
    forced = explain(clf, photo, class_name="cardboard")
    assert forced.label == "cardboard" and forced.class_index == 0


def test_crop_box_matches_the_eval_transform():
    """Paint x and y coordinates into an image; the transformed corners must read back the crop box."""
    width, height = 300, 200
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    image = Image.fromarray(np.stack([xs * 255 // width, ys * 255 // height, xs * 0], -1).astype(np.uint8))
    cfg = {"input_size": (3, 40, 40), "mean": (0, 0, 0), "std": (1, 1, 1), "crop_pct": 0.8}
    out = eval_transform_from_cfg(cfg)(image) * 255  # (3, 40, 40) un-normalised
    left, top, right, bottom = crop_box(width, height, cfg)
    assert float(out[0, :, 0].mean()) == pytest.approx(left * 255 / width, abs=255 * 4 / width)
    assert float(out[0, :, -1].mean()) == pytest.approx(right * 255 / width, abs=255 * 4 / width)
    assert float(out[1, 0, :].mean()) == pytest.approx(top * 255 / height, abs=255 * 4 / height)
    assert float(out[1, -1, :].mean()) == pytest.approx(bottom * 255 / height, abs=255 * 4 / height)


def test_explain_command(capsys, tiny_run, tiny_data, tmp_path, monkeypatch):
    image = sorted((tiny_data / "metal").glob("*.jpg"))[0]
    out = tmp_path / "cam.png"
    assert main(["explain", str(tiny_run), str(image), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    best = load(tiny_run).predict(image, topk=1)[0][0]
    assert f"{best['label']} ({best['score']:.3f}); Grad-CAM written" in printed  # the score `predict` prints
    with Image.open(out) as im:
        assert im.width > 300 and len(np.unique(np.asarray(im.convert("L")))) > 50
    assert main(["explain", str(tiny_run), str(image), "--out", str(out), "--class", "bottle"]) == 2
    assert "['cardboard', 'glass', 'metal']" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # without --out: <image>-gradcam.png in the current folder
    assert main(["explain", str(tiny_run), str(image)]) == 0
    assert (
        f"written to {image.stem}-gradcam.png" in capsys.readouterr().out
        and (tmp_path / f"{image.stem}-gradcam.png").is_file()
    )
    broken = tmp_path / "broken.jpg"
    broken.write_text("no image here")
    assert main(["explain", str(tiny_run), str(broken), "--out", str(out)]) == 2
    assert "broken.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(10, 2000), (3000, 10)])
def test_extreme_aspect_ratios_give_a_usable_picture(capsys, tiny_run, tmp_path, size):
    # A 10x2000 strip drew a 990x95,541 px picture, a 3000x10 one panels 2 px tall.
    image = tmp_path / "strip.png"
    Image.new("RGB", size, (90, 140, 200)).save(image)
    out = tmp_path / "cam.png"
    assert main(["explain", str(tiny_run), str(image), "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.height <= 1700 and picture.height >= 150, picture.size
