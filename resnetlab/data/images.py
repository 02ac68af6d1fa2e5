"""Reading one image file safely: any common format and mode becomes an RGB PIL image, or an `ImageError` saying why.

`open_image` is the only decoder the rest of resnetlab uses, so every path (training, check, predict, serve) treats
EXIF orientation, transparency, 16-bit and CMYK files the same way. `probe_image`/`verify_image` read headers only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnetlab.errors import ResnetlabError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # rotations by 90/270 degrees: width and height trade places
_TAIL_BYTES = 4096  # where a JPEG end-of-image / PNG IEND marker must appear (allows some trailing padding)


class ImageError(ResnetlabError):
    """A file that cannot be used as an image; the message is `path: reason`."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file with an image extension (any case)."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _reason(exc: BaseException) -> str:
    """A short, one-line reason from a PIL / OS exception."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unknown or damaged format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: more than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    return text[:200]


def _check_pixels(size: tuple[int, int]) -> str | None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        return (
            f"decompression bomb: {size[0]}x{size[1]} = {size[0] * size[1]} pixels is over Pillow's limit of "
            f"{limit} (raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
        )
    return None


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broken EXIF blocks are common and harmless; exif_transpose ignores them too
        orientation = 1
    w, h = im.size
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _has_end_marker(path: Path, fmt: str | None) -> bool:
    """Cheap truncation test: a JPEG ends with FFD9, a PNG with an IEND chunk (within the last few KB)."""
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _TAIL_BYTES))
        return marker in f.read()


def probe_image(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str | None]:
    """Header-only check: ((width, height) after EXIF orientation, None) or (None, reason).

    Decodes pixels only when the file lacks its end marker (a likely truncation), to confirm before rejecting.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as im:
            size = _oriented_size(im)
            bomb = _check_pixels(im.size)
            if bomb:
                return None, bomb
            if not _has_end_marker(path, im.format):
                im.load()  # raises for a real truncation; files with odd trailers load fine
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for bad files
        return None, _reason(exc)
    return size, None


def verify_image(path: str | os.PathLike) -> str | None:
    """None if `path` looks like a usable image (header check), else the reason it is not."""
    return probe_image(path)[1]


def _to_rgb_16bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to 8-bit RGB, scaling the value range instead of clipping it."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    elif im.mode == "I":
        # 32-bit container; almost always 16-bit data (PNG, TIFF). 8-bit data stays as is.
        arr8 = (np.clip(arr, 0, 65535) >> 8 if arr.max() > 255 else np.clip(arr, 0, 255)).astype(np.uint8)
    else:  # "F": floats, either 0..1 or 0..255
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr8 = np.clip(arr * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def _composite_on_white(im: Image.Image) -> Image.Image:
    """Transparent pixels become white (what a viewer shows), not the arbitrary colour stored under alpha."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16-bit scaled to 8-bit, CMYK/palette/grey converted."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _to_rgb_16bit(im)
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        return _composite_on_white(im)
    return im.convert("RGB")


def draft_request(size: tuple[int, int], short_side: int) -> tuple[int, int] | None:
    """The `Image.draft` size that keeps the short side >= `short_side`, or None when a draft would not shrink it.

    JPEG draft decoding scales by 1/2, 1/4 or 1/8 and never below the requested size, so quality is kept.
    """
    w, h = size
    if min(w, h) < 2 * short_side:
        return None
    scale = short_side / min(w, h)
    return (math.ceil(w * scale), math.ceil(h * scale))


def open_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode `path` to an RGB image with EXIF orientation applied; raise `ImageError` with the reason if unusable.

    `draft_size`: the short side the caller will resize to; JPEGs at least twice that size are decoded at reduced
    resolution (DCT scaling, much faster) while keeping the short side >= `draft_size`. GIFs give their first frame.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as im:
            bomb = _check_pixels(im.size)
            if bomb:
                raise ImageError(path, bomb)
            if draft_size and im.format == "JPEG":
                request = draft_request(im.size, draft_size)
                if request:
                    im.draft("RGB", request)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(path, "no such file") from exc
    except Exception as exc:  # see probe_image
        raise ImageError(path, _reason(exc)) from exc
