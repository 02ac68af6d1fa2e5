"""CIFAR-10 from the official python batches, as an image folder the folder-based engine, eval and predict can read.

    resolve_data_root("cifar10")        # -> ~/.cache/resnetlab/cifar10/images (train/<class>/*.png, test/<class>/*.png)
    read_cifar10(path)                  # arrays from cifar-10-python.tar.gz or an extracted cifar-10-batches-py folder
    checkpoint_from_cifar_weights(f)    # akamaster's CIFAR-10 ResNet file -> resnetlab checkpoint (for `predict`)

Sources are looked up in the cache folder (`$RESNETLAB_CACHE/cifar10`, default `~/.cache/resnetlab/cifar10`): the
extracted `cifar-10-batches-py/` folder or `cifar-10-python.tar.gz`; when neither is there the official tarball is
downloaded (URL overridable with `$RESNETLAB_CIFAR10_URL`) with a progress bar and its md5 checked.

The batches are pickles. They are read with a restricted unpickler that can only rebuild numpy arrays (and the bytes
of Python 2 strings), so a tampered file cannot run code. The tarball is read in place, never extracted.

Why a folder of PNGs rather than an in-memory dataset: every part of resnetlab (train, eval, predict, data check,
the split record in checkpoints, `--resume`) already speaks image folders, so CIFAR-10 needs no second code path; the
60 000 PNGs (about 180 MB on disk) are written once, in parallel threads, and the RAM cache keeps the decoded pixels
after the first epoch. The layout `train/` + `test/` makes `make_splits` carve the validation images from `train/`
(the paper's 45k/5k split with `val_fraction=0.1`) and keep the official test set as the `test` split.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnetlab.download import download as verified_download
from resnetlab.download import file_digest
from resnetlab.errors import ResnetlabError
from resnetlab.paths import CACHE_ENV, cache_root

log = logging.getLogger(__name__)

NAME = "cifar10"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGES_DIR = "images"  # the materialised class folders, inside the cache folder
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

URL_ENV = "RESNETLAB_CIFAR10_URL"  # mirror or local test server
MD5_ENV = "RESNETLAB_CIFAR10_MD5"  # the md5 of what URL_ENV serves, when it is not the official file
_MARKER = ".complete"  # written last into the images folder: its absence means an interrupted write

# ------------------------------------------------------------------------------------------- safe unpickling

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's array rebuild function, whatever module it lives in
# (module, name) -> object: exactly what the official files (Python 2, numpy 1) and Python 3 protocol-2 copies need.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes under pickle protocol 2
}


class UnsafePickleError(ResnetlabError):
    """A batch file asked to load something other than numpy arrays: it is not a genuine CIFAR file."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_SAFE_GLOBALS`; anything else is refused before it is imported."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 `str` -> bytes, as the official loader does
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to load {module}.{name}; CIFAR batches hold only numpy arrays, so this file "
                "is not a genuine CIFAR-10 batch (delete it and get the official one)"
            ) from None


def load_batch(data: bytes, source: str = "batch") -> dict[bytes, Any]:
    """One pickled batch (its raw bytes) -> dict with bytes keys (b"data", b"labels", ...), read safely."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or foreign files raise many types
        raise ResnetlabError(f"{source}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ResnetlabError(f"{source}: expected a dict in a CIFAR batch, got {type(obj).__name__}")
    return obj


# ------------------------------------------------------------------------------------------- reading


@dataclass
class Cifar10Arrays:
    """Images (N, 32, 32, 3) uint8 RGB and labels (N,) int64 for both official splits, plus the class names."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _batch_reader(source: Path) -> tuple[Callable[[str], bytes], Callable[[], None]]:
    """(read(name) -> bytes, close) for a tarball or a folder (the `cifar-10-batches-py` folder or its parent)."""
    if source.is_dir():
        folder = source / BATCH_DIR if (source / BATCH_DIR).is_dir() else source

        def read_file(name: str) -> bytes:
            path = folder / name
            if not path.is_file():
                raise ResnetlabError(f"{folder}: missing {name}; expected the official {BATCH_DIR} files")
            return path.read_bytes()

        return read_file, lambda: None
    try:
        tar = tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ResnetlabError(f"{source}: not a readable tarball ({exc}); delete it and download it again") from exc

    def read_member(name: str) -> bytes:
        try:
            f = tar.extractfile(f"{BATCH_DIR}/{name}")  # read in place: never extract (no path traversal)
        except KeyError:
            f = None
        if f is None:
            raise ResnetlabError(f"{source}: missing {BATCH_DIR}/{name}; not the official CIFAR-10 python tarball")
        return f.read()

    return read_member, tar.close


