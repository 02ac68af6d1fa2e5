"""`resnetlab data check`: is this folder usable for training, and what is odd about it?

Counts per class and split, image size range (headers only), byte-identical duplicates across splits, class
imbalance, skipped files with reasons, and a verdict: usable (exit 0) or not (exit 2, one-line reason).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.data.folder import SPLIT_NAMES, DatasetSplits, make_splits


@dataclass
class CheckResult:
    splits: DatasetSplits
    duplicates: list[list[tuple[str, Path]]] = field(default_factory=list)  # groups of (split, path), same bytes
    problems: list[str] = field(default_factory=list)  # each makes the data unusable
    notes: list[str] = field(default_factory=list)  # worth knowing, not blocking

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def cross_split_duplicates(self) -> list[list[tuple[str, Path]]]:
        return [g for g in self.duplicates if len({split for split, _ in g}) > 1]


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_duplicates(splits: DatasetSplits) -> list[list[tuple[str, Path]]]:
    """Groups of files with identical bytes (hashing only files that share a size with another)."""
    by_size: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for split in SPLIT_NAMES:
        for path, _ in splits.split(split):
            by_size[os.path.getsize(path)].append((split, path))
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for split, path in same_size:
            by_hash[_sha1(path)].append((split, path))
        groups.extend(g for g in by_hash.values() if len(g) > 1)
    return sorted(groups, key=lambda g: g[0][1].as_posix())


def decode_all(splits: DatasetSplits) -> None:
    """Decode every usable image in full (what `open_image` does in training); failures move to `splits.skipped`.

    Headers and end markers miss damage inside the pixel data (a corrupt PNG IDAT chunk, a JPEG with a garbled
    scan); training would report those one by one, mid-epoch, and use another image in their place. Decoding runs
    in threads: Pillow releases the GIL while it decodes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from resnetlab.data.images import ImageError, open_image
    from resnetlab.data.loader import default_workers

    def reason(path: Path) -> str | None:
        try:
            open_image(path)
        except ImageError as exc:
            return exc.reason
        return None

    with ThreadPoolExecutor(default_workers()) as pool:
        for name in SPLIT_NAMES:
            samples = splits.split(name)
            reasons = list(pool.map(reason, [p for p, _ in samples]))
            splits.skipped += [(p, why) for (p, _), why in zip(samples, reasons) if why]
            samples[:] = [s for s, why in zip(samples, reasons) if not why]  # in place: `split` returns the list


def check_dataset(
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_dir: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    strict: bool = False,
    decode: bool = False,
) -> CheckResult:
    """Scan and judge `root` (`decode`: every image decoded in full, not only its header). Layout errors (empty
    class folder, val class missing from train) raise."""
    splits = make_splits(
        root, val_fraction=val_fraction, seed=seed, val_dir=val_dir, split_file=split_file, require_train=False
    )
    if decode:
        decode_all(splits)
    result = CheckResult(splits, duplicates=find_duplicates(splits))
    if splits.num_classes < 2:
        result.problems.append(f"only {splits.num_classes} class ({', '.join(splits.classes)}); need at least 2")
    if untrained := [c for c, n in zip(splits.classes, splits.counts()["train"]) if n == 0]:
        result.problems.append(f"no usable training images of {', '.join(untrained)} (see skipped)")
    if strict and splits.skipped:
        result.problems.append(f"{len(splits.skipped)} unusable image(s) and --strict")
    if strict and result.cross_split_duplicates:
        result.problems.append(f"{len(result.cross_split_duplicates)} duplicate group(s) across splits and --strict")
    if not splits.val:
        result.notes.append("no validation images: accuracy cannot be measured during training")
    elif unseen := [c for c, n in zip(splits.classes, splits.counts()["val"]) if n == 0]:
        result.notes.append(
            f"no validation images of {', '.join(unseen)}: validation cannot tell whether the model learnt "
            f"{'it' if len(unseen) == 1 else 'them'}; add images (or give a val folder)"
        )
    if result.cross_split_duplicates:
        result.notes.append("identical files in train and val/test inflate the measured accuracy; remove the copies")
    label_of = {path: label for name in SPLIT_NAMES for path, label in splits.split(name)}
    if mixed := [g for g in result.duplicates if len({label_of[p] for _, p in g}) > 1]:
        result.notes.append(
            f"{len(mixed)} group(s) of identical files lie in different class folders: the same photo under two labels"
        )
    return result


