"""Fixtures for export/serve tests: a tiny checkpoint, its ONNX export, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
ARCH = "resnet20"
CHECK_IMAGES = ("chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg")


def make_checkpoint(path: Path, arch: str = ARCH, classes: list[str] = CLASSES, seed: int = 0) -> Path:
    """A checkpoint in `resnetlab train`'s schema: untrained weights, a 0.875 centre crop at 32 px."""
    from resnetlab.engine.checkpoint import model_payload, save_checkpoint
    from resnetlab.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(classes))
    cfg = {**model.default_cfg, "crop_pct": 0.875, "interpolation": "bicubic"}
    return save_checkpoint(path, model_payload(arch, model, classes, default_cfg=cfg, epoch=1))


@pytest.fixture(scope="session")
def check_images(shared: Path) -> list[Path]:
    return [shared / "images" / name for name in CHECK_IMAGES]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_run") / "best.pt")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_ckpt: Path, check_images: list[Path]) -> Path:
    from resnetlab.export import export_model

    return export_model(tiny_ckpt, "onnx", check_images=check_images, log=lambda _: None).path


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves on this very socket (no race)
    return sock


@contextlib.contextmanager
def running_server(app, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
