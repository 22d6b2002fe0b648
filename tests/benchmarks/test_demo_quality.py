"""The photo-to-photo measure of benchmarks.demo_quality, on a hand-made gallery."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.demo_quality import photo_to_photo


def test_photo_to_photo_leaves_the_query_photo_out_of_its_own_ranking() -> None:
    labels = np.array(["a", "a", "b"])
    own = np.eye(3, dtype=bool)
    # Each row: a photo's distances to the three photos; zero to itself, which must not count.
    distances = np.array([[0.0, 0.5, 0.2],   # its one relevant photo (1) at rank 2: AP 1/2
                          [0.1, 0.0, 0.9],   # its relevant photo (0) first: AP 1
                          [0.3, 0.4, 0.0]])  # no other "b": no relevant photo, left out of the mean
    measured = photo_to_photo(distances, own, labels, labels)
    assert measured["map_all"] == pytest.approx(0.75)
    # Reference-style Prec@100 looks at the first min(100, #relevant) = 1 ranks: 0 and 1.
    assert measured["prec_100"] == pytest.approx(0.5)
