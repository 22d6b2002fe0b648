"""Optimiser, learning-rate schedule and mixed-precision policy of a training run.

AdamW over the trainable parameters (frozen ones never enter it, so weight decay leaves them),
a linear warm-up then constant or cosine decay, and on CUDA autocast to ``amp_dtype`` with a
GradScaler for float16 (bfloat16 has float32's range and needs none). On the CPU training runs in
float32: ``amp`` is a CUDA setting.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.AdamW:
    """AdamW over the parameters of ``model`` that require a gradient."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    betas = (config.optim.betas[0], config.optim.betas[1])
    return torch.optim.AdamW(
        trainable,
        lr=config.optim.lr,
        betas=betas,
        eps=config.optim.eps,
        weight_decay=config.resolved_weight_decay,
    )


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    warmup = config.optim.warmup_steps
    cosine = config.optim.scheduler == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype of the forward pass for :func:`models.device.autocast`: ``amp_dtype`` on CUDA with
    ``amp``, else None (float32)."""
    if not (config.amp and device.type == "cuda"):
        return None
    return torch.float16 if config.amp_dtype == "float16" else torch.bfloat16


def build_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler enabled only for float16 autocast, whose small range underflows gradients;
    disabled it passes losses and steps through unchanged (and still has a state to checkpoint)."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(config, device) == torch.float16)
