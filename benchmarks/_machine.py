"""What machine a benchmark ran on: CPU, cores, memory, GPU, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_details() -> dict[str, Any]:
    """A JSON-ready description of this machine; fields that cannot be read are None."""
    import faiss
    import numpy as np
    import torch

    gpus = []
    if torch.cuda.is_available():
        for number in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(number)
            gpus.append({"name": properties.name, "memory_bytes": int(properties.total_memory)})
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return {
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_bytes(),
        # Other work on a shared machine slows the benchmark; the 1-minute load says how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "faiss_gpus": int(get_num_gpus()) if get_num_gpus is not None else 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "faiss": getattr(faiss, "__version__", None),
        "numpy": np.__version__,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
