"""`--resume` continues exactly: 3 epochs == 2 epochs, a kill, and a resumed third epoch (same final weights).

Ctrl-C and SIGTERM say what last.pt holds and how to go on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint
from resnetlab.engine.fit import fit, sigterm_stops_like_ctrl_c
from resnetlab.errors import ResnetlabError
from tests.engine.conftest import Killed, kill_after, sigterm_after, tiny_config


@pytest.mark.parametrize("ema", [0.0, 0.99])
def test_resume_reaches_same_weights(digits_dir, tmp_path, ema):
    # Random crops, flips, dropout and mixup are all on, so every random stream must replay. Staged mode with one
    # head-only epoch makes the resume land mid-phase: optimizer and schedule state must come back too. With EMA,
    # both the average ("model") and the trained weights ("train_model") must come back.
    overrides = {"mode": "staged", "freeze_epochs": 1, "dropout": 0.2, "mixup": 0.4, "ema": ema}
    full = tiny_config(digits_dir, tmp_path / "full", epochs=3, **overrides)
    fit(full, log=lambda _: None)

    cut = tiny_config(digits_dir, tmp_path / "cut", epochs=3, **overrides)
    with pytest.raises(Killed):
        fit(cut, log=kill_after(2, 3))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    fit(cut.merge({"resume": str(tmp_path / "cut")}), log=lambda _: None)

    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert b["epoch"] == 3
    for part in ("model", "train_model") if ema else ("model",):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    if ema:
        assert a["ema"] == b["ema"] and a["ema"]["updates"] > 0
        assert any(not torch.equal(v, a["train_model"][k]) for k, v in a["model"].items() if v.is_floating_point())
    assert a["metrics"]["val_acc"] == b["metrics"]["val_acc"]
    assert (tmp_path / "cut" / "history.csv").read_text().count("\n") == 4  # header + 3 epochs, no duplicates


def interrupt_at_once(line: str) -> None:
    raise KeyboardInterrupt  # the first line is logged at the end of set-up, before any epoch


def test_ctrl_c_says_what_last_pt_holds_and_how_to_resume(digits_dir, tmp_path):
    def interrupt_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise KeyboardInterrupt

    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=2)
    with pytest.raises(ResnetlabError) as info:
        fit(cfg, log=interrupt_after_epoch_1)
    run = tmp_path / "run"
    assert info.value.exit_code == 130
    advice = f"continue with resnetlab train --resume {run}"
    assert str(info.value) == f"interrupted; {run / 'last.pt'} holds epoch 1: {advice}"
    with pytest.raises(ResnetlabError, match=f"^interrupted; .* is unchanged: {advice}$"):  # during its set-up
        fit(cfg.merge({"resume": str(run)}), log=interrupt_at_once)
    summary = fit(cfg.merge({"resume": str(run)}), log=lambda _: None)  # the advice works
    assert summary["epochs_run"] == 2 and load_checkpoint(run / "last.pt")["epoch"] == 2


def test_ctrl_c_during_set_up_says_there_is_nothing_to_resume(digits_dir, tmp_path):
    with pytest.raises(ResnetlabError, match="^interrupted before the first epoch ended: nothing to resume$"):
        fit(tiny_config(digits_dir, tmp_path / "run"), log=interrupt_at_once)


def test_sigterm_ends_a_run_like_ctrl_c_with_exit_143(digits_dir, tmp_path):
    def terminate_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1/"):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, as it would between any two steps

    before = signal.getsignal(signal.SIGTERM)
    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=2)
    with pytest.raises(ResnetlabError) as info:
        fit(cfg, log=terminate_after_epoch_1)
    run = tmp_path / "run"
    assert info.value.exit_code == 143
    assert (
        str(info.value) == f"terminated; {run / 'last.pt'} holds epoch 1: continue with resnetlab train --resume {run}"
    )
    assert signal.getsignal(signal.SIGTERM) is before  # put back once fit returns
    summary = fit(cfg.merge({"resume": str(run)}), log=lambda _: None)
    assert summary["epochs_run"] == 2


def test_a_forked_child_still_dies_of_sigterm():
    # Loader workers and cache fillers are forked from the training process and inherit its handler; they must not
    # turn SIGTERM into an exception of their own.
    with sigterm_stops_like_ctrl_c():
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            finally:
                os._exit(0)  # reached only if SIGTERM was turned into an exception or ignored
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_sigterm_to_the_cli_prints_one_line_and_keeps_last_pt(digits_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "resnetlab", "train", str(digits_dir), "--model", "resnet20", "--img-size", "16"]
    cmd += ["--epochs", "50", "--batch-size", "8", "--workers", "0", "--out", str(run)]
    code, err = sigterm_after(cmd, "epoch   1/")
    assert code == 143, err
    saved = load_checkpoint(run / "last.pt")["epoch"]
    assert saved >= 1 and err.splitlines() == [
        f"resnetlab train: error: terminated; {run / 'last.pt'} holds epoch {saved}: "
        f"continue with resnetlab train --resume {run}"
    ]


def test_sigterm_to_the_process_group_with_loader_workers_prints_one_line(digits_dir, tmp_path):
    # The workers die of the same SIGTERM; PyTorch's SIGCHLD handler once added a traceback when they were collected.
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "resnetlab", "train", str(digits_dir), "--model", "resnet20", "--img-size", "16"]
    cmd += ["--epochs", "50", "--batch-size", "8", "--workers", "1", "--cache", "none", "--out", str(run)]
    code, err = sigterm_after(cmd, "epoch   1/", group=True)
    assert code == 143 and len(err.splitlines()) == 1 and "terminated;" in err, err


def test_resuming_a_finished_run_rewrites_nothing_and_says_so(digits_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(digits_dir, run, epochs=2)
    first = fit(cfg, log=lambda _: None)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    said: list[str] = []
    again = fit(cfg.merge({"resume": str(run)}), log=said.append)
    assert said == [
        f"{run} already finished: last.pt holds its last epoch, 2; nothing to resume "
        "(to train on, resume with --epochs above 2)"
    ]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # no new event file, summary.json as it was
    assert again == json.loads(json.dumps(first))
    longer = fit(cfg.merge({"resume": str(run), "epochs": 3}), log=lambda _: None)  # the advice works
    assert longer["epochs_run"] == 3


def test_wall_seconds_count_every_session_of_a_resumed_run(digits_dir, tmp_path, monkeypatch):
    from resnetlab.engine import fit as fit_module

    now = iter(range(0, 10_000, 10))  # each reading of the clock: 10 s later
    monkeypatch.setattr(fit_module, "clock", lambda: float(next(now)))
    cut = tiny_config(digits_dir, tmp_path / "cut", epochs=3)
    with pytest.raises(Killed):
        fit(cut, log=kill_after(2, 3))
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    before = saved["elapsed_seconds"]
    summary = fit(cut.merge({"resume": str(tmp_path / "cut")}), log=lambda _: None)
    assert before > 0 and summary["wall_seconds"] > before
    # images/s too: the training loop's images and seconds of both sessions, not only the resumed one's.
    done = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["train_images"] > 0 and done["train_images"] == saved["train_images"] * 3 // 2  # 2 epochs, then 3
    assert summary["train_images_per_s"] == pytest.approx(done["train_images"] / done["train_seconds"])


@pytest.mark.parametrize("sched", ["cosine", "onecycle", "step"])
def test_a_run_extended_with_more_epochs_takes_the_longer_runs_rates(digits_dir, tmp_path, sched):
    # `--resume RUN --epochs 9` after a 3-epoch run: from epoch 4 on, each epoch's LR is that of a run planned for 9
    # epochs from the start (the first resumed step once took the 3-epoch schedule's end LR; onecycle stopped there).
    import csv

    def rates(run) -> list[float]:
        with (run / "history.csv").open() as f:
            return [float(row["lr"]) for row in csv.DictReader(f)]

    # One step an epoch (batch 64 > 38 training images): history's LR, the epoch's last step's, is its first too.
    args = {"sched": sched, "warmup_epochs": 0, "batch_size": 64}
    short = tiny_config(digits_dir, tmp_path / "short", epochs=3, **args)
    fit(short, log=lambda _: None)
    fit(short.merge({"resume": str(tmp_path / "short"), "epochs": 9}), log=lambda _: None)
    fit(tiny_config(digits_dir, tmp_path / "long", epochs=9, **args), log=lambda _: None)
    assert rates(tmp_path / "short")[3:] == pytest.approx(rates(tmp_path / "long")[3:], rel=1e-12)


@pytest.mark.parametrize("sched", ["cosine", "constant"])
def test_a_new_lr_and_wd_on_resume_are_the_ones_it_trains_with(digits_dir, tmp_path, sched):
    # The checkpoint's optimizer groups carry the old rates; `--resume RUN --lr X --wd Y` once trained on at them while
    # the log and config.yaml said X and Y.
    import csv

    def rates(run) -> list[float]:
        with (run / "history.csv").open() as f:
            return [float(row["lr"]) for row in csv.DictReader(f)]

    args = {"sched": sched, "warmup_epochs": 0, "batch_size": 64, "opt": "adamw", "lr": 1e-2, "wd": 0.05}
    cut = tiny_config(digits_dir, tmp_path / "cut", epochs=3, **args)
    fit(cut.merge({"epochs": 2}), log=lambda _: None)  # 2 epochs, then trained on to 3 at a tenth of the rate
    lines: list[str] = []
    fit(cut.merge({"resume": str(tmp_path / "cut"), "lr": 1e-3, "wd": 0.5}), log=lines.append)
    fit(tiny_config(digits_dir, tmp_path / "full", epochs=3, **args), log=lambda _: None)
    assert any("lr 0.01 -> 0.001" in line for line in lines)
    assert rates(tmp_path / "cut")[2] == pytest.approx(rates(tmp_path / "full")[2] / 10, rel=1e-9)
    groups = load_checkpoint(tmp_path / "cut" / "last.pt")["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} <= {0.0, 0.5} and max(g["initial_lr"] for g in groups) == 1e-3


def test_onecycle_on_a_run_of_a_few_steps(digits_dir, tmp_path):
    # 2 epochs of 1 step: OneCycleLR's rise of one step divided by zero.
    summary = fit(tiny_config(digits_dir, tmp_path / "oc", epochs=2, batch_size=64, sched="onecycle"), log=print)
    assert summary["epochs_run"] == 2


def test_resume_on_a_changed_folder(tmp_path):
    # Another class cannot fit the model's head: one line, not load_state_dict's size mismatch. More photos make a
    # new split: the log says so, since the resumed run is then not the uninterrupted one.
    from tests.engine.conftest import write_digits

    data = write_digits(tmp_path / "data", {0: 10, 1: 10})
    run = tmp_path / "run"
    fit(tiny_config(data, run, epochs=1), log=lambda _: None)
    said: list[str] = []
    fit(tiny_config(data, run, epochs=2, resume=str(run)), log=said.append)  # the same folder: nothing to say
    assert not [line for line in said if line.startswith(("warning", "note"))]
    write_digits(data, {2: 10})
    with pytest.raises(
        ResnetlabError, match=r"its classes \['one', 'two', 'zero'\] are not the run's \['one', 'zero'\]"
    ):
        fit(tiny_config(data, run, epochs=3, resume=str(run)), log=lambda _: None)
    for extra in (data / "two").iterdir():
        extra.unlink()
    (data / "two").rmdir()
    for path in (write_digits(tmp_path / "more", {0: 5}, offset=10) / "zero").iterdir():  # 5 more zeros
        path.rename(data / "zero" / f"more-{path.name}")
    said.clear()
    fit(tiny_config(data, run, epochs=3, resume=str(run)), log=said.append)
    assert said[0] == (
        f"warning: {data} changed since the run started (train 16 -> 20, val 4 -> 5 images): its split is made afresh,"
        " so this resumed run is not the uninterrupted one, and its validation is on other images"
    )


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            {"model": "resnet32"},
            "--model resnet32: {run} was made with model resnet20, which a resumed run keeps; for another, start a"
            " new run$",  # no --pretrained hint: another model cannot take these weights
        ),
        ({"head": [16], "dropout": 0.2}, "--head 16: {run} was made with head none, which a resumed run keeps"),
        ({"mode": "frozen"}, "--mode frozen: {run} was made with mode finetune"),
        ({"opt": "sgd"}, "--opt sgd: {run} was made with opt muon"),
    ],
)
def test_resume_refuses_another_model_head_mode_or_optimizer(digits_dir, tmp_path, change, said):
    # They failed deep in load_state_dict (size mismatches, parameter groups); the rest may change on resume.
    run = tmp_path / "run"
    fit(tiny_config(digits_dir, run, epochs=1), log=lambda _: None)
    with pytest.raises(ResnetlabError, match=re.escape(said.format(run=run)).replace(r"\$", "$")):
        fit(tiny_config(digits_dir, run, epochs=2, resume=str(run), **change), log=lambda _: None)
    said: list[str] = []
    fit(tiny_config(digits_dir, run, epochs=2, resume=str(run), opt="muon", batch_size=4, lr=1e-3), log=said.append)
    lr = tiny_config(digits_dir, run).resolved_lr()  # the default the run took
    assert said[0] == (
        f"note: resumed with other options than the run used (batch_size 8 -> 4, lr {lr} -> 0.001): it goes on from"
        " last.pt under them, so it is not the run it would have been"
    )


def test_a_staged_run_keeps_its_frozen_epochs_on_resume(digits_dir, tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(digits_dir, run, epochs=2, mode="staged", freeze_epochs=1), log=lambda _: None)
    with pytest.raises(ResnetlabError, match="--freeze-epochs 2: .* was made with freeze_epochs 1"):
        fit(tiny_config(digits_dir, run, epochs=3, resume=str(run), mode="staged", freeze_epochs=2))


def test_resume_of_a_run_stopped_in_its_first_epoch_says_how_to_start_it_again(digits_dir, tmp_path, monkeypatch):
    # config.yaml is written before epoch 1, last.pt after it: a stop in between leaves nothing to resume.
    from resnetlab.cli import main

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"

    def stop_at_start(line: str) -> None:
        if line.startswith("train "):
            raise Killed

    with pytest.raises(Killed):
        fit(tiny_config(digits_dir, run, epochs=1), log=stop_at_start)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events")) == [
        ".lock",  # free again: the process that held it has let go
        "class_indices.json",
        "config.yaml",
    ]
    with pytest.raises(ResnetlabError) as err:
        fit(tiny_config(digits_dir, run, epochs=1, resume=str(run)))
    advice = f"resnetlab train --config {run / 'config.yaml'} --out {run}"
    assert str(err.value) == (
        f"--resume {run}: no last.pt there, so the run stopped before its first epoch ended; start it afresh with "
        + advice
    )
    assert main(advice.split()[1:]) == 0 and load_checkpoint(run / "last.pt")["epoch"] == 1  # the advice works


def test_resume_from_another_directory(digits_dir, tmp_path, monkeypatch, capsys):
    # A run started with relative paths (`train data --out runs/r`) resumes from anywhere: config.yaml keeps them
    # absolute, and a run saved before that (relative data in its config.yaml) takes its checkpoint's data root.
    import yaml

    from resnetlab.cli import main

    monkeypatch.chdir(digits_dir.parent)
    flags = ["--model", "resnet20", "--img-size", "16", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert main(["train", digits_dir.name, *flags, "--epochs", "1", "--out", "runs/r"]) == 0
    run = digits_dir.parent / "runs" / "r"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"] == str(digits_dir.resolve()) and saved["out"] == str(run.resolve())
    saved["data"] = digits_dir.name  # as runs saved before absolute paths had it
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert resumed["data"] == str(digits_dir.resolve())
    assert resumed["resume"] is None  # `train --config RUN/config.yaml --out NEW` starts a new run, not this one


def test_a_summary_older_than_last_pt_is_written_again(digits_dir, tmp_path):
    # The process died between saving the last epoch and writing summary.json (a closed pipe, a kill): resuming
    # rewrites the summary from last.pt and history.csv instead of reporting the stale one as finished.
    run = tmp_path / "run"
    cfg = tiny_config(digits_dir, run, epochs=2)
    first = fit(cfg, log=lambda _: None)
    stale = {**first, "epochs_run": 1, "best_val_acc": 0.0, "best_epoch": 1}
    (run / "summary.json").write_text(json.dumps(stale))
    said: list[str] = []
    again = fit(cfg.merge({"resume": str(run)}), log=said.append)
    assert any("describes 1 epochs, last.pt 2" in line for line in said), said
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # nothing trained
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(again))
    for key in ("epochs_run", "best_epoch", "best_val_acc", "final_val_acc"):
        assert again[key] == first[key], key


def test_an_early_stopped_run_stays_stopped_unless_patience_grows(digits_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(digits_dir, run, epochs=10, lr=0.0, warmup_epochs=0, patience=2)  # lr 0: never improves
    assert fit(cfg, log=lambda _: None)["epochs_run"] == 3
    said: list[str] = []
    fit(cfg.merge({"resume": str(run)}), log=said.append)
    assert said == [
        f"{run} already finished: last.pt holds its last epoch, 3; nothing to resume (early stopping ended it, 2"
        " epochs without a better val accuracy; to train on, resume with --patience above 2, or 0 for none)"
    ]
    longer = fit(cfg.merge({"resume": str(run), "patience": 4}), log=lambda _: None)
    assert longer["epochs_run"] == 5 and longer["stopped_early"]


def test_a_run_folder_has_one_writer_at_a_time(digits_dir, tmp_path):
    # A `--resume` started while the run still trains would interleave checkpoints and history rows: refused.
    import subprocess

    run = tmp_path / "run"
    cfg = tiny_config(digits_dir, run, epochs=1)
    fit(cfg, log=lambda _: None)
    holder = subprocess.Popen(  # another process holding the folder's lock, as a training run does
        [sys.executable, "-c", "import sys, time; from resnetlab.engine.run_lock import RunLock; "
         f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ResnetlabError, match=rf"{run}: another resnetlab train \(pid {holder.pid}\) is writing"):
            fit(cfg.merge({"resume": str(run), "epochs": 2}), log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # nothing written while it was held
    assert fit(cfg.merge({"resume": str(run), "epochs": 2}), log=lambda _: None)["epochs_run"] == 2  # free again


def test_a_killed_trainers_children_do_not_keep_its_lock(tmp_path):
    # DataLoader workers are forked children: they shared the lock's open file and held it ~5 s after a kill -9.
    import signal
    import subprocess

    from resnetlab.engine.run_lock import RunLock

    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"cut short")  # what a kill -9 mid-write leaves
    script = (
        "import os, time; from resnetlab.engine.run_lock import RunLock; "
        f"RunLock({str(tmp_path)!r}).acquire(); pid = os.fork()\n"
        "if pid == 0: time.sleep(60)\n"
        "else: print(pid, flush=True); time.sleep(60)"
    )
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(trainer.stdout.readline())
    try:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        RunLock(tmp_path).acquire().release()  # at once, though the child still runs
        os.kill(child, 0)  # (it does)
    finally:
        os.kill(child, signal.SIGKILL)
    assert not list(tmp_path.glob(".*.tmp"))  # the stale temp file went with the next writer's start


def test_a_stop_between_saved_files_leaves_a_folder_that_resumes_whole(digits_dir, tmp_path, monkeypatch):
    # last.pt is written last, so a stop right after it finds best.pt and history.csv already written (with last.pt
    # first, a stop there left best.pt an epoch behind and history.csv a row short, for good); a stop before it
    # leaves the previous epoch's last.pt, and the resumed run retrains the epoch and writes them again.
    import csv

    import resnetlab.engine.fit as fit_module

    class Stop(Exception):
        pass

    real = fit_module.save_checkpoint

    def stop_after_last(path, payload):
        written = real(path, payload)
        if path.name == "last.pt" and payload["epoch"] == 2:
            raise Stop
        return written

    cfg = tiny_config(digits_dir, tmp_path / "run", epochs=3)
    monkeypatch.setattr(fit_module, "save_checkpoint", stop_after_last)
    with pytest.raises(Stop):
        fit(cfg, log=lambda _: None)
    monkeypatch.setattr(fit_module, "save_checkpoint", real)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
    fit(cfg.merge({"resume": str(tmp_path / "run")}), log=lambda _: None)
    fit(tiny_config(digits_dir, tmp_path / "whole", epochs=3), log=lambda _: None)
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "run" / name), load_checkpoint(tmp_path / "whole" / name)
        assert a["epoch"] == b["epoch"] and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    with (tmp_path / "run" / "history.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_resume_with_another_out_is_refused(digits_dir, tmp_path, capsys):
    # --out was silently ignored: the resumed run trained on in the --resume folder.
    from resnetlab.cli import main

    run = tmp_path / "run"
    fit(tiny_config(digits_dir, run, epochs=1), log=lambda _: None)
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other"), "--epochs", "2"]) == 2
    assert "a resumed run goes on in its own folder; drop --out" in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (tmp_path / "other").exists()
