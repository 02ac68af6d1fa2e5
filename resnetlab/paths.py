"""Where shared data and resnetlab's own cache live: one helper each, so every module resolves them the same way."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared data folder: env `RESNETLAB_SHARED`, else `../shared` beside the repo root."""
    env = os.environ.get("RESNETLAB_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path inside the shared data folder, e.g. `shared_path("datasets", "trashnet")`."""
    return shared_dir().joinpath(*parts)


CACHE_ENV = "RESNETLAB_CACHE"


def cache_root() -> Path:
    """resnetlab's cache folder (datasets, compiled kernels): env `RESNETLAB_CACHE`, else `~/.cache/resnetlab`."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "resnetlab"
