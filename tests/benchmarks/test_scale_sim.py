"""The scale simulation runs once, small (3,000 synthetic photos over the test workspace's fp16
index, warm cache only): it publishes a real on-disk index whose vectors and tokens are the ones
its rules say, and reports every stage for both indexes. Checks what it records, never time."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

import indexer
from benchmarks import scale_sim
from benchmarks.cli import BENCHMARKS
from indexer import ondisk, token_codec
from tests.support.datasets import Workspace

PHOTOS, POOL = 3000, 8


def test_a_small_simulation_publishes_what_its_rules_say_and_times_every_stage(workspace: Workspace,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "scale_sim.json"
    argv = ["--photos", str(PHOTOS), "--pool", str(POOL), "--work-dir", str(tmp_path / "sim"), "--demo-index",
            str(workspace.index_dir), "--checkpoint", str(workspace.checkpoint), "--sketches", str(workspace.gallery),
            "--queries", "2", "--warmup", "1", "--shortlist", "20", "--threads", "1", "--no-cold", "--out", str(out)]
    assert scale_sim.main(argv) == 0
    report = json.loads(out.read_text())
    directory = tmp_path / "sim" / f"sim-{PHOTOS}"
    build = report["build"]
    assert build["photos"] == PHOTOS and build["disk_bytes"]["files"]["index.ivfdata"] > 0
    assert build["disk_bytes"]["total"] == sum(path.stat().st_size for path in directory.iterdir())

    centres, demo_tokens, _ = scale_sim.demo_arrays(workspace.index_dir)
    with indexer.open(directory) as sim:
        assert len(sim) == PHOTOS and sim.manifest["faiss"]["on_disk"]
        assert sim.manifest["tokens"]["bytes_per_photo"] == demo_tokens.shape[1] * scale_sim.TOKEN_BYTES
        # Photo i holds demo photo (i mod pool)'s codes: equal tokens for i and i + pool, close to the original.
        tokens = sim.tokens([1, 1 + POOL, 2]).numpy()
        np.testing.assert_array_equal(tokens[0], tokens[1])
        original = np.asarray(demo_tokens[[1, 2]], dtype=np.float32)
        error = np.linalg.norm(tokens[[0, 2]] - original) / np.linalg.norm(original)
        assert error < 0.2, error
        assert not np.allclose(tokens[0], tokens[2])
    # Every photo stored once under its own id: a search of every list returns ids 0..N-1 exactly once.
    lists = ondisk.read(directory)
    faiss.extract_index_ivf(lists).nprobe = faiss.extract_index_ivf(lists).nlist
    _, ids = lists.search(scale_sim.synthetic_vectors(centres, 7, 1, 0.5, 0), PHOTOS)
    np.testing.assert_array_equal(np.sort(ids[0]), np.arange(PHOTOS))
    assert token_codec.CODEC_FILE in build["disk_bytes"]["files"]

    serve = report["serve"]
    assert serve["cold"] == {"skipped": "--no-cold"}
    for name in ("sim", "demo"):
        stages = serve["warm"][name]
        assert {"embed", "ann", "rerank", "total"} <= set(stages)
        assert all(stages[stage]["count"] == 2 for stage in stages)
    assert serve["warm"]["sim"]["token_fetch"]["count"] == 2
    assert serve["memory_after_searches"]["rss"] >= serve["memory_before_open"]["rss_anon"]


def test_scale_sim_is_a_registered_benchmark() -> None:
    assert BENCHMARKS["scale_sim"] == "benchmarks.scale_sim"
