"""What a user of the demo gets: the no-learning baseline against demo models, on one table.

Measures, each for [Ret] alone, two-stage (the [Ret] top K re-ranked by the relation network) and,
for the models named with ``--exhaustive``, the relation network over every pair; with
``--ann-weight W`` also two-stage and exhaustive ranked by relation + W x [Ret] cosine (``+annW``):

- **unseen split, all photos**: each unseen OpenMoji line drawing against all 2,456 colour images
  (seen subgroups too). Instance: its own colour version (acc@1, acc@10); category: its subgroup
  (mAP@all and Prec@100, reference style). Exhaustive relation costs Q x G pairs, so it runs on every
  ``--exhaustive-every``-th query, and two-stage is reported on the same queries beside it.
- **cross-style**: the unseen line drawings against another artist's colour emoji (Twemoji, rendered
  by ``sbir demo prepare`` and used for nothing else): instance acc@1 / acc@10 among those images.
- **doodles**: the mouse drawings of :mod:`benchmarks.doodles` against the OpenMoji gallery:
  hit@10 (any relevant emoji in the top 10) and P@10, for seen and unseen concepts apart.
- **photo to photo**: each unseen drawing's own colour photo as the query, against the other 2,455
  photos by [Ret] (the baseline: its mask), itself left out: category mAP@all and Prec@100. How far
  the photo vectors alone group a subgroup, which bounds what a ranking built on them (query
  expansion from the top photos, say) can add to category mAP.
- **alignment**: for each of ``--alignment-pairs`` black drawings and its own colour version, the
  share of sketch anchor cells whose best match after cross-attention is the same cell.

The baseline needs no learning: each whole image as a 64 x 64 mask of its dark pixels (grey < 110),
Gaussian-blurred (radius 2), compared by cosine.

    python -m benchmarks.demo_quality --data data/demo --model new=weights/zse-openmoji-demo.pt \\
        --model previous=PATH --untrained --exhaustive new --out benchmarks/results/demo_quality.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from benchmarks._report import finish, header
from benchmarks.doodles import DOODLES, render
from training.datasets import Sample
from training.metrics import retrieval_metrics

Distances = Callable[[Sequence[Sample], str], dict[str, np.ndarray]]


# ----------------------------------------------------------------------------------------------
# Data


def _manifest(root: Path) -> list[dict[str, Any]]:
    import csv

    with open(root / "manifest.csv", encoding="utf-8", newline="") as handle:
        return [{**row, "metadata": json.loads(row["metadata"])} for row in csv.DictReader(handle)]


def _sample(path: Path, label: str, classes: dict[str, int]) -> Sample:
    return Sample(path, classes.setdefault(label, len(classes)), label)


def demo_sets(root: Path) -> dict[str, Any]:
    """Queries, the galleries and their relevance, from a prepared demo folder."""
    rows = _manifest(root)
    classes: dict[str, int] = {}
    gallery = [_sample(root / row["path"], row["label"], classes) for row in rows]
    hexcodes = [row["id"] for row in rows]
    unseen_rows = [row for row in rows if row["metadata"].get("split") == "unseen"]
    queries = [_sample(root / "sketch" / row["label"] / f"{row['id']}.png", row["label"], classes) for row in unseen_rows]
    query_codes = [row["id"] for row in unseen_rows]
    twemoji_dir = root / "styles" / "twemoji" / "photo"
    cross = sorted(twemoji_dir.glob("*/*.png")) if twemoji_dir.is_dir() else []
    subgroup = {row["id"]: row["label"] for row in rows}
    annotations = [row["metadata"].get("annotation", "") for row in rows]
    unseen_subgroups = {row["label"] for row in unseen_rows}
    return {
        "gallery": gallery,
        "gallery_codes": hexcodes,
        "queries": queries,
        "query_codes": query_codes,
        "cross": [_sample(path, subgroup.get(path.stem, path.parent.name), classes) for path in cross],
        "cross_codes": [path.stem for path in cross],
        "annotations": annotations,
        "gallery_subgroups": [row["label"] for row in rows],
        "unseen_subgroups": unseen_subgroups,
    }


def doodle_samples(folder: Path) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, doodle in enumerate(DOODLES):
        path = folder / f"{index:02d}-{doodle.name.replace(' ', '-')}.png"
        render(doodle).save(path)
        samples.append(Sample(path, 0, doodle.name))
    return samples


# ----------------------------------------------------------------------------------------------
# Methods: sketches -> distances to a gallery, per retrieval mode


def baseline_vector(path: Path, modality: str) -> np.ndarray:
    """The no-learning baseline's vector of one image: [4096] float32, L2-normalised.

    The whole image, as drawn (no crop to the ink): OpenMoji's black and colour drawings share one
    frame, which is what this baseline exploits. ``modality`` is unused (both sides alike)."""
    from models import preprocess

    with Image.open(path) as image:
        grey = preprocess.to_rgb(image).convert("L")
    small = grey.resize((64, 64), Image.Resampling.BILINEAR)
    mask = Image.fromarray(((np.asarray(small) < 110) * 255).astype(np.uint8))
    vector = np.asarray(mask.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32).ravel()
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class Baseline:
    name = "no-learning baseline"
    modes = ("ret",)

    def __init__(self) -> None:
        self.galleries: dict[str, np.ndarray] = {}

    def prepare(self, key: str, photos: Sequence[Sample]) -> None:
        self.galleries[key] = np.stack([baseline_vector(sample.path, "photo") for sample in photos])

    def distances(self, key: str, sketches: Sequence[Sample], modes: Sequence[str]) -> dict[str, np.ndarray]:
        vectors = np.stack([baseline_vector(sample.path, "sketch") for sample in sketches])
        return {"ret": 1.0 - vectors @ self.galleries[key].T}

    def photo_vectors(self, key: str) -> np.ndarray:
        """[G, 64 * 64] the prepared gallery's masks, L2-normalised."""
        return self.galleries[key]


