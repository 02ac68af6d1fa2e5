"""Where shared data and resnetlab's own cache live: one helper each, so every module resolves them the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """A file object for a temp file beside `path`, renamed over `path` when the block ends; on an error (or a stop)
    in the block the temp file is removed and `path` is as it was: a kill leaves the old file or the new, never a
    torn one."""
    path = Path(path)
    fd, tmp = atomic_temp(path, ".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """`obj` as indented JSON at `path`, written atomically (a failure leaves the previous file, never a cut one).

    Non-ASCII text stays readable (class names in any script), except where a string holds a file name that is not
    valid UTF-8 (a Latin-1 zip unpacked on Linux: Python keeps its bytes as lone surrogates, which UTF-8 cannot
    encode): then the file is written all in ASCII escapes, which any JSON reader turns back into the same name.
    """
    import json

    path = Path(path)
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(obj, indent=2) + "\n").encode("ascii")
    with atomic_write(path) as f:
        f.write(data)
    return path
