"""Each benchmark runs once on tiny sizes and writes its JSON; these tests check structure, never time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import models
from benchmarks import cli, quality_cost, rerank, search_latency, server_throughput, upload_memory
from tests.support.datasets import make_generic

MACHINE_KEYS = {"cpu_model", "cpu_cores_usable", "torch", "faiss", "gpus", "load_average_1m"}
STAGES = {"decode", "embed", "ann", "rerank", "total"}
PERCENTILES = {"count", "p50", "p95", "p99", "mean", "min", "max"}


def read(path: Path) -> dict:
    report = json.loads(path.read_text())
    assert MACHINE_KEYS <= set(report["machine"])
    assert len(report["load_average_at_start"]) == 3
    return report


def test_rerank_reports_every_variant_with_equal_scores(tmp_path: Path) -> None:
    out = tmp_path / "rerank.json"
    argv = ["--models", "zse-tiny", "--pairs", "6", "--chunks", "2,4", "--rounds", "1", "--bf16", "--out", str(out)]
    assert rerank.main(argv) == 0
    report = read(out)
    (result,) = report["models"]
    assert result["model"] == "zse-tiny" and result["token_shape"] == [197, 96]
    variants = {(row["variant"], row["chunk"]) for row in result["results"]}
    assert {("naive", 2), ("naive", 4), ("model", 2), ("fast", 4), ("fast_prepared", 4)} <= variants
    assert ("fast_bf16", 4) in variants
    for row in result["results"]:
        assert row["pairs"] == 6 and row["pairs_per_s_median"] > 0
        # bfloat16 is the one variant that is not meant to give the fp32 scores.
        assert row["max_abs_diff_vs_naive"] < (5e-2 if row["variant"] == "fast_bf16" else 1e-4)
    assert result["kernel_max_abs_diff_fast_vs_model"] < 1e-4
    assert set(result["speedup_fast_vs_naive_same_chunk"]) == {"2", "4"}
    assert result["speedup_fast_vs_naive_best_chunks"] > 0


def test_the_naive_implementation_scores_as_the_model_with_token_selection() -> None:
    import dataclasses

    from models.config import ZSE_PRESETS

    torch.manual_seed(0)
    model = models.build_model(dataclasses.replace(ZSE_PRESETS["zse-tiny"], keep_rate_sketch=0.7,
                                                   keep_rate_photo=0.7)).eval()
    sketch, (tokens, kept) = rerank.model_tokens(model, 3, pool=3)
    with torch.inference_mode():
        naive = rerank.naive_relation(model, sketch.tokens, tokens, sketch.kept, kept)
        expected = model.relation(sketch.tokens, tokens, sketch.kept, kept)
    assert kept is not None
    torch.testing.assert_close(naive, expected, atol=1e-5, rtol=0)


def test_search_latency_reports_each_stage_per_size_and_shortlist(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--checkpoint", str(checkpoint), "--sizes", "40,70", "--shortlists", "5,80", "--queries", "2",
            "--warmup", "0", "--pool", "3", "--k", "4", "--out", str(out)]
    assert search_latency.main(argv) == 0
    report = read(out)
    rows = report["results"]
    assert [(row["gallery_size"], row["shortlist"]) for row in rows] == [(40, 5), (40, 40), (70, 5), (70, 70)]
    for row in rows:
        assert set(row["stages_ms"]) == STAGES
        for stage in STAGES:
            assert set(row["stages_ms"][stage]) == PERCENTILES and row["stages_ms"][stage]["count"] == 2


def test_synthetic_index_serves_tokens_from_its_store(tmp_path: Path) -> None:
    pool = torch.randn(3, 197, 8).numpy()
    index = search_latency.SyntheticIndex(tmp_path, 7, 16, pool, None, "fp16")
    try:
        ids, scores = index.search(torch.randn(1, 16).numpy(), 7)
        assert sorted(ids[0].tolist()) == list(range(7))
        tokens = index.tokens([4, 0])  # photo i holds pool photo i % 3
        torch.testing.assert_close(tokens, torch.from_numpy(pool[[1, 0]]).half().float())
        assert index.record(6).id == 6
        with pytest.raises(KeyError):
            index.record(7)
    finally:
        index.close()


def test_quality_cost_reports_the_curve_and_its_end_equals_exhaustive(tmp_path: Path, checkpoint: Path) -> None:
    root = make_generic(tmp_path / "data", unseen=["cross", "hbar", "vbar"])
    out = tmp_path / "quality.json"
    argv = ["--checkpoint", str(checkpoint), "--root", str(root), "--shortlists", "2,5", "--keep-rates",
            "1.0/1.0,0.7/0.7", "--chunk", "5", "--out", str(out)]
    assert quality_cost.main(argv) == 0
    report = read(out)
    assert [setting["keep_rates"] for setting in report["settings"]] == [[1.0, 1.0], [0.7, 0.7]]
    for setting in report["settings"]:
        assert setting["sketches"] == 12 and setting["photos"] == 12 and setting["exhaustive_pairs"] == 144
        assert [row["shortlist"] for row in setting["two_stage"]] == [2, 5, 12]
        assert [row["pair_fraction"] for row in setting["two_stage"]] == pytest.approx([2 / 12, 5 / 12, 1.0])
        whole = setting["two_stage"][-1]
        assert whole["metrics"] == pytest.approx(setting["exhaustive_rn"]["metrics"])
        assert set(whole["metrics"]) == set(quality_cost.METRICS)


def test_server_throughput_runs_the_server_and_load_generator_per_rerank_mode(
    tmp_path: Path, checkpoint: Path
) -> None:
    out = tmp_path / "server.json"
    argv = ["--checkpoint", str(checkpoint), "--photos", "6", "--concurrency", "2", "--duration", "1",
            "--warmup", "0", "--shortlist", "4", "--k", "3", "--modes", "fp32,int8+cascade2", "--out", str(out)]
    assert server_throughput.main(argv) == 0
    report = read(out)
    assert [(row["mode"], row["concurrency"]) for row in report["results"]] == [("fp32", 2), ("int8+cascade2", 2)]
    for row in report["results"]:
        assert row["requests_ok"] > 0 and set(row["status_counts"]) == {"200"}
        assert set(row["latency_ms"]) == PERCENTILES
        assert set(row["server_stages_ms"]) == STAGES
    assert report["speedup_vs_first_mode"]["2"]["fp32"] == 1.0
    assert set(report["speedup_vs_first_mode"]["2"]) == {"fp32", "int8+cascade2"}


def test_upload_memory_measures_both_variants_in_child_processes(tmp_path: Path) -> None:
    out = tmp_path / "upload_memory.json"
    # 2300 px wide: the drawing's crop (80 % of it) is over 1792 px, so the reduction applies.
    argv = ["--width", "2300", "--height", "500", "--formats", "png-rgb", "--out", str(out)]
    assert upload_memory.main(argv) == 0
    report = read(out)
    assert report["image"] == {"width": 2300, "height": 500, "pixels": 1_150_000, "stroke_px": 2}
    (row,) = report["results"]
    assert row["format"] == "png-rgb" and row["bytes"] > 0
    assert row["before"]["shrink"] is False and row["after"]["shrink"] is True
    assert row["before"]["decoded_size"] == [2300, 500] and row["after"]["decoded_size"][0] == 448
    for variant in ("before", "after"):
        assert row[variant]["peak_above_baseline_mib"] >= 0 and row[variant]["baseline_rss_mib"] > 0
    assert row["tensors"]["ink_pixels_after"] > 0 and 0 <= row["tensors"]["before_ink_kept_within_1px"] <= 1


def test_sbir_bench_dispatches_to_the_benchmark(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "rerank.json"
    args = parser.parse_args(["bench", "rerank", "--models", "zse-tiny", "--pairs", "2", "--chunks", "2",
                              "--rounds", "1", "--out", str(out)])
    assert args.handler(args) == 0
    assert read(out)["benchmark"] == "rerank"


def test_fast_modes_compares_every_mode_with_the_reference_way_of_scoring(tmp_path: Path, checkpoint: Path) -> None:
    from benchmarks import fast_modes

    out = tmp_path / "fast_modes.json"
    argv = ["--checkpoint", str(checkpoint), "--parts", "pairs", "--large", "", "--pairs", "8", "--chunks", "4,8",
            "--rounds", "1", "--modes", "fp32,int8,int8+cascade3", "--out", str(out)]
    assert fast_modes.main(argv) == 0
    report = read(out)
    result = report["pairs"]["zse-tiny"]
    assert {(row["mode"], row["chunk"]) for row in result["results"]} == {
        (mode, chunk) for mode in ("reference", "fp32", "int8", "int8+cascade3") for chunk in (4, 8)}
    for row in result["results"]:
        if row["mode"] == "fp32":  # exact mode: the reference's scores to float rounding
            assert row["max_abs_diff_vs_reference"] < 1e-5
    best = result["best"]
    for mode, speedup in result["speedup_vs_reference_best_chunks"].items():
        assert speedup == pytest.approx(best[mode]["pairs_per_s_median"] / best["reference"]["pairs_per_s_median"],
                                        abs=0.01)


def test_fast_modes_measures_prescore_modes_on_both_models(tmp_path: Path, checkpoint: Path) -> None:
    import models
    from benchmarks import fast_modes
    from training.prescore import with_prescorer

    grown = models.save_checkpoint(with_prescorer(models.load(checkpoint, "cpu").model), tmp_path / "grown.pt")
    out = tmp_path / "fast_modes.json"
    argv = ["--checkpoint", str(grown), "--parts", "pairs", "--large", "zse-tiny", "--pairs", "8", "--chunks", "4",
            "--rounds", "1", "--modes", "fp32,prescore3,prescore8", "--out", str(out)]
    assert fast_modes.main(argv) == 0
    for result in read(out)["pairs"].values():  # the checkpoint's model, and the random-weight one grown for it
        rows = {row["mode"]: row for row in result["results"]}
        assert set(rows) == {"reference", "fp32", "prescore3", "prescore8"}
        assert rows["prescore8"]["max_abs_diff_vs_fp32"] < 1e-5  # M = K: every photo scored exactly
        assert rows["prescore3"]["max_abs_diff_vs_fp32"] > 1e-4  # 5 of 8 keep their pre-scores


def test_token_codec_reports_bytes_and_errors_at_a_models_width(tmp_path: Path) -> None:
    from benchmarks import token_codec

    out = tmp_path / "token_codec.json"
    argv = ["--parts", "vit-b16", "--large", "zse-tiny", "--large-photos", "2", "--token-bytes", "4,8",
            "--out", str(out)]
    assert token_codec.main(argv) == 0
    rows = read(out)["large"]["results"]
    assert [(row["token_bytes"], row["bytes_per_token"], row["bytes_per_photo"]) for row in rows] == \
        [(4, 4, 197 * 4), (8, 8, 197 * 8)]
    assert all(row["fp16_bytes_per_photo"] == 2 * 197 * 96 for row in rows)
    # More bytes, smaller error: each residual stage codes what the previous ones left.
    assert 0 < rows[1]["relative_reconstruction_error"] < rows[0]["relative_reconstruction_error"] < 1