class ModelMethod:
    """A checkpoint, scored by the evaluation path of ``sbir evaluate`` (training.evaluate.Scorer)."""

    def __init__(self, name: str, model: torch.nn.Module, shortlist: int, ann_weight: float = 0.0,
                 rerank_mode: str = "fp32") -> None:
        from models.rerank_mode import Reranking, RerankMode

        self.name, self.model, self.shortlist, self.ann_weight = name, model.eval(), shortlist, ann_weight
        # How two-stage re-ranks its shortlist (models.rerank_mode), as the server's SBIR_RERANK_MODE.
        self.reranking = Reranking.prepare(self.model, RerankMode.parse(rerank_mode))
        self.galleries: dict[str, Any] = {}
        # "+ann": ranked by relation + ann_weight x [Ret] cosine (indexer.retrieval.ranking_scores).
        fused = (f"two-stage+ann{ann_weight:g}", f"rn+ann{ann_weight:g}") if ann_weight else ()
        self.modes = ("ret", "two-stage", "rn", *fused)

    def prepare(self, key: str, photos: Sequence[Sample]) -> None:
        from training.evaluate import embed

        self.galleries[key] = embed(self.model, photos, "photo", device=torch.device("cpu"), keep_tokens=True,
                                    num_workers=0)

    def photo_vectors(self, key: str) -> np.ndarray:
        """[G, D] the prepared gallery's [Ret] vectors, L2-normalised."""
        return self.galleries[key].ret.numpy()

    def distances(self, key: str, sketches: Sequence[Sample], modes: Sequence[str]) -> dict[str, np.ndarray]:
        from training.evaluate import Scorer, embed

        encoded = embed(self.model, sketches, "sketch", device=torch.device("cpu"), keep_tokens=True, num_workers=0)
        scored = {}
        for mode in modes:
            retrieval, _, fused = mode.partition("+ann")
            scored[mode] = Scorer(self.model, self.galleries[key], retrieval, shortlist=self.shortlist,  # type: ignore[arg-type]
                                  ann_weight=self.ann_weight if fused else 0.0,
                                  reranking=self.reranking).distances(encoded)
        return scored


# ----------------------------------------------------------------------------------------------
# Measures


def instance_and_category(distances: np.ndarray, own: np.ndarray, query_labels: np.ndarray,
                          gallery_labels: np.ndarray) -> dict[str, float]:
    """acc@1 / acc@10 of each query's own photo (``own`` [Q, G] bool) and category mAP@all / Prec@100."""
    instance = retrieval_metrics(distances, own, fine_grained=True)
    category = retrieval_metrics(distances, query_labels[:, None] == gallery_labels[None, :])
    return {"acc_1": instance["acc_1"], "acc_10": instance["acc_10"],
            "map_all": category["map_all"], "prec_100": category["prec_100"]}


def photo_to_photo(distances: np.ndarray, own: np.ndarray, query_labels: np.ndarray,
                   gallery_labels: np.ndarray) -> dict[str, float]:
    """Category mAP@all / Prec@100 of photo queries (``own`` [Q, G]: each row's query photo), itself left out."""
    relevant = (query_labels[:, None] == gallery_labels[None, :]) & ~own
    category = retrieval_metrics(np.where(own, np.inf, distances), relevant)
    return {"map_all": category["map_all"], "prec_100": category["prec_100"]}


def doodle_measures(distances: np.ndarray, relevant: list[list[int]], unseen: list[bool]) -> dict[str, Any]:
    """hit@10 and P@10 over the doodles, all / seen / unseen concepts, with each doodle's top 10."""
    top = np.argsort(distances, axis=1, kind="stable")[:, :10]
    hits = [float(bool(set(row.tolist()) & set(wanted))) for row, wanted in zip(top, relevant, strict=True)]
    precision = [len(set(row.tolist()) & set(wanted)) / 10 for row, wanted in zip(top, relevant, strict=True)]

    def part(keep: Callable[[int], bool]) -> dict[str, float | int | None]:
        chosen = [index for index in range(len(hits)) if keep(index)]
        if not chosen:
            return {"count": 0, "hit_10": None, "p_10": None}
        return {"count": len(chosen), "hit_10": float(np.mean([hits[i] for i in chosen])),
                "p_10": float(np.mean([precision[i] for i in chosen]))}

    return {"all": part(lambda i: True), "seen": part(lambda i: not unseen[i]), "unseen": part(lambda i: unseen[i]),
            "hits": {DOODLES[i].name: bool(hits[i]) for i in range(len(hits))}}