def _images(batch: dict[bytes, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 and (N,) int64 from a batch's b"data" (N, 3072: R plane, G plane, B plane) and labels."""
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
        raise ResnetlabError(f"{source}: expected b'data' (N, 3072) uint8 and b'labels'; not a CIFAR-10 batch")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data) or (labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise ResnetlabError(f"{source}: {len(labels)} labels in 0..9 expected for {len(data)} images")
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


def read_cifar10(source: str | os.PathLike) -> Cifar10Arrays:
    """All 60 000 images and labels from `cifar-10-python.tar.gz` or an extracted `cifar-10-batches-py` folder."""
    source = Path(source).expanduser()
    if not source.exists():
        raise ResnetlabError(f"{source}: no such file or folder; pass {TARBALL} or the {BATCH_DIR} folder")
    read, close = _batch_reader(source)
    try:
        meta = load_batch(read(META), f"{source}:{META}")
        names = meta.get(b"label_names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else list(CLASSES)
        splits = []
        for names_ in (TRAIN_BATCHES, (TEST_BATCH,)):
            parts = [_images(load_batch(read(n), f"{source}:{n}"), f"{source}:{n}") for n in names_]
            splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    finally:
        close()
    (train_x, train_y), (test_x, test_y) = splits
    return Cifar10Arrays(classes, train_x, train_y, test_x, test_y)


# ------------------------------------------------------------------------------------------- download


def cache_dir() -> Path:
    """Where CIFAR-10 is kept: `$RESNETLAB_CACHE/cifar10`, else `~/.cache/resnetlab/cifar10`."""
    return cache_root() / NAME


def download(dest: str | os.PathLike, url: str | None = None, md5: str = MD5, progress: bool = True) -> Path:
    """Stream the tarball to `dest` (a temp file beside it, then rename) with a progress bar; the md5 must match."""
    url = url or os.environ.get(URL_ENV) or URL
    dest = Path(dest)
    offline = (
        f"download {TARBALL} on a machine with internet access and put it at {dest} (or its extracted {BATCH_DIR} "
        "folder beside it)"
    )
    return verified_download(
        url, dest, md5, "CIFAR-10", offline, algorithm="md5", progress=progress, cache_env="RESNETLAB_CACHE"
    )


def find_source(root: str | os.PathLike | None = None) -> Path | None:
    """An existing extracted folder or tarball in `root` (default: the cache folder), or None."""
    root = Path(root) if root is not None else cache_dir()
    for candidate in (root / BATCH_DIR, root / TARBALL):
        if candidate.exists():
            return candidate
    return None


def fetch(
    root: str | os.PathLike | None = None, url: str | None = None, md5: str | None = None, allow_download: bool = True
) -> Path:
    """The CIFAR-10 source in `root` (cache folder by default), downloading the tarball when it is missing.

    A tarball found there is md5-checked (a wrong one is an error naming it); an extracted folder is trusted.
    `md5` defaults to `$RESNETLAB_CIFAR10_MD5` or the official sum (a mirror or a test server may serve another file).
    """
    root = Path(root) if root is not None else cache_dir()
    md5 = md5 or os.environ.get(MD5_ENV) or MD5
    source = find_source(root)
    if source is not None:
        if source.is_file() and file_digest(source, "md5") != md5:
            raise ResnetlabError(f"{source}: md5 is not the official {md5}; delete it so it is downloaded again")
        return source
    if not allow_download:
        raise ResnetlabError(
            f"CIFAR-10 not found: put {TARBALL} (from {URL}) or its extracted {BATCH_DIR} folder in {root}, "
            f"or set {CACHE_ENV} to a folder holding cifar10/{TARBALL}"
        )
    return download(root / TARBALL, url=url, md5=md5)


# ------------------------------------------------------------------------------------------- image folder


def _write_split(images: np.ndarray, labels: np.ndarray, classes: list[str], folder: Path) -> None:
    """PNG files `folder/<class>/<index:05d>.png`, written by a few threads (zlib releases the GIL)."""
    from PIL import Image

    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)

    def save(i: int) -> None:
        Image.fromarray(images[i]).save(folder / classes[labels[i]] / f"{i:05d}.png", compress_level=1)

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(save, range(len(images))))


def _safe_class_names(classes: list[str]) -> list[str]:
    """Folder names from the meta file's label names (no separators, no dots at the start)."""
    safe = [re.sub(r"[^\w\-]+", "_", c).strip("._") or f"class{i}" for i, c in enumerate(classes)]
    if len(set(safe)) != len(safe):
        raise ResnetlabError(f"CIFAR-10 label names {classes} do not give distinct folder names")
    return safe


def materialize(arrays: Cifar10Arrays, out: str | os.PathLike) -> Path:
    """Write `out/train/<class>/*.png` and `out/test/<class>/*.png` (atomically: a temp folder renamed at the end)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    classes = _safe_class_names(arrays.classes)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_split(arrays.train_images, arrays.train_labels, classes, tmp / "train")
        _write_split(arrays.test_images, arrays.test_labels, classes, tmp / "test")
        marker = {"classes": classes, "train": len(arrays.train_labels), "test": len(arrays.test_labels)}
        (tmp / _MARKER).write_text(json.dumps(marker) + "\n")
        if out.exists():
            shutil.rmtree(out)  # an interrupted earlier write (no marker)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def prepare(
    root: str | os.PathLike | None = None, url: str | None = None, md5: str | None = None, allow_download: bool = True
) -> Path:
    """The CIFAR-10 image folder (`train/` + `test/` class folders), fetched and written on first use."""
    from resnetlab.engine.run_lock import exclusive

    root = Path(root) if root is not None else cache_dir()
    images = root / IMAGES_DIR
    if (images / _MARKER).is_file():
        return images
    # One process writes; others started meanwhile wait, then find it written (they deleted each other's folders).
    with exclusive(root / ".prepare.lock", f"waiting for another process writing CIFAR-10 into {images}"):
        if (images / _MARKER).is_file():
            return images
        source = fetch(root, url=url, md5=md5, allow_download=allow_download)
        log.warning("writing CIFAR-10 as PNG class folders into %s (once)", images)
        return materialize(read_cifar10(source), images)


# Dataset names accepted wherever a data folder is: name -> function returning the folder.
NAMED_DATASETS: dict[str, Callable[[], Path]] = {NAME: prepare}


def resolve_data_root(data: str | os.PathLike) -> Path:
    """A data folder as given, or the folder for a dataset name such as "cifar10" (an existing folder wins)."""
    path = Path(data).expanduser()
    if path.exists() or str(data).lower() not in NAMED_DATASETS:
        return path
    return NAMED_DATASETS[str(data).lower()]()


def dataset_name(data: str | os.PathLike | None) -> str | None:
    """The dataset name `data` stands for ("cifar10"), or None for a folder path."""
    if data is None or Path(data).expanduser().exists():
        return None
    name = str(data).lower()
    return name if name in NAMED_DATASETS else None


# ------------------------------------------------------------------------------------------- real checkpoints


def _cifar_depth(state: dict[str, Any], source: str | os.PathLike = "weights") -> int:
    """6n+2 from the number of blocks in `layer1` of a CIFAR ResNet state dict (3 stages, a 16-filter 3x3 stem)."""
    blocks = {k.split(".")[1] for k in state if k.startswith("layer1.")}
    stem = state.get("conv1.weight")
    if not blocks or any(k.startswith("layer4.") for k in state) or stem is None or tuple(stem.shape) != (16, 3, 3, 3):
        raise ResnetlabError(
            f"{source}: not a CIFAR-10 ResNet file (akamaster's resnet20/32/44/56/110 .th: a 16-filter 3x3 stem and"
            " three stages); ImageNet-style weights go to train --pretrained"
        )
    return 6 * len(blocks) + 2


def cifar_weights_checkpoint(weights: str | os.PathLike, arch: str | None = None) -> dict[str, Any]:
    """A resnetlab checkpoint dict (see `engine.checkpoint`) for one of akamaster's CIFAR-10 ResNet files.

    The architecture comes from the file's blocks (ResNet-20/32/44/56/110) unless given; the weights go through
    `create_model(..., pretrained=weights)`, which checks the sha256 in the file name, renames `linear` to `fc` and
    takes the file's preprocessing (32 px, ImageNet mean/std, as akamaster trained).
    """
    from resnetlab.engine.checkpoint import model_payload
    from resnetlab.models import create_model
    from resnetlab.models.weights import read_weights

    weights = Path(weights).expanduser()
    state, _ = read_weights(weights)
    arch = arch or f"resnet{_cifar_depth(state, weights)}"
    model = create_model(arch, num_classes=len(CLASSES), pretrained=str(weights))
    return model_payload(arch, model, list(CLASSES), data={"dataset": NAME, "weights": weights.name})


def checkpoint_from_cifar_weights(
    weights: str | os.PathLike, out: str | os.PathLike | None = None, arch: str | None = None
) -> Path:
    """Convert a CIFAR-10 ResNet file into a resnetlab checkpoint for `resnetlab predict/eval/export`.

    `out`: the file, or a folder to write `<arch>-cifar10.pt` in (default: the current folder). The name comes from
    the architecture found in the file, not from the file's name (a renamed resnet56 file was written as resnet20).
    """
    from resnetlab.engine.checkpoint import save_checkpoint

    ckpt = cifar_weights_checkpoint(Path(weights), arch)
    out = Path(out) if out is not None else Path()
    return save_checkpoint(out / converted_name(ckpt["arch"]) if out.is_dir() else out, ckpt)


def converted_name(arch: str) -> str:
    """`resnet20-cifar10.pt`: without the source's sha256 prefix, which would not match the new file (loading it
    with `--pretrained` checks a name's hash against the content)."""
    return f"{arch}-cifar10.pt"
