"""Shared by the benchmark scripts: the same real TrashNet photos every run."""

from __future__ import annotations

from pathlib import Path

from resnetlab.paths import shared_path

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def trashnet_sample(limit: int) -> list[Path]:
    """`limit` photos taken round-robin over the classes (sorted file names): a mixed folder, same files every run."""
    root = shared_path("datasets", "trashnet")
    per_class = [sorted((root / name).glob("*.jpg")) for name in CLASSES]
    if not any(per_class):
        raise SystemExit(f"no TrashNet photos under {root}; see ../shared/README.md")
    paths: list[Path] = []
    for i in range(max(len(c) for c in per_class)):
        paths += [c[i] for c in per_class if i < len(c)]
    return paths[:limit]
