"""Seeds, devices and numeric precision: the parts of a run that depend on the machine."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from plantlib.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so splits, augmentation and initialisation repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per epoch: a resumed run draws the same augmentations and order as an uninterrupted one."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else Apple MPS, else CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine; use device='auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine; use device='auto' or 'cpu'")
    return device


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader workers: as asked, else none on the CPU and up to 8 feeding a GPU.

    On the CPU the model competes with workers for the same cores and decoded images are cached in-process,
    so workers only add overhead; a GPU is starved without parallel CPU augmentation.
    """
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def autocast_dtype(precision: str, device: torch.device, training: bool) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32.

    `auto` uses bf16 (or fp16 without bf16 support) on CUDA, and fp32 on CPU for training, where bf16
    costs accuracy on small batches; CPU inference with `auto` also stays fp32 unless asked.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch ops with `count` intra-op threads, restoring the setting afterwards.

    Feeding a network compiled by another runtime, torch's idle OpenMP threads keep spinning on the cores
    that runtime needs (measured: a 15 ms forward pass became 20 ms); one thread is enough for preprocessing.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_ALLOCATOR_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed activation buffers instead of returning them to the OS after every step.

    By default large blocks are mmapped and unmapped each time, so every training step page-faults its
    activations in again (a large share of CPU time as kernel time). Raising the mmap and trim thresholds
    lets the allocator reuse them. A no-op (returning False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt caps the mmap threshold at 32 MiB, below one activation tensor, so turn mmap off instead:
    # every block then comes from the heap, which is kept (trim threshold) and reused between steps.
    results = [
        mallopt(_M_MMAP_MAX, 0),
        mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_KEEP_BYTES),
        mallopt(_M_TOP_PAD, 64 << 20),
    ]
    return all(r == 1 for r in results)
