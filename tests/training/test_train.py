"""Training loops on generated data: loss goes down, exact resumption, NaN handling, missing files.

Models are the tiny presets at 64x64 input (a 4x4 token grid) so that a step takes well under a
second on two CPU cores; the data are a few coloured shapes (photos) and their outlines (sketches).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import default_collate

import models
from models.amff import AMFF_PRESETS
from models.checkpoint import read_state
from models.config import ZSE_PRESETS
from tests.support.checkpoints import IMAGE_SIZE
from tests.support.configs import zse_config
from tests.support.datasets import make_generic, make_tuberlin
from training.config import ConfigError
from training.data import BalancedBatchDataset, StreamSampler, TripletDataset, load_split
from training.datasets import DatasetError
from training.objectives import AMFFObjective, ZSEObjective
from training.train import TrainingError, train


@pytest.fixture(scope="module")
def tuberlin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tuberlin(tmp_path_factory.mktemp("tuberlin"))


@pytest.fixture(scope="module")
def generic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generic(tmp_path_factory.mktemp("generic"))


def _events(run_dir: Path, event: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


# ----------------------------------------------------------------------------------------------
# The loss goes down


def test_zse_training_lowers_the_loss_on_the_reference_layout(tmp_path, tuberlin_root):
    torch.manual_seed(0)
    config = dataclasses.replace(ZSE_PRESETS["zse-tiny"], image_size=IMAGE_SIZE, dropout=0.0)
    initial = models.save_checkpoint(models.build_model(config), tmp_path / "init.pt")
    split = load_split("tuberlin", tuberlin_root, "train")
    probe = default_collate(
        [TripletDataset(split, 48, seed=999, image_size=IMAGE_SIZE)[i] for i in range(48)]
    )

    def probe_loss(checkpoint: Path) -> float:
        objective = ZSEObjective(models.load_checkpoint(checkpoint), 1.0, 2.0, 4.0).eval()
        with torch.no_grad():
            return float(objective(probe["sketch"], probe["positive"], probe["negative"])[0])

    run_dir = tmp_path / "run"
    report = train(
        zse_config(
            run_dir,
            tuberlin_root,
            model={
                "name": "zse-tiny",
                "init_checkpoint": str(initial),
                "overrides": {"image_size": IMAGE_SIZE, "dropout": 0.0},
            },
            zse={"batch_size": 8},
            schedule={"epochs": 1, "epoch_size": 120, "log_every": 5},
        )
    )

    assert report["status"] == "completed" and report["step"] == 15
    before, after = probe_loss(initial), probe_loss(Path(report["last_checkpoint"]))
    assert after < 0.9 * before, (before, after)
    records = _events(run_dir, "train")
    assert [r["step"] for r in records] == [5, 10, 15]
    assert set(records[0]["parts"]) == {"triplet", "relation"} and records[0]["images_per_s"] > 0
    assert records[0]["lr"] == pytest.approx(1e-4)
    validation = _events(run_dir, "validation")
    assert len(validation) == 1 and set(validation[0]["metrics"]) == {
        "map_all",
        "map_200",
        "prec_100",
        "prec_200",
    }
    assert Path(report["best_checkpoint"]).is_file()
    assert report["data"]["train"] == {"sketches": 16, "photos": 16, "classes": 4, "missing_files": 0}
    assert json.loads((run_dir / "report.json").read_text())["status"] == "completed"


def test_the_optional_sa_ret_triplet_is_trained_and_logged(tmp_path, tuberlin_root):
    run_dir = tmp_path / "run"
    report = train(zse_config(run_dir, tuberlin_root, zse={"batch_size": 2, "ret_weight": 1.5, "ret_margin": 0.3},
                              schedule={"epochs": 1, "epoch_size": 4, "log_every": 1},
                              validation={"enabled": False}))
    assert report["status"] == "completed" and report["step"] == 2
    records = _events(run_dir, "train")
    assert [set(r["parts"]) for r in records] == [{"triplet", "relation", "ret"}] * 2
    # The term is a weighted triplet on unit vectors: between 0 and weight * (2 + margin).
    assert all(0.0 <= r["parts"]["ret"] <= 1.5 * 2.3 for r in records)
    assert all(r["loss"] == pytest.approx(sum(r["parts"].values()), rel=1e-5) for r in records)


def test_amff_training_lowers_the_loss_on_the_generic_layout(tmp_path, generic_root):
    unseen = ["hbar", "vbar"]
    split = load_split("generic", generic_root, "train", unseen=unseen)
    torch.manual_seed(0)
    config = dataclasses.replace(
        AMFF_PRESETS["amff-tiny"], image_size=IMAGE_SIZE, num_classes=len(split.classes)
    )
    initial = models.save_checkpoint(models.build_model(config), tmp_path / "init.pt")
    batches = [BalancedBatchDataset(split, 3, 999, 4, 4, image_size=IMAGE_SIZE)[i] for i in range(3)]

    def probe_loss(checkpoint: Path) -> float:
        objective = AMFFObjective(models.load_checkpoint(checkpoint), 0.8, 0.2, "hard").eval()
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        float(objective(b["sketches"], b["sketch_labels"], b["photos"], b["photo_labels"])[0])
                        for b in batches
                    ]
                )
            )

    report = train(
        {
            "run_dir": str(tmp_path / "run"),
            "seed": 0,
            "model": {
                "name": "amff-tiny",
                "init_checkpoint": str(initial),
                "overrides": {"image_size": IMAGE_SIZE},
            },
            "data": {"dataset": "generic", "root": str(generic_root), "unseen": unseen, "num_workers": 0},
            "optim": {"lr": 1e-4},
            "amff": {"classes_per_batch": 4, "samples_per_class": 2},
            "schedule": {"epochs": 1, "epoch_size": 80, "log_every": 5},
            "validation": {"batch_size": 8},
        }
    )

    assert report["status"] == "completed" and report["step"] == 10
    before, after = probe_loss(initial), probe_loss(Path(report["last_checkpoint"]))
    assert after < 0.9 * before, (before, after)
    parts = _events(tmp_path / "run", "train")[0]["parts"]
    assert set(parts) == {"norm", "cls", "sin", "mul", "cro"}
    assert report["config"]["resolved"]["weight_decay"] == pytest.approx(5e-4)  # the FFMLN default
    classifier = models.load_checkpoint(report["last_checkpoint"]).classifier
    initial_classifier = models.load_checkpoint(initial).classifier
    assert torch.equal(classifier.weight, initial_classifier.weight)  # frozen, as Algorithm 1


# ----------------------------------------------------------------------------------------------
# Interrupt and resume


def test_interrupt_and_resume_continue_with_the_same_batches_and_weights(
    tmp_path, tuberlin_root, monkeypatch
):
    drawn: list[tuple[int, int, tuple[int, ...]]] = []
    original = TripletDataset.__getitem__

    def recording(self: TripletDataset, index: int) -> dict[str, torch.Tensor]:
        item = original(self, index)
        drawn.append((self.epoch, index, tuple(item["indices"].tolist())))
        return item

    monkeypatch.setattr(TripletDataset, "__getitem__", recording)

    # Dropout stays on (0.1) so that the torch RNG state must be restored too.
    uninterrupted = train(zse_config(tmp_path / "straight", tuberlin_root))
    straight_batches = list(drawn)
    assert uninterrupted["step"] == 6 and len(straight_batches) == 12

    drawn.clear()
    stops = iter([False, False, True])  # after step 3: the end of epoch 1, right after its validation
    first = train(zse_config(tmp_path / "interrupted", tuberlin_root), should_stop=lambda: next(stops))
    assert first["status"] == "stopped" and first["step"] == 3
    stops = iter([True])  # after step 4: in the middle of epoch 2
    second = train(
        zse_config(tmp_path / "interrupted", tuberlin_root, resume=True), should_stop=lambda: next(stops)
    )
    assert second["status"] == "stopped" and (second["start_step"], second["step"]) == (3, 4)
    assert drawn[6:8] == straight_batches[6:8]  # step 4's batch: epoch 1, items 0 and 1
    third = train(zse_config(tmp_path / "interrupted", tuberlin_root, resume=True))
    assert third["status"] == "completed" and (third["start_step"], third["step"]) == (4, 6)

    assert drawn == straight_batches
    expected = read_state(uninterrupted["last_checkpoint"])
    resumed = read_state(third["last_checkpoint"])
    assert resumed["step"] == expected["step"] == 6
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert third["best"] == uninterrupted["best"]
    assert [v["step"] for v in resumed["training_state"]["validations"]] == [3, 6]


def test_resume_guards(tmp_path, tuberlin_root):
    config = zse_config(
        tmp_path / "run",
        tuberlin_root,
        schedule={"epochs": 1, "epoch_size": 2},
        validation={"enabled": False},
    )
    with pytest.raises(TrainingError, match="nothing to resume"):
        train({**config, "resume": True})
    train(config)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        train({**config, "resume": True, "optim": {"lr": 1e-3}})
    # a longer run may continue the finished one
    longer = train({**config, "resume": True, "schedule": {"epochs": 2, "epoch_size": 2}})
    assert (longer["start_step"], longer["step"]) == (1, 2)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tuberlin_root, monkeypatch):
    from models.zse import ZSEModel

    calls = {"count": 0}
    original = ZSEModel.training_forward

    def poisoned(self: ZSEModel, *args: torch.Tensor) -> Any:
        out = original(self, *args)
        calls["count"] += 1
        if calls["count"] >= 4:
            out.positive_scores = out.positive_scores * float("nan")
        return out

    monkeypatch.setattr(ZSEModel, "training_forward", poisoned)
    run_dir = tmp_path / "run"
    report = train(
        zse_config(
            run_dir,
            tuberlin_root,
            schedule={"epochs": 1, "epoch_size": 20, "checkpoint_every": 2},
            validation={"enabled": False},
        )
    )

    assert report["status"] == "diverged"
    assert report["step"] == 3  # steps 1-3 were applied, step 4's update was not
    assert report["last_checkpoint_step"] == 2 and "step 2" in report["message"]
    saved = read_state(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 2
    assert all(
        torch.isfinite(value).all() for value in saved["state_dict"].values() if value.is_floating_point()
    )
    assert _events(run_dir, "diverged")[0]["step"] == 4
    assert json.loads((run_dir / "report.json").read_text())["status"] == "diverged"


def test_missing_files_are_counted_and_refused_above_the_fraction(tmp_path):
    root = make_tuberlin(tmp_path / "data", missing=1)  # 1 of 32 training files (3.1 %)
    run_dir = tmp_path / "run"
    with pytest.raises(
        DatasetError, match=r"1 of 32 files missing \(3\.12%\).*ImageResized_ready/cross/3\.png"
    ):
        train(zse_config(run_dir, root))
    assert not (run_dir / "checkpoints").exists()

    report = train(
        zse_config(
            run_dir,
            root,
            data={"max_missing_fraction": 0.05},
            schedule={"epochs": 1, "epoch_size": 2},
            validation={"enabled": False},
        )
    )
    assert report["status"] == "completed"
    assert report["data"]["train"]["missing_files"] == 1 and report["data"]["train"]["photos"] == 15


# ----------------------------------------------------------------------------------------------
# Sampling


def test_triplets_follow_the_reference_law_and_depend_only_on_seed_epoch_index(generic_root):
    split = load_split("generic", generic_root, "train", unseen=["hbar", "vbar"])
    dataset = TripletDataset(split, 200, seed=3)
    draws = [dataset.draw(i) for i in range(200)]
    for draw in draws:
        assert split.sketches[draw.sketch].label == split.photos[draw.positive].label == draw.label
        assert split.photos[draw.negative].label == draw.negative_label != draw.label
    assert {d.label for d in draws} == set(range(4)) and {d.negative_label for d in draws} == set(range(4))
    assert [TripletDataset(split, 200, seed=3).draw(i) for i in range(200)] == draws
    assert [dataset.draw(i, epoch=1) for i in range(200)] != draws
    assert [TripletDataset(split, 200, seed=4).draw(i) for i in range(200)] != draws


def test_balanced_batches_hold_classes_times_samples(generic_root):
    split = load_split("generic", generic_root, "train", unseen=["hbar", "vbar"])
    dataset = BalancedBatchDataset(split, 5, seed=1, classes_per_batch=3, samples_per_class=2)
    sketches, photos = dataset.draw(0)
    sketch_labels = [split.sketches[p].label for p in sketches]
    photo_labels = [split.photos[p].label for p in photos]
    assert len(set(sketch_labels)) == 3 and sketch_labels == photo_labels
    assert all(sketch_labels.count(label) == 2 for label in sketch_labels)
    assert len(set(sketches)) == 6  # without replacement: each class has 4 sketches
    assert dataset.draw(0) == BalancedBatchDataset(split, 5, 1, 3, 2).draw(0) != dataset.draw(1)


def test_stream_sampler_splits_ranks_and_resumes_at_a_position():
    ranks = [list(StreamSampler(12, rank, 2)) for rank in range(2)]
    assert ranks == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
    sampler = StreamSampler(12, 1, 2)
    sampler.set_start(8)
    assert list(sampler) == [9, 11] and len(sampler) == 2
    with pytest.raises(ValueError):
        sampler.set_start(3)


def test_sketch_augmentation_is_applied_reproducibly_without_touching_global_rngs(generic_root):
    import random

    from training.loaders import resolve_augment

    split = load_split("generic", generic_root, "train", unseen=["hbar", "vbar"])
    plain = TripletDataset(split, 4, seed=3, image_size=IMAGE_SIZE)[0]["sketch"]

    def blank_half(image: Image.Image, rng: random.Random) -> Image.Image:  # gets the item's own generator
        image = image.copy()
        ImageDraw.Draw(image).rectangle([0, 0, rng.randrange(8, 16), 31], fill="white")
        return image

    def global_noise(image: Image.Image) -> Image.Image:  # draws from python's and torch's global RNGs
        image = image.copy()
        ImageDraw.Draw(image).point([(random.randrange(32), int(torch.randint(32, ())))], fill="black")
        return image

    for augment in (blank_half, global_noise):
        python_state, torch_state = random.getstate(), torch.get_rng_state()
        first = TripletDataset(split, 4, seed=3, sketch_augment=augment, image_size=IMAGE_SIZE)[0]["sketch"]
        again = TripletDataset(split, 4, seed=3, sketch_augment=augment, image_size=IMAGE_SIZE)[0]["sketch"]
        assert torch.equal(first, again) and not torch.equal(first, plain)
        assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)

    built = resolve_augment("training.augment:SketchAugment", {"p": 0.5})
    assert built is not None and built.p == 0.5
    with pytest.raises(ConfigError, match=r"data\.sketch_augment: cannot import"):
        resolve_augment("training.augment:Nothing", {})
