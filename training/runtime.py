"""Where a training process runs and how its randomness is kept: torchrun's process group, seeds,
RNG state capture and restore, and the few collectives the loop needs.

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1) each process joins the group here (NCCL
on CUDA, gloo on the CPU); a single process runs on :func:`models.device.resolve_device`'s choice.
Every collective below is a plain return value in a single process, so the loop has one code path.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from models.device import resolve_device

# Validation on rank 0 can take long (exhaustive relation scores); the other ranks wait at a barrier.
DISTRIBUTED_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank and world size under torchrun, else a single process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False  # joined here, so left here at the end of the run

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str) -> Runtime:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(0, 1, 0, resolve_device(device))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=DISTRIBUTED_TIMEOUT)
    target = torch.device("cuda", local_rank) if use_cuda else resolve_device(device)
    return Runtime(rank, world_size, local_rank, target, owns)


def teardown_runtime(runtime: Runtime) -> None:
    """Leave the process group if :func:`setup_runtime` joined it (a caller's group is left alone)."""
    if runtime.owns_process_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (numpy takes 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch, in types ``torch.load(weights_only=True)`` reads."""
    _, key, position, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": [int(k) for k in key],
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put back a :func:`rng_state`, also after a round trip through a checkpoint (lists for tuples).

    The CUDA states are restored only on a machine with as many GPUs as the one that saved them.
    """
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np.array(numpy_state["key"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather(runtime: Runtime, value: Any) -> list[Any]:
    """Every rank's ``value`` (a collective: all ranks call it), in rank order."""
    if not runtime.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(runtime: Runtime, values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over ranks (a collective), for logging the global loss."""
    if not runtime.distributed:
        return dict(values)
    import torch.distributed as dist

    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {key: value / runtime.world_size for key, value in zip(values, tensor.tolist(), strict=True)}


def any_rank(runtime: Runtime, *flags: bool) -> list[bool]:
    """Each flag OR-ed over ranks (one small all-reduce), so every rank takes the same branch."""
    if not runtime.distributed:
        return list(flags)
    import torch.distributed as dist

    tensor = torch.tensor([float(flag) for flag in flags], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def barrier(runtime: Runtime) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()
