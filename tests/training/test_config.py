"""Training configs: strict keys and types, named errors, family defaults, the example configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from training.config import ConfigError, config_from_dict, load_config
from training.train import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _minimal(**changes: object) -> dict[str, object]:
    config: dict[str, object] = {
        "run_dir": "runs/x",
        "model": {"name": "zse-tiny"},
        "data": {"dataset": "generic", "root": "data/x"},
    }
    config.update(changes)
    return config


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"epochz": 3}, "epochz"),
        ({"optim": {"lrr": 1e-5}}, r"optim\.lrr"),
        ({"data": {"dataset": "generic", "root": "d", "unseen_classes": ["a"]}}, r"data\.unseen_classes"),
    ],
)
def test_an_unknown_key_is_named(changes, key):
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        config_from_dict(_minimal(**changes))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"zse": {"batch_size": "15"}}, r"zse\.batch_size"),
        ({"zse": {"batch_size": 15.5}}, r"zse\.batch_size"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr"),
        ({"amp": 1}, "amp"),
        ({"data": {"dataset": "imagenet", "root": "d"}}, r"data\.dataset"),
        ({"schedule": {"epochs": 0}}, r"schedule\.epochs"),
        ({"optim": {"betas": [0.9]}}, r"optim\.betas"),
    ],
)
def test_a_wrong_type_or_value_is_named(changes, key):
    with pytest.raises(ConfigError, match=rf"{key}: "):
        config_from_dict(_minimal(**changes))


def test_a_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"data\.root: required key is missing"):
        config_from_dict(_minimal(data={"dataset": "generic"}))


def test_model_overrides_are_checked_against_the_model_config():
    with pytest.raises(ConfigError, match=r"model\.overrides\.keep_rate: unknown key"):
        config_from_dict(_minimal(model={"name": "zse-tiny", "overrides": {"keep_rate": 0.7}}))
    with pytest.raises(ConfigError, match=r"model\.overrides\.depth: .*integer"):
        config_from_dict(_minimal(model={"name": "zse-tiny", "overrides": {"depth": "4"}}))
    with pytest.raises(ConfigError, match=r"model\.name: unknown preset 'zse-huge'"):
        config_from_dict(_minimal(model={"name": "zse-huge"}))
    config = config_from_dict(_minimal(model={"name": "zse-tiny", "overrides": {"selection_layers": [1, 2]}}))
    assert config.model.overrides["selection_layers"] == [1, 2]


def test_settings_of_the_other_family_and_misplaced_unseen_are_refused():
    with pytest.raises(ConfigError, match=r"amff: settings for an AMFF model"):
        config_from_dict(_minimal(amff={"lam": 0.8}))
    with pytest.raises(ConfigError, match=r"validation\.retrieval: 'rn' needs a relation network"):
        config_from_dict(_minimal(model={"name": "amff-tiny"}, validation={"retrieval": "rn"}))
    with pytest.raises(ConfigError, match=r"data\.unseen: only for generic"):
        config_from_dict(_minimal(data={"dataset": "tuberlin", "root": "d", "unseen": ["a"]}))


def test_family_defaults_follow_the_papers():
    zse = config_from_dict(_minimal())
    assert (zse.optim.lr, zse.resolved_weight_decay, zse.zse_settings.batch_size) == (1e-5, 1e-2, 15)
    amff = config_from_dict(_minimal(model={"name": "amff-tiny"}))
    assert (amff.optim.lr, amff.resolved_weight_decay) == (1e-5, 5e-4)
    assert (amff.amff_settings.lam, amff.amff_settings.margin) == (0.8, 0.2)


def test_yaml_reads_exponents_without_a_dot_as_floats(tmp_path):
    path = _write(
        tmp_path / "c.yaml",
        "run_dir: r\nmodel: {name: zse-tiny}\ndata: {dataset: generic, root: d}\n"
        "optim: {lr: 1e-5, weight_decay: 5E-4, eps: 1.0e-8}\n",
    )
    config = load_config(path)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.eps) == (1e-5, 5e-4, 1e-8)


def test_json_configs_and_command_line_changes(tmp_path):
    path = _write(tmp_path / "c.json", json.dumps(_minimal()))
    assert load_config(path, resume=True).resume is True
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(_write(tmp_path / "bad.json", "{"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    config = load_config(path)
    assert config.data.root and config.run_dir


def test_example_configs_carry_the_papers_hyperparameters():
    for name in ("zse-sketchy25", "zse-sketchy21", "zse-tuberlin", "zse-quickdraw"):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.family == "zse" and config.model.name == "zse-vit-b16"
        assert (config.optim.lr, config.resolved_weight_decay, config.zse_settings.batch_size) == (
            1e-5,
            1e-2,
            15,
        )
        assert (config.schedule.epochs, config.schedule.epoch_size, config.seed) == (30, 10_000, 2021)
        assert config.validation.from_epoch == 10 and config.optim.grad_clip_norm is None
    for name in ("amff-sketchy25", "amff-tuberlin"):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.family == "amff"
        assert (config.optim.lr, config.resolved_weight_decay) == (1e-5, 5e-4)
        assert (config.amff_settings.lam, config.amff_settings.margin) == (0.8, 0.2)


def test_train_refuses_a_bad_config_before_touching_anything(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"schedule\.epoch: unknown key"):
        train(_minimal(run_dir=str(run_dir), schedule={"epoch": 3}))
    assert not run_dir.exists()


def test_sbir_train_reports_a_config_error_in_one_line(tmp_path, capsys):
    path = _write(
        tmp_path / "c.yaml",
        "run_dir: r\nmodel: {name: zse-tiny}\ndata: {dataset: generic, root: d}\n"
        "zse: {batch_size: fifteen}\n",
    )
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "zse.batch_size" in error and str(path) in error
