"""Export to ONNX and TorchScript: metadata inside and beside the file, parity on real photos, failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError


def _eager(ckpt_path: Path) -> torch.nn.Module:
    from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(ckpt_path)).eval()


def _batch(images: list[Path], cfg: dict) -> torch.Tensor:
    from resnetlab.data.images import open_image
    from resnetlab.data.transforms import eval_transform_from_cfg

    transform = eval_transform_from_cfg(cfg)
    return torch.stack([transform(open_image(p)) for p in images])


def test_onnx_export_metadata_and_parity(tiny_ckpt: Path, tiny_onnx: Path, check_images: list[Path]) -> None:
    import onnx
    import onnxruntime as ort

    from resnetlab.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_ckpt)
    assert tiny_onnx == tiny_ckpt.with_name("best.onnx")
    proto = onnx.load(str(tiny_onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ckpt["classes"]
    assert json.loads(props["crop_pct"]) == 0.875
    assert json.loads(props["interpolation"]) == "bicubic"
    assert json.loads(props["mean"]) == pytest.approx(list(ckpt["default_cfg"]["mean"]))
    assert props["arch"] == "resnet20"
    meta = json.loads(props["resnetlab"])
    assert meta["default_cfg"]["input_size"] == [3, 32, 32]
    assert {op.domain: op.version for op in proto.opset_import}[""] == 18

    sidecar = json.loads(tiny_onnx.with_name("best.onnx.json").read_text())
    assert sidecar["classes"] == ckpt["classes"] and sidecar["default_cfg"] == meta["default_cfg"]
    assert sidecar["parity"]["top1_agree"] == len(check_images)
    assert sidecar["parity"]["max_abs_diff"] <= sidecar["parity"]["tolerance"]

    # Dynamic batch axis; logits equal the eager model's on real photos, at two batch sizes.
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    batch = _batch(check_images, ckpt["default_cfg"])
    with torch.no_grad():
        expected = _eager(tiny_ckpt)(batch).numpy()
    for n in (1, len(check_images)):
        got = session.run(None, {"input": batch[:n].numpy()})[0]
        np.testing.assert_allclose(got, expected[:n], rtol=1e-4, atol=1e-4)


def test_torchscript_export(tiny_ckpt: Path, check_images: list[Path], tmp_path: Path, capsys) -> None:
    from resnetlab.export import load_torchscript

    folder = tmp_path / "exports"  # --out a folder (made, having no file ending): the checkpoint's name inside it
    code = main(
        ["export", str(tiny_ckpt), "--format", "torchscript", "--out", str(folder), "--check-images"]
        + [str(p) for p in check_images]
    )
    assert code == 0
    out = folder / f"{tiny_ckpt.stem}.torchscript.pt"
    printed = capsys.readouterr().out
    assert "max |logit diff|" in printed and f"top-1 agreement {len(check_images)}/{len(check_images)}" in printed
    assert sorted(p.name for p in folder.iterdir()) == [out.name, out.name + ".json"]  # no partial file left
    module, meta = load_torchscript(out)
    assert meta["classes"] == json.loads((folder / (out.name + ".json")).read_text())["classes"]
    assert meta["default_cfg"]["crop_pct"] == 0.875
    batch = _batch(check_images, meta["default_cfg"])
    with torch.no_grad():
        torch.testing.assert_close(module(batch), _eager(tiny_ckpt)(batch), rtol=1e-4, atol=1e-4)
    # predict reads checkpoints and ONNX files; handed the TorchScript file, it says what the file is, in one line.
    assert main(["predict", str(out), str(check_images[0])]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"resnetlab predict: error: {out}: not a readable checkpoint (a TorchScript export, for torch.jit.load in an"
        " application; resnetlab reads the run folder, its .pt checkpoint or an .onnx export)\n"
    )


def test_predict_onnx_equals_checkpoint(tiny_ckpt: Path, tiny_onnx: Path, check_images: list[Path], capsys) -> None:
    from resnetlab.onnx_runtime import OnnxClassifier
    from resnetlab.predict import load

    onnx_clf = load(tiny_onnx)
    assert isinstance(onnx_clf, OnnxClassifier)
    ckpt_clf = load(tiny_ckpt, amp="off")  # the export is fp32: compare with the fp32 checkpoint
    assert onnx_clf.classes == ckpt_clf.classes and onnx_clf.default_cfg["crop_pct"] == 0.875
    got, want = onnx_clf.predict(check_images, topk=3), ckpt_clf.predict(check_images, topk=3)
    for g, w in zip(got, want):
        assert [p["label"] for p in g] == [p["label"] for p in w]
        assert [p["score"] for p in g] == pytest.approx([p["score"] for p in w], abs=1e-5)

    # The CLI prints the same table for the .onnx file as for the checkpoint.
    paths = [str(p) for p in check_images]
    assert main(["predict", str(tiny_onnx), *paths, "--json", "--topk", "2"]) == 0
    onnx_out = json.loads(capsys.readouterr().out)
    assert main(["predict", str(tiny_ckpt), *paths, "--json", "--topk", "2", "--amp", "off"]) == 0
    ckpt_out = json.loads(capsys.readouterr().out)
    assert [[p["label"] for p in r["predictions"]] for r in onnx_out] == [
        [p["label"] for p in r["predictions"]] for r in ckpt_out
    ]


def test_legacy_opset_fixed_batch(tiny_ckpt: Path, check_images: list[Path], tmp_path: Path) -> None:
    """Opset 17 goes through the legacy exporter; a fixed batch of 1 still predicts many images (in chunks)."""
    from resnetlab.export import export_model
    from resnetlab.predict import load

    result = export_model(
        tiny_ckpt,
        "onnx",
        out=tmp_path / "fixed.onnx",
        dynamic_batch=False,
        opset=17,
        check_images=check_images,
        log=lambda _: None,
    )
    assert result.exporter == "torchscript" and result.parity.ok
    clf = load(result.path)
    assert clf.model.fixed_batch == 1
    preds = clf.predict(check_images, topk=1)
    want = load(tiny_ckpt, amp="off").predict(check_images, topk=1)
    assert [p[0]["label"] for p in preds] == [p[0]["label"] for p in want]


def _perturbed_export(monkeypatch, edit) -> None:
    """Make the ONNX writer export something other than the checkpoint's model, as a broken exporter would."""
    import resnetlab.export as export_mod

    real = export_mod.export_onnx

    def broken(model, example, path, meta, opset, dynamic):
        model, meta = edit(model, meta)
        return real(model, example, path, meta, opset, dynamic)

    monkeypatch.setattr(export_mod, "export_onnx", broken)


