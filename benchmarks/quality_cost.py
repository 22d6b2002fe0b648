"""Quality against cost of the two-stage design: mAP of ANN shortlist + re-ranking vs exhaustive relation scoring.

    python -m benchmarks.quality_cost --checkpoint weights/zse-openmoji-demo.pt [--root data/demo]
        [--shortlists 5,10,18,25,50,100,200] [--keep-rates 1.0/1.0,0.7/0.7] [--quick]

On the unseen part of the OpenMoji demo split, for each keep-rate setting: sketches and photos are
embedded once (`training.evaluate.embed`), every sketch-photo relation score is computed once (the
exhaustive "RN" evaluation, with `models.fast_relation` and the photo side prepared once), and then
each shortlist size K is ranked by `training.evaluate.Scorer`'s own two-stage logic (exact FAISS
inner-product shortlist of K, re-ranked by relation score, the rest in ANN order) reading those
scores, so no K re-embeds or re-scores. Reported per K: mAP@all, mAP@200, Prec@100, Prec@200 (the
reference's definitions), the difference to exhaustive, and the fraction of the exhaustive pair
evaluations used (K / G). Keep rates other than the checkpoint's are applied to the loaded model's
config (token selection at the paper's layers), which also shows their effect on embedding time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._report import finish, header, set_threads

DEFAULT_SHORTLISTS = "5,10,18,25,50,100,200"
METRICS = ("map_all", "map_200", "prec_100", "prec_200")


def relation_matrix(model: Any, sketches: Any, photos: Any, chunk: int) -> torch.Tensor:
    """Relation scores [Q, G] float32 of every sketch against every photo (photo side prepared once)."""
    from models.fast_relation import RelationScorer, fused_photo_weights, prepare_photos

    weights = fused_photo_weights(model)
    prepared = []
    for start in range(0, photos.tokens.shape[0], chunk):
        kept = None if photos.kept is None else photos.kept[start:start + chunk]
        prepared.append(prepare_photos(model, photos.tokens[start:start + chunk], kept, weights))
    rows = []
    for row in range(sketches.tokens.shape[0]):
        kept = None if sketches.kept is None else sketches.kept[row:row + 1]
        scorer = RelationScorer(model, sketches.tokens[row:row + 1], kept)
        rows.append(torch.cat([scorer.score(part).cpu() for part in prepared]))
    return torch.stack(rows)


def precomputed_scorer(model: Any, photos: Any, retrieval: str, relation: torch.Tensor, shortlist: int) -> Any:
    """A `training.evaluate.Scorer` whose relation scores are read from `relation` [Q, G] (rows = sketch
    positions of one `distances` call over all sketches) instead of recomputed; its two-stage
    shortlisting, ordering and pair counting are the evaluation's own."""
    from training.evaluate import Scorer

    class PrecomputedScorer(Scorer):
        def _relation_row(self, sketches: Any, row: int, ids: np.ndarray) -> torch.Tensor:
            scores = relation[row, torch.from_numpy(np.asarray(ids, dtype=np.int64))]
            self.pairs.evaluated += len(scores)
            return scores

    return PrecomputedScorer(model, photos, retrieval, shortlist=shortlist)  # type: ignore[arg-type]


