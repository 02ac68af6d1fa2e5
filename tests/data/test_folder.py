from __future__ import annotations

import json
import logging

import pytest

from resnetlab.data.folder import DatasetSplits, make_splits, read_class_indices, scan_images, write_class_indices
from resnetlab.errors import ResnetlabError


def _names(samples):
    return sorted(p.name for p, _ in samples)


def test_stratified_split_deterministic(tree):
    a = make_splits(tree, val_fraction=0.2, seed=0)
    b = make_splits(tree, val_fraction=0.2, seed=0)
    c = make_splits(tree, val_fraction=0.2, seed=1)
    assert a.classes == ["cat", "dog", "fox"]
    assert _names(a.val) == _names(b.val) and _names(a.train) == _names(b.train)
    assert _names(a.val) != _names(c.val)
    assert a.counts()["val"] == [2, 2, 1]  # per class, rounded
    assert not set(_names(a.train)) & set(_names(a.val))
    assert all(p.parent.name == a.classes[label] for p, label in a.train + a.val)


def test_train_val_layout_and_test(tmp_path, make_class_tree):
    make_class_tree(tmp_path / "d" / "train", {"a": 3, "b": 3})
    make_class_tree(tmp_path / "d" / "val", {"a": 1, "b": 1})
    make_class_tree(tmp_path / "d" / "test", {"b": 2})
    s = make_splits(tmp_path / "d")
    assert s.layout == "train_val" and s.classes == ["a", "b"]
    assert [len(s.train), len(s.val), len(s.test)] == [6, 2, 2]
    assert {label for _, label in s.test} == {1}  # index from train, not from the test folder


def test_hymenoptera_train_val(shared):
    s = make_splits(shared / "datasets" / "hymenoptera")
    assert s.layout == "train_val" and s.classes == ["ants", "bees"]
    assert (len(s.train), len(s.val)) == (245, 153) and not s.skipped
    assert any(p.name == "ant photos.jpg" for p, _ in s.train)


def test_val_class_missing_from_train(tmp_path, make_class_tree):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "v", {"a": 1, "c": 1})
    with pytest.raises(ResnetlabError, match=f"--val-dir {tmp_path / 'v'} has classes missing from train: c"):
        make_splits(tmp_path / "train", val_dir=tmp_path / "v")


def test_the_skipped_warning_names_the_command_that_lists_them(tmp_path, make_class_tree, caplog):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "v", {"a": 1, "b": 1})
    (tmp_path / "v" / "a" / "junk.jpg").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        make_splits(tmp_path / "train", val_dir=tmp_path / "v")
    assert f"`resnetlab data check {tmp_path / 'train'} --val-dir {tmp_path / 'v'}` lists them" in caplog.text


def test_val_dir_that_is_the_training_folder_is_refused(tmp_path, make_class_tree, monkeypatch):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResnetlabError, match="is the training folder itself"):
        make_splits(tmp_path / "train", val_dir="train/")  # another spelling of the same folder


def test_val_dir(tmp_path, make_class_tree):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "v", {"b": 1})
    s = make_splits(tmp_path / "train", val_dir=tmp_path / "v")
    assert s.layout == "val_dir" and len(s.train) == 4 and [label for _, label in s.val] == [1]


def test_a_missing_folder_or_a_file_is_named(tmp_path, make_class_tree):
    with pytest.raises(ResnetlabError, match="nope: no such folder"):
        make_splits(tmp_path / "nope")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")
    with pytest.raises(ResnetlabError, match="photo.jpg: a file, not a folder; pass the folder that holds one"):
        make_splits(photo)
    root = make_class_tree(tmp_path / "ds", {"a": 3, "b": 3})
    with pytest.raises(ResnetlabError, match="photo.jpg: a file, not a folder"):
        make_splits(root, val_dir=photo)


def test_empty_class_folder_named(tree):
    (tree / "empty_one").mkdir()
    (tree / "empty_one" / "readme.txt").write_text("x")
    with pytest.raises(ResnetlabError, match="empty_one"):
        make_splits(tree)


def test_hidden_nested_unicode(tmp_path, make_image, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"猫": 3, "狗": 3})
    make_image(root / "猫" / "sub" / "deeper" / "小猫 1.PNG")
    make_image(root / "猫" / ".hidden.jpg")
    (root / ".ipynb_checkpoints").mkdir()
    make_image(root / ".ipynb_checkpoints" / "x.jpg")
    (root / "狗" / "labels.csv").write_text("a,b\n")
    s = make_splits(root, val_fraction=0.0)
    assert s.classes == sorted(["猫", "狗"])
    assert len(s.train) == 7 and s.ignored == 3  # hidden file, hidden folder, csv
    assert any(p.name == "小猫 1.PNG" for p, _ in s.train)
    assert scan_images(root / "猫") == sorted(scan_images(root / "猫"), key=lambda p: p.as_posix())
    assert len(scan_images(root / "猫", recursive=False)) == 3


