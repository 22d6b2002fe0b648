"""Evaluation: each retrieval mode against an independent computation, and the `sbir evaluate` report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.amff import AMFF_PRESETS
from service.cli import main
from tests.support.checkpoints import IMAGE_SIZE, write_checkpoint
from tests.support.datasets import make_generic
from tests.support.images import draw_shape
from training.data import load_image, load_split
from training.evaluate import Scorer, embed, evaluate
from training.metrics import rank_by_distances, relevance_from_labels, retrieval_metrics

UNSEEN = ["cross", "hbar", "vbar"]  # 12 sketches, 12 photos
CONTRACT_METRICS = {"map_all", "map_200", "prec_100", "prec_200"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generic(tmp_path_factory.mktemp("demo"), unseen=UNSEEN)


@pytest.fixture(scope="module")
def zse_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("zse") / "zse.pt", "zse-tiny", seed=0, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def zse_model(zse_checkpoint: Path) -> torch.nn.Module:
    return models.load_checkpoint(zse_checkpoint)


def _encode_one_by_one(model, samples, modality):
    """Independent of the evaluation's batching: each image encoded alone."""
    encoded = []
    with torch.no_grad():
        for sample in samples:
            image = load_image(sample.path, modality, IMAGE_SIZE)[None]
            encoded.append(model.encode(image, modality=modality))
    return encoded


# ----------------------------------------------------------------------------------------------
# Scores against independent computations


def test_two_stage_with_the_whole_gallery_equals_exhaustive_relation(demo_root, zse_model, zse_checkpoint):
    split = load_split("openmoji-demo", demo_root, "zero")
    device = torch.device("cpu")
    photos = embed(zse_model, split.photos, "photo", batch_size=5, device=device, keep_tokens=True)
    sketches = embed(zse_model, split.sketches, "sketch", batch_size=5, device=device, keep_tokens=True)
    exhaustive = Scorer(zse_model, photos, "rn", chunk_size=5).distances(sketches)
    two_stage = Scorer(zse_model, photos, "two-stage", shortlist=len(split.photos), chunk_size=5)
    assert np.array_equal(two_stage.distances(sketches), exhaustive)
    assert two_stage.pairs.to_dict()["fraction"] == 1.0

    rn = evaluate(zse_checkpoint, "openmoji-demo", demo_root, retrieval="rn", batch_size=5, relation_chunk=5)
    full = evaluate(
        zse_checkpoint,
        "openmoji-demo",
        demo_root,
        retrieval="two-stage",
        shortlist=10_000,
        batch_size=5,
        relation_chunk=5,
    )
    for key in ("metrics", "metrics_standard", "metrics_instance"):
        assert full[key] == rn[key]
    assert rn["pair_fraction"] == full["pair_fraction"] == 1.0
    assert full["config"]["shortlist"] == len(split.photos)


def test_relation_scores_match_scoring_with_repeated_sketch_tokens(demo_root, zse_model):
    split = load_split("openmoji-demo", demo_root, "zero")
    device = torch.device("cpu")
    photos = embed(zse_model, split.photos, "photo", batch_size=4, device=device, keep_tokens=True)
    sketches = embed(zse_model, split.sketches, "sketch", batch_size=4, device=device, keep_tokens=True)
    distances = Scorer(zse_model, photos, "rn", chunk_size=5).distances(sketches)

    sketch_codes = _encode_one_by_one(zse_model, split.sketches, "sketch")
    photo_codes = _encode_one_by_one(zse_model, split.photos, "photo")
    photo_tokens = torch.cat([code.tokens for code in photo_codes])
    with torch.no_grad():  # each sketch's tokens copied once per photo, unlike the broadcast under test
        expected = np.stack(
            [
                zse_model.relation(s.tokens.repeat(len(photo_codes), 1, 1), photo_tokens).numpy()
                for s in sketch_codes
            ]
        )
    np.testing.assert_allclose(-distances, expected, atol=1e-5)


def test_two_stage_scores_the_shortlist_and_orders_the_rest_by_inner_product(demo_root, zse_model):
    split = load_split("openmoji-demo", demo_root, "zero")
    device = torch.device("cpu")
    photos = embed(zse_model, split.photos, "photo", device=device, keep_tokens=True)
    sketches = embed(zse_model, split.sketches, "sketch", device=device, keep_tokens=True)
    exhaustive = Scorer(zse_model, photos, "rn").distances(sketches)
    scorer = Scorer(zse_model, photos, "two-stage", shortlist=4)
    distances = scorer.distances(sketches)

    assert scorer.pairs.to_dict() == {"evaluated": 12 * 4, "exhaustive": 12 * 12, "fraction": 4 / 12}
    inner = (sketches.ret @ photos.ret.T).numpy()
    for row in range(len(split.sketches)):
        by_inner = np.argsort(-inner[row], kind="stable")
        shortlist, rest = by_inner[:4], by_inner[4:]
        ranking = rank_by_distances(distances[row])[0]
        assert set(ranking[:4]) == set(shortlist)
        np.testing.assert_allclose(distances[row, shortlist], exhaustive[row, shortlist], atol=1e-6)
        assert list(ranking[:4]) == sorted(shortlist, key=lambda p: (exhaustive[row, p], p))
        assert list(ranking[4:]) == list(rest)


def test_ann_weight_ranks_the_shortlist_by_relation_plus_weighted_inner_product(demo_root, zse_model):
    split = load_split("openmoji-demo", demo_root, "zero")
    device = torch.device("cpu")
    photos = embed(zse_model, split.photos, "photo", device=device, keep_tokens=True)
    sketches = embed(zse_model, split.sketches, "sketch", device=device, keep_tokens=True)
    relation = -Scorer(zse_model, photos, "rn").distances(sketches)  # [12, 12] relation scores
    inner = (sketches.ret @ photos.ret.T).numpy()
    weight = 2.0
    fused_exhaustive = Scorer(zse_model, photos, "rn", ann_weight=weight).distances(sketches)
    np.testing.assert_allclose(fused_exhaustive, -(relation + weight * inner), atol=1e-5)

    distances = Scorer(zse_model, photos, "two-stage", shortlist=4, ann_weight=weight).distances(sketches)
    for row in range(len(split.sketches)):
        by_inner = np.argsort(-inner[row], kind="stable")
        shortlist, rest = by_inner[:4], by_inner[4:]
        ranking = rank_by_distances(distances[row])[0]
        fused = relation[row] + weight * inner[row]
        assert list(ranking[:4]) == sorted(shortlist, key=lambda p: (-fused[p], p))
        assert list(ranking[4:]) == list(rest)  # the weight never lets an unlisted photo in


def test_ret_metrics_equal_those_of_independent_distances(demo_root, zse_model, zse_checkpoint):
    fractions: list[float] = []
    report = evaluate(
        zse_checkpoint,
        "openmoji-demo",
        demo_root,
        retrieval="ret",
        batch_size=5,
        progress=lambda fraction, message: fractions.append(fraction),
    )
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    split = load_split("openmoji-demo", demo_root, "zero")
    sketch_ret = torch.cat([code.ret for code in _encode_one_by_one(zse_model, split.sketches, "sketch")])
    photo_ret = torch.cat([code.ret for code in _encode_one_by_one(zse_model, split.photos, "photo")])
    distances = torch.cdist(F.normalize(sketch_ret, dim=-1), F.normalize(photo_ret, dim=-1))
    relevant = relevance_from_labels([s.label for s in split.sketches], [p.label for p in split.photos])
    instance = np.zeros_like(relevant)
    instance[np.arange(len(split.sketches)), split.pairs] = True

    expected = retrieval_metrics(distances, relevant, style="reference")
    instance_expected = retrieval_metrics(distances, instance, style="reference", fine_grained=True)
    for key, value in expected.items():
        assert report["metrics"][key] == pytest.approx(value, abs=1e-9)
    assert report["metrics"]["acc_1"] == pytest.approx(instance_expected["acc_1"])
    assert report["metrics"]["acc_10"] == pytest.approx(instance_expected["acc_10"])
    standard = retrieval_metrics(distances, relevant, style="standard")
    for key, value in standard.items():
        assert report["metrics_standard"][key] == pytest.approx(value, abs=1e-9)
    assert report["pair_fraction"] is None and report["pairs"]["evaluated"] == 0


# ----------------------------------------------------------------------------------------------
# The command and its report


