"""One recipe per model family: what the training loop does differently for ZSE-SBIR and FFMLN/AMFF.

The loop asks ``recipe_for(config.family)`` and never branches on the family string itself.
What differs:

================  ======================================  =============================================
                  ZSE-SBIR (``"zse"``)                    FFMLN / AMFF (``"amff"``)
================  ======================================  =============================================
model             the preset as given                     ``num_classes`` = the seen classes of the data
init checkpoint   taken whole                             classifier and proxies rebuilt when the data
                                                          hold another number of classes
frozen parts      none                                    the classifier with ``amff.freeze_classifier``
objective         :class:`ZSEObjective` (triplets)        :class:`AMFFObjective` (balanced batches)
items             :class:`TripletDataset`, collated       :class:`BalancedBatchDataset`, one item is a
                  ``batch_size`` at a time                whole batch
================  ======================================  =============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from training.config import ZSE_EPOCH_SIZE, ConfigError, Family, TrainConfig, model_config_with_overrides
from training.data import BalancedBatchDataset, TripletDataset
from training.datasets import SplitData
from training.objectives import AMFFObjective, ZSEObjective

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class FamilyItems:
    """The training items of one epoch, as the family lays them out."""

    dataset: TripletDataset | BalancedBatchDataset
    steps_per_epoch: int
    batch_size: int | None  # the DataLoader's: items collated a step, or None when an item is a batch
    items_per_step: int  # per process, in sampler indices: triplets (ZSE) or batches (AMFF, 1)
    images_per_step: int  # per process


class FamilyRecipe(Protocol):
    """What the training loop needs from a model family."""

    @property
    def family(self) -> Family:
        """``TrainConfig.family`` of the models this recipe trains (and of their checkpoints)."""
        ...

    def model_config(self, model_config: Any, num_classes: int) -> Any:
        """The preset's config adapted to the training data (``num_classes`` seen classes)."""
        ...

    def from_initial(self, initial: nn.Module, num_classes: int) -> nn.Module:
        """The model to train from the weights of ``model.init_checkpoint`` (same family)."""
        ...

    def freeze(self, config: TrainConfig, model: nn.Module) -> None:
        """Stop the gradients of the parts this recipe keeps fixed, before the optimiser sees them."""
        ...

    def objective(self, config: TrainConfig, model: nn.Module) -> nn.Module:
        """The loss module around ``model``: forward(*inputs) -> (total, {part: value})."""
        ...

    def items(
        self,
        config: TrainConfig,
        split: SplitData,
        world_size: int,
        augment: Callable[..., Any] | None,
        image_size: int,
    ) -> FamilyItems:
        """The training items of an epoch shared by ``world_size`` processes (batch size is per process)."""
        ...

    def inputs(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, ...]:
        """A loader batch moved to ``device``, in the order the objective's forward takes them."""
        ...


def _move(batch: Batch, device: torch.device, *keys: str) -> tuple[torch.Tensor, ...]:
    return tuple(batch[key].to(device, non_blocking=True) for key in keys)


@dataclass(frozen=True)
class ZSERecipe:
    """ZSE-SBIR: triplets (sketch, photo of its class, photo of another), epochs of a fixed size."""

    family: Family = "zse"

    def model_config(self, model_config: Any, num_classes: int) -> Any:
        return model_config  # no classifier: the class count does not shape the model

    def from_initial(self, initial: nn.Module, num_classes: int) -> nn.Module:
        return initial.train()

    def freeze(self, config: TrainConfig, model: nn.Module) -> None:
        return None

    def objective(self, config: TrainConfig, model: nn.Module) -> nn.Module:
        zse = config.zse_settings
        return ZSEObjective(
            model, zse.triplet_margin, zse.triplet_weight, zse.relation_weight, zse.ret_weight, zse.ret_margin
        )

    def items(
        self,
        config: TrainConfig,
        split: SplitData,
        world_size: int,
        augment: Callable[..., Any] | None,
        image_size: int,
    ) -> FamilyItems:
        batch = config.zse_settings.batch_size
        epoch_size = config.schedule.epoch_size or ZSE_EPOCH_SIZE
        steps = epoch_size // (batch * world_size)
        if steps < 1:
            raise ConfigError(
                f"schedule.epoch_size: {epoch_size} items is less than one step "
                f"of {batch * world_size} (batch x processes)"
            )
        dataset = TripletDataset(split, steps * batch * world_size, config.seed, augment, image_size,
                                 positive=config.zse_settings.positive)
        return FamilyItems(dataset, steps, batch, items_per_step=batch, images_per_step=3 * batch)

    def inputs(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, ...]:
        return _move(batch, device, "sketch", "positive", "negative")


