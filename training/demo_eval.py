"""A quick in-memory evaluation for the demo run: unseen sketches against **all** gallery photos.

Measures what a user of the demo gets: the gallery is every OpenMoji colour image (2,456), not only
the unseen ones. Instance: a sketch's own colour version is the one relevant photo (acc@1, acc@10);
category: the photos of its subgroup (mAP@all and Prec@100 in the reference style,
:mod:`training.metrics`). For [Ret] alone and two-stage (relation network over the [Ret] top K).

The reported figures of docs/demo.md come from ``sbir evaluate --gallery all``, which runs the
evaluation path of :mod:`training.evaluate`; this one exists to watch a run cheaply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.demo_bank import PairBank
from training.demo_train import encode_images, encode_sketches
from training.metrics import retrieval_metrics


def shortlist_scores(
    model: Any, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, order: torch.Tensor, chunk: int = 100
) -> torch.Tensor:
    """Relation scores of each sketch with its shortlisted photos.

    sketch_tokens [S, T, D], photo_tokens [P, T, D], order [S, K] photo positions -> [S, K].
    """
    scores = torch.empty(order.shape)
    with torch.no_grad():
        for row in range(order.shape[0]):
            for start in range(0, order.shape[1], chunk):
                columns = order[row, start:start + chunk]
                scores[row, start:start + chunk] = model.relation(
                    sketch_tokens[row:row + 1], photo_tokens[columns]
                ).float()
    return scores


def evaluate_bank(model: Any, sketches: PairBank, gallery: PairBank, *, shortlist: int = 100,
                  device: torch.device | None = None, bf16: bool = False) -> dict[str, Any]:
    """Metrics of ``sketches.sketches`` against ``gallery.photos``; instances and concepts are matched
    by name (the two banks have their own ids)."""
    device = device or torch.device("cpu")
    sketch_ret, sketch_tokens = encode_sketches(model, sketches.sketches, device, bf16)
    photo_ret, photo_tokens = encode_images(model, gallery.photos, "photo", device, bf16, keep_tokens=True)
    assert photo_tokens is not None
    sketch_instance = np.array([sketches.instances[i] for i in sketches.sketch_instance.tolist()])
    photo_instance = np.array([gallery.instances[i] for i in gallery.photo_instance.tolist()])
    sketch_concept = np.array([sketches.concepts[sketches.instance_concept[i]] for i in sketches.sketch_instance.tolist()])
    photo_concept = np.array([gallery.concepts[gallery.instance_concept[i]] for i in gallery.photo_instance.tolist()])
    instance_relevant = sketch_instance[:, None] == photo_instance[None, :]
    concept_relevant = sketch_concept[:, None] == photo_concept[None, :]

    similarity = sketch_ret @ photo_ret.T  # [S, P]
    ret_distances = (-similarity).numpy()
    top = min(shortlist, similarity.shape[1])
    order = similarity.topk(top, dim=1).indices
    was_training = model.training
    model.eval()
    scores = shortlist_scores(model, sketch_tokens, photo_tokens, order)
    model.train(was_training)
    # Two-stage: the shortlist re-ranked by relation score, ahead of everything else in [Ret] order.
    two_stage = ret_distances - 10.0
    np.put_along_axis(two_stage, order.numpy(), -(10.0 + 10.0 * scores.numpy()) - 10.0, axis=1)
    results: dict[str, Any] = {}
    for name, distances in (("ret", ret_distances), ("two_stage", two_stage)):
        instance = retrieval_metrics(distances, instance_relevant, fine_grained=True)
        category = retrieval_metrics(distances, concept_relevant)
        results[name] = {
            "acc_1": instance["acc_1"], "acc_10": instance["acc_10"],
            "map_all": category["map_all"], "prec_100": category["prec_100"],
        }
    results["ret_score_spread"] = float(similarity.max(1).values.mean() - similarity.median(1).values.mean())
    return results