def _table(splits: DatasetSplits) -> list[str]:
    counts = splits.counts()
    width = max([5, *(len(c) for c in splits.classes)])
    lines = [f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6} {'total':>6}"]
    for i, name in enumerate(splits.classes):
        row = [counts[s][i] for s in SPLIT_NAMES]
        lines.append(f"{name:<{width}}  {row[0]:>6} {row[1]:>6} {row[2]:>6} {sum(row):>6}")
    totals = [sum(counts[s]) for s in SPLIT_NAMES]
    lines.append(f"{'total':<{width}}  {totals[0]:>6} {totals[1]:>6} {totals[2]:>6} {sum(totals):>6}")
    return lines


def format_report(result: CheckResult, max_listed: int = 20) -> str:
    """The human-readable report printed by `resnetlab data check`."""
    s = result.splits
    layout = {
        "folders": f"class folders, val {s.val_fraction:.0%} per class (seed {s.seed})",
        "train_val": "train/val folders",
        "val_dir": f"class folders + val folder {s.val_dir}",
        "split_file": f"split files {s.split_file}",
    }[s.layout]
    lines = [f"data: {s.root}", f"layout: {layout}", "", *_table(s), ""]
    usable = len(s.train) + len(s.val) + len(s.test)
    lines.append(f"images: {usable} usable, {len(s.skipped)} skipped, {s.ignored} ignored (hidden or not images)")
    if s.sizes:
        widths, heights = [w for w, _ in s.sizes.values()], [h for _, h in s.sizes.values()]
        lines.append(f"sizes: width {min(widths)}..{max(widths)}, height {min(heights)}..{max(heights)} px")
    train = s.counts()["train"]
    if train and min(train) == max(train):
        lines.append(f"imbalance: none (every class has {max(train)} training images)")
    elif train and min(train) > 0:
        lo, hi = train.index(min(train)), train.index(max(train))
        lines.append(
            f"imbalance: {max(train) / min(train):.1f}x ({s.classes[hi]} {max(train)} / {s.classes[lo]} {min(train)})"
        )
    cross = result.cross_split_duplicates
    lines.append(f"duplicates: {len(result.duplicates)} group(s) of identical files, {len(cross)} across splits")
    # Across splits first (they leak into validation), then within one (a photo counted twice, or in two classes).
    listed = cross + [g for g in result.duplicates if g not in cross]
    for group in listed[:max_listed]:
        lines.append("  " + "  =  ".join(f"[{split}] {path}" for split, path in group))
    if len(listed) > max_listed:
        lines.append(f"  ... and {len(listed) - max_listed} more")
    if s.skipped:
        lines.append("skipped:")
        lines += [f"  {path}: {reason}" for path, reason in s.skipped[:max_listed]]
        if len(s.skipped) > max_listed:
            lines.append(f"  ... and {len(s.skipped) - max_listed} more")
    lines += [f"note: {n}" for n in result.notes]
    if result.usable:
        lines.append(f"ok: usable ({s.num_classes} classes, {len(s.train)} train / {len(s.val)} val images)")
    return "\n".join(lines)


def grid_samples(splits: DatasetSplits, per_class: int) -> dict[str, list[Path]]:
    """`per_class` training images per class, spread evenly over each class's sorted files."""
    by_class: dict[str, list[Path]] = {name: [] for name in splits.classes}
    for path, label in splits.train:
        by_class[splits.classes[label]].append(path)
    return {
        name: [paths[i * len(paths) // per_class] for i in range(min(per_class, len(paths)))]
        for name, paths in by_class.items()
    }


def write_grid(splits: DatasetSplits, path: str | os.PathLike, per_class: int = 4) -> Path:
    from resnetlab.report.grid import save_sample_grid  # matplotlib: only when asked

    return save_sample_grid(grid_samples(splits, per_class), path, title=splits.root.name)
