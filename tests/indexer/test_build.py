"""End to end with a real zse-tiny checkpoint on generated PNGs: build, open, search, tokens,
resume, bad files, failed builds, add, and the errors raised before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import indexer
from indexer import embedding, faiss_index
from indexer.errors import FactoryError, GalleryError, IndexerError, IndexMismatchError
from tests.support.datasets import hash_tree, make_folder_gallery
from tests.support.images import make_png

FAST = {"num_workers": 0, "progress": False, "batch_size": 4}


@pytest.fixture
def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images each `encode_batch` call embeds (wraps the real function)."""
    sizes: list[int] = []
    real = embedding.encode_batch

    def counting(model, images, settings):
        sizes.append(len(images))
        return real(model, images, settings)

    monkeypatch.setattr(embedding, "encode_batch", counting)
    return sizes


def test_build_open_round_trip(tmp_path: Path, checkpoint: Path, encode_direct) -> None:
    import models

    files = make_folder_gallery(tmp_path / "gallery", {"cat": 4, "dog": 3})
    out = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "index", shard_size=3, **FAST)
    ret, tokens = encode_direct(files)
    with indexer.open(out, models.checkpoint_hash(checkpoint)) as index:
        assert len(index) == 7 and index.has_tokens and index.name == "index"
        manifest = index.manifest
        assert manifest["model"]["name"] == "zse-tiny" and manifest["model"]["family"] == "zse"
        assert manifest["dimension"] == ret.shape[1] and manifest["faiss"]["factory"] == "Flat"
        assert manifest["tokens"]["format"] == "fp16" and manifest["tokens"]["shape"] == list(tokens.shape[1:])
        # Each photo's own vector finds itself first; the ranking equals numpy brute force.
        ids, scores = index.search(ret, 7)
        np.testing.assert_array_equal(ids[:, 0], np.arange(7))
        expected = np.argsort(-(ret @ ret.T), axis=1, kind="stable")
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_allclose(scores, np.take_along_axis(ret @ ret.T, expected, axis=1), atol=1e-4)
        # Asking for more than there is pads with -1 / -inf.
        ids, scores = index.search(ret[:1], 9)
        assert list(ids[0, 7:]) == [-1, -1] and np.all(np.isinf(scores[0, 7:]))
        # Tokens in the order asked, equal to a direct encode within fp16 rounding.
        picked = [5, 0, 3]
        np.testing.assert_allclose(index.tokens(picked).numpy(), tokens[picked], rtol=2e-3, atol=2e-3)
        record = index.record(4)
        assert (record.id, Path(record.path), record.label, record.key) == (4, files[4], "dog", "dog/00.png")
        with pytest.raises(KeyError):
            index.record(99)
        with pytest.raises(KeyError):
            index.tokens([1, 99])
        with pytest.raises(ValueError, match=r"query vectors must be \[Q, "):
            index.search(np.zeros((1, 3), np.float32), 1)
    # Only the index directory remains next to the outputs: no staging, work or old directories.
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == ["gallery", "index"]


def test_int8_tokens_and_no_tokens(tmp_path: Path, checkpoint: Path, encode_direct) -> None:
    files = make_folder_gallery(tmp_path / "gallery", {"a": 3})
    _, tokens = encode_direct(files)
    with indexer.open(indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "int8", tokens="int8", **FAST)) \
            as index:
        assert index.manifest["tokens"]["format"] == "int8"
        # Half a quantisation step per value, plus fp16 rounding of the scale.
        step = np.abs(tokens).max(axis=-1, keepdims=True) / 127
        assert np.all(np.abs(index.tokens([0, 1, 2]).numpy() - tokens) <= 0.5 * step * 1.01 + 1e-4)
    with indexer.open(indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "none", tokens="none", **FAST)) \
            as index:
        assert not index.has_tokens and index.manifest["tokens"]["format"] == "none"
        assert not list((tmp_path / "none").glob("tokens*"))
        with pytest.raises(RuntimeError, match="no token store"):
            index.tokens([0])