def metrics_of(distances: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """Reference-style metrics averaged over queries, as training.evaluate reports them."""
    from training.metrics import retrieval_metrics

    return retrieval_metrics(distances, relevant, "reference")


def evaluate_setting(model: Any, split: Any, shortlists: Sequence[int], args: argparse.Namespace,
                     device: torch.device) -> dict[str, Any]:
    from training.evaluate import embed
    from training.metrics import relevance_from_labels

    timings: dict[str, float] = {}
    started = time.perf_counter()
    photos = embed(model, split.photos, "photo", batch_size=args.batch_size, device=device, keep_tokens=True,
                   amp=False, num_workers=0)
    timings["embed_photos_s"] = time.perf_counter() - started
    started = time.perf_counter()
    sketches = embed(model, split.sketches, "sketch", batch_size=args.batch_size, device=device, keep_tokens=True,
                     amp=False, num_workers=0)
    timings["embed_sketches_s"] = time.perf_counter() - started
    started = time.perf_counter()
    relation = relation_matrix(model, sketches, photos, args.chunk)
    timings["relation_all_pairs_s"] = time.perf_counter() - started
    queries, gallery = relation.shape
    timings["relation_pairs_per_s"] = queries * gallery / timings["relation_all_pairs_s"]

    relevant = relevance_from_labels(np.array([s.label for s in split.sketches]),
                                     np.array([p.label for p in split.photos]))
    rows = []
    baselines = {}
    for retrieval in ("ret", "rn"):
        scorer = precomputed_scorer(model, photos, retrieval, relation, gallery)
        baselines[retrieval] = {"metrics": metrics_of(scorer.distances(sketches), relevant),
                                "pair_fraction": scorer.pairs.to_dict()["fraction"]}
    exhaustive = baselines["rn"]["metrics"]
    for k in sorted({min(k, gallery) for k in shortlists} | {gallery}):
        scorer = precomputed_scorer(model, photos, "two-stage", relation, k)
        values = metrics_of(scorer.distances(sketches), relevant)
        rows.append({
            "shortlist": k,
            "pair_fraction": scorer.pairs.to_dict()["fraction"],
            "metrics": values,
            # Relative difference to exhaustive relation scoring, in percent of the exhaustive value.
            "relative_to_exhaustive_pct": {key: round(100.0 * (values[key] - exhaustive[key]) / exhaustive[key], 3)
                                           if exhaustive[key] else None for key in METRICS},
        })
    return {
        "keep_rates": [model.config.keep_rate_sketch, model.config.keep_rate_photo],
        "sketches": queries,
        "photos": gallery,
        "exhaustive_pairs": queries * gallery,
        "ret": baselines["ret"],
        "exhaustive_rn": baselines["rn"],
        "two_stage": rows,
        "timings": {key: round(value, 3) for key, value in timings.items()},
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("weights/zse-openmoji-demo.pt"))
    parser.add_argument("--dataset", default="openmoji-demo")
    parser.add_argument("--root", type=Path, default=Path("data/demo"))
    parser.add_argument("--shortlists", default=DEFAULT_SHORTLISTS, help="K values, comma-separated")
    parser.add_argument("--keep-rates", default="checkpoint",
                        help="'checkpoint' or sketch/photo pairs, comma-separated, e.g. 1.0/1.0,0.7/0.7")
    parser.add_argument("--quick", action="store_true", help="every 5th sketch (the evaluation's quick subset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64, help="photos per relation forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality_cost.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import models
    from training.data import load_split

    args = parse_args(argv)
    report = header("quality_cost", argv)
    report["torch_threads"] = set_threads(args.threads)
    loaded = models.load(args.checkpoint, args.device)
    device, model = loaded.device, loaded.model
    split = load_split(args.dataset, args.root, "zero", quick=args.quick)
    shortlists = [int(value) for value in args.shortlists.split(",")]
    original = model.config
    settings: list[tuple[float, ...]]
    if args.keep_rates == "checkpoint":
        settings = [(original.keep_rate_sketch, original.keep_rate_photo)]
    else:
        settings = [tuple(float(rate) for rate in pair.split("/")) for pair in args.keep_rates.split(",")]
    report.update(checkpoint=str(args.checkpoint), checkpoint_sha256=loaded.sha256,
                  model=original.name, dataset=args.dataset, root=str(args.root), quick=args.quick,
                  device=str(device), precision="float32", settings=[])
    for sketch_rate, photo_rate in settings:
        # The model reads its keep rates from its config at encode time; selection layers stay the config's.
        model.config = dataclasses.replace(original, keep_rate_sketch=sketch_rate, keep_rate_photo=photo_rate)
        result = evaluate_setting(model, split, shortlists, args, device)
        report["settings"].append(result)
        exhaustive = result["exhaustive_rn"]["metrics"]
        print(f"keep {sketch_rate}/{photo_rate}: {result['sketches']} sketches x {result['photos']} photos; "
              f"ret mAP@all {result['ret']['metrics']['map_all']:.4f}, exhaustive RN {exhaustive['map_all']:.4f}")
        for row in result["two_stage"]:
            print(f"  K={row['shortlist']:>4} ({100 * row['pair_fraction']:5.1f}% of pairs): "
                  f"mAP@all {row['metrics']['map_all']:.4f} ({row['relative_to_exhaustive_pct']['map_all']:+.2f}%), "
                  f"mAP@200 {row['metrics']['map_200']:.4f}")
    model.config = original
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
