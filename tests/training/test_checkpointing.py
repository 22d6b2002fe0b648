"""Last / best checkpoints and resumption (training.checkpointing)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from models.checkpoint import read_state
from models.config import ZSE_PRESETS
from tests.support.checkpoints import IMAGE_SIZE
from training.checkpointing import (
    RunState,
    TrainingError,
    check_can_start,
    checkpoint_paths,
    config_differences,
    load_last,
    save_best,
    save_last,
)
from training.config import ConfigError, config_from_dict
from training.objectives import ZSEObjective
from training.optim import build_optimizer, build_scaler, build_scheduler
from training.runtime import Runtime

CPU = Runtime(0, 1, 0, torch.device("cpu"))


def _config(run_dir, **changes: object):
    settings: dict[str, object] = {
        "run_dir": str(run_dir),
        "model": {"name": "zse-tiny", "overrides": {"image_size": IMAGE_SIZE}},
        "data": {"dataset": "generic", "root": "data/x"},
        "optim": {"lr": 1e-3},
    }
    settings.update(changes)
    return config_from_dict(settings)


def _training(config, seed: int):
    torch.manual_seed(seed)
    model = models.build_model(dataclasses.replace(ZSE_PRESETS["zse-tiny"], image_size=IMAGE_SIZE))
    objective = ZSEObjective(model, 1.0, 2.0, 4.0)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, 10)
    return objective, optimizer, scheduler, build_scaler(config, CPU.device)


def test_the_differences_that_block_a_resumption_are_named_with_dotted_keys():
    saved = {
        "seed": 1, "resume": False, "optim": {"lr": 1e-4, "eps": 1e-8}, "data": {"root": "a", "unseen": []},
        "validation": {"every_epochs": 1}, "schedule": {"epochs": 2},
    }
    current = {
        "seed": 1, "resume": True, "optim": {"lr": 1e-3, "eps": 1e-8}, "data": {"root": "b", "unseen": ["x"]},
        "validation": {"every_epochs": 5}, "schedule": {"epochs": 9}, "amff": None,
    }
    assert config_differences(saved, current) == ["data.unseen", "optim.lr"]


def test_a_run_starts_only_where_it_may(tmp_path):
    last, best = checkpoint_paths(tmp_path)
    assert (last, best) == (tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(TrainingError, match="nothing to resume"):
        check_can_start(_config(tmp_path, resume=True))
    check_can_start(_config(tmp_path))
    last.parent.mkdir()
    last.write_bytes(b"")
    with pytest.raises(TrainingError, match="already holds a run"):
        check_can_start(_config(tmp_path))
    check_can_start(_config(tmp_path, resume=True))


def test_last_puts_back_the_weights_optimiser_schedule_and_rng_state(tmp_path):
    config = _config(tmp_path)
    objective, optimizer, scheduler, scaler = _training(config, seed=0)
    images = torch.rand(3, 2, 3, IMAGE_SIZE, IMAGE_SIZE)
    objective(*images)[0].backward()
    optimizer.step()
    scheduler.step()
    state = RunState(step=3, best_map=0.25, best_step=2, best_epoch=1, validations=[{"step": 2}])
    last, _ = checkpoint_paths(tmp_path)
    save_last(last, objective, optimizer, scheduler, scaler, state, config, CPU, steps_per_epoch=2)
    assert state.last_saved_step == 3
    expected_draw = torch.rand(4)

    fresh, fresh_optimizer, fresh_scheduler, fresh_scaler = _training(config, seed=1)
    restored = load_last(last, fresh, fresh_optimizer, fresh_scheduler, fresh_scaler, config, CPU, 2)
    assert torch.equal(torch.rand(4), expected_draw)
    assert restored == state
    for key, value in objective.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value), key
    assert fresh_scheduler.state_dict()["last_epoch"] == 1
    assert optimizer.state  # the step left Adam moments to restore
    pairs = zip(optimizer.param_groups[0]["params"], fresh_optimizer.param_groups[0]["params"], strict=True)
    for old, new in pairs:
        if old in optimizer.state:
            assert torch.equal(fresh_optimizer.state[new]["exp_avg"], optimizer.state[old]["exp_avg"])


def test_last_refuses_another_number_of_processes_or_a_changed_config(tmp_path):
    config = _config(tmp_path)
    objective, optimizer, scheduler, scaler = _training(config, seed=0)
    last, _ = checkpoint_paths(tmp_path)
    save_last(last, objective, optimizer, scheduler, scaler, RunState(step=2), config, CPU, steps_per_epoch=2)
    with pytest.raises(TrainingError, match="written by 1 process"):
        load_last(last, objective, optimizer, scheduler, scaler, config, CPU, steps_per_epoch=3)
    changed = _config(tmp_path, optim={"lr": 1e-2})
    with pytest.raises(ConfigError, match=r"differs from the interrupted run's in optim\.lr"):
        load_last(last, objective, optimizer, scheduler, scaler, changed, CPU, steps_per_epoch=2)


def test_best_holds_the_model_and_the_metrics_that_made_it_best(tmp_path):
    config = _config(tmp_path)
    objective, *_ = _training(config, seed=0)
    _, best = checkpoint_paths(tmp_path)
    save_best(best, objective, step=6, epoch=2, metrics={"map_all": 0.5, "p@100": 0.25}, config=config)
    payload = read_state(best)
    assert (payload["step"], payload["epoch"], payload["map_all"]) == (6, 2, 0.5)
    assert payload["metrics"] == {"map_all": 0.5, "p@100": 0.25}
    assert "training_state" not in payload
    for key, value in objective.model.state_dict().items():
        assert torch.equal(payload["state_dict"][key], value), key
