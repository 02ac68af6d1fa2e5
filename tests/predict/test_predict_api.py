"""The Python API: `resnetlab.load(run)` and `Classifier.predict / predict_paths` on a tiny trained run."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image, ImageOps

import resnetlab
from resnetlab.data.transforms import eval_transform_from_cfg
from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.errors import ResnetlabError
from resnetlab.predict import Classifier, load


@pytest.fixture(scope="module")
def clf(tiny_run) -> Classifier:
    return resnetlab.load(tiny_run)


def test_load_run_folder_and_checkpoint_file(tiny_run, clf):
    assert isinstance(clf, Classifier)
    assert clf.classes == ["cardboard", "glass", "metal"]
    assert not clf.model.training
    assert clf.default_cfg["input_size"][-1] == 32
    assert clf.source == tiny_run / "best.pt"
    image = Image.new("RGB", (64, 48), "white")
    assert clf.transform(image).shape == (3, 32, 32)
    same = load(tiny_run / "best.pt")
    assert same.classes == clf.classes
    assert repr(clf).startswith("Classifier(resnet20, 3 classes")
    assert resnetlab.load(tiny_run, amp="off").precision.amp_dtype is None  # fp32 from the top-level API too


def test_predict_shapes_and_scores(clf, tiny_data):
    paths = sorted((tiny_data / "glass").glob("*.jpg"))[:3]
    out = clf.predict(paths, topk=3)
    assert len(out) == 3
    for preds in out:
        assert [p["label"] for p in preds] != []
        assert sorted(p["label"] for p in preds) == clf.classes  # top-3 of 3 classes: each once
        scores = [p["score"] for p in preds]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
    single = clf.predict(paths[0], topk=1)
    assert len(single) == 1 and len(single[0]) == 1
    assert clf.predict(paths[0], topk=99)[0][0]["label"] == single[0][0]["label"]  # topk capped at #classes


def test_pil_images_and_paths_agree(clf, tiny_data):
    path = sorted((tiny_data / "metal").glob("*.jpg"))[0]
    from_path = clf.predict(path, topk=3)
    from_pil = clf.predict(Image.open(path), topk=3)
    assert from_pil == from_path
    grey = clf.predict(Image.open(path).convert("L"))  # any mode is converted to RGB
    assert len(grey[0]) == 3


def test_deterministic(clf, tiny_data):
    paths = sorted(tiny_data.rglob("*.jpg"))
    assert clf.predict(paths, topk=3, batch_size=5) == clf.predict(paths, topk=3, batch_size=5)
    assert clf.predict_paths(paths, topk=2) == clf.predict_paths(paths, topk=2)


def test_matches_an_independent_forward_pass(tiny_run, tiny_data):
    """fp32 predictions equal the model run by hand with the checkpoint's preprocessing."""
    ckpt = load_checkpoint(tiny_run)
    model = model_from_checkpoint(ckpt).eval()
    transform = eval_transform_from_cfg(ckpt["default_cfg"])
    paths = sorted(tiny_data.rglob("*.jpg"))[:10]
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])), 1)
    clf = load(tiny_run, amp="off")
    for preds, row in zip(clf.predict(paths, topk=1), probs):
        assert preds[0]["label"] == ckpt["classes"][int(row.argmax())]
        assert preds[0]["score"] == pytest.approx(float(row.max()), abs=1e-4)


def test_tta_averages_the_flip(tiny_run, tiny_data):
    clf = load(tiny_run, amp="off")
    path = sorted((tiny_data / "cardboard").glob("*.jpg"))[0]
    image = Image.open(path).convert("RGB")
    mirrored = ImageOps.mirror(image)
    k = len(clf.classes)

    def probs(preds: list[dict]) -> dict[str, float]:
        return {p["label"]: p["score"] for p in preds}

    plain, flipped = probs(clf.predict(image, topk=k)[0]), probs(clf.predict(mirrored, topk=k)[0])
    tta = probs(clf.predict(image, topk=k, tta=True)[0])
    for label in clf.classes:
        assert tta[label] == pytest.approx((plain[label] + flipped[label]) / 2, abs=1e-4)
    # Flip-TTA is symmetric: the mirrored photo gets the same answer.
    tta_mirrored = probs(clf.predict(mirrored, topk=k, tta=True)[0])
    assert tta_mirrored == pytest.approx(tta, abs=1e-4)
    assert max(abs(tta[label] - plain[label]) for label in clf.classes) > 1e-6  # the flip changed something


