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
) -> Path:
    """Stream `url` into a temp file beside `dst` with a progress bar; rename it to `dst` only when its digest starts
    with `expected` (a prefix, as torchvision's file names carry, or a whole sum).

    A failed transfer (a short read included) is a ResnetlabError saying it could not download `what`, then `offline`
    (how to get the file without this machine's network); a wrong digest one that ends with `mismatch`. Nothing is
    left behind either way.
    """
    try:
        return _fetch(url, dst, expected, algorithm, mismatch, progress)
    except NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ResnetlabError(f"could not download {what} from {url} ({reason}); {offline}") from exc


def _fetch(url: str, dst: Path, expected: str, algorithm: str, mismatch: str, progress: bool) -> Path:
    from tqdm import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = atomic_temp(dst, ".part")
    digest = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dst.name, file=sys.stderr,
                       disable=not progress)  # fmt: skip
            with bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
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
