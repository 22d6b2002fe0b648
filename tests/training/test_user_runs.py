"""A user's own training runs (issue 15): held-out classes, the shipped generic config, init
checkpoints and model names, pairing by stem, Ctrl-C, and one writer per run directory.

Runs are zse-tiny at 64 px on a few generated shapes (tests.support.datasets.make_generic: 6
classes x 4 sketches and photos, sketch i of a class named like its photo i).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.checkpoint import read_state
from service.cli import main
from tests.support.checkpoints import IMAGE_SIZE, write_checkpoint
from tests.support.configs import with_sections, zse_config
from tests.support.datasets import make_generic
from training.config import ConfigError, default_num_workers, load_config
from training.datasets import DatasetError
from training.train import TrainingError, train

REPO = Path(__file__).resolve().parents[2]


def run_config(run_dir: Path, root: Path, **sections: Any) -> dict[str, Any]:
    """Two steps of two triplets, validated on ``hbar`` and ``vbar`` unless ``data`` says otherwise."""
    config = zse_config(run_dir, root, "generic", seed=3, data={"unseen": ["hbar", "vbar"]},
                        schedule={"epochs": 1, "epoch_size": 4, "log_every": 1, "checkpoint_every": 1},
                        tensorboard=False)
    return with_sections(config, sections)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generic(tmp_path_factory.mktemp("generic"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("init") / "tiny.pt", "zse-tiny", seed=0, image_size=IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------
# Held-out classes


def test_validation_on_one_held_out_class_is_refused_before_training(tmp_path, root, capsys):
    # The default fraction 0.2 of 6 classes holds out 1: mAP 1.0 whatever the model, best.pt picked on it.
    config = run_config(tmp_path / "run", root, data={"unseen": None})
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "validation: only 1 held-out (unseen) class (" in error
    assert "validation.allow_small_split: true" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_allowed_small_split_trains_and_says_so_and_the_held_out_classes_are_printed(tmp_path, root, capsys):
    report = train(run_config(tmp_path / "small", root, data={"unseen": ["vbar"]},
                              validation={"allow_small_split": True}))
    assert report["status"] == "completed" and report["data"]["held_out_classes"] == ["vbar"]
    assert report["warnings"] and "only 1 held-out (unseen) class (vbar)" in report["warnings"][0]
    assert "validation: 1 held-out (unseen) classes: vbar\n" in capsys.readouterr().err

    report = train(run_config(tmp_path / "two", root))
    assert report["warnings"] == [] and report["data"]["held_out_classes"] == ["hbar", "vbar"]
    assert "validation: 2 held-out (unseen) classes: hbar, vbar\n" in capsys.readouterr().err


def test_a_held_out_class_without_photos_is_refused(tmp_path):
    import shutil

    data = make_generic(tmp_path / "data")
    shutil.rmtree(data / "photo" / "vbar")
    with pytest.raises(ConfigError, match=r"1 held-out \(unseen\) class\(es\) have no photo \(vbar\)"):
        train(run_config(tmp_path / "run", data))


# ----------------------------------------------------------------------------------------------
# The shipped config for one's own data; init checkpoints and model names


def test_the_shipped_generic_config_names_an_existing_checkpoint_of_its_model_and_no_fixed_workers():
    import models

    config = load_config(REPO / "configs" / "zse-generic.yaml")
    init = REPO / str(config.model.init_checkpoint)
    assert init.is_file()
    assert models.load_checkpoint(init).config.name == config.model.name
    assert config.data.num_workers is None
    assert config.num_workers == max(0, min(4, (os.cpu_count() or 1) - 1)) == default_num_workers()


def test_the_shipped_generic_config_trains_on_ones_own_folders(tmp_path, root, monkeypatch):
    from training.config import config_from_dict

    data = load_config(REPO / "configs" / "zse-generic.yaml").to_dict()
    # As shipped, but on the generated folders and two steps of two triplets.
    data["run_dir"] = str(tmp_path / "run")
    data["data"] = {**data["data"], "root": str(root), "unseen": ["hbar", "vbar"]}
    data["zse"] = {**data["zse"], "batch_size": 2}
    data["schedule"] = {"epochs": 1, "epoch_size": 4}
    data["tensorboard"] = False
    monkeypatch.chdir(REPO)  # the config's paths are relative to the checkout, as sbir runs them
    report = train(config_from_dict(data))
    assert report["status"] == "completed" and report["step"] == 2
    assert report["model"] == data["model"]["name"] and report["best_checkpoint"] is not None


def test_a_missing_init_checkpoint_is_one_line_before_the_data_are_read(tmp_path, capsys):
    missing = tmp_path / "weights" / "zse-sketchy25.pt"
    # The data root does not exist either: reading the data first would report that instead.
    config = run_config(tmp_path / "run", tmp_path / "no-data", model={"init_checkpoint": str(missing)})
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", config))]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"model.init_checkpoint: {missing} does not exist" in error


def test_a_model_name_that_differs_from_the_init_checkpoints_is_one_line_naming_both(tmp_path, root,
                                                                                     tiny_checkpoint, capsys):
    config = run_config(tmp_path / "run", root,
                        model={"name": "zse-vit-b16", "init_checkpoint": str(tiny_checkpoint), "overrides": {}})
    assert main(["train", "--config", str(write_config(tmp_path / "c.yaml", config))]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"model.name is 'zse-vit-b16' but model.init_checkpoint {tiny_checkpoint} holds 'zse-tiny'" in error


def test_the_report_names_the_model_of_the_init_checkpoint(tmp_path, root):
    custom = write_checkpoint(tmp_path / "custom.pt", "zse-tiny", seed=1, image_size=IMAGE_SIZE, name="zse-mine")
    report = train(run_config(tmp_path / "run", root, model={"init_checkpoint": str(custom)}))
    assert report["model"] == "zse-mine"
    assert read_state(report["last_checkpoint"])["config"]["name"] == "zse-mine"


# ----------------------------------------------------------------------------------------------
# Pairing by stem


def test_instance_positives_on_generic_data_pair_sketches_with_same_stem_photos(tmp_path, root):
    from training.families import recipe_for
    from training.loaders import build_data
    from training.runtime import setup_runtime

    config = load_config(write_config(tmp_path / "c.yaml", run_config(
        tmp_path / "run", root, data={"pair_by_stem": True}, zse={"positive": "instance"})))
    data = build_data(config, recipe_for("zse"), setup_runtime("cpu"))
    split = data.train
    for index in range(len(data.dataset)):
        draw = data.dataset.draw(index)  # type: ignore[union-attr]
        assert split.photos[draw.positive].path.stem == split.sketches[draw.sketch].path.stem
    # Validation measures each sketch against its own photo too.
    report = train(config)
    assert {"acc_1", "acc_10"} <= set(report["last_validation"]["metrics"])
    # zse.positive: instance alone pairs by stem as well.
    alone = train(run_config(tmp_path / "alone", root, zse={"positive": "instance"}))
    assert alone["status"] == "completed"


def test_instance_positives_with_unpaired_sketches_name_how_many(tmp_path):
    data = make_generic(tmp_path / "data")
    (data / "sketch" / "circle" / "circle_0.png").rename(data / "sketch" / "circle" / "doodle.png")
    (data / "sketch" / "square" / "square_1.png").rename(data / "sketch" / "square" / "other.png")
    with pytest.raises(DatasetError, match=r"zse.positive: instance: 2 of 16 training sketches have no photo "
                                           r"of the same file stem"):
        train(run_config(tmp_path / "run", data, zse={"positive": "instance"}))


def test_pairing_is_refused_where_the_data_cannot_pair(tmp_path):
    from training.config import config_from_dict

    with pytest.raises(ConfigError, match="data.pair_by_stem: only for generic"):
        config_from_dict(run_config(tmp_path, tmp_path, data={"dataset": "tuberlin", "unseen": None,
                                                               "pair_by_stem": True}))
    with pytest.raises(ConfigError, match="zse.positive: 'instance' needs each sketch's own photo"):
        config_from_dict(run_config(tmp_path, tmp_path, data={"dataset": "tuberlin", "unseen": None},
                                    zse={"positive": "instance"}))


# ----------------------------------------------------------------------------------------------
# Ctrl-C and the run directory's writer


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, root, capsys, monkeypatch):
    import training.train as loop

    config_path = write_config(tmp_path / "c.yaml", run_config(tmp_path / "run", root,
                                                               schedule={"epoch_size": 8}))
    real_step, calls = loop.train_step, []

    def interrupted_at_step_3(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_at_step_3)
    assert main(["train", "--config", str(config_path)]) == 130
    error = capsys.readouterr().err
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert "Traceback" not in error and error.endswith("\n")
    assert error.splitlines()[-1] == (f"sbir train: interrupted; resume with: sbir train --config {config_path} "
                                      f"--resume (from the last checkpoint, {last})")
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {key: events[-1][key] for key in ("event", "step", "last_checkpoint_step")} == {
        "event": "interrupted", "step": 2, "last_checkpoint_step": 2}

    monkeypatch.setattr(loop, "train_step", real_step)
    assert main(["train", "--config", str(config_path), "--resume"]) == 0  # the printed command works
    assert read_state(last)["training_state"]["step"] == 4


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(tmp_path, root, capsys, monkeypatch):
    import training.train as loop

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_step", interrupted)
    config_path = write_config(tmp_path / "c.yaml", run_config(tmp_path / "run", root))
    assert main(["train", "--config", str(config_path)]) == 130
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.splitlines()[-1] == (f"sbir train: interrupted before the first checkpoint was saved; "
                                      f"start again with: sbir train --config {config_path}")


def test_a_second_training_of_one_run_dir_fails_at_once_naming_the_holder(tmp_path, root, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from training.checkpointing import run_lock\n"
         f"with run_lock(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        config_path = write_config(tmp_path / "c.yaml", run_config(run_dir, root))
        assert main(["train", "--config", str(config_path)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert f"{run_dir} is being written by another training (pid {holder.pid}," in error
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(TrainingError, match="another training"):  # the same process, a second writer
        from training.checkpointing import run_lock

        with run_lock(run_dir), run_lock(run_dir):
            pass
    assert train(run_config(run_dir, root))["status"] == "completed"  # free again once the holder is gone
