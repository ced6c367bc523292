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


def _quadrants(width: int = 80, height: int = 40) -> np.ndarray:
    """Four plain colours, one per quadrant: every flip and rotation of it looks different."""
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    half_h, half_w = height // 2, width // 2
    pixels[:half_h, :half_w] = (230, 30, 30)
    pixels[:half_h, half_w:] = (30, 200, 30)
    pixels[half_h:, :half_w] = (30, 30, 220)
    pixels[half_h:, half_w:] = (240, 220, 20)
    return pixels


def _palette_rgb(image: Image.Image) -> np.ndarray:
    """RGB of a palette image, looked up by hand."""
    palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    return palette[np.asarray(image)]


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("P", ".gif"), ("P", ".png"), ("L", ".jpg"), ("CMYK", ".jpg"), ("1", ".png"), ("LA", ".png")],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    source = pattern_image(1)
    converted = source.convert(mode)
    converted.save(path)
    rgb, facts = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (96, 72)
    assert facts["mode"] == mode
    pixels = np.asarray(rgb).astype(int)
    if mode == "P":  # lossless: exactly the palette colours
        assert np.array_equal(pixels, _palette_rgb(converted))
    elif mode == "1":  # lossless: black and white
        assert np.array_equal(pixels, np.repeat(np.asarray(converted, dtype=int)[..., None] * 255, 3, axis=2))
    elif mode == "LA":  # opaque grey: the grey level in every channel
        assert np.array_equal(pixels, np.repeat(np.asarray(converted)[..., :1].astype(int), 3, axis=2))
    elif mode == "L":  # JPEG: grey channels equal, within compression noise of the grey source
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        assert np.abs(pixels[..., 0] - np.asarray(converted, dtype=int)).mean() < 3
    else:  # CMYK JPEG: back to the source's colours (an inverted or grey decode is off by ~100 levels)
        assert np.abs(pixels - np.asarray(source, dtype=int)).mean() < 4


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb, _ = load_rgb(tmp_path / "deep.png")
    values = np.asarray(rgb)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 32  # a real ramp, not a clipped white image


# EXIF orientation tag -> how the stored pixels must be turned to display upright (from the EXIF spec).
UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,  # mirrored left-right
    3: lambda a: np.rot90(a, 2),  # upside down
    4: np.flipud,  # mirrored top-bottom
    5: lambda a: np.rot90(np.fliplr(a), 1),  # mirrored, then rotate 90 CCW (= transpose)
    6: lambda a: np.rot90(a, -1),  # rotate 90 CW
    7: lambda a: np.rot90(np.fliplr(a), -1),  # mirrored, then rotate 90 CW
    8: lambda a: np.rot90(a, 1),  # rotate 90 CCW
}


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, suffix: str) -> None:
    stored = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored, "RGB").save(tmp_path / f"rotated{suffix}", exif=exif)
    rgb, _ = load_rgb(tmp_path / f"rotated{suffix}")
    expected = UPRIGHT[orientation](stored)
    assert rgb.size == (expected.shape[1], expected.shape[0])
    difference = np.abs(np.asarray(rgb).astype(int) - expected.astype(int))
    if suffix == ".png":
        assert difference.max() == 0
    else:  # JPEG blurs the quadrant borders; a wrong turn misplaces whole quadrants
        assert difference.mean() < 20  # measured: 4 when right, 95 or more when wrong


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