def test_rq_tokens_are_codes_of_the_published_codec_and_add_reuses_it(tmp_path: Path, checkpoint: Path,
                                                                      encode_direct) -> None:
    import faiss

    gallery = tmp_path / "gallery"
    files = make_folder_gallery(gallery, {"a": 3})
    _, tokens = encode_direct(files)
    out = indexer.build(gallery, checkpoint, tmp_path / "rq", tokens="rq", token_bytes=16, **FAST)
    layout = json.loads((out / "manifest.json").read_text())["tokens"]
    # 16 bytes a token: 1 centroid byte + 15 residual stages of 1 byte.
    assert layout["format"] == "rq" and layout["codec"]["code_size"] == 16
    assert layout["bytes_per_photo"] == 197 * 16
    codes = np.load(out / layout["segments"][0]["tokens"])
    assert codes.shape == (3, 197, 16) and codes.dtype == np.uint8
    codec = faiss.read_index(str(out / "tokens.codec.faiss"))
    # The codec codes y = A x, A the relation network's sensitivity metric (symmetric positive
    # definite): x is its decoding mapped back by A^-1.
    metric = np.load(out / layout["codec"]["metric_file"])
    assert metric.shape == (96, 96) and np.allclose(metric, metric.T, atol=1e-5)
    assert np.linalg.eigvalsh(metric.astype(np.float64)).min() > 0
    inverse = np.linalg.inv(metric.astype(np.float64))

    def independent_decode(some: np.ndarray) -> np.ndarray:
        flat = codec.sa_decode(np.ascontiguousarray(some.reshape(-1, 16))).astype(np.float64)
        return (flat @ inverse.T).reshape(len(some), 197, 96)

    independent = independent_decode(codes)
    with indexer.open(out) as index:
        decoded = index.tokens([0, 1, 2]).numpy()
    np.testing.assert_allclose(decoded, independent, atol=1e-4)  # the store decodes with its codec
    error = np.linalg.norm(decoded - tokens, axis=-1).mean() / np.linalg.norm(tokens, axis=-1).mean()
    assert error < 0.3, error
    metric_bytes = (out / layout["codec"]["metric_file"]).read_bytes()
    # Serving RAM (`sbir index info`): the codec is held twice (encoder, and decoder with A^-1 folded in).
    from indexer.gallery_index import footprint

    need = footprint(out)
    sizes = {name: (out / name).stat().st_size for name in ("index.faiss", "manifest.json", "tokens.codec.faiss",
                                                             "tokens.codec.metric.npy")}
    assert need.loaded == sum(sizes.values()) + sizes["tokens.codec.faiss"]
    assert set(need.loaded_files) == set(sizes)
    new_files = [make_png(gallery / "b" / f"{i}.png", seed=80 + i) for i in range(2)]
    indexer.add(out, gallery, checkpoint, **FAST)
    _, new_tokens = encode_direct(new_files)
    assert (out / "tokens.codec.faiss").read_bytes() == faiss.serialize_index(codec).tobytes()
    with indexer.open(out) as index:
        assert len(index) == 5 and len(index.manifest["tokens"]["segments"]) == 2
        added = index.tokens([3, 4]).numpy()
        np.testing.assert_array_equal(index.tokens([0, 1, 2]).numpy(), decoded)
    assert (out / layout["codec"]["metric_file"]).read_bytes() == metric_bytes
    new_codes = np.load(out / index.manifest["tokens"]["segments"][1]["tokens"])
    np.testing.assert_allclose(added, independent_decode(new_codes), atol=1e-4)
    # A codec trained on three photos fits new ones less well; it must still beat decoding to zeros (1.0).
    assert np.linalg.norm(added - new_tokens, axis=-1).mean() / np.linalg.norm(new_tokens, axis=-1).mean() < 1.0


def test_rq_on_a_gallery_too_small_to_train_is_a_one_line_error(tmp_path: Path, checkpoint: Path) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 1})  # 197 token vectors, fewer than a codebook's 256
    with pytest.raises(IndexerError, match="use --tokens fp16 or int8"):
        indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "rq", tokens="rq", **FAST)
    assert not (tmp_path / "rq").exists()


def test_manifest_and_split_galleries(tmp_path: Path, checkpoint: Path, encode_direct) -> None:
    root = tmp_path / "data"
    files = [make_png(root / "photo" / "hot air" / f"p {i}.png", seed=i) for i in range(3)]
    split = tmp_path / "split.txt"
    split.write_text("".join(f"{path.relative_to(root).as_posix()} {i % 2}\n" for i, path in enumerate(files)))
    ret, _ = encode_direct(files)
    with indexer.open(indexer.build(split, checkpoint, tmp_path / "split-index", root=root, **FAST)) as index:
        assert [index.record(i).label for i in range(3)] == ["0", "1", "0"]
        np.testing.assert_array_equal(index.search(ret, 1)[0][:, 0], [0, 1, 2])

    manifest = root / "photos.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"sku-{i}", "path": path.relative_to(root).as_posix(),
                                            "label": "balloon", "metadata": {"price": i}}) + "\n"
                                for i, path in enumerate(files)))
    with indexer.open(indexer.build(manifest, checkpoint, tmp_path / "jsonl-index", **FAST)) as index:
        record = index.record(2)
        assert (record.key, record.label, record.metadata, Path(record.path)) == ("sku-2", "balloon", {"price": 2},
                                                                                   files[2])
    csv_manifest = root / "photos.csv"
    csv_manifest.write_text("id,path,label,shop\n" + "".join(f"c{i},{path},x,s{i}\n" for i, path in enumerate(files)))
    with indexer.open(indexer.build(csv_manifest, checkpoint, tmp_path / "csv-index", **FAST)) as index:
        assert index.record(1).metadata == {"shop": "s1"}
        np.testing.assert_array_equal(index.search(ret, 1)[0][:, 0], [0, 1, 2])