def test_corrupt_files_skipped_with_one_warning(tree, caplog):
    (tree / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tree / "dog" / "zero.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        s = make_splits(tree)
    assert sorted(p.name for p, _ in s.skipped) == ["broken.jpg", "zero.png"]
    assert all(reason for _, reason in s.skipped)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1
    assert "broken.jpg" not in _names(s.train + s.val)
    with pytest.raises(ResnetlabError, match="strict"):
        make_splits(tree, strict=True)


@pytest.mark.parametrize("seed", range(4))
def test_the_split_is_drawn_from_readable_files(tmp_path, seed, make_class_tree, make_image):
    # A class of one good photo and one empty file: the good one trains (never held out for the empty one), with
    # any seed.
    root = make_class_tree(tmp_path / "ds", {"a": 6, "b": 6})
    make_image(root / "c" / "good.jpg")
    (root / "c" / "empty.jpg").write_bytes(b"")
    s = make_splits(root, seed=seed)
    assert [p.name for p, label in s.train if label == 2] == ["good.jpg"]
    assert [p.name for p, _ in s.skipped] == ["empty.jpg"]


def test_split_file(tmp_path, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"glass": 4, "paper": 4, "trash": 2})
    meta = tmp_path / "meta"
    meta.mkdir()
    # TrashNet's format: bare file name and a 1-based label, train/val/test files side by side.
    (meta / "files_train.txt").write_text("glass_000.jpg 1\nglass_001.jpg 1\npaper_000.jpg 2\npaper_001.jpg 2\n")
    (meta / "files_val.txt").write_text("glass_002.jpg 1\npaper/paper_002.jpg 2\n")
    (meta / "files_test.txt").write_text("paper_003.jpg 2\n")
    s = make_splits(root, split_file=meta / "files_train.txt")
    assert s.layout == "split_file" and s.classes == ["glass", "paper"]  # trash: not in the train list
    assert [len(s.train), len(s.val), len(s.test)] == [4, 2, 1]
    same = make_splits(root, split_file=str(meta / "files_{split}.txt"))
    assert _names(same.val) == _names(s.val)
    (meta / "files_val.txt").write_text("glass_002.jpg 2\n")  # label 2 used for paper in nothing else, but ...
    (meta / "files_train.txt").write_text("glass_000.jpg 1\npaper_000.jpg 1\n")
    with pytest.raises(ResnetlabError, match="label 1"):
        make_splits(root, split_file=meta / "files_train.txt")


def test_trashnet_split_file(shared):
    meta = shared / "datasets" / "trashnet-meta" / "one-indexed-files-notrash_train.txt"
    s = make_splits(shared / "datasets" / "trashnet", split_file=meta)
    assert (len(s.train), len(s.val), len(s.test)) == (1768, 328, 431)
    assert s.classes == sorted(s.classes)


def test_record_roundtrip(tree):
    s = make_splits(tree, val_fraction=0.3, seed=4)
    record = json.loads(json.dumps(s.record()))
    again = DatasetSplits.from_record(record)
    assert again.classes == s.classes and _names(again.val) == _names(s.val)
    record["classes"] = ["cat", "dog"]
    with pytest.raises(ResnetlabError, match="differ"):
        DatasetSplits.from_record(record)


def test_class_indices_format(tmp_path):
    path = write_class_indices(tmp_path / "class_indices.json", ["cardboard", "玻璃"])
    assert json.loads(path.read_text(encoding="utf-8")) == {"0": "cardboard", "1": "玻璃"}
    assert "玻璃" in path.read_text(encoding="utf-8")
    assert read_class_indices(path) == ["cardboard", "玻璃"]
    (tmp_path / "bad.json").write_text('{"1": "a"}')
    with pytest.raises(ResnetlabError):
        read_class_indices(tmp_path / "bad.json")


def test_a_relative_val_dir_records_the_same_split_as_its_absolute_path(tmp_path, make_class_tree, monkeypatch):
    # The validation digest hashes paths: `--val-dir hym/val` once warned "files changed" on every later eval/resume.
    make_class_tree(tmp_path / "hym" / "train", {"a": 3, "b": 3})
    make_class_tree(tmp_path / "hym" / "val", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    relative = make_splits("hym/train", val_dir="hym/val").record()
    absolute = make_splits(tmp_path / "hym" / "train", val_dir=tmp_path / "hym" / "val").record()
    assert relative["val_digest"] == absolute["val_digest"] and relative["val_dir"] == absolute["val_dir"]
