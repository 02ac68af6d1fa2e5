"""Generated image files for the data-layer tests (tiny, written to tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _make_image(path: Path, size=(48, 32), color=(200, 30, 30), mode="RGB", fmt=None, **save_kw) -> Path:
    """A small image: a solid colour with a distinct top-left quadrant, so orientation changes are visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = color
    arr[: size[1] // 2, : size[0] // 2] = (10, 220, 10)
    image = Image.fromarray(arr)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **save_kw)
    return path


def _make_class_tree(root: Path, counts: dict[str, int], size=(40, 30)) -> Path:
    """ROOT/<class>/<i>.jpg with distinct pixels per file (no accidental duplicates)."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _make_image(root / name / f"{name}_{i:03d}.jpg", size=size, color=(20 * c % 255, 7 * i % 255, 90))
    return root


@pytest.fixture
def make_image():
    return _make_image


@pytest.fixture
def make_class_tree():
    return _make_class_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _make_class_tree(tmp_path / "ds", {"cat": 10, "dog": 10, "fox": 5})