def test_sbir_evaluate_writes_the_contract_report(tmp_path, demo_root, zse_checkpoint, capsys):
    out = tmp_path / "reports" / "report.json"
    status = main(
        [
            "evaluate",
            "--checkpoint",
            str(zse_checkpoint),
            "--dataset",
            "openmoji-demo",
            "--root",
            str(demo_root),
            "--retrieval",
            "two-stage",
            "--shortlist",
            "6",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["metrics"]) == CONTRACT_METRICS | {"acc_1", "acc_10"}
    assert set(report["metrics_standard"]) == CONTRACT_METRICS | {"acc_1", "acc_10"}
    assert all(0.0 <= value <= 1.0 for value in report["metrics"].values())
    assert report["checkpoint_sha256"] == models.checkpoint_hash(zse_checkpoint)
    assert report["dataset"]["sketches"] == report["dataset"]["photos"] == 12
    assert report["dataset"]["classes"] == 3
    assert report["config"]["retrieval"] == "two-stage" and report["config"]["shortlist"] == 6
    assert report["pair_fraction"] == pytest.approx(0.5)
    assert {"embed_photos_s", "embed_sketches_s", "scoring_s", "total_s"} <= set(report["timings"])
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert not list(out.parent.glob("*.tmp"))

    quick = tmp_path / "quick.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(zse_checkpoint),
                "--dataset",
                "openmoji-demo",
                "--root",
                str(demo_root),
                "--quick",
                "--out",
                str(quick),
            ]
        )
        == 0
    )
    assert json.loads(quick.read_text())["dataset"]["sketches"] == 3  # every 5th of 12


def test_sbir_evaluate_fine_grained_chair(tmp_path, zse_checkpoint):
    rng = np.random.default_rng(0)
    root = tmp_path / "ChairV2"
    for photo_id in range(6):
        (root / "testB").mkdir(parents=True, exist_ok=True)
        (root / "testA").mkdir(parents=True, exist_ok=True)
        draw_shape(photo_id, "photo", rng).save(root / "testB" / f"{photo_id}.png")
        for n in range(2):
            draw_shape(photo_id, "sketch", rng).save(root / "testA" / f"{photo_id}_{n}.png")
    out = tmp_path / "chair.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(zse_checkpoint),
                "--dataset",
                "qmul-chair",
                "--root",
                str(tmp_path),
                "--retrieval",
                "ret",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == CONTRACT_METRICS | {"acc_1", "acc_10"}
    assert report["metrics"]["acc_10"] == 1.0  # 6 photos: the right one is always in the top 10
    assert report["dataset"]["level"] == "fine-grained" and report["dataset"]["photos"] == 6


def test_amff_evaluates_by_embedding_and_refuses_relation_retrieval(tmp_path, demo_root, capsys):
    torch.manual_seed(0)
    config = dataclasses.replace(AMFF_PRESETS["amff-tiny"], image_size=IMAGE_SIZE, num_classes=3)
    checkpoint = models.save_checkpoint(models.build_model(config), tmp_path / "amff.pt")
    report = evaluate(checkpoint, "generic", demo_root, retrieval="ret", unseen=UNSEEN)
    assert report["model"]["family"] == "amff" and 0.0 <= report["metrics"]["map_all"] <= 1.0
    assert "acc_1" not in report["metrics"]  # generic data are category-level

    status = main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "generic",
            "--root",
            str(demo_root),
            "--retrieval",
            "rn",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert "relation network" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_sbir_evaluate_reports_a_missing_checkpoint_in_one_line(tmp_path, demo_root, capsys):
    status = main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "nope.pt"),
            "--dataset",
            "openmoji-demo",
            "--root",
            str(demo_root),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert status == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_full_gallery_ranks_seen_photos_too(demo_root, zse_model, zse_checkpoint):
    from training.data import with_full_gallery

    zero = load_split("openmoji-demo", demo_root, "zero")
    train = load_split("openmoji-demo", demo_root, "train")
    full = with_full_gallery(zero, train)
    assert full.sketches == zero.sketches and full.pairs == zero.pairs
    assert len(full.photos) == len(zero.photos) + len(train.photos)
    assert full.photos[: len(zero.photos)] == zero.photos  # pairs keep pointing at the same photos
    for sample in full.photos:
        assert full.classes[sample.label] == sample.class_name

    report = evaluate(zse_checkpoint, "openmoji-demo", demo_root, retrieval="ret", batch_size=5, gallery="all")
    assert report["dataset"]["photos"] == len(full.photos) and report["config"]["gallery"] == "all"
    # Independent: brute-force [Ret] ranking over every photo, one image at a time.
    sketches = _encode_one_by_one(zse_model, full.sketches, "sketch")
    photos = _encode_one_by_one(zse_model, full.photos, "photo")
    similarity = torch.cat([s.ret for s in sketches]) @ torch.cat([p.ret for p in photos]).T
    relevant = relevance_from_labels([s.label for s in full.sketches], [p.label for p in full.photos])
    expected = retrieval_metrics(-similarity.numpy(), relevant)
    assert abs(report["metrics"]["map_all"] - expected["map_all"]) < 1e-5
    own = np.zeros_like(relevant)
    for row, photo in enumerate(full.pairs):
        own[row, photo] = True
    assert report["metrics"]["acc_1"] == retrieval_metrics(-similarity.numpy(), own, fine_grained=True)["acc_1"]


