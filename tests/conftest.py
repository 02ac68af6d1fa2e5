from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnetlab.paths import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set RESNETLAB_SHARED)")
    return path


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tests share 2 cores; keep torch from oversubscribing when pytest runs things in parallel.
    torch.manual_seed(0)
    yield
