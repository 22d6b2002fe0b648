"""The demo training set held in memory: every image decoded once, preprocessed as the service does.

The per-item PIL pipeline of :mod:`training.data` decodes, crops and augments every image again at
every step, which on 2 CPU cores starves the step (36-40 images/s for zse-tiny). Here each image is
decoded once into a uint8 tensor and the augmentation runs on whole batches of tensors
(:mod:`training.sketch_jitter`).

Items are grouped at two levels:

- an *instance* is one picture in any style (an emoji by hexcode, an icon by set and name): its
  sketches and photos are the instance-level positives of each other;
- a *concept* groups instances (an OpenMoji subgroup, an icon concept); same-concept pairs are the
  weaker positives of the contrastive loss.

Shapes: ``sketches`` [S, H, W] uint8 grey (sketches are line art; the model sees it as 3 equal
channels), ``photos`` [P, 3, H, W] uint8 RGB. Both are preprocessed with :mod:`models.preprocess`
(sketch: crop to ink, aspect-keeping resize, white padding; photo: resize), so that training sees
what serving sees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.atomic import write_atomic


@dataclass(frozen=True)
class BankItem:
    """One image file: its modality, instance key and concept name (``source`` names its style)."""

    path: Path
    modality: str  # "sketch" or "photo"
    instance: str
    concept: str
    source: str


@dataclass
class PairBank:
    """Decoded images with their instance and concept ids (see the module docstring for shapes).

    sketch_instance [S], photo_instance [P]: instance id of each image; instance_concept [I]: concept
    id of each instance; sketch_source [S] / photo_source [P]: index into ``sources``.
    """

    sketches: torch.Tensor
    photos: torch.Tensor
    sketch_instance: torch.Tensor
    photo_instance: torch.Tensor
    instance_concept: torch.Tensor
    sketch_source: torch.Tensor
    photo_source: torch.Tensor
    instances: list[str]
    concepts: list[str]
    sources: list[str]

    def trainable_instances(self) -> torch.Tensor:
        """Ids of instances with at least one sketch and one photo: [T] int64."""
        has_sketch = torch.zeros(len(self.instances), dtype=torch.bool)
        has_photo = torch.zeros(len(self.instances), dtype=torch.bool)
        has_sketch[self.sketch_instance] = True
        has_photo[self.photo_instance] = True
        return torch.nonzero(has_sketch & has_photo).squeeze(1)

    def members(self, modality: str) -> list[torch.Tensor]:
        """For each instance id, the rows of its ``modality`` images (an empty tensor when none)."""
        owner = self.sketch_instance if modality == "sketch" else self.photo_instance
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=len(self.instances))
        return list(torch.split(order, counts.tolist()))


def decode(item: BankItem, size: int) -> np.ndarray:
    """One image as the service preprocesses it, back in uint8: sketch [H, W], photo [3, H, W]."""
    from models import preprocess

    image = preprocess.read_image(item.path)
    tensor = preprocess.sketch(image, size) if item.modality == "sketch" else preprocess.photo(image, size)
    pixels = ((tensor.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return pixels.min(axis=0) if item.modality == "sketch" else pixels


def _signature(items: Sequence[BankItem], size: int) -> str:
    digest = hashlib.sha256(f"bank-v1 {size}\n".encode())
    for item in items:
        stat = item.path.stat()
        digest.update(f"{item.path}|{stat.st_size}|{stat.st_mtime_ns}|{item.modality}|{item.instance}|"
                      f"{item.concept}|{item.source}\n".encode())
    return digest.hexdigest()[:16]


def build_bank(items: Iterable[BankItem], size: int = 224, cache: str | os.PathLike[str] | None = None) -> PairBank:
    """Decode ``items`` into a :class:`PairBank`; with ``cache`` (a folder), reuse or write a ``.pt``
    file keyed by the items' paths, sizes and times, so a restarted run does not decode again."""
    items = sorted(items, key=lambda item: (item.modality, str(item.path)))
    cache_file = None
    if cache is not None:
        cache_file = Path(cache) / f"bank-{_signature(items, size)}.pt"
        if cache_file.is_file():
            return PairBank(**torch.load(cache_file, weights_only=False))
    instances = sorted({item.instance for item in items})
    instance_id = {name: index for index, name in enumerate(instances)}
    concept_of: dict[str, str] = {}
    for item in items:
        concept_of.setdefault(item.instance, item.concept)
    concepts = sorted(set(concept_of.values()))
    concept_id = {name: index for index, name in enumerate(concepts)}
    sources = sorted({item.source for item in items})
    source_id = {name: index for index, name in enumerate(sources)}
    sketch_items = [item for item in items if item.modality == "sketch"]
    photo_items = [item for item in items if item.modality == "photo"]
    sketches = np.stack([decode(item, size) for item in sketch_items]) if sketch_items else np.zeros((0, size, size), np.uint8)
    photos = np.stack([decode(item, size) for item in photo_items]) if photo_items else np.zeros((0, 3, size, size), np.uint8)
    fields: dict[str, Any] = {
        "sketches": torch.from_numpy(sketches),
        "photos": torch.from_numpy(photos),
        "sketch_instance": torch.tensor([instance_id[item.instance] for item in sketch_items], dtype=torch.int64),
        "photo_instance": torch.tensor([instance_id[item.instance] for item in photo_items], dtype=torch.int64),
        "instance_concept": torch.tensor([concept_id[concept_of[name]] for name in instances], dtype=torch.int64),
        "sketch_source": torch.tensor([source_id[item.source] for item in sketch_items], dtype=torch.int64),
        "photo_source": torch.tensor([source_id[item.source] for item in photo_items], dtype=torch.int64),
        "instances": instances,
        "concepts": concepts,
        "sources": sources,
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, lambda handle: torch.save(fields, handle))
    return PairBank(**fields)


def openmoji_items(root: str | os.PathLike[str], part: str = "seen") -> list[BankItem]:
    """The OpenMoji pairs of a prepared demo folder: ``part`` is ``"seen"``, ``"unseen"`` or ``"all"``.

    Instance: ``emoji:<hexcode>``; concept: the subgroup.
    """
    root = Path(root)
    with open(root / "split.json", encoding="utf-8") as handle:
        split = json.load(handle)
    wanted = set(split["seen"]) | set(split["unseen"]) if part == "all" else set(split[part])
    items = []
    for modality in ("sketch", "photo"):
        for path in sorted((root / modality).glob("*/*.png")):
            subgroup = path.parent.name
            if subgroup in wanted:
                items.append(BankItem(path, modality, f"emoji:{path.stem}", subgroup, f"openmoji-{modality}"))
    return items
