"""DDP under torchrun (2 processes, gloo on CPU) reaches the weights of a single process with the same global batch.

BatchNorm is the subtle part: in training mode each rank normalises with its own half-batch statistics, so plain
DDP is *by design* not equal to one process seeing the whole batch, and SyncBatchNorm (which would fix that) has no
CPU kernel. The test therefore trains every weight with `--freeze-bn` (BatchNorm uses its running statistics), where
the only coupling between ranks is DDP's gradient all-reduce: exactly what must match. Frozen statistics only make
sense for a warm start, so both runs start from a weights file whose BN statistics were calibrated. Augmentation is
off so both runs feed identical pixels; the shared sampler gives rank r the r-th interleaved half of each global
batch. SGD is used because its update is linear in the gradient: Adam divides by sqrt(v) + eps, which turns
float-rounding noise in near-zero gradients into differences of a whole step (seen: one weight of 20k off by 6e-5).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint
from tests.engine.conftest import sigterm_after, write_digits

ARGS = [
    "--model", "resnet20", "--img-size", "16", "--epochs", "2", "--batch-size", "8", "--augment", "none",
    "--freeze-bn", "--opt", "sgd", "--lr", "0.01", "--amp", "off", "--workers", "0", "--cache", "none",
    "--seed", "3", "--no-progress", "--device", "cpu",
]  # fmt: skip


def _calibrated_weights(path):
    """resnet20 weights whose BatchNorm running statistics were measured on normalised-image-like inputs."""
    from resnetlab.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, 3, 16, 16))
    torch.save(model.state_dict(), path)
    return str(path)


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _ddp_and_one(tmp_path, args: list[str]) -> tuple[dict, dict]:
    """The last checkpoints of a 2-rank torchrun run and of one process, both with `args`."""
    data = write_digits(tmp_path / "data", {0: 10, 1: 10, 2: 10, 3: 10})  # 32 train: 4 global batches of 8
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _run([*torchrun, "-m", "resnetlab", "train", str(data), *args, "--out", str(tmp_path / "ddp")])
    _run([sys.executable, "-m", "resnetlab", "train", str(data), *args, "--out", str(tmp_path / "one")])
    return load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    start = _calibrated_weights(tmp_path / "start.pt")
    ddp, one = _ddp_and_one(tmp_path, [*ARGS, "--pretrained", start])
    assert ddp["epoch"] == one["epoch"] == 2
    initial = torch.load(start, weights_only=True)
    for key, value in one["model"].items():
        assert torch.allclose(ddp["model"][key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    moved = [k for k, v in one["model"].items() if v.is_floating_point() and not torch.allclose(v, initial[k])]
    assert "conv1.weight" in moved and "layer3.2.conv2.weight" in moved  # the equality is not of untouched weights
    # Validation counted every image once across the two ranks.
    assert ddp["metrics"]["val_acc"] == pytest.approx(one["metrics"]["val_acc"])
    assert not list((tmp_path / "ddp").glob("*.tmp"))


@pytest.mark.slow
def test_two_gloo_ranks_with_muon_track_one_process(tmp_path):
    # Muon, the default from scratch, under DDP. Its Newton-Schulz iteration runs in bf16 on a CPU with native bf16,
    # so rounding differences in the all-reduced gradient change updates slightly: not bit-equal as with SGD, so each
    # weight's distance from the one-process run is bounded relative to how far it moved (Frobenius norms). Measured
    # (2026-11-27): at most 0.12 of the movement (the 16x27 stem), 0.03 for most filters; with ranks that stepped on
    # their own half-batches (DDP removed) every trained tensor was 0.23-0.67 off.
    start = _calibrated_weights(tmp_path / "start.pt")
    args = [*ARGS, "--pretrained", start, "--opt", "muon", "--lr", "1e-3"]  # later flags win
    ddp, one = _ddp_and_one(tmp_path, args)
    assert ddp["config"]["opt"] == one["config"]["opt"] == "muon"
    initial = torch.load(start, weights_only=True)
    trained = 0
    for key, value in one["model"].items():
        moved = (value.float() - initial[key].float()).norm()
        if moved > 0:
            trained += 1
            assert (ddp["model"][key].float() - value.float()).norm() <= 0.2 * moved, key
    assert trained >= 40  # the 19 conv filters, the head and the BatchNorm affine parameters


def test_validation_under_torchrun_is_of_the_weights_rank_0_saves(tmp_path, capsys):
    # Each rank's BatchNorm statistics follow its own half-batches; unless they are made one before validation, the
    # second rank validates its shard with another model than the one saved, and history.csv disagrees with `eval`.
    import csv

    from resnetlab.cli import main

    data = write_digits(tmp_path / "data", {0: 12, 1: 12, 2: 12, 3: 12})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["--model", "resnet20", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    args += ["--device", "cpu", "--amp", "off", "--cache", "none", "--no-progress", "--augment", "none"]
    _run([*torchrun, "-m", "resnetlab", "train", str(data), *args, "--out", str(tmp_path / "run")])
    with open(tmp_path / "run" / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--amp", "off", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["num_samples"] == 8
    assert report["loss"] == pytest.approx(float(row["val_loss"]), abs=1e-5)


def test_sigterm_to_torchrun_stops_every_rank_with_one_line_of_advice(tmp_path):
    # torchrun passes SIGTERM on to its workers; rank 0 writes last.pt and says, once, what it holds and how to go on
    # (in torchrun's form); the other rank stops with the same exit code and says nothing.
    data = write_digits(tmp_path / "data", {0: 10, 1: 10, 2: 10, 3: 10})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["--model", "resnet20", "--img-size", "16", "--epochs", "100", "--batch-size", "8", "--workers", "0"]
    args += ["--device", "cpu"]  # gloo: on a machine with one GPU, two CUDA ranks would be refused
    cmd = [*torchrun, "-m", "resnetlab", "train", str(data), *args, "--out", str(tmp_path / "run")]
    _, err = sigterm_after(cmd, "epoch   2/", env={**os.environ, "OMP_NUM_THREADS": "1"})
    run = tmp_path / "run"
    advice = f"continue with torchrun --nproc-per-node 2 -m resnetlab train --resume {run}"
    said = [ln for ln in err.splitlines() if ln.startswith("resnetlab train: error:")]
    pattern = rf"resnetlab train: error: terminated; {re.escape(str(run / 'last.pt'))} holds epoch (\d+): "
    epochs = [int(m.group(1)) for ln in said if (m := re.fullmatch(pattern + re.escape(advice), ln))]
    assert len(said) == 1 and len(epochs) == 1, err[-3000:]
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs[0] >= 2


def test_more_ranks_than_gpus_is_one_clear_line_on_every_rank(monkeypatch):
    from resnetlab.engine import distributed as ddp
    from resnetlab.errors import ResnetlabError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda _: pytest.fail("set_device before the check"))
    expected = "torchrun started 2 processes on this machine, which has 1 CUDA device(s): run --nproc-per-node 1 or"
    for rank in (0, 1):  # rank 0 too: it must not wait in the rendezvous for a rank that cannot start
        env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ResnetlabError, match=re.escape(expected)):
            ddp.init_distributed(None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda _: None)
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: True)  # joining is not this test's business
    assert ddp.init_distributed("cpu").world_size == 2  # --device cpu: gloo, no GPU count applies


def test_time_budget_ends_an_epoch_on_the_same_step_on_every_rank(tmp_path):
    # A budget already spent when the first estimate comes (step 3): rank 0's cut is broadcast, so both ranks leave
    # the loop at the same step (a rank that went on would wait forever in DDP's all-reduce).
    data = write_digits(tmp_path / "data", {0: 20, 1: 20, 2: 20, 3: 20})  # 64 train: 16 steps of 2 on each rank
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["--model", "resnet20", "--img-size", "16", "--epochs", "5", "--batch-size", "4", "--workers", "0"]
    args += ["--device", "cpu", "--no-progress", "--time", "0.01s", "--out", str(tmp_path / "run")]
    proc = subprocess.run(
        [*torchrun, "-m", "resnetlab", "train", str(data), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1 ended after 3 of its 16 steps, where the budget runs out" in proc.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == ckpt["planned_epochs"] == 1 and ckpt["scheduler"]["steps"] == 3


def _cut_on_rank(rank: int, store: str, pace: float, out: str) -> None:
    """One gloo rank running EpochCut over a 32-step epoch on a clock that ticks `pace` seconds a step."""
    import json

    import torch.distributed as dist

    from resnetlab.engine import distributed as ddp
    from resnetlab.engine.budget import EpochCut

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    now, ends = [0.0], []
    cut = EpochCut(
        steps=32, deadline=10.0, budget=10.0, tail_seconds=0.0, val_steps=0, end_at=ends.append,
        info=ddp.DistInfo(rank=rank, world_size=2), device=torch.device("cpu"), clock=lambda: now[0],
    )  # fmt: skip
    for done in range(1, 33):
        now[0] = done * pace
        if cut(done):
            break
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump({"left_at": done, "ends": ends}, f)


def test_epoch_cut_follows_rank_0s_clock_on_every_rank(tmp_path):
    # Rank 0's clock says the budget runs out at step 10; rank 1's says the whole epoch fits. Both must leave at step
    # 10 with the same schedule (a rank that decided on its own clock would wait forever in DDP's next all-reduce).
    import json

    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.json") for r in (0, 1)]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_cut_on_rank, args=(r, str(tmp_path / "store"), p, outs[r]))
        for r, p in enumerate((1.0, 0.01))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.load(open(o)) for o in outs]
    assert results[0] == results[1] == {"left_at": 10, "ends": [10]}


def test_sync_bn_on_the_cpu_is_refused_before_any_set_up(tmp_path, monkeypatch):
    # SyncBatchNorm has no CPU kernel: the refusal comes before the data scan, and leaves no run folder behind.
    from resnetlab.engine import distributed as ddp
    from resnetlab.engine.fit import fit
    from resnetlab.errors import ResnetlabError
    from tests.engine.conftest import tiny_config

    monkeypatch.setattr(ddp, "init_distributed", lambda device=None: ddp.DistInfo(rank=0, world_size=2))
    monkeypatch.setattr("resnetlab.data.folder.make_splits", lambda *a, **k: pytest.fail("scanned the data"))
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", sync_bn=True, device="cpu")
    with pytest.raises(ResnetlabError, match="--sync-bn needs CUDA"):
        fit(cfg)
    assert not (tmp_path / "run").exists()
