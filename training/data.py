"""Torch datasets and samplers for training and evaluation, over :mod:`training.datasets` splits.

- :func:`load_split`: one entry point for every dataset name the commands accept.
- :class:`ImageDataset`: one preprocessed image an item (evaluation, validation).
- :class:`TripletDataset`: ZSE-SBIR training items, drawn as the reference does: a sketch and a
  positive photo of one class, a negative photo of another class.
- :class:`BalancedBatchDataset`: FFMLN training, one class-balanced batch of sketches and photos an item.
- :class:`StreamSampler`: the indices of one epoch for this process, from a given position, so a
  resumed run continues with the same next batch.

Randomness: every random draw of a training item is a pure function of ``(seed, epoch, index)``
(a numpy generator seeded with that triple), not of a generator shared across items. Which worker
loads an item, how many workers there are and where a run was interrupted therefore cannot change
what the item holds; resuming only needs the epoch and the position in it.
"""

from __future__ import annotations

import inspect
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from training.datasets import (
    REFERENCE_DATASETS,
    DatasetError,
    Sample,
    SplitData,
    load_generic,
    load_qmul,
    load_reference_split,
)

Modality = Literal["sketch", "photo"]
Part = Literal["train", "zero"]
# Applied to a training sketch's PIL image before preprocessing; see load_sketch.
SketchAugment = Callable[..., Image.Image]

# Quick evaluation of datasets the reference has no subsampling rule for: every n-th sketch, all photos
# (all photos so that instance pairs survive).
QUICK_SKETCH_STEP = 5
INSTANCE_DATASETS = frozenset({"qmul-chair", "qmul-shoe", "openmoji-demo"})
# Datasets whose sketches may be paired with their own photo on request (data.pair_by_stem).
STEM_PAIRED_DATASETS = frozenset({"generic"})
OPENMOJI_SPLIT_FILE = "split.json"


# ----------------------------------------------------------------------------------------------
# Splits by dataset name


def load_split(
    dataset: str,
    root: str | os.PathLike[str],
    part: Part,
    *,
    unseen: str | os.PathLike[str] | Sequence[str] | None = None,
    unseen_fraction: float = 0.2,
    split_seed: int = 0,
    quick: bool = False,
    max_missing_fraction: float = 0.01,
    pair_by_stem: bool = False,
) -> SplitData:
    """The ``train`` (seen classes) or ``zero`` (unseen, test) part of a dataset.

    Args:
        dataset: ``sketchy25``, ``sketchy21``, ``tuberlin``, ``quickdraw`` (reference split files),
            ``qmul-chair`` (train: Shoe-V2 train; zero: Chair-V2 test), ``qmul-shoe`` (Shoe-V2 train /
            test), ``generic`` (``ROOT/sketch/<class>``, ``ROOT/photo/<class>``) or ``openmoji-demo``
            (the generic layout with ``ROOT/split.json`` = ``{"seen": [...], "unseen": [...]}`` and
            sketches paired with photos by file stem).
        root: the data root.
        part: ``"train"`` or ``"zero"``.
        unseen: generic / openmoji-demo: the unseen classes (list or file), overriding the default
            (generic: drawn with ``unseen_fraction`` and ``split_seed``; openmoji-demo: split.json).
        quick: the reference's quick test subset (reference datasets), else every
            ``QUICK_SKETCH_STEP``-th sketch and all photos. Only applies to the zero part.
        max_missing_fraction: refuse when more of the listed files are missing (reference lists).
        pair_by_stem: generic: pair each sketch with the photo of its class of the same file stem
            (``SplitData.pairs``; see :func:`training.datasets.load_generic`); openmoji-demo and QMUL
            are always paired this way; the reference datasets cannot be.

    Raises:
        DatasetError: unknown dataset, bad layout, too many missing files, ``unseen`` given for a
            dataset with fixed unseen classes.
    """
    if unseen is not None and dataset not in ("generic", "openmoji-demo"):
        raise DatasetError(f"unseen classes can only be chosen for generic and openmoji-demo, not {dataset}")
    if pair_by_stem and dataset in REFERENCE_DATASETS:
        raise DatasetError(f"pairing by file stem is for generic data (openmoji-demo and QMUL are paired); "
                           f"{dataset}'s split files pair by class only")
    quick = quick and part == "zero"
    if dataset in REFERENCE_DATASETS:
        return load_reference_split(
            dataset, root, part, quick_test=quick, max_missing_fraction=max_missing_fraction
        )
    if dataset in ("qmul-chair", "qmul-shoe"):
        if part == "train":
            split = load_qmul(root, "shoe", "train")  # ZSE-SBIR trains on Shoe-V2 for both protocols
        else:
            split = load_qmul(root, "chair" if dataset == "qmul-chair" else "shoe", "test")
    elif dataset == "generic":
        split = load_generic(root, unseen, unseen_fraction, split_seed, part, pair_by_stem=pair_by_stem)
    elif dataset == "openmoji-demo":
        split = load_generic(root, unseen or _openmoji_unseen(Path(root)), part=part, pair_by_stem=True)
    else:
        raise DatasetError(f"unknown dataset {dataset!r}")
    return quick_subset(split) if quick else split


