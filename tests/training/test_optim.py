"""Optimiser, schedule and mixed-precision policy of training (training.optim)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import config_from_dict
from training.optim import autocast_dtype, build_optimizer, build_scaler, build_scheduler


def _config(**changes: object):
    settings: dict[str, object] = {
        "run_dir": "runs/x",
        "model": {"name": "zse-tiny"},
        "data": {"dataset": "generic", "root": "data/x"},
    }
    settings.update(changes)
    return config_from_dict(settings)


def _factors(config, total_steps: int) -> list[float]:
    """The learning-rate factor in force at each of ``total_steps`` steps (lr 1.0)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(config, optimizer, total_steps)
    factors = []
    for _ in range(total_steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    factors.append(optimizer.param_groups[0]["lr"])
    return factors


def test_warm_up_is_linear_then_constant():
    factors = _factors(_config(optim={"warmup_steps": 4, "scheduler": "constant"}), 10)
    assert factors[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert factors[4:] == pytest.approx([1.0] * 7)


def test_cosine_decays_from_one_at_the_end_of_warm_up_to_zero_at_the_last_step():
    # warm-up 2, then 8 cosine steps: cos(pi * k / 8) for k = 0, 2, 4, 6, 8 is 1, 1/sqrt2, 0, -1/sqrt2, -1
    factors = _factors(_config(optim={"warmup_steps": 2, "scheduler": "cosine"}), 10)
    half = 0.5 ** 0.5
    assert factors[:2] == pytest.approx([0.5, 1.0])
    assert [factors[2 + k] for k in (0, 2, 4, 6, 8)] == pytest.approx(
        [1.0, 0.5 * (1 + half), 0.5, 0.5 * (1 - half), 0.0], abs=1e-12
    )


def test_the_optimiser_holds_only_trainable_parameters_with_the_family_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(_config(optim={"lr": 3e-4, "betas": [0.8, 0.99]}), model)
    (group,) = optimizer.param_groups
    assert [id(p) for p in group["params"]] == [id(model[1].weight), id(model[1].bias)]
    assert group["lr"] == 3e-4 and group["betas"] == (0.8, 0.99)
    assert group["weight_decay"] == pytest.approx(1e-2)  # the ZSE default when optim.weight_decay is None
    amff = build_optimizer(_config(model={"name": "amff-tiny"}, amff={}), model)
    assert amff.param_groups[0]["weight_decay"] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("amp", "amp_dtype", "device", "expected"),
    [
        (True, "float16", "cuda", torch.float16),
        (True, "bfloat16", "cuda", torch.bfloat16),
        (False, "float16", "cuda", None),
        (True, "float16", "cpu", None),  # amp is a CUDA setting: the CPU trains in float32
        (True, "bfloat16", "cpu", None),
    ],
)
def test_autocast_dtype_follows_amp_on_cuda_only(amp, amp_dtype, device, expected):
    config = _config(amp=amp, amp_dtype=amp_dtype)
    assert autocast_dtype(config, torch.device(device)) == expected


def test_the_scaler_is_off_on_the_cpu_and_passes_losses_through():
    scaler = build_scaler(_config(amp=True, amp_dtype="float16"), torch.device("cpu"))
    loss = torch.tensor(2.5)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss
