"""`resnetlab predict`: inputs as files, folders and globs; table, --json, --csv, --grid; errors and exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.predict import load


def run_json(capsys, *argv: str) -> tuple[int, list[dict]]:
    code = main(["predict", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_matches_python_api(capsys, tiny_run, tiny_data):
    code, results = run_json(capsys, str(tiny_run), str(tiny_data / "glass"), "--topk", "2")
    assert code == 0
    paths = sorted((tiny_data / "glass").glob("*.jpg"))
    assert [r["path"] for r in results] == [str(p) for p in paths]
    api = load(tiny_run).predict_paths(paths, topk=2)
    for cli_row, api_row in zip(results, api):
        assert [p["label"] for p in cli_row["predictions"]] == [p["label"] for p in api_row["predictions"]]
        for a, b in zip(cli_row["predictions"], api_row["predictions"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def test_mix_of_good_and_corrupt_files(capsys, tiny_run, mixed_inputs):
    folder = mixed_inputs["folder"][0]
    code, results = run_json(capsys, str(tiny_run), str(folder), str(folder / "missing.jpg"))
    assert code == 1
    by_path = {r["path"]: r for r in results}
    for good in mixed_inputs["good"]:  # including the one in a sub-folder: folders are searched recursively
        assert by_path[str(good)]["predictions"][0]["label"] in ("cardboard", "glass", "metal")
    for bad in mixed_inputs["bad"]:
        assert by_path[str(bad)]["error"]
    assert by_path[str(folder / "missing.jpg")]["error"] == "no such file or folder"
    assert results[-1]["path"] == str(folder / "missing.jpg")  # inputs keep their order


def test_glob_patterns_and_table_output(capsys, tiny_run, tiny_data):
    code = main(["predict", str(tiny_run), str(tiny_data / "*" / "metal1*.jpg"), "no/match/*.png"])
    out = capsys.readouterr()
    assert code == 1  # the second pattern matched nothing
    lines = out.out.strip().splitlines()
    metal = sorted((tiny_data / "metal").glob("metal1*.jpg"))
    assert len(lines) == len(metal) + 1
    for line, path in zip(lines, metal):
        assert line.startswith(str(path))
        assert any(name in line for name in ("cardboard", "glass", "metal"))
    assert "pattern matches no files" in lines[-1]
    assert "1 of" in out.err


def test_csv_and_grid(capsys, tiny_run, mixed_inputs, tmp_path):
    csv_path, grid_path = tmp_path / "out.csv", tmp_path / "grid.png"
    code = main(
        ["predict", str(tiny_run), str(mixed_inputs["folder"][0]), "--csv", str(csv_path), "--grid", str(grid_path)]
    )
    assert code == 1
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert len(rows) == len(mixed_inputs["good"]) + len(mixed_inputs["bad"])
    assert sum(bool(r["error"]) for r in rows) == len(mixed_inputs["bad"])
    assert all(r["label_1"] and float(r["score_1"]) > 0 for r in rows if not r["error"])
    with Image.open(grid_path) as im:
        assert im.width > 200 and im.height > 100
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # real content, not a blank canvas


def test_a_file_name_that_is_not_utf8_is_written_as_it_is(capsys, tiny_run, tiny_data, tmp_path):
    # A Latin-1 name unpacked on Linux: Python holds its byte 0xff as a lone surrogate, which UTF-8 cannot encode.
    import os
    import shutil

    folder = tmp_path / "odd"
    (folder / "glass").mkdir(parents=True)
    raw = os.fsencode(folder / "glass") + b"/caf\xe9 \xff.jpg"
    shutil.copy(next((tiny_data / "glass").glob("*.jpg")), raw)
    name = os.fsdecode(raw)
    csv_path = tmp_path / "new" / "folder" / "out.csv"  # made before the model runs
    assert main(["predict", str(tiny_run), name, "--csv", str(csv_path)]) == 0
    assert os.fsencode(name) in csv_path.read_bytes()  # the bytes the name has on disk
    assert main(["eval", str(tiny_run), str(folder), "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "eval.json").read_text(encoding="utf-8"))
    assert report["num_samples"] == 1  # written (in ASCII escapes), not cut off by the name
    assert report["top1"] == 1.0 or [m["path"] for m in report["mistakes"]] == [name]  # read back as the same name
    assert main(["predict", str(tiny_run), name, "--csv", str(tmp_path)]) == 2  # a folder: refused at once
    assert "is a folder; name a file" in capsys.readouterr().err


def test_tta_flag_and_bad_options(capsys, tiny_run, tiny_data):
    image = str(sorted((tiny_data / "glass").glob("*.jpg"))[0])
    code, results = run_json(capsys, str(tiny_run), image, "--tta", "--topk", "3")
    assert code == 0 and len(results[0]["predictions"]) == 3
    assert main(["predict", str(tiny_run), image, "--topk", "0"]) == 2
    assert "--topk" in capsys.readouterr().err


def test_console_script_exit_code(tiny_run, mixed_inputs):
    """The real entry point, in a subprocess: the exit code and the error lines users see."""
    bad = mixed_inputs["bad"][2]
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "predict", str(tiny_run), str(mixed_inputs["good"][0]), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "ERROR" in proc.stdout and str(bad) in proc.stdout
    assert "Traceback" not in proc.stderr
