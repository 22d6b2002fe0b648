"""`sbir bench gpu` on this machine at small sizes: each part's figures against facts computed here.

One run (module fixture, about 40 s of CPU, most of it the two torchrun launches) serves every test.
Without a GPU the GPU halves must be listed as skipped with their reason; with one they must have run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from benchmarks import cli, gpu
from indexer.faiss_index import gpu_count
from models.checkpoint import read_state

SEED, BATCH, K = 3, 3, 5
ARGV = ["--device", "cpu", "--seed", str(SEED), "--batch", str(BATCH), "--repeats", "1", "--pairs", "8",
        "--chunk", "4", "--rounds", "1", "--vectors", "400", "--queries", "6", "--dim", "32", "--k", str(K),
        "--steps", "20"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """(the JSON report, the work dir holding part 4's run directory)."""
    folder = tmp_path_factory.mktemp("gpu-bench")
    out, work = folder / "gpu.json", folder / "work"
    assert cli.run_benchmark("gpu", [*ARGV, "--work-dir", str(work), "--out", str(out)]) == 0
    return json.loads(out.read_text()), work


def skipped_reasons(report: dict[str, Any], part: str) -> list[str]:
    return [entry["reason"] for entry in report[part]["skipped"]]


def test_every_gpu_part_is_skipped_with_its_reason_without_a_gpu(ran: tuple[dict[str, Any], Path]) -> None:
    report, _ = ran
    assert report["device"] == "cpu"
    assert (report["machine"]["gpus"] == []) == (not torch.cuda.is_available())
    # --device cpu: the torch GPU halves are skipped either way; the reason names why.
    torch_reason = "torch.cuda.is_available() is False" if not torch.cuda.is_available() else "--device cpu"
    assert "fp16" not in report["precision"]["precisions"]
    assert any(torch_reason in reason and "fp16" in reason for reason in skipped_reasons(report, "precision"))
    assert torch_reason in skipped_reasons(report, "rerank")
    assert torch_reason in skipped_reasons(report, "training")
    faiss_reason = "faiss.get_num_gpus() == 0" if gpu_count() == 0 else "--device cpu"
    assert skipped_reasons(report, "faiss") == [faiss_reason]
    assert all("gpu" not in row for row in report["faiss"]["indexes"])
    # The top-level list is every part's, tagged with the part.
    assert {entry["part"] for entry in report["skipped"]} == {"precision", "rerank", "faiss", "training"}


def recomputed_fp32_scores() -> torch.Tensor:
    """The benchmark's inputs, rebuilt here from its stated recipe, scored by `model.relation`: [BATCH]."""
    torch.manual_seed(SEED)
    model = models.build_model("zse-tiny", pretrained=False).eval()
    size = model.config.image_size

    def noise(seed: int) -> torch.Tensor:
        return torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    with torch.inference_mode():
        sketch = model.encode(noise(SEED), modality="sketch")
        photos = model.encode(noise(SEED + 1), modality="photo")
        kept = None if sketch.kept is None else sketch.kept[:1]
        return model.relation(sketch.tokens[:1], photos.tokens, kept, photos.kept)


def test_fp32_scores_are_the_models_and_bf16_stays_close(ran: tuple[dict[str, Any], Path]) -> None:
    report, _ = ran
    rows = report["precision"]["precisions"]
    assert set(rows) == {"fp32", "bf16"}
    fp32 = torch.tensor(rows["fp32"]["scores"])
    torch.testing.assert_close(fp32, recomputed_fp32_scores(), atol=1e-5, rtol=0)
    bf16 = torch.tensor(rows["bf16"]["scores"])
    assert bf16.shape == (BATCH,)
    # bf16 rounds a score near 0.5 to steps of 1/256; the encoder's error adds a little more.
    assert float((bf16 - fp32).abs().max()) < 2e-2
    assert rows["bf16"]["max_abs_diff_vs_fp32"] == pytest.approx(float((bf16 - fp32).abs().max()), abs=1e-7)
    assert rows["fp32"]["max_abs_diff_vs_fp32"] == 0.0
    assert all(value > 0 for value in rows["bf16"]["ms_per_batch"].values())


def test_rerank_reports_pairs_per_second_of_fp32(ran: tuple[dict[str, Any], Path]) -> None:
    report, _ = ran
    rerank = report["rerank"]
    assert rerank["pairs"] == 8 and rerank["token_shape"] == [197, 96]
    assert set(rerank["results"]) == {"fp32"} and rerank["results"]["fp32"]["pairs_per_s_median"] > 0


def test_cpu_flat_search_is_the_brute_force_top_k(ran: tuple[dict[str, Any], Path]) -> None:
    report, _ = ran
    result = report["faiss"]
    vectors, queries, ids = gpu.synthetic_vectors(400, 6, 32, SEED)
    assert result["ids"] == "1000 + 3 * row" and np.array_equal(ids, 1000 + 3 * np.arange(400))
    order = np.argsort(-(queries.astype(np.float64) @ vectors.astype(np.float64).T), axis=1)[:, :K]
    flat, ivf = result["indexes"]
    assert flat["factory"] == "Flat" and flat["cpu_sample_ids"] == ids[order].tolist()
    assert flat["cpu"]["recall_at_k_vs_exact"] == 1.0
    assert ivf["factory"].startswith("IVF") and 0.0 < ivf["cpu"]["recall_at_k_vs_exact"] <= 1.0


def test_torchrun_trained_to_step_20_after_resuming_from_step_10(ran: tuple[dict[str, Any], Path]) -> None:
    report, work = ran
    first, second = report["training"]["runs"]
    assert first["returncode"] == 0 and second["returncode"] == 0 and report["training"]["ok"]
    run_dir = work / "run"
    # The run directory, read here: where the resumed run began and where it ended.
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    begins = [(event["event"], event["step"]) for event in events if event["event"] in ("start", "resume")]
    assert begins == [("start", 0), ("resume", 10)]
    assert max(event["step"] for event in events if event["event"] == "train") == 20
    final = json.loads((run_dir / "report.json").read_text())
    assert (final["status"], final["start_step"], final["step"]) == ("completed", 10, 20)
    assert read_state(run_dir / "checkpoints" / "last.pt")["training_state"]["step"] == 20
    assert (first["step"], first["last_checkpoint_step"], second["start_step"]) == (10, 10, 10)
