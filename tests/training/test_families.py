"""The per-family training recipes (training.families)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import models
from models.amff import AMFF_PRESETS
from models.config import ZSE_PRESETS
from tests.support.checkpoints import IMAGE_SIZE
from tests.support.datasets import make_generic
from training.config import ConfigError, config_from_dict
from training.data import BalancedBatchDataset, TripletDataset, load_split
from training.families import AMFFRecipe, ZSERecipe, build_training_model, recipe_for
from training.objectives import AMFFObjective, ZSEObjective

UNSEEN = ["hbar", "vbar"]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    root = make_generic(tmp_path_factory.mktemp("generic"))  # 6 classes x 4 sketches, 4 of them seen
    return load_split("generic", root, "train", unseen=UNSEEN)


def _config(name: str, **changes: object):
    settings: dict[str, object] = {
        "run_dir": "runs/x",
        "model": {"name": name, "overrides": {"image_size": IMAGE_SIZE}},
        "data": {"dataset": "generic", "root": "data/x", "unseen": UNSEEN},
    }
    settings.update(changes)
    return config_from_dict(settings)


def test_each_family_has_its_recipe():
    assert isinstance(recipe_for("zse"), ZSERecipe) and recipe_for("zse").family == "zse"
    assert isinstance(recipe_for("amff"), AMFFRecipe) and recipe_for("amff").family == "amff"


def test_zse_items_are_triplets_shared_by_the_processes(split):
    config = _config("zse-tiny", zse={"batch_size": 2}, schedule={"epoch_size": 10})
    alone = recipe_for("zse").items(config, split, 1, None, IMAGE_SIZE)
    assert isinstance(alone.dataset, TripletDataset)
    # 10 triplets // (2 a step x 1 process) = 5 steps; 3 images (sketch, positive, negative) a triplet
    assert (alone.steps_per_epoch, len(alone.dataset), alone.batch_size) == (5, 10, 2)
    assert (alone.items_per_step, alone.images_per_step) == (2, 6)
    shared = recipe_for("zse").items(config, split, 2, None, IMAGE_SIZE)
    assert (shared.steps_per_epoch, len(shared.dataset)) == (2, 8)  # 10 // 4 = 2 steps of 2 x 2 triplets
    with pytest.raises(ConfigError, match=r"schedule\.epoch_size: 3 items is less than one step of 4"):
        recipe_for("zse").items(_config("zse-tiny", zse={"batch_size": 2}, schedule={"epoch_size": 3}),
                                split, 2, None, IMAGE_SIZE)


def test_amff_items_are_whole_balanced_batches(split):
    config = _config("amff-tiny", amff={"classes_per_batch": 2, "samples_per_class": 2})
    items = recipe_for("amff").items(config, split, 1, None, IMAGE_SIZE)
    assert isinstance(items.dataset, BalancedBatchDataset) and items.batch_size is None
    # an epoch: the 16 seen sketches, 4 (2 classes x 2) a batch -> 4 batches; 4 sketches + 4 photos each
    assert len(split.sketches) == 16
    assert (items.steps_per_epoch, len(items.dataset)) == (4, 4)
    assert (items.items_per_step, items.images_per_step) == (1, 8)
    assert len(recipe_for("amff").items(config, split, 2, None, IMAGE_SIZE).dataset) == 2 * 2


def test_inputs_are_moved_in_the_order_the_objective_takes_them():
    tensors = {key: torch.full((1,), float(i)) for i, key in enumerate(
        ["sketch", "positive", "negative", "sketches", "sketch_labels", "photos", "photo_labels"])}
    cpu = torch.device("cpu")
    assert [float(t) for t in recipe_for("zse").inputs(tensors, cpu)] == [0.0, 1.0, 2.0]
    assert [float(t) for t in recipe_for("amff").inputs(tensors, cpu)] == [3.0, 4.0, 5.0, 6.0]


def test_objectives_carry_the_family_settings():
    model = torch.nn.Linear(1, 1)
    zse = recipe_for("zse").objective(_config("zse-tiny", zse={"triplet_margin": 0.5}), model)
    assert isinstance(zse, ZSEObjective) and zse.model is model and zse.margin == 0.5
    amff = recipe_for("amff").objective(_config("amff-tiny", amff={"lam": 0.3, "mining": "all"}), model)
    assert isinstance(amff, AMFFObjective) and (amff.lam, amff.mining) == (0.3, "all")


def test_amff_sizes_the_classifier_to_the_seen_classes_and_freezes_it_on_request(tmp_path: Path):
    config = _config("amff-tiny")
    model = build_training_model(config, recipe_for("amff"), num_classes=4)
    assert model.classifier.out_features == 4 and model.proxies.shape[0] == 4
    recipe_for("amff").freeze(config, model)
    assert not any(p.requires_grad for p in model.classifier.parameters())
    kept = build_training_model(config, recipe_for("amff"), num_classes=4)
    recipe_for("amff").freeze(_config("amff-tiny", amff={"freeze_classifier": False}), kept)
    assert all(p.requires_grad for p in kept.classifier.parameters())


def test_an_amff_init_checkpoint_keeps_its_trunk_and_gets_a_new_classifier(tmp_path: Path):
    torch.manual_seed(0)
    initial = models.build_model(dataclasses.replace(AMFF_PRESETS["amff-tiny"], image_size=IMAGE_SIZE,
                                                     num_classes=7))
    path = models.save_checkpoint(initial, tmp_path / "init.pt")
    config = _config("amff-tiny", model={"name": "amff-tiny", "init_checkpoint": str(path)})
    model = build_training_model(config, recipe_for("amff"), num_classes=4)
    assert model.classifier.out_features == 4 and model.proxies.shape == (4, initial.config.embed_dim)
    initial_state = initial.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(("classifier.", "proxies")):
            assert torch.equal(value, initial_state[key]), key
    same = build_training_model(config, recipe_for("amff"), num_classes=7)
    assert torch.equal(same.classifier.weight, initial.classifier.weight)  # same classes: taken whole


def test_an_init_checkpoint_of_the_other_family_is_refused(tmp_path: Path):
    zse = models.build_model(dataclasses.replace(ZSE_PRESETS["zse-tiny"], image_size=IMAGE_SIZE))
    path = models.save_checkpoint(zse, tmp_path / "zse.pt")
    config = _config("amff-tiny", model={"name": "amff-tiny", "init_checkpoint": str(path)})
    with pytest.raises(ConfigError, match="a zse checkpoint, but model.name is amff"):
        build_training_model(config, recipe_for("amff"), num_classes=4)
