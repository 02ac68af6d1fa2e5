"""Verified downloads: one streaming loop for ImageNet weights and CIFAR-10 (hash checked before the file lands)."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from resnetlab.errors import ResnetlabError
from resnetlab.paths import atomic_temp

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK = 1 << 20
# What a transfer raises when the network, the server or the disk fails.
NETWORK_ERRORS = (urllib.error.URLError, HTTPException, OSError, ValueError)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks (md5 only checks against published sums, not for security)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dst: Path,
    expected: str,
    what: str,
    offline: str,
    algorithm: str = "sha256",
    mismatch: str = "Retry",
    progress: bool = True,
    cache_env: str = "",
) -> Path:
    """Stream `url` into a temp file beside `dst` with a progress bar; rename it to `dst` only when its digest starts
    with `expected` (a prefix, as torchvision's file names carry, or a whole sum).

    A failed transfer (a short read included) is a ResnetlabError saying it could not download `what`, then `offline`
    (how to get the file without this machine's network); a wrong digest one that ends with `mismatch`; a folder that
    cannot be written (or a full disk) one that names `cache_env`, the variable that moves the cache. Nothing is left
    behind either way.
    """
    try:  # this machine's side first: a cache folder that cannot be written is no network problem
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = atomic_temp(dst, ".part")
    except OSError as exc:
        raise cannot_write(dst, exc, cache_env) from exc
    try:
        return _fetch(url, dst, fd, tmp, expected, algorithm, mismatch, progress, cache_env)
    except NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ResnetlabError(f"could not download {what} from {url} ({reason}); {offline}") from exc


def cannot_write(dst: Path, exc: OSError, cache_env: str) -> ResnetlabError:
    where = f"set {cache_env} to a folder with room that you can write" if cache_env else "free space or choose another"
    return ResnetlabError(f"cannot write {dst} ({exc.strerror or exc}); {where}")


def _fetch(
    url: str, dst: Path, fd: int, tmp: str, expected: str, algorithm: str, mismatch: str, progress: bool, cache_env: str
) -> Path:
    from tqdm import tqdm

    digest = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dst.name, file=sys.stderr,
                       disable=not progress)  # fmt: skip
            with bar:
                while chunk := resp.read(CHUNK):
                    try:
                        f.write(chunk)
                    except OSError as exc:  # a full disk: no network problem either
                        raise cannot_write(dst, exc, cache_env) from exc
                    digest.update(chunk)
                    bar.update(len(chunk))
            if total is not None and bar.n != total:
                raise HTTPException(f"connection closed after {bar.n} of {total} bytes")
        actual = digest.hexdigest()
        if not actual.startswith(expected):
            got = f"starts with {actual[: len(expected)]}" if len(expected) < len(actual) else f"is {actual}"
            raise ResnetlabError(
                f"downloaded {url} but its {algorithm} {got}, expected {expected}; the file was deleted. {mismatch}"
            )
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst
