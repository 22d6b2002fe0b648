"""Distilling a model's relation network into its pre-scorer (``models.prescore``).

The pre-scorer learns, over the [Ret] shortlists of training sketches, to order each shortlist as the
relation network does: a listwise loss (the KL divergence of softmax(prescore / tau) from
softmax(relation / tau); a small tau puts the weight on the top of each list, which is what a
prescoreM cascade keeps) plus a mean-squared term that keeps its output on the relation score's
scale. Its head starts from the relation head's weights. Only the pre-scorer is trained: the rest
of the model, and so every other score, is unchanged.

Shapes: S training sketches, G gallery photos, K shortlist size, A anchors, K_ch kernel channels.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.prescore import PreScorer, self_attention_anchors


@dataclass(frozen=True)
class DistillSettings:
    """steps of ``batch`` sketches (each with its whole shortlist); AdamW at ``lr`` (cosine decay,
    gradient norm clipped at ``clip_norm``); ``temperature`` of the listwise loss; ``mse_weight`` of
    the scale term."""

    steps: int = 1500
    batch: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    temperature: float = 0.05
    mse_weight: float = 1.0
    clip_norm: float = 1.0
    seed: int = 0


def with_prescorer(model: Any) -> Any:
    """``model`` itself when it has a pre-scorer; otherwise a copy of it (same weights, config with
    ``prescorer=True``) whose pre-scorer head starts from the relation head's weights."""
    if getattr(model, "prescorer", None) is not None:
        return model
    from models.registry import build_model

    grown = build_model(dataclasses.replace(model.config, prescorer=True))
    grown.load_state_dict(model.state_dict(), strict=False)  # every key but prescorer.*
    prescorer = grown.prescorer
    assert isinstance(prescorer, PreScorer)
    prescorer.head.load_state_dict(model.relation_head.state_dict())
    return grown.to(next(model.parameters()).device).eval()


