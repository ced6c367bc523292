"""Decoder fuzzing: a few hundred mangled JPEG/PNG/GIF/... files each decode or are skipped with a reason.

The files go through scan, training-data loading (decode cache, train and eval transforms at 224 px) and
predict, in a child process under a memory limit and a timeout: no crash, no runaway memory, bounded time per
file. Mutations come from a seeded RNG, so a failure is reproducible.
"""

import io
import json
import random
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plantlib.data import eval_transform, train_transform
from plantlib.data.cache import central_part
from tests.conftest import pattern_image

MUTANTS = 240
SECONDS_PER_FILE = 5.0  # each step of one file; a healthy file takes milliseconds
MEMORY_LIMIT = 10 * 2**30  # address space of the child: torch, its threads and a resnet18 reserve about 6 GB
FOREIGN_MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"8BPS",
    b"\x00\x00\x01\x00",
    b"P6\n9000 9000\n255\n",
    b"%PDF-1.4\n",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
]


def originals() -> list[tuple[str, bytes]]:
    """Small valid files in the formats a scan accepts (and a few variants of each)."""
    picture = pattern_image(7, (40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the EXIF transpose
    variants = [
        ("jpg", picture, {"format": "JPEG", "quality": 85}),
        ("jpg", picture, {"format": "JPEG", "progressive": True}),
        ("jpg", picture, {"format": "JPEG", "exif": exif}),
        ("png", picture, {"format": "PNG"}),
        ("png", picture.convert("RGBA"), {"format": "PNG"}),
        ("png", picture.convert("P"), {"format": "PNG"}),
        ("gif", picture.convert("P"), {"format": "GIF"}),
        ("bmp", picture, {"format": "BMP"}),
        ("webp", picture, {"format": "WEBP"}),
        ("tif", picture, {"format": "TIFF"}),
    ]
    made = []
    for ext, image, options in variants:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        made.append((ext, buffer.getvalue()))
    return made


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three of: truncate, flip bits, overwrite bytes, splice junk, zero a run, wrong magic, odd sizes."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        data = data or bytearray(b"\x00")
        kind = rng.choice(["truncate", "flip", "overwrite", "splice", "zero", "magic", "header", "repeat"])
        at = rng.randrange(len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif kind == "splice":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "zero":
            end = min(len(data), at + rng.randint(1, 200))
            data[at:end] = bytes(end - at)
        elif kind == "magic":
            magic = rng.choice(FOREIGN_MAGIC)
            data[: len(magic)] = magic
        elif kind == "header":  # sizes and counts live in the first bytes of every format
            for _ in range(4):
                data[rng.randrange(min(len(data), 40))] = rng.choice([0x00, 0x01, 0x10, 0x40, 0x7F, 0xFF])
        else:
            end = rng.randrange(at, len(data) + 1)
            data[end:end] = data[at:end] * rng.randint(1, 20)
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with almost no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def crafted() -> list[tuple[str, bytes]]:
    """Edge cases a random mutation rarely hits: extreme shapes, size bombs, empty and non-image files."""
    made = []
    for size in ((65535, 1), (1, 65535), (20000, 3)):  # valid, a few hundred bytes, absurd aspect ratios
        buffer = io.BytesIO()
        Image.new("RGB", size, (30, 160, 60)).save(buffer, "PNG")
        made.append(("png", buffer.getvalue()))
    gif = bytearray(next(data for ext, data in originals() if ext == "gif"))
    struct.pack_into("<HH", gif, 6, 65535, 30)  # logical screen far wider than the frame: Pillow pads it
    made += [("gif", bytes(gif)), ("png", png_header_only(30000, 30000)), ("png", png_header_only(9000, 9000))]
    made += [("jpg", b""), ("jpg", b"not an image at all\n" * 20), ("png", b"\x89PNG\r\n\x1a\n")]
    return made


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "images"
    rng = random.Random(20261127)
    sources = originals()
    files = [(ext, mutate(data, rng)) for ext, data in (rng.choice(sources) for _ in range(MUTANTS))]
    files += crafted() + sources  # the originals keep both classes usable
    for index, (ext, data) in enumerate(files):
        folder = root / ("ant" if index % 2 else "bee")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.{ext}").write_bytes(data)
    return root


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_mangled_images_decode_or_are_skipped_with_a_reason(corpus: Path, tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.helpers.decode_fuzz", str(corpus), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_memory,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    files = result["files"]
    assert len(files) == MUTANTS + len(crafted()) + len(originals())

    crashes = {path: step for path, steps in files.items() for step in steps.values() if str(step).startswith("crash")}
    assert crashes == {}
    slow = {path: steps for path, steps in files.items() if max(steps["load_s"], steps["predict_s"]) > SECONDS_PER_FILE}
    assert slow == {}
    for path, steps in files.items():
        assert steps["scan"] == "ok" or len(steps["scan"]) > len("skipped: ") + 5, path
        # Scan, training-data loading and predict agree on which files are usable.
        assert (steps["scan"] == "ok") == (steps["load"] == "ok") == (steps["predict"] == "ok"), (path, steps)
    usable = sum(steps["scan"] == "ok" for steps in files.values())
    assert result["predicted_rows"] == usable and usable >= len(originals())
    assert MUTANTS // 10 < usable < len(files) - MUTANTS // 10  # the corpus holds both kinds in numbers


@pytest.mark.parametrize("size", [(400, 50), (50, 400), (301, 97)])
def test_cutting_extreme_shapes_keeps_what_the_transforms_use(size: tuple[int, int]) -> None:
    """The cache keeps at most 3:1 of an image: training crops the same pixels, evaluation within resampling."""
    image = pattern_image(3, size)
    cut = central_part(image)
    assert max(cut.size) <= 3 * min(cut.size) + 1 and min(cut.size) == min(size)

    def tensor(picture: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).contiguous()

    torch.manual_seed(0)
    trained_whole = train_transform(64)(tensor(image))
    torch.manual_seed(0)
    assert torch.equal(train_transform(64)(tensor(cut)), trained_whole)
    evaluated = eval_transform(64)(tensor(image)) - eval_transform(64)(tensor(cut))
    assert evaluated.abs().max() < 0.2  # normalised units: a few grey levels from the resize's rounding