@dataclass(frozen=True)
class AMFFRecipe:
    """FFMLN / AMFF: class-balanced batches, a classifier and proxies over the seen classes."""

    family: Family = "amff"

    def model_config(self, model_config: Any, num_classes: int) -> Any:
        return dataclasses.replace(model_config, num_classes=num_classes)

    def from_initial(self, initial: nn.Module, num_classes: int) -> nn.Module:
        initial_config: Any = initial.config
        if initial_config.num_classes == num_classes:
            return initial.train()
        import models

        # The seen classes of the new data decide the classifier and proxies; the rest is kept.
        resized = dataclasses.replace(initial_config, num_classes=num_classes)
        model = models.build_model(resized, pretrained=False)
        state = {
            k: v for k, v in initial.state_dict().items() if not k.startswith(("classifier.", "proxies"))
        }
        model.load_state_dict(state, strict=False)
        return model

    def freeze(self, config: TrainConfig, model: nn.Module) -> None:
        if config.amff_settings.freeze_classifier:
            from models.ffmln_loss import freeze_classifier

            freeze_classifier(model)

    def objective(self, config: TrainConfig, model: nn.Module) -> nn.Module:
        amff = config.amff_settings
        return AMFFObjective(model, amff.lam, amff.margin, amff.mining)

    def items(
        self,
        config: TrainConfig,
        split: SplitData,
        world_size: int,
        augment: Callable[..., Any] | None,
        image_size: int,
    ) -> FamilyItems:
        amff = config.amff_settings
        per_batch = amff.classes_per_batch * amff.samples_per_class
        epoch_size = config.schedule.epoch_size or len(split.sketches)  # an epoch: about every sketch once
        steps = max(1, epoch_size // (per_batch * world_size))
        dataset = BalancedBatchDataset(
            split, steps * world_size, config.seed, amff.classes_per_batch, amff.samples_per_class, augment,
            image_size,
        )
        return FamilyItems(dataset, steps, None, items_per_step=1, images_per_step=2 * per_batch)

    def inputs(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, ...]:
        return _move(batch, device, "sketches", "sketch_labels", "photos", "photo_labels")


RECIPES: Mapping[Family, FamilyRecipe] = {"zse": ZSERecipe(), "amff": AMFFRecipe()}


def recipe_for(family: Family) -> FamilyRecipe:
    """The recipe of ``family`` (``TrainConfig.family``, already validated)."""
    return RECIPES[family]


def load_initial(config: TrainConfig, recipe: FamilyRecipe) -> nn.Module | None:
    """The model of ``model.init_checkpoint`` (None without one), read before any data are.

    Raises:
        ConfigError: the file does not exist or is no checkpoint (naming the file and the key), or it
            holds a model of another family or another preset than ``model.name`` (naming both).
    """
    import models

    path = config.model.init_checkpoint
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"model.init_checkpoint: {path} does not exist (set it to a checkpoint, e.g. "
                          "weights/zse-openmoji-demo.pt, or remove the key to start from the preset)")
    try:
        initial = models.load_checkpoint(path)
    except models.CheckpointError as error:
        raise ConfigError(f"model.init_checkpoint: {error}") from None
    family = getattr(initial, "family", "?")
    name = getattr(getattr(initial, "config", None), "name", "?")
    if family != recipe.family:
        raise ConfigError(
            f"model.init_checkpoint: a {family} checkpoint, but model.name is {recipe.family} "
            f"({config.model.name!r}; {path} holds {name!r})"
        )
    if name != config.model.name and name in _preset_names():
        raise ConfigError(
            f"model.name is {config.model.name!r} but model.init_checkpoint {path} holds {name!r}: "
            f"set model.name: {name} (the checkpoint decides the architecture) or choose another checkpoint"
        )
    return initial


def _preset_names() -> set[str]:
    import models

    return set(models.preset_names())


def build_training_model(
    config: TrainConfig, recipe: FamilyRecipe, num_classes: int, initial: nn.Module | None = None
) -> nn.Module:
    """The model to train: the preset with overrides adapted by ``recipe`` to ``num_classes`` seen
    classes, or the weights of ``model.init_checkpoint`` (``initial``, from :func:`load_initial`;
    read here when not given).

    Raises:
        ConfigError: ``model.init_checkpoint`` is missing or holds a model of another family or preset.
    """
    import models

    model_config = model_config_with_overrides(config.model.name, config.model.overrides)
    if config.model.init_checkpoint is None:
        return models.build_model(recipe.model_config(model_config, num_classes))
    if initial is None:
        initial = load_initial(config, recipe)
        assert initial is not None
    return recipe.from_initial(initial, num_classes)