def test_predict_paths_reports_bad_files_and_predicts_the_rest(clf, mixed_inputs):
    paths = [mixed_inputs["good"][0], *mixed_inputs["bad"], *mixed_inputs["good"][1:]]
    results = clf.predict_paths(paths, topk=2, batch_size=2)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    reasons = {r["path"]: r.get("error") for r in results}
    for bad in mixed_inputs["bad"]:
        assert reasons[str(bad)], f"{bad} should have an error"
    assert "0 bytes" in reasons[str(mixed_inputs["bad"][1])]
    good = [r for r in results if "predictions" in r]
    assert len(good) == 3 and all(len(r["predictions"]) == 2 for r in good)
    # The good files' predictions do not depend on bad neighbours in the batch.
    alone = clf.predict_paths(mixed_inputs["good"], topk=2, batch_size=2)
    assert [r["predictions"][0]["label"] for r in alone] == [r["predictions"][0]["label"] for r in good]


def test_predict_raises_for_an_unreadable_file(clf, mixed_inputs):
    bad = mixed_inputs["bad"][0]
    with pytest.raises(ResnetlabError, match="truncated"):
        clf.predict([mixed_inputs["good"][0], bad])


def test_load_errors(tmp_path):
    with pytest.raises(ResnetlabError, match="no such"):
        load(tmp_path / "missing_run")
    with pytest.raises(ResnetlabError, match="no such ONNX file"):
        load(tmp_path / "model.onnx")
    torch.save({"fc.weight": torch.zeros(2, 4)}, tmp_path / "plain.pth")  # weights alone: a start for training
    with pytest.raises(ResnetlabError, match=r"not a resnetlab checkpoint .*: resnetlab train DIR --model ARCH --pre"):
        load(tmp_path / "plain.pth")
    if importlib.util.find_spec("resnetlab.onnx_runtime") is None:
        (tmp_path / "model.onnx").write_bytes(b"not really onnx")
        with pytest.raises(ResnetlabError, match="ONNX"):
            load(tmp_path / "model.onnx")


def test_arrays_tensors_and_folders_predict_like_the_images_they_hold(clf, tiny_data):
    import numpy as np
    from torchvision.transforms.functional import pil_to_tensor

    path = sorted((tiny_data / "glass").glob("*.jpg"))[0]
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    expected = clf.predict(image, topk=3)[0]
    array = np.asarray(image)  # (H, W, 3) uint8, as PIL and OpenCV users hold photos
    tensor = pil_to_tensor(image)  # (3, H, W) uint8
    for given in (array, array.astype(np.float32) / 255, tensor, tensor.float() / 255):
        got = clf.predict(given, topk=3)
        assert len(got) == 1 and [p["label"] for p in got[0]] == [p["label"] for p in expected]
    assert len(clf.predict(np.stack([array, array]))) == 2  # (N, H, W, C): a batch
    assert len(clf.predict(tensor[None].repeat(3, 1, 1, 1))) == 3
    folder = clf.predict(tiny_data / "glass")  # a folder: its images, sorted, as `resnetlab predict DIR` reads it
    assert len(folder) == len(list((tiny_data / "glass").glob("*.jpg")))
    with pytest.raises(ResnetlabError, match="cannot predict a dict: pass image paths"):
        clf.predict([{"x": 1}])
    with pytest.raises(ResnetlabError, match="topk 0: must be a whole number of at least 1"):
        clf.predict(image, topk=0)
    with pytest.raises(ResnetlabError, match="topk '3'"):
        clf.predict(image, topk="3")
    # Floats outside 0..1 were clamped without a word: a 0..255 float photo read as white, a normalised tensor as
    # confident nonsense.
    with pytest.raises(ResnetlabError, match=r"values up to \d+: floats are read as 0..1"):
        clf.predict(array.astype(np.float32))
    with pytest.raises(ResnetlabError, match="not a normalised tensor"):
        clf.predict(clf.preprocess(path) if hasattr(clf, "preprocess") else tensor.float() / 255 - 0.5)
    wrongs = [(5, "cannot predict a int"), (None, "cannot predict a NoneType"), ({"a": 1}, "a dict")]
    wrongs += [(path.read_bytes(), "PIL.Image.open"), (np.zeros(10, np.uint8), "expected 2-D, 3-D")]
    for wrong, message in wrongs:
        with pytest.raises(ResnetlabError, match=message):
            clf.predict(wrong)
    with pytest.raises(ResnetlabError, match=r"\(H, W, C\)"):
        clf.predict(array.transpose(2, 0, 1).copy())  # a CHW numpy array
    assert len(clf.predict_paths(str(path))) == 1  # one path, not its characters
