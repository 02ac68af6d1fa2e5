from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resnetlab.data.images import IMAGE_EXTENSIONS, ImageError, is_image_file, open_image, probe_image, verify_image
from resnetlab.errors import ResnetlabError


def test_extensions_any_case():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf") and not is_image_file("a/.hidden.jpg")
    assert not is_image_file("notes.txt")


def test_hymenoptera_quirks(shared):
    ants = shared / "datasets" / "hymenoptera" / "train" / "ants"
    for name in ("imageNotFound.gif", "formica.jpeg", "ant photos.jpg"):
        image = open_image(ants / name)
        assert image.mode == "RGB" and min(image.size) > 0
        assert verify_image(ants / name) is None


def test_truncated_jpeg(tmp_path, make_image):
    path = make_image(tmp_path / "full.jpg", size=(64, 64), quality=95)
    data = path.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    assert "truncated" in verify_image(bad)
    with pytest.raises(ImageError, match="truncated") as info:
        open_image(bad)
    assert isinstance(info.value, ResnetlabError) and info.value.path == bad


def test_zero_byte_and_text_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    assert verify_image(empty) == "empty file (0 bytes)"
    assert "not an image" in verify_image(text)
    for path in (empty, text):
        with pytest.raises(ImageError):
            open_image(path)


def test_png_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 4:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    arr = np.asarray(open_image(path))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 7].tolist() == [255, 0, 0]


def test_16bit_png_scaled_not_clipped(tmp_path):
    arr16 = np.full((6, 6), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "grey16.png"
    Image.fromarray(arr16).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    out = np.asarray(open_image(path))
    assert out.shape == (6, 6, 3) and out.min() == out.max() == 128


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    r, g, b = np.asarray(open_image(path))[5, 5].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (60, 30), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(path, exif=exif.tobytes())
    assert Image.open(path).size == (60, 30)
    assert open_image(path).size == (30, 60)
    assert probe_image(path)[0] == (30, 60)


def test_palette_and_grayscale(tmp_path, make_image):
    p = make_image(tmp_path / "pal.gif", mode="P")
    g = make_image(tmp_path / "grey.bmp", mode="L")
    t = make_image(tmp_path / "x.tif", mode="RGB")
    w = make_image(tmp_path / "x.webp", mode="RGB")
    for path in (p, g, t, w):
        assert open_image(path).mode == "RGB"


def test_decompression_bomb(tmp_path, monkeypatch, make_image):
    path = make_image(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "decompression bomb" in verify_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(path)


def test_draft_keeps_short_side(tmp_path, make_image):
    path = make_image(tmp_path / "big.jpg", size=(800, 600))
    small = open_image(path, draft_size=100)
    assert small.size == (200, 150)  # 1/4 scale: the largest reduction keeping the short side >= 100
    assert open_image(path, draft_size=400).size == (800, 600)  # under 2x: full decode
