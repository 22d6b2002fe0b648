"""When training validates (training.report)."""

from __future__ import annotations

from training.config import config_from_dict
from training.report import validation_due


def _config(**validation: object):
    return config_from_dict(
        {
            "run_dir": "runs/x",
            "model": {"name": "zse-tiny"},
            "data": {"dataset": "generic", "root": "data/x"},
            "validation": validation,
        }
    )


def _due(config, steps_per_epoch: int, total_steps: int) -> list[int]:
    return [s for s in range(1, total_steps + 1) if validation_due(config, s, steps_per_epoch, total_steps)]


def test_validation_runs_at_the_end_of_the_named_epochs_and_after_the_last_step():
    # 4 steps an epoch, 30 steps: epochs 2, 5 (from 2, every 3) end at steps 8 and 20; step 30 is the last
    assert _due(_config(from_epoch=2, every_epochs=3), 4, 30) == [8, 20, 30]
    assert _due(_config(), 3, 9) == [3, 6, 9]  # every epoch from the first


def test_disabled_validation_never_runs():
    assert _due(_config(enabled=False), 3, 9) == []
