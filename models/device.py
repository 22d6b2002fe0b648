"""The one device choice and the one mixed-precision policy of the project.

Every area (indexer, evaluation, training, the service, the benchmarks) resolves ``--device`` /
``SBIR_DEVICE`` here and wraps its forward passes in :func:`autocast`, so that a GPU path is the same
code as the CPU path it is tested through.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from models.errors import SbirError


class DeviceError(SbirError, ValueError):
    """A device that cannot be used here (the message names the choice)."""


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` (or ``cuda:N``) without one,
    or a device type other than cpu / cuda, is a :class:`DeviceError`."""
    if isinstance(choice, torch.device):
        return choice
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(choice)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {choice!r}: unknown; use auto, cpu or cuda") from None
    if resolved.type not in {"cpu", "cuda"}:
        raise DeviceError(f"device {choice!r}: unsupported; use auto, cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {choice!r}: torch sees no CUDA device here")
    return resolved


def inference_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype of inference: float16 on CUDA (the token store keeps float16 anyway, so the
    compute loses nothing it would keep); None (float32) on the CPU, where bfloat16 changes the scores
    (benchmarks/RESULTS.md) and float16 brings no speed."""
    return torch.float16 if enabled and device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of this machine's CPU (the ``flags`` line of ``cpuinfo``); empty where it
    cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_supported(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere torch emulates it
    and bf16 is slower than float32 (benchmarks/RESULTS.md, run D)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def int8_supported(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU has int8 dot-product instructions (VNNI or AMX), which dynamic int8
    quantization needs to beat float32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def usable_cores() -> int:
    """The CPU cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (``cpu.max``, as a container's ``--cpus`` sets it), at least 1.

    ``os.cpu_count()`` counts the host's cores; torch's default follows it, and more threads than the
    quota allows made re-ranking 2-4x slower here (benchmarks/RESULTS.md, "torch intra-op threads").
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested`` or :func:`usable_cores`; returns the number set."""
    threads = requested or usable_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
