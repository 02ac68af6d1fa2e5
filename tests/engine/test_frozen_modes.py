"""Transfer-learning modes: frozen trains only the head (BN statistics untouched), feature caching, staged."""

from __future__ import annotations

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.engine.fit import build_model, fit
from resnetlab.errors import ResnetlabError
from tests.engine.conftest import tiny_config


def _pretrained_file(tmp_path, cfg) -> str:
    """A 'pretrained' starting point: the model's initial weights with non-trivial BN statistics."""
    model, _ = build_model(cfg.merge({"pretrained": None}), 3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "start.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_frozen_trains_only_head_and_keeps_bn_stats(digits_dir, tmp_path):
    cfg = tiny_config(digits_dir, tmp_path / "run", mode="frozen", augment="light", epochs=2)
    start = _pretrained_file(tmp_path, cfg)
    lines: list[str] = []
    summary = fit(cfg.merge({"pretrained": start}), log=lines.append)
    assert not summary["feature_cache"]  # random augmentation: the backbone sees new inputs every epoch
    assert any(line.startswith("note: with --augment light each epoch's inputs differ") for line in lines), lines
    before = torch.load(start, weights_only=True)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    # Backbone weights AND BN running_mean/var/num_batches_tracked unchanged; only the head learned.
    assert _changed(before, after) == {"fc.weight", "fc.bias"}


def test_frozen_without_augmentation_caches_features(digits_dir, tmp_path, monkeypatch):
    from resnetlab.models.cifar_resnet import CifarResNet

    calls = {"n": 0}
    original = CifarResNet.forward_features

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(CifarResNet, "forward_features", counting)
    counts = []
    for epochs in (1, 4):
        calls["n"] = 0
        cfg = tiny_config(digits_dir, tmp_path / f"e{epochs}", mode="frozen", augment="none", epochs=epochs)
        summary = fit(cfg, log=print)
        assert summary["feature_cache"]
        counts.append(calls["n"])
    assert counts[0] == counts[1] > 0  # backbone runs once (train + val extraction), whatever the epoch count
    ckpt = load_checkpoint(tmp_path / "e4" / "last.pt")
    assert ckpt["epoch"] == 4 and 0 <= ckpt["metrics"]["val_acc"] <= 1


def test_staged_unfreezes_after_head_epochs(digits_dir, tmp_path):
    cfg = tiny_config(digits_dir, tmp_path / "run", mode="staged", freeze_epochs=1, epochs=2)
    start = _pretrained_file(tmp_path, cfg)
    fit(cfg.merge({"pretrained": start}), log=print)
    before = torch.load(start, weights_only=True)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert "conv1.weight" in _changed(before, after)  # the backbone trained in the second phase


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "arch": "resnet20", "num_classes": 2, "model": {"w": torch.ones(2)}})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(ResnetlabError, match=f"cannot write {path} \\(disk full\\); the file there, if any, is as"):
        save_checkpoint(path, {"epoch": 2, "model": Unsaveable()})
    assert load_checkpoint(path)["epoch"] == 1  # the old file survives a failed save
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # and no temp file is left behind


def test_a_full_disk_is_one_line_naming_what_last_pt_holds(digits_dir, tmp_path, monkeypatch):
    # torch reports a full disk as a RuntimeError ("unexpected pos ...") around the OSError: 36 lines of traceback.
    import errno

    import resnetlab.engine.checkpoint as checkpoint

    real = torch.save

    def full(obj, f, *args, **kwargs):
        if obj.get("epoch") == 2:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:  # noqa: PERF203 - the OSError as the RuntimeError's context, as torch has it
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:672] . unexpected pos 830464 vs 830360"
                ) from exc
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    run = tmp_path / "run"
    with pytest.raises(ResnetlabError) as exc:
        fit(tiny_config(digits_dir, run, epochs=3), log=lambda _: None)
    assert str(exc.value).startswith(f"cannot write {run}/") and "(No space left on device)" in str(exc.value)
    assert f"{run / 'last.pt'} holds epoch 1: free space, then resnetlab train --resume {run}" in str(exc.value)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_checkpoints_get_the_mode_a_plain_write_gets(tmp_path):
    # The temp file behind the atomic rename is 0600 (mkstemp); the checkpoint must read like the run's other files.
    import os

    umask = os.umask(0o022)
    try:
        save_checkpoint(
            tmp_path / "best.pt", {"epoch": 1, "arch": "resnet20", "num_classes": 2, "model": {"w": torch.ones(2)}}
        )
        (tmp_path / "history.csv").write_text("epoch\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "best.pt").stat().st_mode & 0o777 == (tmp_path / "history.csv").stat().st_mode & 0o777 == 0o644


def test_a_run_started_from_a_run_with_an_mlp_head_records_that_head(digits_dir, tmp_path):
    # `--pretrained RUN/best.pt` installs RUN's trained head; the new run's config and checkpoints must say so, or
    # eval, export and --resume cannot rebuild the model (they failed on the head's keys).
    from resnetlab.engine.checkpoint import model_from_checkpoint

    first = tiny_config(digits_dir, tmp_path / "a", epochs=1, head=[16], dropout=0.3)
    fit(first, log=lambda _: None)
    said = []
    fit(tiny_config(digits_dir, tmp_path / "b", epochs=1, pretrained=str(tmp_path / "a" / "best.pt")), log=said.append)
    assert any("brings its trained head (hidden 16, dropout 0.3)" in line for line in said)
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["head"] == {"hidden": [16], "dropout": 0.3}
    assert ckpt["config"]["head"] == [16] and ckpt["config"]["dropout"] == 0.3
    model_from_checkpoint(ckpt)  # rebuilds and loads strictly
    from resnetlab.cli import main

    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2", "--no-progress"]) == 0  # its config.yaml
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    # Asking for the same head keeps the trained one; another replaces it, with a note.
    said.clear()
    other = tiny_config(digits_dir, tmp_path / "c", epochs=1, pretrained=str(tmp_path / "a" / "best.pt"), head=[8])
    fit(other, log=said.append)
    assert any("replace the trained head (hidden 16, dropout 0.3)" in line for line in said)
    assert load_checkpoint(tmp_path / "c" / "last.pt")["head"] == {"hidden": [8], "dropout": 0.0}
