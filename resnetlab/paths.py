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


def atomic_temp(dst: Path, suffix: str) -> tuple[int, str]:
    """(fd, path) of a temp file beside `dst` for a write-then-rename, with the mode a plain `open` would give.

    `mkstemp` makes its files 0600 (owner only); renamed into place, a checkpoint or a downloaded file would then be
    unreadable to the group that reads the rest of the run folder.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp
