"""The doodle set: drawn as the page's canvas draws, with hand-written relevance that can match."""

from __future__ import annotations

import numpy as np

from benchmarks.doodles import DOODLES, PEN, Doodle, relevant_ids, render


def test_at_least_thirty_distinct_doodles() -> None:
    assert len(DOODLES) >= 30
    assert len({doodle.name for doodle in DOODLES}) == len(DOODLES)


def test_a_stroke_is_drawn_with_the_round_14_px_pen() -> None:
    line = Doodle("line", (((100.0, 224.0), (348.0, 224.0)),), "x")
    ink = np.asarray(render(line).convert("L")) < 128
    column = ink[:, 224]
    assert abs(int(column.sum()) - PEN) <= 1  # the width across the stroke
    row = ink[224]
    # Round caps: the ink reaches half a pen beyond each end point, no further.
    assert abs(int(np.flatnonzero(row)[0]) - (100 - PEN // 2)) <= 1
    assert abs(int(np.flatnonzero(row)[-1]) - (348 + PEN // 2)) <= 1


def test_every_doodle_has_ink_inside_the_canvas() -> None:
    for doodle in DOODLES:
        ink = np.asarray(render(doodle).convert("L")) < 128
        assert 500 < ink.sum() < 0.5 * ink.size, doodle.name


def test_relevance_is_a_regex_over_annotations() -> None:
    house = next(doodle for doodle in DOODLES if doodle.name == "house")
    annotations = ["house", "house with garden", "horse", "derelict house", "home"]
    assert relevant_ids(house, annotations) == [0, 1, 3, 4]
