"""Instance positives: a triplet's positive is the sketch's own photo when the data pairs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import TripletDataset
from training.datasets import DatasetError, Sample, SplitData


def paired_split() -> SplitData:
    classes = ["a", "b", "c"]
    sketches = [Sample(Path(f"s{i}.png"), i % 3, classes[i % 3]) for i in range(12)]
    photos = [Sample(Path(f"p{i}.png"), i % 3, classes[i % 3]) for i in range(12)]
    # Sketch i pairs with photo (i + 3) % 12, which has the same class.
    return SplitData(sketches=sketches, photos=photos, classes=classes, pairs=[(i + 3) % 12 for i in range(12)])


def test_instance_positive_is_the_paired_photo_and_negative_another_class() -> None:
    split = paired_split()
    dataset = TripletDataset(split, length=200, seed=3, positive="instance")
    for index in range(200):
        draw = dataset.draw(index)
        assert draw.positive == split.pairs[draw.sketch]
        assert split.photos[draw.negative].label != split.sketches[draw.sketch].label


def test_class_positives_stay_the_reference_default() -> None:
    split = paired_split()
    draws = [TripletDataset(split, length=200, seed=3).draw(i) for i in range(200)]
    assert all(split.photos[d.positive].label == split.sketches[d.sketch].label for d in draws)
    assert any(d.positive != split.pairs[d.sketch] for d in draws)


def test_instance_positives_need_pairs() -> None:
    split = paired_split()
    unpaired = SplitData(sketches=split.sketches, photos=split.photos, classes=split.classes)
    with pytest.raises(DatasetError, match="pairs"):
        TripletDataset(unpaired, length=10, seed=0, positive="instance")
