"""Decoding odd and broken files: every usable one comes out upright 8-bit RGB, every other one says why."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantlib.data.images import ImageDecodeError, load_rgb
from tests.conftest import pattern_image


def test_rgba_png_is_flattened_onto_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    rgb, facts = load_rgb(tmp_path / "a.png")
    assert rgb.mode == "RGB" and facts["mode"] == "RGBA"
    assert np.asarray(rgb).min() == 255


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("P", ".gif"), ("P", ".png"), ("L", ".jpg"), ("CMYK", ".jpg"), ("1", ".png"), ("LA", ".png")],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    pattern_image(1).convert(mode).save(path)
    rgb, facts = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (96, 72)
    assert facts["mode"] == mode


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb, _ = load_rgb(tmp_path / "deep.png")
    values = np.asarray(rgb)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 32  # a real ramp, not a clipped white image


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = pattern_image(2, size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif)
    rgb, _ = load_rgb(tmp_path / "rotated.jpg")
    assert rgb.size == (40, 80)


def test_png_named_jpg_and_one_pixel_image_load(tmp_path: Path) -> None:
    pattern_image(3).save(tmp_path / "really-png.jpg", format="PNG")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    assert load_rgb(tmp_path / "really-png.jpg")[1]["format"] == "PNG"
    assert load_rgb(tmp_path / "dot.png")[0].size == (1, 1)


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    pattern_image(4, size=(200, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is plain text, not a picture", "not an image"),
        (_truncated_jpeg(), "truncated or corrupt"),
    ],
)
def test_broken_files_raise_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_rgb(path)


def test_broken_symlink_and_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "link.jpg").symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="broken symlink"):
        load_rgb(tmp_path / "link.jpg")
    pattern_image(5, size=(300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(tmp_path / "big.png")
