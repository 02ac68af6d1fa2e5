"""Image folders to labelled splits: layouts, deterministic stratified validation split, class index, bad files.

Layouts understood by `make_splits`:

    ROOT/<class>/**/*                     validation carved per class by `val_fraction` and `seed`
    ROOT/train/<class>/*, ROOT/val/...   explicit splits (`valid`/`validation` accepted; `test` optional)
    ROOT/<class>/* + val_dir/<class>/*   explicit validation folder
    split_file                            lists of files per split, e.g. `meta/files_train.txt` (+ `_val`, `_test`
                                          beside it) or `meta/files_{split}.txt`; one `path [label]` per line

The class index always comes from the training split, sorted by name, and is reused for val/test/predict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetlab.data.images import is_image_file, probe_image
from resnetlab.errors import ResnetlabError

log = logging.getLogger(__name__)

Sample = tuple[Path, int]
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_PLACEHOLDERS = ("{split}", "{train,val,test}", "{train,val}")


def _is_hidden(name: str) -> bool:
    # Dot files, macOS resource forks and `__MACOSX`, Jupyter's `.ipynb_checkpoints`.
    return name.startswith(".") or name.startswith("__")


def _walk(root: Path, recursive: bool = True) -> tuple[list[Path], int]:
    """(image files under `root`, count of ignored entries: hidden files/folders and non-images)."""
    images: list[Path] = []
    ignored = 0
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        ignored += sum(_is_hidden(d) for d in dirnames)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)] if recursive else []
        for name in filenames:
            if is_image_file(name):
                images.append(Path(dirpath, name))
            else:
                ignored += 1
    return sorted(images, key=lambda p: p.as_posix()), ignored


def scan_images(paths_or_dirs: str | os.PathLike | list, recursive: bool = True) -> list[Path]:
    """Image files among `paths_or_dirs` (files kept if they have an image extension; folders walked), sorted."""
    items = [paths_or_dirs] if isinstance(paths_or_dirs, (str, os.PathLike)) else list(paths_or_dirs)
    found: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found.extend(_walk(item, recursive)[0])
        elif item.is_file() and is_image_file(item):
            found.append(item)
        elif not item.exists():
            raise ResnetlabError(f"{item}: no such file or folder")
    return sorted(set(found), key=lambda p: p.as_posix())


@dataclass
class DatasetSplits:
    """Labelled samples per split. `classes[i]` is the name of label i; paths are absolute."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: int = 0
    layout: str = "folders"
    val_fraction: float = 0.2
    seed: int = 0
    val_dir: Path | None = None
    split_file: str | None = None
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)  # (w, h) from headers

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[Sample]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split: {"train": [n_class0, ...], ...}."""
        out = {}
        for name in SPLIT_NAMES:
            per_class = [0] * len(self.classes)
            for _, label in self.split(name):
                per_class[label] += 1
            out[name] = per_class
        return out

    def record(self) -> dict[str, Any]:
        """JSON-able description stored in checkpoints: enough to rebuild the same split with `from_record`."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "val_dir": str(self.val_dir) if self.val_dir else None,
            "split_file": self.split_file,
            "classes": list(self.classes),
            "counts": {name: len(self.split(name)) for name in SPLIT_NAMES},
            "val_digest": _digest(self.val, self.root),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], root: str | os.PathLike | None = None) -> DatasetSplits:
        """Rebuild the split in `record` (optionally with the data moved to `root`); the classes must match."""
        splits = make_splits(
            root or record["root"],
            val_fraction=record.get("val_fraction", 0.2),
            seed=record.get("seed", 0),
            val_dir=record.get("val_dir"),
            split_file=record.get("split_file"),
        )
        if record.get("classes") and splits.classes != list(record["classes"]):
            raise ResnetlabError(
                f"{splits.root}: classes {splits.classes} differ from the recorded {list(record['classes'])}; "
                "the data folder changed since this run was made"
            )
        if record.get("val_digest") and record["val_digest"] != _digest(splits.val, splits.root):
            log.warning(
                "warning: %s: the validation files differ from the recorded split (files added or removed)", splits.root
            )
        return splits


