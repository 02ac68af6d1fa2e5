"""Tiny real datasets for the experiment tests: scikit-learn's hand-written digits as an image folder, and as a
CIFAR-10 python tarball in the official format (pickled dicts of (N, 3072) uint8 rows)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def digit_images(per_class: int, size: int, offset: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 RGB digits (dark ink on a tinted background) and their labels, class-major."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = [], []
    for label in range(classes):
        for img in digits.images[digits.target == label][offset : offset + per_class]:
            grey = Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            rgb = np.stack([np.asarray(grey)] * 3, axis=-1)
            rgb[..., label % 3] //= 2  # a class-dependent tint so the three channels differ
            images.append(rgb)
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_digit_folder(root: Path, per_class: int = 12, size: int = 16, classes: int = 3) -> Path:
    images, labels = digit_images(per_class, size, classes=classes)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / CIFAR_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def official_pickle(obj: dict) -> bytes:
    """Protocol 2, with numpy's rebuild function named as in the official (numpy 1.x era) files."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def _batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane per row
    return official_pickle(
        {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in labels],
            b"data": np.ascontiguousarray(rows, dtype=np.uint8),
            b"filenames": [f"img_{name.replace(' ', '_')}_{i}.png".encode() for i in range(len(labels))],
        }
    )


def build_cifar_tarball(path: Path, per_class_per_batch: int = 2, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """Write a `cifar-10-python.tar.gz` look-alike; returns the arrays it holds (train/test images and labels)."""
    members: dict[str, bytes] = {}
    train_x, train_y = [], []
    for b in range(5):
        x, y = digit_images(per_class_per_batch, 32, offset=b * per_class_per_batch)
        order = np.random.default_rng(b).permutation(len(y))  # batches are not class-sorted in the real files
        x, y = x[order], y[order]
        members[f"data_batch_{b + 1}"] = _batch(x, y, f"training batch {b + 1} of 5")
        train_x.append(x)
        train_y.append(y)
    test_x, test_y = digit_images(test_per_class, 32, offset=5 * per_class_per_batch)
    members["test_batch"] = _batch(test_x, test_y, "testing batch 1 of 1")
    members["batches.meta"] = official_pickle(
        {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}
    )
    members["readme.html"] = b"<html>tiny test copy</html>"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {
        "train_images": np.concatenate(train_x),
        "train_labels": np.concatenate(train_y),
        "test_images": test_x,
        "test_labels": test_y,
    }


@pytest.fixture(scope="session")
def cifar_tarball(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("cifar_src") / "cifar-10-python.tar.gz"
    return path, build_cifar_tarball(path)


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 12 real digit images at 16 px."""
    return write_digit_folder(tmp_path_factory.mktemp("digits"))