def test_an_unknown_gallery_is_refused(demo_root, zse_checkpoint):
    from training.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="gallery"):
        evaluate(zse_checkpoint, "openmoji-demo", demo_root, gallery="everything")


# ----------------------------------------------------------------------------------------------
# Held-out classes, --unseen as names, pairing by stem (issue 15)


def _evaluate_cli(checkpoint: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "generic", "--root", str(root),
                 "--out", str(out), "--num-workers", "0", *extra])


def test_sbir_evaluate_refuses_one_held_out_class_unless_allowed(tmp_path, demo_root, zse_checkpoint, capsys):
    # The default unseen fraction 0.2 of 6 classes holds out one class: mAP would be 1.0 for any model.
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "r.json") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "only 1 held-out (unseen) class (" in error
    assert "--allow-small-split" in error and not (tmp_path / "r.json").exists()

    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "r.json", "--unseen", "circle",
                         "--allow-small-split") == 0
    captured = capsys.readouterr()
    assert "1 held-out (unseen) classes: circle\n" in captured.err
    assert "warning: --allow-small-split: only 1 held-out (unseen) class (circle)" in captured.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["map_all"] == 1.0  # what the refusal protects against: every photo is relevant
    assert report["dataset"]["held_out_classes"] == ["circle"] and report["warnings"]


def test_sbir_evaluate_takes_unseen_names_and_prints_them(tmp_path, demo_root, zse_checkpoint, capsys):
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "r.json", "--unseen", "square,circle") == 0
    captured = capsys.readouterr()
    assert "sbir evaluate: 2 held-out (unseen) classes: circle, square\n" in captured.err
    assert json.loads(captured.out)["held_out_classes"] == ["circle", "square"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["dataset"]["classes"], report["dataset"]["photos"], report["warnings"]) == (2, 8, [])

    # A name that is neither a file nor a class: one line naming it (no FileNotFoundError).
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "r.json", "--unseen", "star") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unseen class(es) not found as folders: star" in error
    # A file, as before.
    (tmp_path / "unseen.txt").write_text("cross\nhbar\n")
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "r.json", "--unseen",
                         str(tmp_path / "unseen.txt")) == 0
    assert json.loads(capsys.readouterr().out)["held_out_classes"] == ["cross", "hbar"]


def test_sbir_evaluate_refuses_a_held_out_class_without_photos(tmp_path, zse_checkpoint, capsys):
    import shutil

    root = make_generic(tmp_path / "data")
    shutil.rmtree(root / "photo" / "cross")
    assert _evaluate_cli(zse_checkpoint, root, tmp_path / "r.json", "--unseen", "circle,cross") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 held-out (unseen) class(es) have no photo (cross)" in error


def test_sbir_evaluate_pair_by_stem_measures_each_sketch_against_its_own_photo(tmp_path, demo_root,
                                                                               zse_checkpoint, capsys):
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "plain.json", "--unseen", "circle,square") == 0
    assert _evaluate_cli(zse_checkpoint, demo_root, tmp_path / "paired.json", "--unseen", "circle,square",
                         "--pair-by-stem") == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    paired = json.loads((tmp_path / "paired.json").read_text())
    assert "acc_1" not in plain["metrics"] and plain["dataset"]["level"] == "category"
    assert paired["dataset"]["level"] == "category + instance" and paired["config"]["pair_by_stem"] is True
    # 8 photos: every sketch's own photo is within its first 10, so acc@10 is 1 exactly when each
    # sketch got a photo (an unpaired sketch would count as NaN and a wrong pair could not change this).
    assert paired["metrics_instance"]["acc_10"] == 1.0
    split = load_split("generic", demo_root, "zero", unseen=["circle", "square"], pair_by_stem=True)
    assert split.pairs is not None and [split.photos[p].path.stem for p in split.pairs] == [
        sample.path.stem for sample in split.sketches
    ]
    assert paired["metrics"]["map_all"] == plain["metrics"]["map_all"]  # category figures unchanged