def _digest(samples: list[Sample], root: Path) -> str:
    h = hashlib.sha1()
    for path, label in sorted(samples, key=lambda s: s[0].as_posix()):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        h.update(f"{rel}\t{label}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- layouts


def _require_folder(root: Path) -> None:
    if root.is_file():
        raise ResnetlabError(f"{root}: a file, not a folder; pass the folder that holds one sub-folder per class")
    if not root.is_dir():
        raise ResnetlabError(f"{root}: no such folder")


def _class_folders(root: Path) -> tuple[dict[str, list[Path]], int]:
    """{class name: sorted images} for ROOT/<class>/**, and the ignored count. Empty class folders are errors."""
    _require_folder(root)
    by_class: dict[str, list[Path]] = {}
    ignored = 0
    loose = 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _is_hidden(entry.name):
            ignored += 1
        elif entry.is_dir():
            images, n_ignored = _walk(Path(entry.path))
            ignored += n_ignored
            if not images:
                raise ResnetlabError(
                    f"{entry.path}: class folder has no images (jpg, png, bmp, gif, webp, tiff); "
                    "add images or remove the folder"
                )
            by_class[entry.name] = images
        else:
            loose += is_image_file(entry.name)
            ignored += 1
    if not by_class:
        hint = f" ({loose} images lie directly in it)" if loose else ""
        raise ResnetlabError(f"{root}: no class folders{hint}; expected ROOT/<class>/<image> (one folder per class)")
    if loose:
        log.warning("warning: %s: ignored %d images lying outside class folders", root, loose)
    return by_class, ignored


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """{"train": ..., "val": ..., "test": ...} when ROOT holds only split folders (and a train folder), else None."""
    if not root.is_dir():
        return None
    dirs = {e.name: Path(e.path) for e in os.scandir(root) if e.is_dir() and not _is_hidden(e.name)}
    if "train" not in dirs or any(name.lower() not in _SPLIT_ALIASES for name in dirs):
        return None
    found: dict[str, Path] = {}
    for name, path in sorted(dirs.items()):
        split = _SPLIT_ALIASES[name.lower()]
        if split in found:
            raise ResnetlabError(f"{root}: both {found[split].name}/ and {name}/ look like the {split} split; keep one")
        found[split] = path
    return found


def _stratified(by_class: dict[str, list[Path]], fraction: float, seed: int) -> tuple[dict, dict]:
    """Per-class shuffle of the sorted paths with a seed derived from (seed, class): same files on any machine."""
    train, val = {}, {}
    for name, paths in by_class.items():
        paths = sorted(paths, key=lambda p: p.as_posix())
        # String seeds go through SHA-512 in `random.seed`, independent of PYTHONHASHSEED and platform.
        random.Random(f"{seed}:{name}").shuffle(paths)
        n_val = round(len(paths) * fraction) if fraction > 0 else 0
        if fraction > 0 and len(paths) >= 2:
            n_val = min(max(n_val, 1), len(paths) - 1)  # every class in both splits, never emptied from train
        val[name] = sorted(paths[:n_val], key=lambda p: p.as_posix())
        train[name] = sorted(paths[n_val:], key=lambda p: p.as_posix())
    return train, val


def _resolve_split_files(split_file: str) -> dict[str, Path]:
    """Paths of the per-split list files named by `split_file` (placeholder, or a `*train*` file with siblings)."""
    for placeholder in _SPLIT_PLACEHOLDERS:
        if placeholder in split_file:
            files = {s: Path(split_file.replace(placeholder, s)) for s in SPLIT_NAMES}
            break
    else:
        path = Path(split_file)
        if "train" not in path.name:
            raise ResnetlabError(
                f"--split-file {split_file}: cannot tell which split it is; name it *train*.txt with *val*/*test* "
                "files beside it, or pass a pattern with {split}"
            )
        head, _, tail = path.name.rpartition("train")
        files = {s: path.with_name(f"{head}{s}{tail}") for s in SPLIT_NAMES}
    if not files["train"].is_file():
        raise ResnetlabError(f"--split-file: {files['train']} not found")
    return {s: p for s, p in files.items() if p.is_file()}


def _parse_split_line(line: str) -> tuple[str, str | None]:
    """`path [label]` (paths may contain spaces; a trailing integer is the label)."""
    sep = "\t" if "\t" in line else ("," if "," in line else None)
    parts = line.rsplit(sep, 1)
    if len(parts) == 2 and parts[1].strip().lstrip("-").isdigit():
        return parts[0].strip(), parts[1].strip()
    return line.strip(), None


def _read_split_file(
    list_file: Path, root: Path, by_name: dict[str, list[Path]], missing: list, nested: bool
) -> dict[str, list[Path]]:
    """{class: files} listed in `list_file`, resolved under `root` (relative path, else a unique file name anywhere).

    A file's class is its folder under ROOT, or under ROOT/<split> when `nested` (ROOT holds split folders: `resnetlab
    data split` of a train/val layout lists `train/ants/x.jpg`).
    """
    out: dict[str, list[Path]] = defaultdict(list)
    label_to_folder: dict[str, str] = {}
    for lineno, raw in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rel, label = _parse_split_line(line)
        path = root / rel
        if not path.is_file():
            matches = by_name.get(Path(rel).name, [])
            if len(matches) > 1:
                raise ResnetlabError(f"{list_file}:{lineno}: {rel} matches {len(matches)} files under {root}")
            if not matches:
                missing.append((path, f"listed in {list_file.name} but not found"))
                continue
            path = matches[0]
        parts = path.relative_to(root).parts
        if nested and len(parts) > 2 and parts[0].lower() in _SPLIT_ALIASES:
            parts = parts[1:]
        if len(parts) < 2:
            raise ResnetlabError(f"{list_file}:{lineno}: {path} is not inside a class folder of {root}")
        folder = parts[0]
        if label is not None and label_to_folder.setdefault(label, folder) != folder:
            raise ResnetlabError(
                f"{list_file}:{lineno}: label {label} is used for both {label_to_folder[label]}/ and {folder}/"
            )
        out[folder].append(path)
    return dict(out)


# ------------------------------------------------------------------------------------------------------- make_splits


def _usable(classes: dict[str, list[Path]], skipped: list, sizes: dict[Path, tuple[int, int]]) -> dict[str, list[Path]]:
    """`classes` without its unreadable files (header check), each recorded once: (path, reason) in `skipped`, the
    size of a good one in `sizes` (which also marks it checked)."""
    out = {}
    for name, paths in classes.items():
        good = []
        for p in paths:
            if p not in sizes:
                size, reason = probe_image(p)
                if reason:
                    skipped.append((p, reason))
                    continue
                sizes[p] = size
            good.append(p)
        out[name] = good
    return out


def _gather(
    root: Path, val_fraction: float, seed: int, val_dir, split_file, usable: Callable, missing: list
) -> tuple[str, dict, int]:
    """(layout, {split: {class: paths}}, ignored count) for whichever layout applies; listed files that are not there
    go to `missing`. A split made here by fraction draws from `usable` files only: a corrupt file in val would
    otherwise take a place a readable one could have, and leave a class with one good image untrained."""
    if split_file:
        lists = _resolve_split_files(str(split_file))
        images, ignored = _walk(root)
        by_name: dict[str, list[Path]] = defaultdict(list)
        for p in images:
            by_name[p.name].append(p)
        nested = _split_dirs(root) is not None
        by_split = {s: _read_split_file(f, root, by_name, missing, nested) for s, f in lists.items()}
        if "val" not in by_split:
            by_split["train"], by_split["val"] = _stratified(usable(by_split["train"]), val_fraction, seed)
        return "split_file", by_split, ignored
    if val_dir:
        train, ignored = _class_folders(root)
        val, ignored_val = _class_folders(Path(val_dir))
        return "val_dir", {"train": train, "val": val}, ignored + ignored_val
    dirs = _split_dirs(root)
    if dirs:
        by_split, ignored = {}, 0
        for split, path in dirs.items():
            by_split[split], n = _class_folders(path)
            ignored += n
        if "val" not in by_split:
            by_split["train"], by_split["val"] = _stratified(usable(by_split["train"]), val_fraction, seed)
        return "train_val", by_split, ignored
    by_class, ignored = _class_folders(root)
    train, val = _stratified(usable(by_class), val_fraction, seed)
    return "folders", {"train": train, "val": val}, ignored


def make_splits(
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_dir: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    strict: bool = False,
    require_train: bool = True,
) -> DatasetSplits:
    """Scan `root` into train/val(/test) samples; see the module docstring for layouts.

    Unreadable files (corrupt, truncated, decompression bombs) are skipped with one warning line, or raise with
    `strict=True`. Every file is header-checked; pixels are decoded later, by the loader. A class left with no
    training image raises unless `require_train=False` (`data check` reports it instead).
    """
    root = Path(root).expanduser().resolve()
    val_dir = Path(val_dir).expanduser().resolve() if val_dir else None  # digests hash paths: one spelling of each
    if not 0.0 <= val_fraction < 1.0:
        raise ResnetlabError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    _require_folder(root)
    if val_dir is not None and val_dir == root:
        raise ResnetlabError(
            f"--val-dir {val_dir} is the training folder itself: validation would score the images it trains on; give"
            " a separate folder, or leave --val-dir out to hold out --val-fraction of each class"
        )
    skipped: list[tuple[Path, str]] = []
    sizes: dict[Path, tuple[int, int]] = {}

    def usable(classes: dict[str, list[Path]]) -> dict[str, list[Path]]:
        return _usable(classes, skipped, sizes)

    layout, by_split, ignored = _gather(root, val_fraction, seed, val_dir, split_file, usable, skipped)

    train_classes = sorted(by_split["train"])
    for split in ("val", "test"):
        extra = sorted(set(by_split.get(split, {})) - set(train_classes))
        if extra:
            where = f"--val-dir {val_dir}" if split == "val" and layout == "val_dir" else f"{root}: {split}"
            raise ResnetlabError(
                f"{where} has classes missing from train: {', '.join(extra)}; "
                "add training images for them or remove them"
            )

    by_split = {split: usable(classes) for split, classes in by_split.items()}  # the layouts given as they are
    if skipped and strict:
        path, reason = skipped[0]
        raise ResnetlabError(f"{len(skipped)} unusable image(s), first {path}: {reason} (--strict)")
    if skipped:
        given = (("--val-dir", val_dir), ("--split-file", split_file))
        options = "".join(f" {flag} {value}" for flag, value in given if value)  # data check finds them with these
        log.warning(
            "warning: skipped %d unusable image(s) (first %s: %s); `resnetlab data check %s%s` lists them",
            len(skipped), skipped[0][0], skipped[0][1], root, options,
        )  # fmt: skip
    for name in train_classes if require_train else ():
        if not by_split["train"][name]:
            raise ResnetlabError(f"{root}: class {name} has no usable training images")

    index = {name: i for i, name in enumerate(train_classes)}

    def samples(split: str) -> list[Sample]:
        by_class = by_split.get(split, {})
        return [(p, index[name]) for name in sorted(by_class) for p in by_class[name]]

    return DatasetSplits(
        root=root,
        classes=train_classes,
        train=samples("train"),
        val=samples("val"),
        test=samples("test"),
        skipped=skipped,
        ignored=ignored,
        layout=layout,
        val_fraction=val_fraction,
        seed=seed,
        val_dir=val_dir,
        split_file=str(Path(split_file).resolve()) if split_file else None,  # the record is read from anywhere
        sizes=sizes,
    )


# ----------------------------------------------------------------------------------------------------- class index


def write_class_indices(path: str | os.PathLike, classes: list[str]) -> Path:
    """Write `{"0": "cardboard", "1": "glass", ...}` (UTF-8, names kept as written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({str(i): c for i, c in enumerate(classes)}, ensure_ascii=False, indent=2) + "\n", "utf-8"
    )
    return path


def read_class_indices(path: str | os.PathLike) -> list[str]:
    """Class names by index from a `class_indices.json`; the keys must be exactly 0..N-1."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path}: cannot read class indices ({exc})") from exc
    if not isinstance(data, dict) or sorted(data, key=lambda k: int(k) if k.isdigit() else -1) != [
        str(i) for i in range(len(data))
    ]:
        raise ResnetlabError(f'{path}: expected {{"0": "class name", "1": ...}} with keys 0..N-1')
    return [str(data[str(i)]) for i in range(len(data))]
