"""A tiny real training run: the run folder's files, checkpoint contents, early stopping, class weights."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.engine.fit import HISTORY_COLUMNS, fit, make_criterion
from tests.engine.conftest import tiny_config, write_digits


@pytest.fixture(scope="module")
def run(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    lines: list[str] = []
    summary = fit(tiny_config(digits_dir, out, epochs=3, head=[32], dropout=0.1), log=lines.append)
    return out, summary, lines


def test_run_folder_contents(run):
    out, summary, lines = run
    for name in (
        "config.yaml",
        "class_indices.json",
        "best.pt",
        "last.pt",
        "history.csv",
        "curves.png",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "class_indices.json").read_text()) == {"0": "one", "1": "two", "2": "zero"}
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 and float(r["seconds"]) > 0 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["epochs_run"] == 3 and saved["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert saved["train_images_per_s"] > 0 and saved["wall_seconds"] > 0
    assert saved["lr"] == pytest.approx(2e-3 * (8 / 64) ** 0.5) and saved["weight_decay"] == 0.05  # Muon, batch 8
    assert sum(line.startswith("epoch") for line in lines) == 3  # one summary line per epoch


def test_tensorboard_events_readable(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = run
    assert list(out.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss/train", "acc/val", "lr"} <= set(tags)
    assert [e.step for e in acc.Scalars("acc/val")] == [1, 2, 3]


def test_checkpoint_is_self_describing(run):
    out, summary, _ = run
    last = load_checkpoint(out / "last.pt")
    best = load_checkpoint(out)  # a run folder resolves to best.pt
    assert last["arch"] == "resnet20" and last["num_classes"] == 3 and last["classes"] == ["one", "two", "zero"]
    assert last["epoch"] == 3 and best["epoch"] == summary["best_epoch"]
    assert last["default_cfg"]["input_size"] == [3, 16, 16]
    assert last["head"] == {"hidden": [32], "dropout": 0.1}
    assert last["config"]["img_size"] == 16 and last["data"]["classes"] == last["classes"]
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        assert key in last
    model = model_from_checkpoint(last).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_early_stopping(digits_dir, tmp_path):
    # lr 0: the validation accuracy can never improve after epoch 1, so patience 2 stops after epoch 3.
    summary = fit(tiny_config(digits_dir, tmp_path / "es", epochs=10, lr=0.0, warmup_epochs=0, patience=2), log=print)
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["best_epoch"] == 1


def test_class_weights_inverse_frequency():
    crit = make_criterion(tiny_config("x", "y", class_weights="auto"), [30, 10, 20], torch.device("cpu"))
    assert torch.allclose(crit.weight, torch.tensor([60 / 90, 60 / 30, 60 / 60]))
    assert make_criterion(tiny_config("x", "y"), [30, 10, 20], torch.device("cpu")).weight is None


def test_imbalanced_run_with_weights_and_balanced_sampler(tmp_path):
    data = write_digits(tmp_path / "imb", {0: 24, 1: 6, 2: 10})
    cfg = tiny_config(data, tmp_path / "run", epochs=1, class_weights="auto", balanced_sampler=True)
    summary = fit(cfg, log=print)
    assert summary["epochs_run"] == 1 and (tmp_path / "run" / "best.pt").is_file()


def test_balanced_sampler_draws_classes_evenly():
    from resnetlab.engine.distributed import DistInfo
    from resnetlab.engine.fit import train_sampler

    labels = [0] * 80 + [1] * 10 + [2] * 10
    sampler, gens = train_sampler(labels, tiny_config("x", "y", balanced_sampler=True), DistInfo())
    drawn = torch.tensor([labels[i] for _ in range(20) for i in sampler])
    share = torch.bincount(drawn, minlength=3) / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)
    assert "sampler" in gens


def test_cifar_recipe_pieces_run(digits_dir, tmp_path):
    cfg = tiny_config(
        digits_dir, tmp_path / "c", augment="cifar", opt="sgd", nesterov=False, sched="multistep", milestones=[1]
    )
    summary = fit(cfg, log=print)
    rows = list(csv.DictReader((tmp_path / "c" / "history.csv").open()))
    assert summary["epochs_run"] == 2 and float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) * 0.1)


def test_drop_last_only_for_small_tail_batches():
    from resnetlab.engine.distributed import DistInfo
    from resnetlab.engine.fit import _drop_last

    one = DistInfo()
    assert _drop_last(514, 32, one)  # 16 full batches + 2 images: dropped (they return next epoch)
    assert not _drop_last(2022, 64, one)  # 31 full + 38 images: kept
    assert not _drop_last(576, 64, one)  # exact
    assert _drop_last(65, 64, one)  # a batch of one cannot be normalised
    assert not _drop_last(10, 64, one)  # no full batch: keep everything
    assert _drop_last(2022, 64, one, whole_batches=True)  # --compile: one batch shape, one graph
    assert not _drop_last(576, 64, one, whole_batches=True)
    assert not _drop_last(10, 64, one, whole_batches=True)


@pytest.mark.slow  # compiling takes ~30 s of the 2 cores
def test_compiled_training_runs_one_graph(digits_dir, tmp_path, monkeypatch):
    # 39 training images in batches of 8 leave 7 over, a batch that uncompiled training keeps; compiled, a second
    # batch size would recompile the model (torch._dynamo raises on that here).
    import torch._dynamo

    from resnetlab.engine.fit import fit

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    from resnetlab.data.folder import make_splits

    cfg = tiny_config(digits_dir, tmp_path / "run", compile=True, epochs=2)
    assert len(make_splits(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed).train) % 8 == 7
    torch._dynamo.reset()
    summary = fit(cfg, log=lambda _: None)
    assert summary["epochs_run"] == 2 and len(list(csv.DictReader((tmp_path / "run" / "history.csv").open()))) == 2


def test_one_class_is_refused_and_bad_data_leaves_no_run_folder(tmp_path, monkeypatch):
    # `data check` calls one class unusable; train says so too, and a refused run leaves no empty runs/<name> behind
    # (the next run would otherwise be numbered -2).
    from resnetlab.errors import ResnetlabError

    monkeypatch.chdir(tmp_path)
    one = write_digits(tmp_path / "one", {0: 6})
    loose = write_digits(tmp_path / "loose", {0: 6}) / "zero"  # images with no class folders above them
    with pytest.raises(ResnetlabError, match=r"only 1 class folder \(zero\); a classifier needs at least 2"):
        fit(tiny_config(one, None))
    with pytest.raises(ResnetlabError, match="no class folders"):
        fit(tiny_config(loose, None))
    assert not (tmp_path / "runs").exists()


def test_an_out_folder_holding_a_run_is_refused_before_the_set_up(digits_dir, tmp_path, monkeypatch):
    from resnetlab.data import folder
    from resnetlab.errors import ResnetlabError

    out = tmp_path / "taken"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    monkeypatch.setattr(folder, "make_splits", lambda *a, **k: pytest.fail("scanned the data first"))
    with pytest.raises(ResnetlabError, match=f"{out}: already holds a run; continue it with --resume {out}"):
        fit(tiny_config(digits_dir, out))


def test_too_few_images_for_a_batch_on_each_rank_is_one_line(tmp_path):
    # Two images over two ranks: a batch of one each, which BatchNorm cannot train on, so no step would run.
    from resnetlab.engine import distributed as ddp
    from resnetlab.engine.fit import build_data
    from resnetlab.engine.precision import resolve_precision
    from resnetlab.errors import ResnetlabError
    from resnetlab.models import create_model

    data = write_digits(tmp_path / "two", {0: 1, 1: 1})
    cfg = tiny_config(data, tmp_path / "out", val_fraction=0.0, cache="none")
    info = ddp.DistInfo(rank=0, world_size=2)
    with pytest.raises(ResnetlabError, match="2 training image.s. make no training batch across 2 processes"):
        build_data(cfg, create_model("resnet20", num_classes=2).default_cfg, info, resolve_precision("cpu"))


def test_run_folders_are_numbered_and_never_shared(tmp_path, monkeypatch):
    # Ultralytics-style numbering; a folder another run made between the check and the creation is skipped.
    from pathlib import Path

    from resnetlab.engine.fit import make_run_dir

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path / "photos", None)
    assert make_run_dir(cfg) == Path("runs/photos-resnet20")
    assert make_run_dir(cfg) == Path("runs/photos-resnet20-2")
    real_mkdir = Path.mkdir

    def raced(self, *args, **kwargs):  # another run takes -3 just before this one
        if self.name == "photos-resnet20-3" and not self.exists():
            real_mkdir(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", raced)
    assert make_run_dir(cfg) == Path("runs/photos-resnet20-4")


def test_training_on_a_frozen_split(digits_dir, tmp_path):
    # `resnetlab data split` writes the lists; `train --split-file` trains and validates on exactly those files.
    from resnetlab.cli import main
    from resnetlab.data.folder import DatasetSplits

    lists = tmp_path / "lists" / "digits"
    assert main(["data", "split", str(digits_dir), "--out", str(lists), "--seed", "3"]) == 0
    listed = {s: sorted((tmp_path / "lists" / f"digits_{s}.txt").read_text().splitlines()) for s in ("train", "val")}
    fit(tiny_config(digits_dir, tmp_path / "run", epochs=1, split_file=str(lists) + "_train.txt"), log=lambda _: None)
    record = load_checkpoint(tmp_path / "run" / "last.pt")["data"]
    assert record["layout"] == "split_file"
    splits = DatasetSplits.from_record(record)  # the eval path rebuilds the same split from the record
    for name, samples in (("train", splits.train), ("val", splits.val)):
        assert sorted(p.relative_to(digits_dir).as_posix() for p, _ in samples) == [
            line.split("\t")[0] for line in listed[name]
        ]


def test_a_run_without_a_validation_split_says_so(digits_dir, tmp_path):
    # Training accuracy is not reported as validation accuracy, and options that watch validation say they idle.
    lines: list[str] = []
    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=2, val_fraction=0.0, patience=1, sched="plateau")
    summary = fit(cfg, log=lines.append)
    assert summary["best_val_acc"] is None and summary["final_val_acc"] is None
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert summary["final_train_acc"] == pytest.approx(float(rows[-1]["train_acc"])) and rows[-1]["val_acc"] == ""
    assert summary["epochs_run"] == 2 and summary["run_dir"] == str((tmp_path / "run").resolve())
    assert any("--patience and --sched plateau watch validation accuracy" in line for line in lines)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best_val_acc"] is None and on_disk["final_val_acc"] is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("arch"), "the checkpoint lacks arch; it was edited"),
        (lambda c: c.pop("model"), "the checkpoint lacks model"),
        (lambda c: c.update(num_classes=5), "class names for a model of 5 outputs"),
        (lambda c: c.update(classes=["a", "b"]), "2 class names for a model of 3 outputs"),
        (lambda c: c["model"].pop("fc.4.bias"), "weights do not fit the resnet20 with 3 classes it describes"),
    ],
)
def test_an_edited_checkpoint_is_one_line_everywhere(run, tmp_path, capsys, edit, message):
    from resnetlab.cli import main

    ckpt = torch.load(run[0] / "best.pt", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    export = ["export", str(path), "--out", str(tmp_path / "m.onnx")]
    for argv in (["predict", str(path), str(path)], export):  # refused before any image is read
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_a_checkpoint_without_its_optimizer_state_is_not_resumable_but_says_how_to_go_on(run, tmp_path, capsys):
    import shutil

    from resnetlab.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    ckpt = torch.load(copy / "last.pt", weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, copy / "last.pt")
    assert main(["train", "--resume", str(copy), "--epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "lacks optimizer that --resume needs" in err and f"--pretrained {copy / 'last.pt'}" in err


def test_an_out_holding_results_or_a_file_is_refused(digits_dir, tmp_path, capsys):
    from resnetlab.cli import main

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "best.pt").write_bytes(b"a model someone kept")
    afile = tmp_path / "afile"
    afile.write_text("")
    flags = ["--model", "resnet20", "--img-size", "16", "--epochs", "1", "--workers", "0", "--no-progress"]
    assert main(["train", str(digits_dir), *flags, "--out", str(kept)]) == 2
    assert "holds best.pt, which a new run would overwrite" in capsys.readouterr().err
    assert (kept / "best.pt").read_bytes() == b"a model someone kept"
    assert main(["train", str(digits_dir), *flags, "--out", str(afile)]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "--resume " + str(tmp_path / "nope") + ": no such run folder" in capsys.readouterr().err


def test_resume_takes_the_last_pt_path_too(digits_dir, tmp_path, capsys):
    # Ultralytics users pass RUN/last.pt to resume.
    from resnetlab.cli import main

    run = tmp_path / "run"
    fit(tiny_config(digits_dir, run, epochs=1), log=lambda _: None)
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert main(["train", "--resume", str(run / "best.pt"), "--epochs", "3"]) == 2  # not what it would resume from
    assert f"a run goes on from its last.pt; pass the run folder {run}" in capsys.readouterr().err
