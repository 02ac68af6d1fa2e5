"""A tiny real dataset and a tiny trained run, built once per session in a few seconds.

Three TrashNet classes, 12 photos each shrunk to 64x48, and a CIFAR ResNet-20 at 32 px (with a 0.875 centre crop, so
the crop logic is exercised) trained for a few full-batch steps: enough for predictions that vary between images, and
a checkpoint in the exact schema `resnetlab train` writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

CLASSES = ("cardboard", "glass", "metal")
PER_CLASS = 12
IMG_SIZE = 32
ARCH = "resnet20"


def shrink_copy(src: Path, dst: Path, size: tuple[int, int] = (64, 48)) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").resize(size, Image.BILINEAR).save(dst, quality=90)
    return dst


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers make them 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_data(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/<class>/*.jpg with 12 real photos per class at 64x48."""
    root = tmp_path_factory.mktemp("tiny_data") / "trash"
    for name in CLASSES:
        for src in sorted((shared / "datasets" / "trashnet" / name).glob("*.jpg"))[:PER_CLASS]:
            shrink_copy(src, root / name / src.name)
    return root


def train_tiny(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 20) -> None:
    """A few full-batch Adam steps: the model learns something, fast."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (best.pt + class_indices.json) trained on the train part of `tiny_data`."""
    from resnetlab.data.folder import make_splits, write_class_indices
    from resnetlab.data.transforms import eval_transform_from_cfg
    from resnetlab.engine.checkpoint import model_payload, save_checkpoint
    from resnetlab.models import create_model

    torch.manual_seed(0)
    splits = make_splits(tiny_data, val_fraction=0.25, seed=0)
    model = create_model(ARCH, num_classes=len(splits.classes))
    default_cfg = {**model.default_cfg, "input_size": (3, IMG_SIZE, IMG_SIZE), "crop_pct": 0.875}
    transform = eval_transform_from_cfg(default_cfg)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in splits.train])
    labels = torch.tensor([label for _, label in splits.train])
    with one_thread():  # session fixtures are set up before the module-scoped autouse one
        train_tiny(model, images, labels)

    run = tmp_path_factory.mktemp("runs") / "tiny"
    payload = model_payload(ARCH, model, splits.classes, default_cfg=default_cfg, data=splits.record(), epoch=1)
    save_checkpoint(run / "best.pt", payload)
    write_class_indices(run / "class_indices.json", list(splits.classes))
    (run / "summary.json").write_text(json.dumps({"note": "tiny test run"}))
    return run


@pytest.fixture()
def mixed_inputs(tiny_data: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """A folder of good photos (one in a sub-folder) and corrupt files: truncated JPEG, zero bytes, text as .jpg."""
    folder = tmp_path / "inbox"
    good = [
        shrink_copy(next((tiny_data / "glass").glob("*.jpg")), folder / "glass_photo.jpg"),
        shrink_copy(next((tiny_data / "metal").glob("*.jpg")), folder / "nested" / "metal_photo.jpg"),
        shrink_copy(next((tiny_data / "cardboard").glob("*.jpg")), folder / "box.jpg"),
    ]
    data = (folder / "box.jpg").read_bytes()
    bad = [folder / "truncated.jpg", folder / "empty.jpg", folder / "notes.jpg"]
    bad[0].write_bytes(data[: len(data) // 3])
    bad[1].write_bytes(b"")
    bad[2].write_text("this is not an image\n")
    return {"folder": [folder], "good": good, "bad": bad}
