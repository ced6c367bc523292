"""Micro-batching: concurrent requests' images queue up and run through the engine together.

One image per forward pass leaves most of a batched pass's speed unused. The collector takes the first queued
image, waits a short window (or until a full batch) for more, and hands the batch to the one inference thread;
each request's future resolves with its own rows. A failed batch fails only its own requests, a request waits
at most `timeout_s`, and a full queue answers "busy" at once, so no client and no worker hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from plantlib.errors import PlantlibError

Result = TypeVar("Result")


class ServerBusy(PlantlibError):
    """The queue is full or a request waited longer than allowed: try again later (HTTP 503)."""


class InferenceFailed(PlantlibError):
    """The engine raised on a batch; the requests in that batch get this (HTTP 500, one line)."""


@dataclass(frozen=True)
class BatchSettings:
    """How long to wait for company, how many images at most per pass, how much may queue, how long a request waits."""

    window_ms: float = 4.0
    max_batch: int = 32
    max_queue: int = 512
    timeout_s: float = 30.0


@dataclass
class BatchStats:
    """What the batcher did, for `GET /health`: passes, images, and how many passes had each batch size."""

    batches: int = 0
    images: int = 0
    sizes: Counter = field(default_factory=Counter)

    def record(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.sizes[size] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "images": self.images,
            "largest_batch": max(self.sizes, default=0),
            "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0,
            "batch_sizes": {str(size): count for size, count in sorted(self.sizes.items())},
        }


@dataclass
class _Item:
    crop: torch.Tensor
    tta: bool
    future: asyncio.Future
    queued_at: float


class MicroBatcher:
    """Collects images from concurrent requests into batches for `run(crops, tta) -> probabilities (N, C)`.

    Everything that touches the model (`run`, and `call` for loading or heat maps) runs on one thread, so the
    engine never sees two callers at once.
    """

    def __init__(self, run: Callable[[torch.Tensor, bool], np.ndarray], settings: BatchSettings = BatchSettings()):
        self.run = run
        self.settings = settings
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plantlib-inference")
        self._queue: asyncio.Queue[_Item] | None = None
        self._collector: asyncio.Task | None = None

    def start(self) -> None:
        """Start collecting (inside the server's event loop)."""
        self._queue = asyncio.Queue()
        self._collector = asyncio.create_task(self._collect(), name="plantlib-batcher")

    async def stop(self) -> None:
        """Stop collecting; requests still queued are answered 'busy'."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ServerBusy("the server is shutting down; retry on another instance"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """Run `function(*args)` on the inference thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def predict(self, crops: list[torch.Tensor], tta: bool = False) -> np.ndarray:
        """Probabilities (len(crops), C) for one request's crops, batched with other requests' crops."""
        if self._queue is None:
            raise ServerBusy("the batcher is not running; retry when GET /health says ready")
        if self._queue.qsize() + len(crops) > self.settings.max_queue:
            raise ServerBusy(f"more than {self.settings.max_queue} images are waiting; retry in a moment")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in crops]
        for crop, future in zip(crops, futures, strict=True):
            self._queue.put_nowait(_Item(crop, tta, future, time.monotonic()))
        try:
            rows = await asyncio.wait_for(asyncio.gather(*futures), self.settings.timeout_s)
        except TimeoutError:
            raise ServerBusy(f"no answer within {self.settings.timeout_s:g} s; the server is overloaded") from None
        return np.stack(rows)

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0].queued_at + self.settings.window_ms / 1000
            while len(batch) < self.settings.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run_batch([item for item in batch if not item.future.done()])

    async def _run_batch(self, batch: list[_Item]) -> None:
        """One engine pass per TTA setting present in `batch`; every future gets its row or the error."""
        for tta in (False, True):
            group = [item for item in batch if item.tta == tta]
            if not group:
                continue
            try:
                probabilities = await self.call(self.run, torch.stack([item.crop for item in group]), tta)
                self.stats.record(len(group))
            except Exception as error:  # the engine's failure, answered to these requests only
                failure = InferenceFailed(f"inference failed: {type(error).__name__}: {error}".splitlines()[0])
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(failure)
                continue
            for item, row in zip(group, probabilities, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