def test_parity_failure_exits_nonzero(tiny_ckpt, check_images, tmp_path, monkeypatch, capsys) -> None:
    import copy

    def scramble(model, meta):
        bad = copy.deepcopy(model)
        with torch.no_grad():
            bad.fc.weight.copy_(bad.fc.weight.flip(0) * 3)  # classes swapped and scaled: logits and top-1 move
        return bad, meta

    _perturbed_export(monkeypatch, scramble)
    out = tmp_path / "bad.onnx"
    code = main(["export", str(tiny_ckpt), "--out", str(out), "--check-images", *map(str, check_images)])
    assert code == 2
    err = capsys.readouterr().err
    assert "disagrees with the checkpoint" in err and "max |logit diff|" in err
    assert not out.exists() and (tmp_path / "bad.onnx.parity-failed").exists()
    assert not (tmp_path / "bad.onnx.json").exists()


def test_wrong_preprocessing_metadata_fails(tiny_ckpt, check_images, tmp_path, monkeypatch) -> None:
    from resnetlab.export import export_model

    def wrong_mean(model, meta):
        return model, {**meta, "default_cfg": {**meta["default_cfg"], "mean": [0.5, 0.5, 0.5]}}

    _perturbed_export(monkeypatch, wrong_mean)
    with pytest.raises(ResnetlabError, match="preprocessing rebuilt from the export's metadata"):
        export_model(tiny_ckpt, "onnx", out=tmp_path / "m.onnx", check_images=check_images, log=lambda _: None)
    assert not (tmp_path / "m.onnx").exists()


def test_export_and_load_errors(tiny_ckpt: Path, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    import onnx

    from resnetlab.onnx_runtime import load_onnx

    assert main(["export", str(tiny_ckpt), "--check-images", str(tmp_path / "nope")]) == 2
    assert "--check-images" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt")]) == 2
    assert "no such run folder or checkpoint" in capsys.readouterr().err
    assert main(["export", str(tiny_ckpt), "--opset", "5"]) == 2
    assert "--opset 5" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # where --out would need a folder: refused before the slow export, in one line
    assert main(["export", str(tiny_ckpt), "--out", str(blocker / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker / 'm.onnx'}: cannot write there" in err and "exporting" not in err
    assert "Traceback" not in err
    # A name of the other format: refused before the export, with the name that would do.
    assert main(["export", str(tiny_ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'm.onnx'}: an ONNX file name for a TorchScript export; name it m.torchscript.pt" in err
    assert "exporting" not in err and not list(tmp_path.glob("*m.onnx*"))

    bare = onnx.load(str(tiny_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ResnetlabError, match="no resnetlab metadata"):
        load_onnx(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ResnetlabError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")


def test_onnx_only_options_and_missing_packages_are_one_line(tiny_ckpt, tiny_onnx, tmp_path, capsys, monkeypatch):
    import sys

    for flags in (["--opset", "17"], ["--no-dynamic-batch"]):
        assert main(["export", str(tiny_ckpt), "--format", "torchscript", "--out", str(tmp_path), *flags]) == 2
        assert f"{flags[0]}: ONNX options; TorchScript takes any batch size" in capsys.readouterr().err
    image = str(Path(__file__).parents[2] / "demo")  # any folder; refused before it is read
    assert main(["predict", str(tiny_onnx), image, "--device", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["predict", str(tiny_onnx), image, "--amp", "bf16"]) == 2
    assert "--amp bf16: an ONNX file runs in fp32 on onnxruntime" in capsys.readouterr().err
    # Without the [export] extra (onnxruntime, onnx): one line with the install command, before any work.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(tiny_onnx), image]) == 2
    assert "needs onnxruntime: pip install 'resnetlab[export]'" in capsys.readouterr().err
    assert main(["export", str(tiny_ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export (and its parity check) needs onnxruntime: pip install 'resnetlab[export]'" in err
    assert "exporting" not in err


@pytest.mark.parametrize(
    ("out", "fmt", "expected"),
    [(None, None, "onnx"), ("m.onnx", None, "onnx"), ("m.pt", None, "torchscript"), ("m.PTH", None, "torchscript"),
     ("m.ts", None, "torchscript"), ("exports", None, "onnx"), ("m.pt", "onnx", "onnx")],
)  # fmt: skip
def test_format_from_the_output_name(out, fmt, expected) -> None:
    from resnetlab.export import format_for

    assert format_for(out, fmt) == expected