def _openmoji_unseen(root: Path) -> list[str]:
    path = root / OPENMOJI_SPLIT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (run `sbir demo prepare`, or pass the unseen classes)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from None
    unseen = data.get("unseen") if isinstance(data, dict) else None
    if not isinstance(unseen, list) or not unseen or not all(isinstance(name, str) for name in unseen):
        raise DatasetError(f'{path}: expected {{"unseen": [class names, ...]}}')
    return unseen


def with_full_gallery(zero: SplitData, train: SplitData) -> SplitData:
    """The unseen sketches of ``zero`` against every photo: ``zero``'s photos, then ``train``'s.

    Classes are ``zero.classes`` followed by those of ``train`` not already there; labels and pairs are
    remapped accordingly (pairs still point at ``zero``'s photos, which keep their positions). This is
    what a user of a gallery holding seen and unseen classes faces: the seen photos are distractors.
    """
    classes = list(zero.classes)
    position = {name: index for index, name in enumerate(classes)}
    for name in train.classes:
        if name not in position:
            position[name] = len(classes)
            classes.append(name)
    extra = [Sample(sample.path, position[sample.class_name], sample.class_name) for sample in train.photos]
    return SplitData(zero.sketches, [*zero.photos, *extra], classes, zero.pairs, zero.missing)


def quick_subset(split: SplitData, step: int = QUICK_SKETCH_STEP) -> SplitData:
    """Every ``step``-th sketch (in order) and all photos; ``pairs`` follow the kept sketches."""
    kept = range(0, len(split.sketches), step)
    pairs = None if split.pairs is None else [split.pairs[i] for i in kept]
    return replace(split, sketches=[split.sketches[i] for i in kept], pairs=pairs)


def instance_relevance_available(dataset: str, split: SplitData) -> bool:
    """True when sketch-to-own-photo metrics (acc@1, acc@10) apply to this split (generic: when it was
    paired by stem)."""
    return (dataset in INSTANCE_DATASETS or dataset in STEM_PAIRED_DATASETS) and split.pairs is not None


# ----------------------------------------------------------------------------------------------
# Images


def load_image(path: str | os.PathLike[str], modality: Modality, image_size: int = 224) -> torch.Tensor:
    """Read and preprocess one image as the reference does: [3, S, S] float32 in [-1, 1]."""
    from models import preprocess

    image = preprocess.read_image(path)
    if modality == "sketch":
        return preprocess.sketch(image, image_size)
    return preprocess.photo(image, image_size)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items ``(image [3, S, S], index)`` of a list of samples, all of one modality."""

    def __init__(self, samples: Sequence[Sample], modality: Modality, image_size: int = 224) -> None:
        self.samples = list(samples)
        self.modality = modality
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.samples[index].path, self.modality, self.image_size), index


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: a function of (seed, epoch, index) only."""
    return np.random.default_rng([seed, epoch, index])


def _item_seed(seed: int, epoch: int, index: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index, slot]).generate_state(1)[0])


def _accepts_rng(augment: SketchAugment) -> bool:
    try:
        return "rng" in inspect.signature(augment).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False


def load_sketch(
    path: str | os.PathLike[str],
    image_size: int,
    augment: SketchAugment | None,
    seed: int,
    epoch: int,
    index: int,
    slot: int = 0,
) -> torch.Tensor:
    """A training sketch: the augmentation (if any) runs on the PIL image, before preprocessing.

    The augmentation's randomness is a function of (seed, epoch, index, slot), so it is reproducible
    and resumable: a callable with an ``rng`` parameter (e.g. :class:`training.augment.SketchAugment`)
    gets ``rng=random.Random(item seed)``; any other is called with python's and torch's RNGs seeded
    for the item and put back afterwards (the training process's own streams, e.g. dropout, stay as
    they were when loading runs in it).
    """
    if augment is None:
        return load_image(path, "sketch", image_size)
    from models import preprocess

    item_seed = _item_seed(seed, epoch, index, slot)
    image = preprocess.read_image(path)
    if _accepts_rng(augment):
        augmented = augment(image, rng=random.Random(item_seed))  # type: ignore[call-arg]
    else:
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                random.seed(item_seed)
                augmented = augment(image)
        finally:
            random.setstate(python_state)
    return preprocess.sketch(augmented, image_size)


