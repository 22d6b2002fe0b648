"""Process set-up, seeds and RNG states of training (training.runtime)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from training.runtime import (
    Runtime,
    any_rank,
    gather,
    mean_over_ranks,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
    teardown_runtime,
)


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.standard_normal()), torch.rand(3).tolist()


def test_a_saved_rng_state_survives_a_weights_only_checkpoint_and_replays_the_same_draws():
    seed_everything(11)
    _draws()
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    expected = _draws()

    seed_everything(12)  # scramble every generator
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    assert _draws() == expected


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(5)
    first = _draws()
    seed_everything(5)
    assert _draws() == first
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert _draws() == first


def test_a_single_process_runs_where_asked_and_its_collectives_return_its_own_values(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runtime = setup_runtime("cpu")
    assert runtime == Runtime(0, 1, 0, torch.device("cpu"))
    assert runtime.is_main and not runtime.distributed
    assert gather(runtime, {"a": 1}) == [{"a": 1}]
    assert mean_over_ranks(runtime, {"loss": 0.5, "triplet": 2.0}) == {"loss": 0.5, "triplet": 2.0}
    assert any_rank(runtime, True, False) == [True, False]
    teardown_runtime(runtime)  # joined no group, so leaves none
