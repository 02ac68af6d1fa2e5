"""`resnetlab eval`: numbers agree with a hand count over independently computed predictions; plots; refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.folder import DatasetSplits
from resnetlab.data.transforms import eval_transform_from_cfg
from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.engine.precision import inference_mode, resolve_precision


def hand_predictions(run: Path, samples: list[tuple[Path, int]]) -> tuple[list[int], list[int], float]:
    """Predicted labels, true labels and mean NLL, computed without resnetlab.predict (fp32, one image at a time)."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).eval()
    transform = eval_transform_from_cfg(ckpt["default_cfg"])
    preds, nll = [], 0.0
    precision = resolve_precision("cpu", amp="off")
    with inference_mode(precision):
        for path, label in samples:
            logits = model(transform(Image.open(path).convert("RGB"))[None])[0]
            preds.append(int(logits.argmax()))
            nll -= float(torch.log_softmax(logits, 0)[label])
    return preds, [label for _, label in samples], nll / len(samples)


def check_against_hand_count(report: dict, preds: list[int], labels: list[int], loss: float) -> None:
    k = len(report["classes"])
    assert report["num_samples"] == len(labels)
    assert report["top1"] == pytest.approx(sum(p == t for p, t in zip(preds, labels)) / len(labels))
    assert report["loss"] == pytest.approx(loss, abs=1e-4)
    cm = [[sum(1 for p, t in zip(preds, labels) if t == i and p == j) for j in range(k)] for i in range(k)]
    assert report["confusion_matrix"] == cm
    for i, row in enumerate(report["per_class"]):
        support = sum(t == i for t in labels)
        predicted = sum(p == i for p in preds)
        hits = cm[i][i]
        assert row["support"] == support
        assert row["recall"] == pytest.approx(hits / support if support else 0.0)
        assert row["precision"] == pytest.approx(hits / predicted if predicted else 0.0)
    assert report["macro"]["recall"] == pytest.approx(sum(r["recall"] for r in report["per_class"]) / k)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as im:
        assert im.width > 200 and len(np.unique(np.asarray(im.convert("L")))) > 10


def test_eval_default_split_agrees_with_hand_count(capsys, tiny_run, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_run), "--amp", "off", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    splits = DatasetSplits.from_record(load_checkpoint(tiny_run)["data"])
    assert len(splits.val) == report["num_samples"] > 0
    preds, truth, nll = hand_predictions(tiny_run, splits.val)
    check_against_hand_count(report, preds, truth, nll)
    # Every wrong prediction, most confident first, with both classes named.
    wrong = {
        str(p): (report["classes"][t], report["classes"][q]) for (p, _), q, t in zip(splits.val, preds, truth) if q != t
    }
    listed = report["mistakes"]
    assert wrong, "the tiny model makes mistakes, so the list is tested"
    assert {m["path"]: (m["label"], m["predicted"]) for m in listed} == wrong and len(listed) == len(wrong)
    assert [m["score"] for m in listed] == sorted((m["score"] for m in listed), reverse=True)
    assert all(m["score"] >= m["label_score"] for m in listed)
    assert report["top5"] is None  # 3 classes
    for name in ("cardboard", "glass", "metal", "macro avg", "weighted avg", "top-1"):
        assert name in printed
    assert "top-5" not in printed
    assert_png(out / "confusion_matrix.png")
    assert_png(out / "mistakes.png")


def test_eval_writes_into_the_run_folder_by_default(capsys, tiny_run, tmp_path):
    run = tmp_path / "run_copy"
    shutil.copytree(tiny_run, run)
    assert main(["eval", str(run / "best.pt")]) == 0
    for name in ("eval.json", "confusion_matrix.png", "mistakes.png"):
        assert (run / name).is_file()
    report = json.loads((run / "eval.json").read_text())
    assert report["precision"] and report["split"] == "val"
    assert math.isfinite(report["loss"])