def alignment(model: torch.nn.Module, sets: dict[str, Any], pairs: int) -> float | None:
    """Share of sketch anchor cells whose best photo cell after cross-attention is the same cell."""
    from models import preprocess
    from models.explain import correspondence

    gallery, codes = sets["gallery"], sets["gallery_codes"]
    step = max(1, len(gallery) // pairs)
    shares = []
    with torch.no_grad():
        for index in range(0, len(gallery), step)[:pairs]:
            photo_path = gallery[index].path
            sketch_path = photo_path.parents[2] / "sketch" / photo_path.parent.name / f"{codes[index]}.png"
            with Image.open(sketch_path) as image:
                sketch = model.encode(preprocess.sketch(image).unsqueeze(0), "sketch")  # type: ignore[operator]
            with Image.open(photo_path) as image:
                photo = model.encode(preprocess.photo(image).unsqueeze(0), "photo")  # type: ignore[operator]
            found = correspondence(model, sketch.tokens, photo.tokens, level="anchor")
            shares.append(float((found.sketch_cells == found.photo_cells).float().mean()))
    return float(np.mean(shares)) if shares else None


def measure(method: Any, sets: dict[str, Any], doodles: list[Sample], *, exhaustive_every: int | None,
            alignment_pairs: int) -> dict[str, Any]:
    modes = [mode for mode in method.modes if not mode.startswith("rn")]
    gallery_labels = np.array(sets["gallery_subgroups"])
    gallery_codes = np.array(sets["gallery_codes"])
    query_codes = np.array(sets["query_codes"])
    query_labels = np.array([sample.class_name for sample in sets["queries"]])
    own = query_codes[:, None] == gallery_codes[None, :]
    method.prepare("openmoji", sets["gallery"])
    result: dict[str, Any] = {"unseen_all_photos": {}}
    ranked = method.distances("openmoji", sets["queries"], modes)
    for mode, distances in ranked.items():
        result["unseen_all_photos"][mode] = instance_and_category(distances, own, query_labels, gallery_labels)
    photos = method.photo_vectors("openmoji")
    result["photo_to_photo"] = photo_to_photo(1.0 - photos[own.argmax(1)] @ photos.T, own, query_labels, gallery_labels)
    if exhaustive_every and "rn" in method.modes:
        subset = list(range(0, len(sets["queries"]), exhaustive_every))
        chosen = [sets["queries"][i] for i in subset]
        sub = method.distances("openmoji", chosen, list(method.modes))
        result["exhaustive_subset"] = {"queries": len(subset), "every": exhaustive_every, **{
            mode: instance_and_category(distances, own[subset], query_labels[subset], gallery_labels)
            for mode, distances in sub.items()}}
    if sets["cross"]:
        method.prepare("cross", sets["cross"])
        cross_codes = np.array(sets["cross_codes"])
        cross_labels = np.array([sample.class_name for sample in sets["cross"]])
        has_own = np.isin(query_codes, cross_codes)
        queries = [sample for sample, keep in zip(sets["queries"], has_own, strict=True) if keep]
        own_cross = query_codes[has_own][:, None] == cross_codes[None, :]
        result["cross_style"] = {"gallery": "twemoji", "queries": len(queries), "photos": len(cross_codes)}
        for mode, distances in method.distances("cross", queries, modes).items():
            result["cross_style"][mode] = instance_and_category(distances, own_cross, query_labels[has_own], cross_labels)
    relevant = [[i for i, text in enumerate(sets["annotations"]) if doodle.matches(text)] for doodle in DOODLES]
    unseen = [bool(wanted and np.mean([gallery_labels[i] in sets["unseen_subgroups"] for i in wanted]) > 0.5)
              for wanted in relevant]
    result["doodles"] = {mode: doodle_measures(distances, relevant, unseen)
                         for mode, distances in method.distances("openmoji", doodles, modes).items()}
    result["doodles"]["relevant_counts"] = {d.name: len(w) for d, w in zip(DOODLES, relevant, strict=True)}
    if isinstance(method, ModelMethod) and alignment_pairs:
        result["alignment_same_cell"] = alignment(method.model, sets, alignment_pairs)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/demo", type=Path)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--untrained", action="store_true", help="also zse-tiny with random weights (seed 0)")
    parser.add_argument("--exhaustive", action="append", default=[], metavar="NAME",
                        help="models to score exhaustively on the query subset")
    parser.add_argument("--exhaustive-every", type=int, default=3)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--alignment-pairs", type=int, default=200)
    parser.add_argument("--ann-weight", type=float, default=0.0, metavar="W",
                        help="also rank the models by relation + W x [Ret] cosine (modes two-stage+annW, rn+annW)")
    parser.add_argument("--rerank-mode", default="fp32", metavar="MODE",
                        help="how two-stage re-ranks every model's shortlist (models.rerank_mode; default: fp32, exact)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_quality.json"))
    args = parser.parse_args(argv)
    import models

    torch.set_num_threads(2)
    report = header("demo_quality", argv)
    sets = demo_sets(args.data)
    report["sizes"] = {"gallery": len(sets["gallery"]), "unseen_queries": len(sets["queries"]),
                       "cross_gallery": len(sets["cross"]), "doodles": len(DOODLES)}
    methods: list[tuple[str, Any]] = [("baseline", Baseline())]
    if args.untrained:
        torch.manual_seed(0)
        methods.append(("untrained", ModelMethod("untrained", models.build_model("zse-tiny"), args.shortlist)))
    for spec in args.model:
        name, _, path = spec.partition("=")
        methods.append((name, ModelMethod(name, models.load(path, "cpu").model, args.shortlist, args.ann_weight,
                                          args.rerank_mode)))
    report["methods"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        doodles = doodle_samples(Path(scratch))
        for name, method in methods:
            print(f"measuring {name}", flush=True)
            report["methods"][name] = measure(
                method, sets, doodles, exhaustive_every=args.exhaustive_every if name in args.exhaustive else None,
                alignment_pairs=args.alignment_pairs,
            )
            print(json.dumps({name: report["methods"][name]["unseen_all_photos"]}), flush=True)
    finish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
