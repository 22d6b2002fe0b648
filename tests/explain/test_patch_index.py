"""The patch index: `sbir index build --patch-index`, its search and pixels, `index add`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import indexer
from indexer.patch_index import default_patch_factory
from models.explain import image_patches, patch_vectors, synthesize_from_neighbours
from service.cli import main
from tests.support.datasets import Workspace, write_gallery


def files_pixels(index, image_ids):
    """uint8 [len, 224, 224, 3]: the photos' files resized as the model saw them."""
    from models.preprocess import load_rgb

    return np.stack([np.asarray(load_rgb(index.record(i).path).resize((224, 224)), dtype=np.uint8)
                     for i in image_ids])


@pytest.fixture(scope="module")
def patch_index_dir(workspace: Workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "with-patches"
    return indexer.build(workspace.gallery, workspace.checkpoint, out, tokens="fp16", device="cpu", num_workers=0,
                         progress=False, patch_index=True)


def test_default_factory_is_flat_for_small_galleries_and_ivf_pq_for_large():
    assert default_patch_factory(8 * 196, 96) == "Flat"
    assert default_patch_factory(2456 * 196, 96) == "IVF2775,PQ48"
    assert default_patch_factory(17_101 * 196, 768) == "IVF7323,PQ48"
    assert default_patch_factory(5_000, 768) == "Flat"
    assert default_patch_factory(43_690, 96) == "Flat" and default_patch_factory(43_691, 96).startswith("IVF")


def test_manifest_and_nearest_patch_of_every_patch_is_itself(patch_index_dir):
    manifest = json.loads((patch_index_dir / "manifest.json").read_text())
    entry = manifest["patch_index"]
    assert entry["factory"] == "Flat" and entry["ntotal"] == 8 * 196 and entry["patches_per_image"] == 196
    assert entry["pixels"]["segments"] == [{"rows": 8, "file": "patch-pixels-000.u8.npy"}]
    with indexer.open(patch_index_dir) as index:
        patches = index.patch_index
        assert patches is index.patch_index  # opened once
        assert len(patches) == 8 * 196 and patches.dimension == 96
        ids = index.ids
        vectors, _ = patch_vectors(index.tokens(ids), None, 196)
        image_ids, cells, scores = patches.search(vectors.reshape(-1, 96).numpy(), 1)
        np.testing.assert_array_equal(image_ids[:, 0], np.repeat(ids, 196))
        np.testing.assert_array_equal(cells[:, 0], np.tile(np.arange(196), 8))
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        # Pixels are the photo files as the model saw them; k = 1 gives every photo back exactly.
        originals = files_pixels(index, ids)
        for row in range(len(ids)):
            found = patches.pixels(image_ids[row * 196:(row + 1) * 196, 0], cells[row * 196:(row + 1) * 196, 0])
            rebuilt = synthesize_from_neighbours(found[:, None], np.ones((196, 1), bool), np.zeros_like(originals[0]))
            np.testing.assert_array_equal(rebuilt, originals[row])
        with pytest.raises(KeyError):
            patches.pixels(np.array([99]), np.array([0]))


def test_search_pads_when_fewer_than_k(patch_index_dir):
    with indexer.open(patch_index_dir) as index:
        image_ids, cells, scores = index.patch_index.search(np.ones((1, 96), np.float32), 8 * 196 + 3)
    assert (image_ids[0, -3:] == -1).all() and (cells[0, -3:] == -1).all() and np.isneginf(scores[0, -3:]).all()
    assert (image_ids[0, :-3] >= 0).all()


def test_ivf_pq_patch_index_and_add_extend_it(workspace: Workspace, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(workspace.gallery, gallery)
    out = indexer.build(gallery, workspace.checkpoint, tmp_path / "ivf", tokens="int8", device="cpu",
                        num_workers=0, progress=False, patch_index=True, patch_index_type="IVF8,PQ16")
    write_gallery(gallery / "new", 2, seed=50)
    indexer.add(out, gallery, workspace.checkpoint, device="cpu", num_workers=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["patch_index"]
    assert manifest["count"] == 10 and entry["ntotal"] == 10 * 196 and entry["factory"] == "IVF8,PQ16"
    assert [s["rows"] for s in entry["pixels"]["segments"]] == [8, 2] and "nprobe" in entry
    with indexer.open(out) as index:
        new_ids = index.ids[-2:]
        vectors, _ = patch_vectors(index.tokens(new_ids), None, 196)
        image_ids, cells, _ = index.patch_index.search(vectors.reshape(-1, 96).numpy(), 4)
        assert set(image_ids.flatten().tolist()) <= set(index.ids.tolist())
        # Approximate (PQ), yet most patches of the new photos find their own photo among 4 neighbours.
        own = (image_ids == np.repeat(new_ids, 196)[:, None]).any(axis=1)
        assert own.mean() > 0.5
        pixels = index.patch_index.pixels(np.repeat(new_ids, 196), np.tile(np.arange(196), 2))
        np.testing.assert_array_equal(pixels.reshape(2, 196, 16, 16, 3), image_patches(files_pixels(index, new_ids), 14))


def test_cli_flag_and_its_errors(workspace: Workspace, tmp_path, capsys):
    common = ["--gallery", str(workspace.gallery_small), "--checkpoint", str(workspace.checkpoint), "--workers", "0",
              "--no-progress", "--device", "cpu"]
    assert main(["index", "build", *common, "--out", str(tmp_path / "a"), "--patch-index"]) == 0
    assert "patch index Flat" in capsys.readouterr().out
    assert main(["index", "build", *common, "--out", str(tmp_path / "b"), "--patch-index", "--tokens", "none"]) == 2
    assert "--patch-index needs a token store" in capsys.readouterr().err
    assert main(["index", "build", *common, "--out", str(tmp_path / "c"), "--patch-index-type", "IVF4096,PQ8"]) == 2
    error = capsys.readouterr().err
    assert "patch index" in error and "4096 lists" in error
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    with torch.inference_mode(), indexer.open(tmp_path / "a") as index:
        assert len(index.patch_index) == 5 * 196