def test_resume_after_interruption_between_shards(tmp_path: Path, checkpoint: Path,
                                                  monkeypatch: pytest.MonkeyPatch, count_batches: list[int]) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 5, "b": 5})
    options = {**FAST, "batch_size": 2, "shard_size": 3}  # shards of 3, 3, 3, 1 photos
    real_write = embedding.write_shard
    written: list[Path] = []

    def crash_after_two(path, arrays):
        if len(written) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while shard 3 was being embedded
        real_write(path, arrays)
        written.append(path)

    monkeypatch.setattr(embedding, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "resumed", **options)
    assert not (tmp_path / "resumed").exists()
    assert sorted(path.name for path in written) == ["shard-00000.npz", "shard-00001.npz"]
    monkeypatch.setattr(embedding, "write_shard", real_write)

    count_batches.clear()
    indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "resumed", **options)
    assert count_batches == [2, 1, 1]  # only shards 3 (2 + 1 photos) and 4 (1 photo) were embedded
    indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "straight", **options)

    resumed, straight = hash_tree(tmp_path / "resumed"), hash_tree(tmp_path / "straight")
    for name in ("manifest.json",):  # holds the name and creation time
        resumed.pop(name), straight.pop(name)
    assert resumed == straight and "index.faiss" in resumed and "tokens-000.f16.npy" in resumed
    with indexer.open(tmp_path / "resumed") as first, indexer.open(tmp_path / "straight") as second:
        queries = np.random.default_rng(0).standard_normal((4, first.dimension)).astype(np.float32)
        for got, want in zip(first.search(queries, 5), second.search(queries, 5), strict=True):
            np.testing.assert_array_equal(got, want)


def test_unreadable_files_are_skipped_and_reported(tmp_path: Path, checkpoint: Path) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"ok": 3})
    (gallery / "ok" / "a_empty.png").write_bytes(b"")
    whole = make_png(tmp_path / "whole.png", seed=9).read_bytes()
    (gallery / "ok" / "b_truncated.png").write_bytes(whole[: len(whole) // 2])
    (gallery / "ok" / "c_text.png").write_text("this is not an image\n")
    # One DataLoader worker process: failures must travel back from the worker too.
    out = indexer.build(gallery, checkpoint, tmp_path / "index", **{**FAST, "num_workers": 1})
    report = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [entry["key"] for entry in report] == ["ok/a_empty.png", "ok/b_truncated.png", "ok/c_text.png"]
    assert [entry["id"] for entry in report] == [3, 4, 5]  # sorted order: 00, 01, 02, a_, b_, c_
    assert "truncated" in report[1]["reason"]
    with indexer.open(out) as index:
        assert len(index) == 3 and index.manifest["skipped"] == 3
        assert list(index.ids) == [0, 1, 2]


def test_failed_build_leaves_published_index_byte_identical(tmp_path: Path, checkpoint: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 3})
    out = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "index", **FAST)
    before = hash_tree(out)
    make_png(tmp_path / "gallery" / "a" / "new.png", seed=50)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss_index, "build_index", broken)  # fails after embedding, while assembling
    with pytest.raises(RuntimeError, match="disk full"):
        indexer.build(tmp_path / "gallery", checkpoint, out, **FAST)
    assert hash_tree(out) == before
    assert not list(tmp_path.glob(".index.staging-*"))

    def interrupted(path, arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedding, "write_shard", interrupted)  # interrupted while embedding
    with pytest.raises(KeyboardInterrupt):
        indexer.build(tmp_path / "gallery", checkpoint, out, **{**FAST, "tokens": "int8"})
    assert hash_tree(out) == before