@torch.no_grad()
def relation_targets(model: Any, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, shortlists: torch.Tensor,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Exact relation scores [S, K] of each sketch (tokens [S, T, D]) with its shortlisted photos
    (positions [S, K] into photo_tokens [G, T, D]), through the model's exact relation scorer."""
    model.eval()
    targets = torch.empty(shortlists.shape, dtype=torch.float32)
    for row in range(shortlists.shape[0]):
        scorer = model.relation_scorer(sketch_tokens[row:row + 1])
        targets[row] = scorer.score(photo_tokens[shortlists[row]]).float().cpu()
        if progress is not None:
            progress(row + 1)
    return targets


def listwise_loss(predicted: torch.Tensor, target: torch.Tensor, temperature: float, mse_weight: float
                  ) -> torch.Tensor:
    """predicted, target [B, K] scores in (0, 1) -> KL(softmax(target / t) || softmax(predicted / t))
    (batch mean) + mse_weight x mean squared error."""
    listwise = F.kl_div(F.log_softmax(predicted / temperature, dim=1), F.softmax(target / temperature, dim=1),
                        reduction="batchmean")
    return listwise + mse_weight * F.mse_loss(predicted, target)


def distill(model: Any, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, shortlists: torch.Tensor,
            targets: torch.Tensor, settings: DistillSettings = DistillSettings(),
            log: Callable[[str], None] | None = None) -> list[float]:
    """Train ``model.prescorer`` (in place) on shortlists [S, K] with relation targets [S, K]; the anchors
    are computed once, since only the head learns. Returns the loss of every step."""
    prescorer: PreScorer = model.prescorer
    with torch.no_grad():
        sketch_anchors, photo_anchors = (
            torch.cat([self_attention_anchors(model, tokens[start:start + 256]).float()
                       for start in range(0, len(tokens), 256)])
            for tokens in (sketch_tokens, photo_tokens))
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(prescorer.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, settings.steps))
    # Dropout stays off (eval mode): the targets are deterministic, and the prototype of this recipe
    # learnt the relation order better without it.
    prescorer.eval()
    losses = []
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        rows = torch.randint(0, len(shortlists), (settings.batch,), generator=generator)
        photos = photo_anchors[shortlists[rows]]  # [B, K, A, K_ch]
        batch, size = photos.shape[:2]
        # One sketch per shortlist: its anchors repeated over the list's K photos, as views.
        sketches = sketch_anchors[rows][:, None].expand(-1, size, -1, -1)
        predicted = prescorer(sketches.reshape(batch * size, *sketches.shape[2:]),
                              photos.reshape(batch * size, *photos.shape[2:])).view(batch, size)
        loss = listwise_loss(predicted, targets[rows], settings.temperature, settings.mse_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A large step on the 2,401-wide first layer moves every hidden unit at once and can push the
        # sigmoid into saturation, where no gradient is left: clipped.
        torch.nn.utils.clip_grad_norm_(prescorer.parameters(), settings.clip_norm)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 100 == 0 or step == settings.steps):
            log(f"step {step}/{settings.steps}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    return losses


def top_recall(prescores: torch.Tensor, targets: torch.Tensor, keep: int, top: int = 10) -> float:
    """Mean over sketches of the share of each relation top-``top`` that the pre-score top-``keep``
    holds: prescores, targets [S, K]. What a prescore``keep`` cascade can keep of the exact top 10."""
    kept = prescores.topk(min(keep, prescores.shape[1]), dim=1).indices
    best = targets.topk(min(top, targets.shape[1]), dim=1).indices
    hits = (kept[:, :, None] == best[:, None, :]).any(dim=1).float()
    return float(hits.mean())


def distill_demo(checkpoint: Path, data_root: Path, out: Path, shortlist: int = 100,
                 settings: DistillSettings = DistillSettings(), log: Callable[[str], None] = print,
                 styles: Sequence[str] = ("openmoji",)) -> dict[int, float]:
    """``sbir demo prescore``: distil ``checkpoint``'s relation network into its pre-scorer on the [Ret]
    shortlists of the seen drawings of ``styles`` (``openmoji``'s line drawings, or the sketches of a
    prepared extra style: ``tabler``, ``ph``, ``emojione-monotone``, ...) against all the OpenMoji photos
    of a prepared demo folder, and write the checkpoint with it to ``out`` (float16). Returns, for M in
    20 / 30 / 50, the share of each unseen OpenMoji drawing's exact top 10 inside its pre-score top M
    (``top_recall``).

    ValueError for a checkpoint without a relation network; FileNotFoundError for a folder or style not
    prepared.
    """
    import models
    from models.prescore import prescores
    from training.demo_bank import build_bank, openmoji_items
    from training.demo_styles import style_items
    from training.demo_train import encode_images, encode_sketches

    loaded = models.load(checkpoint, "cpu")
    if not getattr(loaded.model, "has_relation", False):
        raise ValueError(f"{checkpoint}: a {loaded.family} checkpoint has no relation network to distil")
    # Decoded once per run, so not cached: the unseen drawings and the gallery are the sets of
    # training.demo_styles.evaluation_banks; extra styles hold seen concepts only (docs/demo.md).
    drawings = [item for style in styles
                for item in (openmoji_items(data_root, "seen") if style == "openmoji" else style_items(data_root, style))
                if item.modality == "sketch"]
    seen = build_bank(drawings)
    unseen = build_bank([item for item in openmoji_items(data_root, "unseen") if item.modality == "sketch"])
    gallery = build_bank([item for item in openmoji_items(data_root, "all") if item.modality == "photo"])
    model = with_prescorer(loaded.model)
    cpu = torch.device("cpu")
    photo_ret, photo_tokens = encode_images(model, gallery.photos, "photo", cpu, False, keep_tokens=True)
    assert photo_tokens is not None
    lists = {}
    for name, bank in (("seen", seen), ("unseen", unseen)):
        sketch_ret, sketch_tokens = encode_sketches(model, bank.sketches, cpu, False)
        shortlists = (sketch_ret @ photo_ret.T).topk(min(shortlist, len(photo_ret)), dim=1).indices
        started = time.perf_counter()
        targets = relation_targets(model, sketch_tokens, photo_tokens, shortlists)
        log(f"{name}: {len(shortlists)} drawings x {shortlists.shape[1]} relation scores "
            f"({time.perf_counter() - started:.0f} s)")
        lists[name] = (sketch_tokens, shortlists, targets)
    sketch_tokens, shortlists, targets = lists["seen"]
    distill(model, sketch_tokens, photo_tokens, shortlists, targets, settings, log=log)
    sketch_tokens, shortlists, targets = lists["unseen"]
    predicted = torch.stack([prescores(model, sketch_tokens[row:row + 1], None, photo_tokens[shortlists[row]])
                             for row in range(len(shortlists))])
    models.save_checkpoint(model, out, dtype=torch.float16)
    log(f"pre-scorer distilled from {loaded.path} (sha256 {loaded.sha256[:12]}...)")
    return {keep: top_recall(predicted, targets, keep) for keep in (20, 30, 50)}