class _ClassIndex:
    """Sample positions grouped by label, for both modalities."""

    def __init__(self, split: SplitData) -> None:
        self.classes = list(split.classes)
        self.sketches_by_class: list[list[int]] = [[] for _ in self.classes]
        self.photos_by_class: list[list[int]] = [[] for _ in self.classes]
        for position, sample in enumerate(split.sketches):
            self.sketches_by_class[sample.label].append(position)
        for position, sample in enumerate(split.photos):
            self.photos_by_class[sample.label].append(position)
        # A class can be an anchor only with a sketch and a photo; a negative needs a photo.
        self.paired = [
            c for c in range(len(self.classes)) if self.sketches_by_class[c] and self.photos_by_class[c]
        ]
        self.with_photos = [c for c in range(len(self.classes)) if self.photos_by_class[c]]


# ----------------------------------------------------------------------------------------------
# ZSE-SBIR triplets


@dataclass(frozen=True)
class TripletDraw:
    """Positions in ``split.sketches`` / ``split.photos`` of one triplet, and the two class labels."""

    sketch: int
    positive: int
    negative: int
    label: int
    negative_label: int


class _SeededItems(Dataset[dict[str, torch.Tensor]]):
    """`length` items drawn from `split` by a generator seeded with (seed, epoch, index): what the
    triplet and the class-balanced datasets share (`set_epoch` picks the epoch the sampler is in)."""

    def __init__(self, split: SplitData, length: int, seed: int, sketch_augment: SketchAugment | None,
                 image_size: int) -> None:
        self.split = split
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.sketch_augment = sketch_augment
        self.image_size = image_size
        self.index = _ClassIndex(split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length


class TripletDataset(_SeededItems):
    """ZSE-SBIR training triplets, drawn as the reference's TrainSet does.

    Item ``i`` of epoch ``e``: class ``a`` uniformly among the classes with sketches and photos,
    class ``b != a`` uniformly among the classes with photos, then a sketch and a photo of ``a`` and
    a photo of ``b``, each uniformly; all from a generator seeded with ``(seed, e, i)``. The
    reference draws three distinct classes and uses the first and the last, which is the same law.

    With ``positive="instance"`` the positive is the sketch's own photo (``split.pairs``) where it has
    one, instead of any photo of its class: for paired data such as the OpenMoji demo, where a class
    (subgroup) holds very different pictures and a small model trained from scratch otherwise gets
    no usable signal. The negative is drawn as before.

    Items: ``{"sketch", "positive", "negative"}`` [3, S, S] float32, ``"indices"`` [3] int64
    (sketch, positive, negative positions), ``"labels"`` [2] int64 (a, b).
    """

    def __init__(
        self,
        split: SplitData,
        length: int,
        seed: int,
        sketch_augment: SketchAugment | None = None,
        image_size: int = 224,
        positive: str = "class",
    ) -> None:
        if positive not in ("class", "instance"):
            raise ValueError(f"positive must be 'class' or 'instance', not {positive!r}")
        if positive == "instance" and split.pairs is None:
            raise DatasetError("instance positives need sketch-photo pairs (pairing by file stem)")
        super().__init__(split, length, seed, sketch_augment, image_size)
        self.positive = positive
        if not self.index.paired:
            raise DatasetError("no training class has both sketches and photos")
        if len(self.index.with_photos) < 2:
            raise DatasetError("triplets need photos of at least two training classes")

    def draw(self, index: int, epoch: int | None = None) -> TripletDraw:
        """The positions of item ``index`` of ``epoch`` (default: the current one); no image is read."""
        rng = _item_rng(self.seed, self.epoch if epoch is None else epoch, index)
        classes = self.index
        anchor = classes.paired[int(rng.integers(len(classes.paired)))]
        others = [c for c in classes.with_photos if c != anchor]
        negative_class = others[int(rng.integers(len(others)))]
        sketch = _choice(rng, classes.sketches_by_class[anchor])
        positive = _choice(rng, classes.photos_by_class[anchor])
        if self.positive == "instance" and self.split.pairs is not None and self.split.pairs[sketch] >= 0:
            positive = self.split.pairs[sketch]
        return TripletDraw(
            sketch=sketch,
            positive=positive,
            negative=_choice(rng, classes.photos_by_class[negative_class]),
            label=anchor,
            negative_label=negative_class,
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        draw = self.draw(index)
        sketch = load_sketch(
            self.split.sketches[draw.sketch].path,
            self.image_size,
            self.sketch_augment,
            self.seed,
            self.epoch,
            index,
        )
        return {
            "sketch": sketch,
            "positive": load_image(self.split.photos[draw.positive].path, "photo", self.image_size),
            "negative": load_image(self.split.photos[draw.negative].path, "photo", self.image_size),
            "indices": torch.tensor([draw.sketch, draw.positive, draw.negative]),
            "labels": torch.tensor([draw.label, draw.negative_label]),
        }


def _choice(rng: np.random.Generator, positions: Sequence[int]) -> int:
    return positions[int(rng.integers(len(positions)))]


# ----------------------------------------------------------------------------------------------
# FFMLN class-balanced batches


class BalancedBatchDataset(_SeededItems):
    """FFMLN training batches: item ``i`` of epoch ``e`` is a whole batch (use ``batch_size=None``).

    A batch draws ``classes_per_batch`` distinct classes among those with sketches and photos (all
    of them when there are fewer), then ``samples_per_class`` sketches and as many photos of each
    (without replacement when the class has enough, else with), from a generator seeded with
    ``(seed, e, i)``. Labels are the training split's class indices, as the model's classifier and
    proxies expect.

    Items: ``"sketches"``, ``"photos"`` [N, 3, S, S] float32 (N = classes x samples), ``"sketch_labels"``,
    ``"photo_labels"`` [N] int64, ``"sketch_indices"``, ``"photo_indices"`` [N] int64 positions.
    """

    def __init__(
        self,
        split: SplitData,
        length: int,
        seed: int,
        classes_per_batch: int,
        samples_per_class: int,
        sketch_augment: SketchAugment | None = None,
        image_size: int = 224,
    ) -> None:
        super().__init__(split, length, seed, sketch_augment, image_size)
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        if len(self.index.paired) < 2:
            raise DatasetError("class-balanced batches need at least two classes with sketches and photos")

    def draw(self, index: int, epoch: int | None = None) -> tuple[list[int], list[int]]:
        """(sketch positions, photo positions) of batch ``index``; no image is read."""
        rng = _item_rng(self.seed, self.epoch if epoch is None else epoch, index)
        paired = self.index.paired
        count = min(self.classes_per_batch, len(paired))
        chosen = [paired[int(i)] for i in rng.choice(len(paired), size=count, replace=False)]
        sketches: list[int] = []
        photos: list[int] = []
        for label in chosen:
            sketches.extend(self._take(rng, self.index.sketches_by_class[label]))
            photos.extend(self._take(rng, self.index.photos_by_class[label]))
        return sketches, photos

    def _take(self, rng: np.random.Generator, positions: Sequence[int]) -> list[int]:
        replace_ = len(positions) < self.samples_per_class
        picked = rng.choice(len(positions), size=self.samples_per_class, replace=replace_)
        return [positions[int(i)] for i in picked]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sketch_positions, photo_positions = self.draw(index)
        sketches = [
            load_sketch(
                self.split.sketches[p].path,
                self.image_size,
                self.sketch_augment,
                self.seed,
                self.epoch,
                index,
                slot,
            )
            for slot, p in enumerate(sketch_positions)
        ]
        photos = [load_image(self.split.photos[p].path, "photo", self.image_size) for p in photo_positions]
        return {
            "sketches": torch.stack(sketches),
            "photos": torch.stack(photos),
            "sketch_labels": torch.tensor([self.split.sketches[p].label for p in sketch_positions]),
            "photo_labels": torch.tensor([self.split.photos[p].label for p in photo_positions]),
            "sketch_indices": torch.tensor(sketch_positions),
            "photo_indices": torch.tensor(photo_positions),
        }


# ----------------------------------------------------------------------------------------------
# Sampling order


class StreamSampler(Sampler[int]):
    """Dataset indices of one epoch for process ``rank`` of ``world_size``, from a global position.

    The epoch's indices are ``0 .. length - 1`` in order (the items are random already, see the
    module docstring); process ``r`` takes ``r, r + W, r + 2W, ...``, the role a DistributedSampler
    plays, and ``start`` skips the first ``start`` global indices so that a resumed epoch continues
    where the interrupted one stopped. ``length`` should be a multiple of the global batch so that
    every process takes as many steps.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` global indices of the next iteration (a multiple of ``world_size``)."""
        if start % self.world_size:
            raise ValueError(f"start {start} is not a multiple of the world size {self.world_size}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start + self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return max(0, (self.length - self.start - self.rank + self.world_size - 1) // self.world_size)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "length": self.length, "world_size": self.world_size}
