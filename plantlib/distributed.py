"""torch.distributed primitives for `plantlib train`: process group, sharding, gathering (launching: `training.launch`).

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) a run becomes
DistributedDataParallel: NCCL on CUDA, gloo on CPU. Without those variables everything here is a
single-process no-op, so the same code path serves both.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from plantlib.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job; `world_size == 1` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True under torchrun, even with one process (then DDP and the collectives run with one rank)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory, checkpoints, history and logs."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def launched_by_torchrun() -> bool:
    """torchrun sets TORCHELASTIC_RUN_ID; a hand-made launch sets WORLD_SIZE (and RANK, MASTER_ADDR, ...)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def device_for(requested: str, local_rank: int) -> torch.device:
    """One GPU per process (cuda:LOCAL_RANK) when CUDA is used, else the CPU."""
    if requested == "cpu" or not torch.cuda.is_available():
        if requested.startswith("cuda"):
            raise ConfigError(f"device={requested!r} is not available on this machine; use device='auto' or 'cpu'")
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device, timeout_s: float) -> DistributedContext:
    """Join the torchrun job (once per process); a single-process context when not launched by torchrun.

    `timeout_s` bounds every collective, so a rank that dies or hangs stops the others with an error
    instead of leaving them waiting forever.
    """
    if not launched_by_torchrun():
        return SINGLE_PROCESS
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch_size(global_batch_size: int, ctx: DistributedContext) -> int:
    """`batch_size` is the global batch; each of the world_size processes takes an equal share."""
    if global_batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size={global_batch_size} is the global batch and must divide evenly over "
            f"{ctx.world_size} processes; use a multiple of {ctx.world_size}"
        )
    return global_batch_size // ctx.world_size


def shard(dataset: Dataset, ctx: DistributedContext) -> Dataset:
    """Every world_size-th item from this rank's offset: disjoint, no padding, together the whole split."""
    if not ctx.enabled:
        return dataset
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]


def unshard(local: np.ndarray, total: int, ctx: DistributedContext) -> np.ndarray:
    """Reassemble per-rank results of `shard` into dataset order, on every rank."""
    if not ctx.enabled:
        return local
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, local)
    filled = [part for part in parts if len(part)]  # a rank whose shard is empty sends a (0, 0) array
    if not filled:
        return local
    result = np.empty((total, *filled[0].shape[1:]), dtype=filled[0].dtype)
    for rank, part in enumerate(parts):
        if len(part):
            result[rank :: ctx.world_size] = part
    return result


def all_sum(values: Sequence[float], ctx: DistributedContext) -> list[float]:
    """Element-wise sum over ranks (loss totals, correct counts)."""
    if not ctx.enabled:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL reduces GPU tensors only
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's `value` on every rank (the run directory it created, say)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistributedContext) -> None:
    """Wait for all ranks (after rank 0 wrote a checkpoint the others will read)."""
    if ctx.enabled:
        dist.barrier()
