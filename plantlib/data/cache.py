"""Decode each image once per process: in memory up to a budget, beyond it in a uint8 file on disk.

Training draws every image once per epoch. Keeping the decoded, downsized pixels makes later epochs skip
the JPEG decoder; the memory budget keeps a large dataset from growing the process without bound. Images
past the budget go to one temporary file (deleted automatically when the cache closes or the process
ends), read back with `os.pread`: served by the OS page cache, still no decoding, and not counted in the
process's resident memory.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from plantlib.data.images import load_rgb
from plantlib.data.scan import DataWarning

DEFAULT_MEMORY_BUDGET_MB = 1024
# Longer side over shorter side kept of a decoded image. Beyond about 2.2:1 the training crop falls back to the
# centre and evaluation crops the centre too, so the rest is never seen; a 65535 x 1 strip would otherwise
# grow to gigabytes when its shorter side is resized to the input size.
MAX_ASPECT_RATIO = 3.0


def central_part(image: Image.Image, max_aspect: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The centre of `image`, cut to at most `max_aspect`:1 (the part the transforms can use), else `image`."""
    width, height = image.size
    if width > max_aspect * height:
        keep = max(1, round(height * max_aspect))
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > max_aspect * width:
        keep = max(1, round(width * max_aspect))
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


class DiskImageStore:
    """Append-only uint8 images in one unlinked temporary file; only the creating process writes to it."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory, prefix="plantlib-images-")
        self._owner = os.getpid()
        self._end = 0
        self._index: dict[str, tuple[int, tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def nbytes(self) -> int:
        return self._end

    @property
    def writable(self) -> bool:
        """False in forked DataLoader workers: appends from two processes would overwrite each other."""
        return os.getpid() == self._owner

    def put(self, key: str, image: torch.Tensor) -> None:
        data = image.contiguous().numpy().tobytes()
        os.pwrite(self._file.fileno(), data, self._end)
        self._index[key] = (self._end, tuple(image.shape))
        self._end += len(data)

    def get(self, key: str) -> torch.Tensor:
        offset, shape = self._index[key]
        size = int(np.prod(shape))
        data = os.pread(self._file.fileno(), size, offset)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(shape)

    def close(self) -> None:
        self._file.close()


class DecodedImageCache:
    """Decoded, downsized uint8 images, so no JPEG is decoded twice in a process.

    Images are stored with their shorter side at most `max_side` pixels (enough for any crop of the
    configured size), as CHW uint8 tensors that the v2 transforms take directly. Up to `memory_budget_mb`
    they stay in memory; further images go to a `DiskImageStore` under `spill_dir` (the system temporary
    directory when None).
    """

    def __init__(
        self,
        max_side: int,
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
        spill_dir: Path | None = None,
    ) -> None:
        self.max_side = max_side
        self.memory_budget_bytes = int(memory_budget_mb * 2**20)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
        self._images: dict[str, torch.Tensor] = {}
        self._memory_bytes = 0
        self._disk: DiskImageStore | None = None
        self.uncached_decodes = 0  # images a forked worker had to decode without storing

    def __len__(self) -> int:
        return len(self._images) + (len(self._disk) if self._disk else 0)

    def __contains__(self, path: object) -> bool:
        key = str(path)
        return key in self._images or (self._disk is not None and key in self._disk)

    def nbytes(self) -> int:
        """Bytes held in memory (the part that counts against the budget)."""
        return self._memory_bytes

    def disk_bytes(self) -> int:
        return self._disk.nbytes if self._disk else 0

    def stats(self) -> dict[str, float]:
        """Sizes for logs and benchmarks."""
        return {
            "images": len(self),
            "in_memory": len(self._images),
            "on_disk": len(self._disk) if self._disk else 0,
            "memory_mb": round(self._memory_bytes / 2**20, 1),
            "disk_mb": round(self.disk_bytes() / 2**20, 1),
            "budget_mb": round(self.memory_budget_bytes / 2**20, 1),
        }

    def get(self, path: Path) -> torch.Tensor:
        key = str(path)
        image = self._images.get(key)
        if image is not None:
            return image
        if self._disk is not None and key in self._disk:
            return self._disk.get(key)
        image = self._decode(Path(path))
        self._store(key, image)
        return image

    def prefetch(self, paths: Sequence[Path], pool: Executor) -> None:
        """Decode the not-yet-cached `paths` in parallel on `pool` (Pillow releases the GIL while decoding).

        Only the calling thread changes the cache, so afterwards other threads may `get` these paths safely.
        A file that cannot be decoded raises `ImageDecodeError`, as `get` does.
        """
        missing = list(dict.fromkeys(str(path) for path in paths if path not in self))
        for key, image in zip(missing, pool.map(lambda key: self._decode(Path(key)), missing), strict=True):
            self._store(key, image)

    def _store(self, key: str, image: torch.Tensor) -> None:
        size = image.numel()
        if self._memory_bytes + size <= self.memory_budget_bytes:
            self._images[key] = image
            self._memory_bytes += size
            return
        if self._disk is None:
            self._disk = DiskImageStore(self.spill_dir)
            warnings.warn(
                f"decoded images exceed the cache's memory budget ({self.memory_budget_bytes / 2**20:.0f} MB); "
                f"further images are kept in a temporary file in {self.spill_dir} "
                "(raise cache_memory_mb to keep more in memory)",
                DataWarning,
                stacklevel=3,
            )
        if self._disk.writable:
            self._disk.put(key, image)
        else:
            self.uncached_decodes += 1

    def _decode(self, path: Path) -> torch.Tensor:
        rgb = central_part(load_rgb(path)[0])
        shorter = min(rgb.size)
        if shorter > self.max_side:
            scale = self.max_side / shorter
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), resample=3)
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def close(self) -> None:
        """Delete the spill file now (it is deleted at exit anyway)."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None
