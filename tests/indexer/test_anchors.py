"""Pre-scorer anchors stored at index time: written per segment, linked by `add`, equal to the
downsampling conv applied by hand to the stored tokens, and read by a prescore search in place of
computing them (the same scores, and only the chosen photos' tokens read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import indexer
import models
from indexer import retrieval
from indexer.token_store import TokenStore, empty_layout, encode_tokens, link_segments, write_segment
from models.rerank_mode import Reranking, RerankMode
from tests.support.checkpoints import write_checkpoint
from tests.support.datasets import make_folder_gallery
from tests.support.images import make_png

FAST = {"num_workers": 0, "progress": False, "batch_size": 4}


@pytest.fixture(scope="module")
def prescorer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zse-tiny with a pre-scorer and token selection (keep 0.7 on photos): kept positions matter."""
    return write_checkpoint(tmp_path_factory.mktemp("prescorer") / "zse-tiny-prescorer.pt", "zse-tiny", seed=3,
                            prescorer=True, keep_rate_photo=0.7)


def _anchors_by_hand(model, tokens: torch.Tensor, kept: torch.Tensor | None) -> np.ndarray:
    """The downsampling conv of tokens [B, T', D] put back on the 14x14 grid (zeros where dropped),
    read as the reference reads it (a plain reshape of the N x D buffer to D x 14 x 14)."""
    config = model.config
    batch, _, dim = tokens.shape
    grid = torch.zeros(batch, config.num_tokens, dim)
    if kept is None:
        grid = tokens[:, 1:].clone()
    else:
        for row in range(batch):
            grid[row, kept[row]] = tokens[row, 1:]
    feature_map = grid.reshape(batch, dim, config.grid_size, config.grid_size)
    conv = model.downsample
    down = F.conv2d(feature_map, conv.weight, conv.bias, stride=2)
    return down.flatten(2).transpose(1, 2).detach().numpy()


def test_segments_keep_anchors_beside_tokens_and_link_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tokens = rng.standard_normal((7, 5, 8)).astype(np.float32)
    anchors = rng.standard_normal((7, 4, 3)).astype(np.float32)
    layout = empty_layout("fp16", (5, 8), anchors=(4, 3))
    assert layout["anchors"] == {"shape": [4, 3], "dtype": "float32", "bytes_per_photo": 48}
    layout["segments"].append(write_segment(tmp_path, layout, 4, [{**encode_tokens(tokens[:4], "fp16"),
                                                                  "anchors": anchors[:4]}]))
    copy = tmp_path / "copy"
    copy.mkdir()
    link_segments(tmp_path, copy, layout)
    layout["segments"].append(write_segment(copy, layout, 3, [{**encode_tokens(tokens[4:], "fp16"),
                                                               "anchors": anchors[4:]}]))
    assert [entry["anchors"] for entry in layout["segments"]] == ["tokens-000.anchors.npy", "tokens-001.anchors.npy"]
    store = TokenStore(copy, layout)
    rows = np.array([6, 0, 3, 4, 4])
    assert store.has_anchors
    np.testing.assert_array_equal(store.gather_anchors(rows), anchors[rows])  # float32: stored exactly
    plain = empty_layout("fp16", (5, 8))
    assert plain["anchors"] is None
    other = tmp_path / "plain"
    other.mkdir()
    plain["segments"].append(write_segment(other, plain, 2, [encode_tokens(tokens[:2], "fp16")]))
    without = TokenStore(other, plain)
    assert not without.has_anchors and without.gather_anchors(np.array([1, 0])) is None
    assert not list(other.glob("*.anchors.npy"))


