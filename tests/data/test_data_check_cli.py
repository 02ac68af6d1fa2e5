from __future__ import annotations

import shutil

from PIL import Image

from resnetlab.cli import main


def test_check_usable_with_grid(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"猫": 4, "dog": 4})
    shutil.copy(root / "dog" / "dog_000.jpg", root / "dog" / "copy.jpg")
    grid = tmp_path / "grid.png"
    assert main(["data", "check", str(root), "--grid", str(grid), "--per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "猫" in out and "ok: usable" in out
    assert "imbalance: 1.3x (dog 4 / 猫 3)" in out  # with the copy 5 dogs and 4 cats, one of each held out
    assert "1 group(s) of identical files" in out
    assert "dog_000.jpg" in out and "copy.jpg" in out  # which files, even within one split
    assert "different class folders" not in out  # both copies are dogs
    shutil.copy(root / "dog" / "dog_001.jpg", root / "猫" / "also-a-cat.jpg")
    assert main(["data", "check", str(root)]) == 0
    assert "note: 1 group(s) of identical files lie in different class folders" in capsys.readouterr().out
    assert Image.open(grid).size[0] > 100


def test_identical_files_are_judged_by_class_not_by_parent_folder(tmp_path, capsys, make_class_tree):
    # Sub-folders inside a class are not classes: two copies under cat/2019 and cat/2020 are one label; copies under
    # cat/imgs and dog/imgs are two.
    root = make_class_tree(tmp_path / "ds", {"cat": 3, "dog": 3})
    for year in ("2019", "2020"):
        (root / "cat" / year).mkdir()
        shutil.copy(root / "cat" / "cat_000.jpg", root / "cat" / year / "a.jpg")
    assert main(["data", "check", str(root)]) == 0
    assert "different class folders" not in capsys.readouterr().out
    for name in ("cat", "dog"):
        (root / name / "imgs").mkdir()
    shutil.copy(root / "dog" / "dog_001.jpg", root / "cat" / "imgs" / "x.jpg")
    shutil.copy(root / "dog" / "dog_001.jpg", root / "dog" / "imgs" / "y.jpg")
    assert main(["data", "check", str(root)]) == 0
    assert "note: 1 group(s) of identical files lie in different class folders" in capsys.readouterr().out


def test_a_class_with_no_readable_image_is_reported_not_aborted(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "bad").mkdir()
    (root / "bad" / "zero.jpg").write_bytes(b"")
    (root / "bad" / "text.jpg").write_text("not an image")
    assert main(["data", "check", str(root)]) == 2
    captured = capsys.readouterr()
    assert "zero.jpg" in captured.out and "text.jpg" in captured.out  # the report lists what was skipped
    assert "not usable: no usable training images of bad" in captured.err


def test_balanced_classes_say_so(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 5})
    assert main(["data", "check", str(root)]) == 0
    assert "imbalance: none (every class has 4 training images)" in capsys.readouterr().out


def test_a_class_with_nothing_held_out_is_named(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 1, "c": 1})  # a single image is never held out
    assert main(["data", "check", str(root)]) == 0
    assert "note: no validation images of b, c: validation cannot tell whether the model learnt them" in (
        capsys.readouterr().out
    )


def test_check_corrupt_default_vs_strict(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "a" / "cut.jpg").write_bytes((root / "a" / "a_000.jpg").read_bytes()[:200])
    assert main(["data", "check", str(root)]) == 0
    assert "cut.jpg" in capsys.readouterr().out
    assert main(["data", "check", str(root), "--strict"]) == 2
    assert "not usable" in capsys.readouterr().err


def test_check_unusable_exit_2(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "one", {"only": 3})
    assert main(["data", "check", str(root)]) == 2
    assert "need at least 2" in capsys.readouterr().err
    (root / "empty").mkdir()
    assert main(["data", "check", str(root)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing")]) == 2


def test_split_writes_reusable_lists(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 5})
    assert main(["data", "split", str(root), "--out", str(tmp_path / "lists" / "s"), "--seed", "2"]) == 0
    assert (tmp_path / "lists" / "s_val.txt").is_file()
    code = main(["data", "check", str(root), "--split-file", str(tmp_path / "lists" / "s_train.txt")])
    assert code == 0 and "train" in capsys.readouterr().out


def test_split_out_may_name_a_folder(tmp_path, capsys, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 5})
    out = tmp_path / "lists"
    assert main(["data", "split", str(root), "--out", f"{out}/"]) == 0  # a trailing slash: a folder, made
    assert (out / "ds_split_train.txt").is_file() and (out / "ds_split_val.txt").is_file()
    assert main(["data", "split", str(root), "--out", str(out), "--seed", "1"]) == 0  # an existing folder
    assert "ds_split_train.txt" in capsys.readouterr().out and not (tmp_path / "lists_train.txt").exists()


def test_split_lists_of_a_train_val_layout_round_trip(tmp_path, make_class_tree):
    # ROOT/train/<class>, ROOT/val/<class>: the lists say `train/a/0.png`, whose class is `a`, not `train`.
    from resnetlab.data.folder import make_splits

    root = tmp_path / "ds"
    make_class_tree(root / "train", {"a": 5, "b": 4})
    make_class_tree(root / "val", {"a": 2, "b": 3})
    assert main(["data", "split", str(root), "--out", str(tmp_path / "lists" / "s")]) == 0
    frozen = make_splits(root, split_file=tmp_path / "lists" / "s_train.txt")
    layout = make_splits(root)
    assert frozen.classes == layout.classes == ["a", "b"]
    assert sorted(frozen.train) == sorted(layout.train) and sorted(frozen.val) == sorted(layout.val)


def test_decode_finds_damage_inside_the_pixel_data(tmp_path, capsys, make_class_tree):
    import numpy as np

    root = make_class_tree(tmp_path / "ds", {"a": 4, "b": 4})
    bad = root / "a" / "zz.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
    data = bytearray(bad.read_bytes())
    start = data.index(b"IDAT") + 200  # inside the compressed pixels; the header and IEND stay intact
    data[start : start + 64] = bytes(64)
    bad.write_bytes(bytes(data))
    assert main(["data", "check", str(root)]) == 0
    assert "zz.png" not in capsys.readouterr().out  # the header check cannot see it
    assert main(["data", "check", str(root), "--decode", "--strict"]) == 2
    out = capsys.readouterr().out
    assert f"{bad}: " in out and "1 skipped" in out
