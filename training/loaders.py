"""The training data of one process: the splits, the sketch augmentation and the loader.

The family's recipe lays out the items (triplets or balanced batches); this module reads the
splits and wraps the items in a resumable :class:`StreamSampler` and a ``DataLoader`` whose
iterators draw nothing from torch's global RNG (its state is saved for exact resumption).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from training.config import ConfigError, TrainConfig, model_config_with_overrides
from training.data import BalancedBatchDataset, StreamSampler, TripletDataset, load_split
from training.datasets import DatasetError, SplitData, held_out_problem, unpaired_sketches
from training.families import FamilyRecipe
from training.runtime import Runtime


def resolve_augment(spec: str | None, options: Mapping[str, Any]) -> Callable[..., Any] | None:
    """``"package.module:name"`` -> the sketch augmentation (a class is built with ``options``).

    Raises:
        ConfigError: naming ``data.sketch_augment`` (not importable, not callable, bad options).
    """
    if spec is None:
        if options:
            raise ConfigError("data.sketch_augment_options: given without data.sketch_augment")
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        augment = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"data.sketch_augment: cannot import {spec!r} ({error})") from None
    if isinstance(augment, type):
        try:
            augment = augment(**options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"data.sketch_augment_options: {spec} refuses them ({error})") from None
    elif options:
        raise ConfigError(
            f"data.sketch_augment_options: {spec!r} is not a class; options apply to classes only"
        )
    if not callable(augment):
        raise ConfigError(f"data.sketch_augment: {spec!r} is not callable")
    return augment


@dataclass
class TrainingData:
    """The training loader and what the loop needs to know about it."""

    train: SplitData
    validation: SplitData | None
    dataset: TripletDataset | BalancedBatchDataset
    sampler: StreamSampler
    loader: DataLoader
    steps_per_epoch: int
    items_per_step: int  # per process, in sampler indices: triplets (ZSE) or batches (AMFF, 1)
    images_per_step: int  # per process


def build_data(config: TrainConfig, recipe: FamilyRecipe, runtime: Runtime) -> TrainingData:
    """Read the splits (refusing too many missing files) and build the loader of this process.

    Raises:
        ConfigError: a bad augmentation or an epoch shorter than one step.
        training.datasets.DatasetError: e.g. too many missing files.
    """
    data = config.data
    load = functools.partial(
        load_split,
        data.dataset,
        data.root,
        unseen=data.unseen,
        unseen_fraction=data.unseen_fraction,
        split_seed=data.split_seed,
        max_missing_fraction=data.max_missing_fraction,
        pair_by_stem=config.pairs_by_stem,
    )
    train_split = load("train")
    if config.family == "zse" and config.zse_settings.positive == "instance" and data.dataset == "generic":
        check_instance_pairs(train_split)
    validation = None
    if config.validation.enabled:
        validation = load("zero", quick=config.validation.quick)
        check_validation_split(config, validation)
    augment = resolve_augment(data.sketch_augment, data.sketch_augment_options)
    image_size = int(model_config_with_overrides(config.model.name, config.model.overrides).image_size)
    items = recipe.items(config, train_split, runtime.world_size, augment, image_size)
    sampler = StreamSampler(len(items.dataset), runtime.rank, runtime.world_size)
    loader = DataLoader(
        items.dataset,
        batch_size=items.batch_size,
        sampler=sampler,
        drop_last=items.batch_size is not None,  # batch_size None: each item already is a whole batch
        **loader_options(config, runtime),
    )
    return TrainingData(
        train_split, validation, items.dataset, sampler, loader, items.steps_per_epoch, items.items_per_step,
        items.images_per_step,
    )


def check_instance_pairs(split: SplitData) -> None:
    """``zse.positive: instance`` on generic data: every training sketch needs a photo of its stem.

    Raises:
        DatasetError: naming how many sketches have none, and the first few.
    """
    unpaired = unpaired_sketches(split)
    if unpaired:
        shown = ", ".join(str(path) for path in unpaired[:3]) + (", ..." if len(unpaired) > 3 else "")
        raise DatasetError(
            f"zse.positive: instance: {len(unpaired)} of {len(split.sketches)} training sketches have no photo "
            f"of the same file stem in their class ({shown}); name each sketch after its photo, or use "
            "positive: class"
        )


def check_validation_split(config: TrainConfig, split: SplitData) -> None:
    """Refuse validation on a held-out part that cannot rank anything (fewer than 2 classes, or a
    class without photos) unless ``validation.allow_small_split``.

    Raises:
        ConfigError: naming the classes and the settings that change them.
    """
    problem = held_out_problem(split)
    if problem is not None and not config.validation.allow_small_split:
        raise ConfigError(
            f"validation: {problem} (data.unseen / data.unseen_fraction), turn validation off "
            "(validation.enabled: false), or set validation.allow_small_split: true"
        )


def loader_options(config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """The ``DataLoader`` keywords every family shares."""
    workers = config.num_workers
    return {
        "num_workers": workers,
        "pin_memory": runtime.device.type == "cuda",
        # Its own generator: creating an iterator then draws nothing from torch's global RNG, whose
        # state is saved for exact resumption (the items themselves are seeded per index).
        "generator": torch.Generator(),
        "persistent_workers": False,  # workers must see set_epoch(), which a fresh iterator picks up
        "prefetch_factor": 2 if workers > 0 else None,
    }
