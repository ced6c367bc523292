"""Decode one image file into an upright RGB picture, or say exactly why it cannot be used."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; the message is the human-readable reason."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: Path) -> tuple[Image.Image, dict[str, object]]:
    """Fully decode `path`, apply its EXIF orientation and convert to 8-bit RGB.

    Returns the image and facts about the file (format, original mode). Every failure becomes an
    `ImageDecodeError` whose message says what is wrong, so a scan can skip the file and report why.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageDecodeError("broken symlink: the file it points to does not exist")
    try:
        size = path.stat().st_size
    except PermissionError as error:
        raise ImageDecodeError("permission denied: make the file readable") from error
    except OSError as error:
        raise ImageDecodeError(f"cannot read file: {error.strerror or error}") from error
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_pixel_count(opened)
                opened.load()  # decode every pixel now: a truncated file fails here, not mid-epoch
                facts: dict[str, object] = {"format": opened.format or "", "mode": opened.mode}
                image = ImageOps.exif_transpose(opened)
                rgb = to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(
            f"image too large for safe decoding ({error}); raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
        ) from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError("not an image: Pillow cannot identify the file format") from error
    except PermissionError as error:
        raise ImageDecodeError("permission denied: make the file readable") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"truncated or corrupt image data: {error}") from error
    except Exception as error:  # a decoder's other failures on mangled data (EOFError, struct.error, ...)
        raise ImageDecodeError(f"corrupt image data: {error.__class__.__name__}: {error}") from error
    facts["width"], facts["height"] = rgb.size
    return rgb, facts


def _check_pixel_count(image: Image.Image) -> None:
    """Refuse a header that claims more pixels than Pillow's limit before decoding them.

    Pillow only warns below twice its limit, and turning that warning into an error is not thread-safe (scans
    decode in threads); checking the size here bounds every decode's time and memory.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit and pixels > limit:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack."
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white, 16-bit is rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "F" and values.max(initial=0) > 255 else 1.0
        gray = np.clip(values / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
