"""Tiny real image folders for engine tests: scikit-learn's hand-written digits written as small PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_digits(root: Path, per_class: dict[int, int], size: int = 16, offset: int = 0) -> Path:
    """`per_class[digit]` real 8x8 digits per class, upscaled to `size` px RGB PNGs in root/<digit name>/."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit, count in per_class.items():
        folder = root / names[digit]
        folder.mkdir(parents=True, exist_ok=True)
        images = digits.images[digits.target == digit][offset : offset + count]
        for i, img in enumerate(images):
            pixels = (255 - img * 255 / 16).astype(np.uint8)  # dark ink on white, like a scan
            Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine two OpenMP threads spin-wait on each other: a tiny training step measured 100x
    # slower with 2 threads than with 1 while other processes were busy.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 images at 16 px (the default 20% split keeps 3-4 per class for validation)."""
    return write_digits(tmp_path_factory.mktemp("digits"), {0: 16, 1: 16, 2: 16})


def tiny_config(data: Path, out: Path, **overrides):
    """A fast TrainConfig: CIFAR ResNet-20 at 16 px, batch 8, main-process loading, no progress bar."""
    from resnetlab.config import TrainConfig

    base = dict(data=str(data), model="resnet20", img_size=16, epochs=2, batch_size=8, workers=0, out=out and str(out))
    return TrainConfig.from_dict({**base, "progress": False, **overrides})


class Killed(Exception):
    pass


def kill_after(epoch: int, total: int):
    """A `fit` log hook that stops the run right after epoch `epoch` of `total` wrote last.pt, as a kill would."""

    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch:>3}/{total}"):
            raise Killed  # after last.pt of `epoch` was written, as a kill would leave it

    return log


def full_and_resumed(data: Path, tmp_path: Path, kill_at: int, **overrides) -> tuple[dict, dict]:
    """last.pt of an uninterrupted `fit` and of the same run killed after epoch `kill_at`, then resumed."""
    from resnetlab.engine.checkpoint import load_checkpoint
    from resnetlab.engine.fit import fit

    fit(tiny_config(data, tmp_path / "full", **overrides), log=lambda _: None)
    cut = tiny_config(data, tmp_path / "cut", **overrides)
    with pytest.raises(Killed):
        fit(cut, log=kill_after(kill_at, cut.epochs))
    fit(cut.merge({"resume": str(tmp_path / "cut")}), log=lambda _: None)
    return load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")


def sigterm_after(cmd: list[str], prefix: str, env: dict | None = None, group: bool = False) -> tuple[int, str]:
    """Run `cmd`, send it SIGTERM once a stdout line starts with `prefix`; returns (exit code, stderr).

    `group`: to its whole process group (its loader workers too), as `timeout` and batch schedulers do.
    """
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=group
    )
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                if group:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err