@pytest.mark.parametrize("fmt", ["fp16", "int8"])
def test_build_stores_the_anchors_of_the_stored_tokens_and_add_extends_them(
        tmp_path: Path, prescorer_checkpoint: Path, fmt: str) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 3, "b": 2})
    out = indexer.build(gallery, prescorer_checkpoint, tmp_path / "index", tokens=fmt, shard_size=2, **FAST)
    for number in range(2):
        make_png(gallery / "c" / f"{number}.png", seed=90 + number)
    indexer.add(out, gallery, prescorer_checkpoint, **FAST)
    model = models.load_checkpoint(prescorer_checkpoint).eval()
    with indexer.open(out) as index:
        layout = index.manifest["tokens"]
        assert layout["anchors"]["shape"] == [model.config.num_anchors, model.config.kernel_dim]
        assert len(layout["segments"]) == 2 and all(entry["anchors"] for entry in layout["segments"])
        ids = [6, 0, 4, 5, 2]  # across both segments, in no order
        tokens, kept = index.tokens(ids), index.kept(ids)
        assert kept is not None  # token selection: the kept positions are part of the recipe
        np.testing.assert_allclose(index.anchors(ids).numpy(), _anchors_by_hand(model, tokens, kept),
                                   rtol=1e-4, atol=1e-5)


def test_no_anchors_without_a_prescorer_or_in_an_rq_store(tmp_path: Path, checkpoint: Path,
                                                          prescorer_checkpoint: Path) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 3})
    plain = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "plain", **FAST)
    with indexer.open(plain) as index:
        assert index.manifest["tokens"]["anchors"] is None and index.anchors([0]) is None
        assert not list(plain.glob("*.anchors.npy"))
    none = indexer.build(tmp_path / "gallery", prescorer_checkpoint, tmp_path / "none", tokens="none", **FAST)
    with indexer.open(none) as index:
        assert index.manifest["tokens"]["anchors"] is None and index.anchors([0]) is None


def test_a_prescore_search_reads_stored_anchors_and_only_the_chosen_photos_tokens(
        tmp_path: Path, prescorer_checkpoint: Path) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 4, "b": 4})
    out = indexer.build(tmp_path / "gallery", prescorer_checkpoint, tmp_path / "index", **FAST)
    model = models.load_checkpoint(prescorer_checkpoint).eval()
    with torch.no_grad():  # a spread head, so that the pre-scores order the photos
        model.prescorer.head.layers[-1].weight.mul_(50.0)
    sketch = retrieval.embed_sketch(model, torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(8)) * 2 - 1,
                                    torch.device("cpu"))
    reranking = Reranking.prepare(model, RerankMode.parse("prescore3"))
    ids = np.array([7, 1, 4, 0, 6, 2, 5, 3])
    with indexer.open(out) as index:
        asked: list[int] = []
        real_tokens = index.tokens

        def counted(chosen):
            asked.extend(int(value) for value in chosen)
            return real_tokens(chosen)

        index.tokens = counted
        stored = retrieval.relation_scores(model, index, sketch.tokens, ids, 2, torch.device("cpu"),
                                           reranking=reranking)
        assert len(asked) == 3  # the three chosen photos, not the whole shortlist
        # The same search computing the anchors from the tokens (what an index without them does).
        index.anchors = lambda chosen: None
        computed = retrieval.relation_scores(model, index, sketch.tokens, ids, 2, torch.device("cpu"),
                                             reranking=reranking)
        # By hand: pre-scores from the stored tokens' anchors, then the relation score of the best 3.
        tokens, kept = real_tokens(ids), index.kept(ids)
    np.testing.assert_allclose(stored, computed, rtol=0, atol=1e-6)
    photo = torch.from_numpy(_anchors_by_hand(model, tokens, kept))
    sketch_anchors = torch.from_numpy(_anchors_by_hand(model, sketch.tokens.tokens, sketch.tokens.kept))
    kernel = F.normalize(sketch_anchors, dim=-1) @ F.normalize(photo, dim=-1).transpose(-2, -1)
    first = model.prescorer.head(kernel).detach().numpy()
    top = np.argsort(-first, kind="stable")[:3]
    with torch.no_grad():
        exact = model.relation(sketch.tokens.tokens, tokens[top], sketch.tokens.kept, kept[top]).numpy()
    np.testing.assert_array_equal(np.argsort(-stored, kind="stable")[:3], top[np.argsort(-exact, kind="stable")])
    np.testing.assert_allclose(stored[top], exact, rtol=0, atol=1e-5)
    rest = np.setdiff1d(np.arange(len(ids)), top)
    assert stored[rest].max() < stored[top].min()