def test_add_extends_the_index(tmp_path: Path, checkpoint: Path, encode_direct) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 3})
    out = indexer.build(gallery, checkpoint, tmp_path / "index", shard_size=2, **FAST)
    new_files = [make_png(gallery / "b" / f"{i}.png", seed=70 + i) for i in range(2)]
    indexer.add(out, gallery, checkpoint, **FAST)  # the same folder: only the two new photos are added
    ret, tokens = encode_direct(new_files)
    with indexer.open(out) as index:
        assert len(index) == 5 and list(index.ids) == [0, 1, 2, 3, 4]
        assert index.manifest["next_id"] == 5 and len(index.manifest["tokens"]["segments"]) == 2
        assert [Path(index.record(i).path) for i in (3, 4)] == new_files
        ids, scores = index.search(ret, 1)
        np.testing.assert_array_equal(ids[:, 0], [3, 4])
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
        np.testing.assert_allclose(index.tokens([4, 3]).numpy(), tokens[::-1], rtol=2e-3, atol=2e-3)
    with pytest.raises(IndexerError, match="nothing to add"):
        indexer.add(out, gallery, checkpoint, **FAST)


def test_errors_before_any_embedding(tmp_path: Path, checkpoint: Path, other_checkpoint: Path,
                                     count_batches: list[int]) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 2})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FactoryError, match="cannot build index type 'NotAnIndex'"):
        indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "x", index_type="NotAnIndex", **FAST)
    with pytest.raises(GalleryError, match="gallery not found"):
        indexer.build(tmp_path / "missing", checkpoint, tmp_path / "x", **FAST)
    with pytest.raises(GalleryError, match="gallery is empty"):
        indexer.build(tmp_path / "empty", checkpoint, tmp_path / "x", **FAST)
    with pytest.raises(IndexerError, match="unknown token format"):
        indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "x", tokens="int4", **FAST)
    with pytest.raises(IndexerError, match="checkpoint not found"):
        indexer.build(tmp_path / "gallery", tmp_path / "nope.pt", tmp_path / "x", **FAST)
    with pytest.raises(IndexerError, match="is not an index directory"):
        indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "gallery", **FAST)
    assert count_batches == []
    assert not list(tmp_path.glob(".x.work-*")) and not (tmp_path / "x").exists()


def test_opening_or_adding_with_another_checkpoint_raises(tmp_path: Path, checkpoint: Path,
                                                          other_checkpoint: Path) -> None:
    import models

    make_folder_gallery(tmp_path / "gallery", {"a": 2})
    out = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "index", **FAST)
    right, wrong = models.checkpoint_hash(checkpoint), models.checkpoint_hash(other_checkpoint)
    with pytest.raises(IndexMismatchError) as caught:
        indexer.open(out, wrong)
    assert right in str(caught.value) and wrong in str(caught.value)
    assert f"checkpoint {Path(checkpoint).absolute()} (sha256 {right})" in str(caught.value)  # which file built it
    with pytest.raises(IndexMismatchError, match=wrong):
        indexer.add(out, tmp_path / "gallery", other_checkpoint, **FAST)
    indexer.open(out, right).close()


def test_amff_index_has_no_token_store(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    import models
    from models import preprocess

    torch.manual_seed(0)
    checkpoint = models.save_checkpoint(models.build_model("amff-tiny", pretrained=False), tmp_path / "amff.pt")
    files = make_folder_gallery(tmp_path / "gallery", {"a": 3})
    with indexer.open(indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "index", **FAST)) as index:
        assert index.manifest["model"]["family"] == "amff" and not index.has_tokens
        model = models.load_checkpoint(checkpoint)
        with torch.inference_mode():
            ret = model.encode(torch.stack([preprocess.photo(Image.open(path)) for path in files])).ret.numpy()
        assert index.dimension == ret.shape[1]
        np.testing.assert_array_equal(index.search(ret, 1)[0][:, 0], [0, 1, 2])


def test_training_failure_keeps_embeddings_for_another_index_type(tmp_path: Path, checkpoint: Path,
                                                                  count_batches: list[int]) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 1})
    (gallery / "a" / "broken1.png").write_bytes(b"")
    (gallery / "a" / "broken2.png").write_bytes(b"not a png")
    # Two lists pass the up-front check (3 photos listed), but only 1 photo is readable to train on.
    with pytest.raises(FactoryError, match="embeddings kept in .*rerun with another --index-type"):
        indexer.build(gallery, checkpoint, tmp_path / "index", index_type="IVF2,Flat", **FAST)
    assert not (tmp_path / "index").exists()
    embedded = len(count_batches)
    with indexer.open(indexer.build(gallery, checkpoint, tmp_path / "index", index_type="Flat", **FAST)) as index:
        assert len(index) == 1 and index.manifest["skipped"] == 2
    assert len(count_batches) == embedded  # nothing embedded again
