"""One writer per run folder: `resnetlab train` holds an exclusive lock on RUN/.lock while it trains into RUN.

Two processes on one folder (a `--resume` started while the run still trains) interleave their checkpoints and
history rows. The lock is `flock` on an open file, so the kernel drops it when its process ends, however it ends:
nothing stale is left to clean up. Where `fcntl` is missing (Windows) there is no lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resnetlab.errors import ResnetlabError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)
# Lock files this process holds. A forked child (a DataLoader worker) shares the lock's open file; after a kill -9 of
# the trainer its workers lived on for ~5 s holding it, and an immediate --resume was refused naming the dead pid.
# Children close their copies at once, so the lock is the trainer's alone.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """`acquire()` the folder or fail with a one-line error naming the process that holds it; `release()` after."""

    def __init__(self, run_dir: str | os.PathLike, resuming: bool = True) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        # What to do instead: a resume waits its turn; a new run (two started with one --out) goes elsewhere.
        self.instead = "wait for it to end or stop it, then resume" if resuming else "choose another --out"

    def acquire(self) -> RunLock:
        if fcntl is None or self.fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ResnetlabError(
                f"{self.path.parent}: another resnetlab train (pid {holder}) is writing this run folder; {self.instead}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        _HELD.add(fd)
        # Temp files of writes a kill -9 cut short (`.best.pt.x1y2.tmp`): no other process writes here now.
        for stale in self.path.parent.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None

    def __del__(self) -> None:  # a Trainer made outside `fit` (tests) lets go when it is collected
        self.release()


@contextmanager
def exclusive(path: str | os.PathLike, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block, waiting (and logging `waiting` once) while another process
    holds it: one process does a one-off job, such as writing a dataset, and the others then find it done."""
    if fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.warning("%s", waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the file drops the lock
