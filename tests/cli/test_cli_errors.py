"""What every command does with failures outside resnetlab's own checks: a file it cannot write, a closed pipe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resnetlab.cli import main
from tests.engine.conftest import write_digits


def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path, capsys):
    data = write_digits(tmp_path / "data", {0: 4, 1: 4})
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where a folder would have to be
    grid = blocker / "grid.png"
    assert main(["data", "check", str(data), "--grid", str(grid)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"resnetlab data: error: {blocker}") and err.count("\n") == 1, err  # its path, the reason


def test_a_closed_pipe_ends_quietly():
    # `resnetlab models | head -1`: the reader leaves before the table is written; no BrokenPipeError traceback.
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(
    ("argv", "option", "name"),
    [
        (["explain", "no-run", "no.jpg", "--out", "cam.txt"], "--out", "'.txt' is not a picture type"),
        (["predict", "no-run", "no.jpg", "--grid", "grid"], "--grid", "the name has no picture type"),
        (["data", "check", "no-folder", "--grid", "grid.csv"], "--grid", "'.csv' is not a picture type"),
    ],
)
def test_a_picture_name_matplotlib_cannot_write_fails_first(tmp_path, capsys, argv, option, name):
    # Checked before anything runs: the run, the image and the folder named here do not exist, and their own errors
    # would come later. matplotlib's ValueError after the model had run was a traceback.
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert f"error: {option} " in err and name in err and err.count("\n") == 1, err


def test_an_image_over_pillows_pixel_limit_is_reported_without_its_warning(tmp_path):
    # Between Pillow's limit and twice it, Image.open warns (several lines on stderr) before resnetlab's own refusal.
    from PIL import Image

    data = write_digits(tmp_path / "data", {0: 4, 1: 4})
    width = 12000
    Image.new("L", (width, Image.MAX_IMAGE_PIXELS // width + 1)).save(data / "one" / "huge.png")
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "data", "check", str(data)], capture_output=True, text=True, timeout=120
    )
    assert "huge.png" in proc.stdout and "decompression bomb" in proc.stdout, proc.stdout
    assert "DecompressionBombWarning" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