def test_eval_on_another_folder_with_the_same_classes(capsys, tiny_run, tiny_data, tmp_path):
    # Any folder of class sub-folders with the model's classes works; every image in it is evaluated.
    out = tmp_path / "eval_all"
    assert main(["eval", str(tiny_run), str(tiny_data), "--amp", "off", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    samples = [(p, i) for i, name in enumerate(report["classes"]) for p in sorted((tiny_data / name).glob("*.jpg"))]
    assert report["num_samples"] == len(samples) == 36 and report["split"] is None
    check_against_hand_count(report, *hand_predictions(tiny_run, samples))


def test_an_image_that_fails_to_decode_is_left_out_and_named_once(capsys, tiny_run, tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    png = root / "glass" / "broken.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(png)
    data = bytearray(png.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 12] = b"\x00" * 12  # a valid header, damaged pixel data: only a full decode fails
    png.write_bytes(bytes(data))
    assert main(["eval", str(tiny_run), str(root), "--amp", "off", "--out", str(tmp_path / "e")]) == 0
    captured = capsys.readouterr()
    assert "36 of the 37 images evaluated (1 unreadable, left out)" in captured.out
    line = next(line for line in captured.err.splitlines() if "broken.png" in line)
    assert line.count("broken.png") == 1
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["num_samples"] == 36 and report["failed"][0]["path"] == str(png)
    assert "broken.png" not in report["failed"][0]["error"]


def test_eval_train_val_layout_uses_the_split_option(capsys, tiny_run, tiny_data, tmp_path):
    root = tmp_path / "layout"
    for split, take in (("train", slice(0, 8)), ("val", slice(8, 10)), ("test", slice(10, 12))):
        for name in ("cardboard", "glass", "metal"):
            for path in sorted((tiny_data / name).glob("*.jpg"))[take]:
                (root / split / name).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, root / split / name / path.name)
    assert main(["eval", str(tiny_run), str(root), "--split", "test", "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["num_samples"] == 6 and report["data"].startswith("test split") and report["split"] == "test"


def test_eval_refuses_a_folder_with_classes_the_model_does_not_know(capsys, tiny_run, tiny_data, tmp_path):
    other = tmp_path / "other"
    for name in ("cardboard", "glass", "plastic"):
        shutil.copytree(tiny_data / ("metal" if name == "plastic" else name), other / name)
    assert main(["eval", str(tiny_run), str(other)]) == 2
    err = capsys.readouterr().err
    assert "classes the model does not know: ['plastic']" in err
    assert "['cardboard', 'glass', 'metal']" in err and "['cardboard', 'glass', 'plastic']" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_on_some_of_the_models_classes(capsys, tiny_run, tiny_data, tmp_path):
    # New photos of one class: the report covers it; the absent classes have support 0, and count in the macro
    # averages only where the model predicted them (scikit-learn's labels: those in the data or the predictions).
    glass = tmp_path / "new" / "glass"
    shutil.copytree(tiny_data / "glass", glass)
    assert main(["eval", str(tiny_run), str(tmp_path / "new"), "--out", str(tmp_path / "e")]) == 0
    assert "note: no images of cardboard, metal there: support 0" in capsys.readouterr().out
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    rows = {r["class"]: r for r in report["per_class"]}
    n = len(list(glass.iterdir()))
    assert report["num_samples"] == n and rows["glass"]["support"] == n and rows["metal"]["support"] == 0
    assert report["top1"] == rows["glass"]["recall"]
    predicted = np.asarray(report["confusion_matrix"]).sum(axis=0)
    counted = [r["class"] for r, p in zip(report["per_class"], predicted) if r["support"] or p]
    assert "glass" in counted
    assert report["macro"]["recall"] == pytest.approx(rows["glass"]["recall"] / len(counted))


def test_eval_without_a_recorded_dataset_asks_for_a_folder(capsys, tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    ckpt["data"] = {}
    torch.save(ckpt, tmp_path / "nodata.pt")
    assert main(["eval", str(tmp_path / "nodata.pt")]) == 2
    assert "pass the folder" in capsys.readouterr().err


def test_eval_of_a_run_trained_with_val_dir_names_that_folder(capsys, tiny_run, tiny_data, tmp_path):
    from resnetlab.data.folder import make_splits

    val = tmp_path / "val"
    for class_dir in sorted(tiny_data.iterdir()):  # a separate validation folder of the same classes
        (val / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:3]:
            (val / class_dir.name / photo.name).symlink_to(photo)
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    ckpt["data"] = make_splits(tiny_data, val_dir=val).record()
    torch.save(ckpt, tmp_path / "valdir.pt")
    assert main(["eval", str(tmp_path / "valdir.pt"), "--amp", "off", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["num_samples"] == 9 and report["data"] == f"validation folder {val.resolve()}"
    assert f"validation folder {val.resolve()}" in capsys.readouterr().out
