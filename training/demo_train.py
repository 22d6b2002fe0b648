"""The demo recipe: zse-tiny from scratch on the in-memory demo bank, built to learn on 2 CPU cores.

``run(recipe)`` trains with :mod:`training.contrastive` on batches of :mod:`training.demo_bank`,
augmented on the tensor by :mod:`training.sketch_jitter`. Per step, for B instances (a share of
them hard: near neighbours of the others in the current [Ret] space, refreshed every
``refresh_every`` steps, so that the batch holds what the ANN shortlist will confuse):

1. one sketch and one photo of each instance go through the self-attention encoder (bf16 autocast
   on the CPU where it is supported, which AMX / AVX-512 BF16 machines run about 1.3x faster);
2. the symmetric multi-positive InfoNCE on the normalised [Ret] vectors, learnable temperature;
3. cross-attention and the relation network on each sketch's positive and its ``relation_negatives``
   hardest in-batch photos, with a listwise loss (:func:`training.contrastive.relation_ranking_loss`).

Files in ``run_dir``: ``last.pt`` (everything to resume: weights, optimiser, schedule, generator,
neighbours), ``model.pt`` (the weights in this project's checkpoint format), ``metrics.jsonl`` (train
and evaluation records) and ``recipe.json``. All are written atomically; resuming gives the same next
batch as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.atomic import write_atomic, write_json_atomic
from models.device import autocast, bf16_supported
from models.errors import SbirError
from training.contrastive import (
    alignment_loss,
    contrastive_ret_loss,
    hard_negatives,
    positive_weights,
    relation_ranking_loss,
)
from training.demo_bank import PairBank
from training.sketch_jitter import MouseStyle, PhotoJitter, ink_to_model, photo_edges, photo_to_model, to_ink

logger = logging.getLogger(__name__)

LAST = "last.pt"
MODEL = "model.pt"
METRICS = "metrics.jsonl"


class RecipeError(SbirError, ValueError):
    """A recipe file or field that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class DemoRecipe:
    """The settings of one demo training run (a YAML file's keys; see configs/demo/zse-tiny-demo.yaml)."""

    run_dir: str = "runs/zse-tiny-demo"
    data_root: str = "data/demo"
    styles: list[str] = field(default_factory=lambda: ["openmoji"])
    model: str = "zse-tiny"
    init_checkpoint: str | None = None
    dropout: float = 0.0
    seed: int = 0
    batch: int = 64
    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    temperature: float = 0.07
    concept_weight: float = 0.2
    relation_weight: float = 1.0
    relation_negatives: int = 3
    relation_sketches: int = 24
    grad_clip: float | None = None
    # With several styles: the share of emoji items drawn as their OpenMoji black / colour pair (the
    # gallery's own style), so that the pixel-aligned skill of stage 1 is kept while styles are added.
    openmoji_pair_share: float = 0.0
    # Icons named as exactly one seen emoji join that emoji's instance (training.demo_styles.link_icons).
    icons_to_emoji: bool = False
    # Weight of the cell-alignment term on OpenMoji black / colour pairs (same frame): each sketch
    # anchor's kernel row, as a softmax at align_temperature, should peak at its own cell. This keeps
    # the correspondence explanations meaningful (training.contrastive.alignment_loss).
    align_weight: float = 0.0
    align_temperature: float = 0.1
    # Sketches made from the colour pictures of these styles (training.sketch_jitter.photo_edges): for
    # photo_edge_share of the batch, the drawing is replaced by the outline (edge_outline_share of
    # those) or the colour-region borders of one of the instance's pictures in these styles. They are
    # simpler than any line art in the data, as doodles are.
    photo_edges: list[str] = field(default_factory=list)
    photo_edge_share: float = 0.0
    edge_outline_share: float = 0.4
    hard_fraction: float = 0.5
    neighbours: int = 10
    refresh_every: int = 250
    checkpoint_minutes: float = 4.0
    eval_every: int = 250
    log_every: int = 10
    bf16: bool = True
    threads: int = 2

    def __post_init__(self) -> None:
        checks = {
            "batch": self.batch >= 4,
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "temperature": 0 < self.temperature < 1,
            "concept_weight": 0 <= self.concept_weight <= 1,
            "relation_negatives": 0 <= self.relation_negatives < self.batch,
            "relation_sketches": 1 <= self.relation_sketches <= self.batch,
            "hard_fraction": 0 <= self.hard_fraction < 1,
            "neighbours": self.neighbours >= 1,
            "refresh_every": self.refresh_every >= 1,
            "threads": self.threads >= 1,
            "openmoji_pair_share": 0 <= self.openmoji_pair_share <= 1,
            "photo_edge_share": 0 <= self.photo_edge_share <= 1,
            "edge_outline_share": 0 <= self.edge_outline_share <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise RecipeError(f"{name}: invalid value {getattr(self, name)!r}")
        missing = [style for style in self.photo_edges if style not in self.styles]
        if missing:
            raise RecipeError(f"photo_edges: {', '.join(missing)} not among the recipe's styles")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> DemoRecipe:
        """Read a YAML recipe; unknown keys are an error naming the key and the file."""
        import yaml

        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except OSError as error:
            raise RecipeError(f"{path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise RecipeError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: expected a mapping of recipe keys")
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"{path}: unknown key(s) {', '.join(unknown)}")
        data.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls(**data)
        except TypeError as error:
            raise RecipeError(f"{path}: {error}") from None


# ----------------------------------------------------------------------------------------------
# Model pieces the recipe drives


def build_demo_model(recipe: DemoRecipe) -> nn.Module:
    """The preset with the recipe's dropout, or the weights of ``init_checkpoint``."""
    import models
    from models.config import ZSE_PRESETS

    if recipe.init_checkpoint:
        return models.load_checkpoint(recipe.init_checkpoint).train()
    if recipe.model not in ZSE_PRESETS:
        raise RecipeError(f"model: {recipe.model!r} is not a ZSE preset ({', '.join(ZSE_PRESETS)})")
    return models.build_model(dataclasses.replace(ZSE_PRESETS[recipe.model], dropout=recipe.dropout))


def relation_logits_and_kernel(model: Any, sketch_tokens: torch.Tensor,
                               photo_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [P], cosine kernel [P, A, A]) of P pairs of tokens [P, T, D]."""
    from models.relation import cosine_kernel

    sketch_out, photo_out = model.cross_tokens(sketch_tokens, photo_tokens)
    kernel = cosine_kernel(model.anchors(sketch_out), model.anchors(photo_out))
    return model.relation_head.layers(kernel.flatten(1)).squeeze(-1), kernel


def _autocast(device: torch.device, enabled: bool) -> Any:
    return autocast(device, torch.bfloat16 if enabled else None)


# ----------------------------------------------------------------------------------------------
# Batches


def encode_images(model: Any, images: torch.Tensor, modality: str, device: torch.device, bf16: bool, *,
                  keep_tokens: bool = False, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[Ret] [N, D] (float32, L2-normalised) and, with ``keep_tokens``, tokens [N, T, D] of uint8 images
    without augmentation: photos [N, 3, H, W] RGB or sketches [N, H, W] grey."""
    to_model = photo_to_model if modality == "photo" else (lambda grey: ink_to_model(to_ink(grey)))
    rets, tokens = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            with _autocast(device, bf16):
                encoded = model.encode(to_model(images[start:start + batch]).to(device), modality)
            rets.append(encoded.ret.float().cpu())
            if keep_tokens:
                tokens.append(encoded.tokens.float().cpu())
    model.train(was_training)
    if not rets:
        return torch.zeros(0, model.embed_dim), None
    return F.normalize(torch.cat(rets), dim=-1), torch.cat(tokens) if keep_tokens else None


def encode_photos(model: Any, photos: torch.Tensor, device: torch.device, bf16: bool) -> torch.Tensor:
    """[Ret] of uint8 photos [P, 3, H, W] without augmentation: [P, D]."""
    return encode_images(model, photos, "photo", device, bf16)[0]


def encode_sketches(model: Any, sketches: torch.Tensor, device: torch.device,
                    bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[Ret] [S, D] and tokens [S, T, D] of uint8 grey sketches [S, H, W], without augmentation."""
    ret, tokens = encode_images(model, sketches, "sketch", device, bf16, keep_tokens=True)
    assert tokens is not None
    return ret, tokens


def nearest_instances(model: Any, bank: PairBank, instances: torch.Tensor, count: int,
                      device: torch.device, bf16: bool) -> torch.Tensor:
    """For each trainable instance, the ``count`` instances whose first photo is nearest to its own
    in the current [Ret] space: [I, count] positions into ``instances``."""
    first_photo = torch.stack([rows[0] for rows in (bank.members("photo")[int(i)] for i in instances)])
    embedded = encode_photos(model, bank.photos[first_photo], device, bf16)
    result = []
    for start in range(0, len(embedded), 1024):
        similarity = embedded[start:start + 1024] @ embedded.T
        rows = torch.arange(start, min(start + 1024, len(embedded)))
        similarity[torch.arange(len(rows)), rows] = float("-inf")
        result.append(similarity.topk(min(count, len(embedded) - 1), dim=1).indices)
    return torch.cat(result)


def draw_batch(
    bank: PairBank,
    instances: torch.Tensor,
    sketch_members: list[torch.Tensor],
    photo_members: list[torch.Tensor],
    neighbours: torch.Tensor | None,
    recipe: DemoRecipe,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions into ``instances`` [B], then one sketch row and one photo row of each [B], [B].

    With neighbours, ``hard_fraction`` of the batch are random near neighbours of the first seeds.
    """
    size = recipe.batch
    hard = int(size * recipe.hard_fraction) if neighbours is not None else 0
    seeds = torch.randperm(len(instances), generator=generator)[: size - hard]
    if hard:
        assert neighbours is not None
        pick = torch.randint(neighbours.shape[1], (hard,), generator=generator)
        extra = neighbours[seeds[:hard], pick]
        seeds = torch.cat([seeds, extra])
    chosen = instances[seeds]
    own_style = torch.rand(len(chosen), generator=generator) < recipe.openmoji_pair_share
    sketch_rows = torch.stack([
        _pick_row(rows, bank.sketch_source, _source_id(bank, "openmoji-sketch") if own else None, generator)
        for rows, own in zip((sketch_members[int(i)] for i in chosen), own_style.tolist(), strict=True)
    ])
    photo_rows = torch.stack([
        _pick_row(rows, bank.photo_source, _source_id(bank, "openmoji-photo") if own else None, generator)
        for rows, own in zip((photo_members[int(i)] for i in chosen), own_style.tolist(), strict=True)
    ])
    return chosen, sketch_rows, photo_rows


def edge_sketches(bank: PairBank, chosen: torch.Tensor, photo_members: list[torch.Tensor], recipe: DemoRecipe,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [R] into the batch whose sketch is replaced, and their new drawings, uint8 grey [R, H, W].

    Each of the batch's instances [B] is picked with probability ``photo_edge_share``; it is replaced
    when it has a picture in one of ``photo_edges``' styles (one of them at random is drawn).
    """
    none = torch.zeros(0, dtype=torch.int64), bank.sketches.new_zeros(0, *bank.sketches.shape[1:])
    found = (_source_id(bank, f"{style}-photo") for style in recipe.photo_edges)
    sources = [source for source in found if source is not None]
    if not sources or recipe.photo_edge_share == 0:
        return none  # no draw from the generator: recipes without edges keep their batches
    picked = torch.rand(len(chosen), generator=generator) < recipe.photo_edge_share
    allowed = torch.tensor(sources)
    positions, rows = [], []
    for position in torch.nonzero(picked).squeeze(1).tolist():
        members = photo_members[int(chosen[position])]
        members = members[torch.isin(bank.photo_source[members], allowed)]
        if len(members):
            positions.append(position)
            rows.append(members[int(torch.randint(len(members), (1,), generator=generator))])
    if not rows:
        return none
    outline_only = torch.rand(len(rows), generator=generator) < recipe.edge_outline_share
    return torch.tensor(positions), photo_edges(bank.photos[torch.stack(rows)], outline_only)


def _own_style(bank: PairBank, sketch_rows: torch.Tensor, photo_rows: torch.Tensor) -> torch.Tensor:
    """[b] bool: the pair is an OpenMoji black drawing with its own colour version (one frame)."""
    sketch_id, photo_id = _source_id(bank, "openmoji-sketch"), _source_id(bank, "openmoji-photo")
    if sketch_id is None or photo_id is None:
        return torch.zeros(len(sketch_rows), dtype=torch.bool)
    return (bank.sketch_source[sketch_rows] == sketch_id) & (bank.photo_source[photo_rows] == photo_id)


def _source_id(bank: PairBank, name: str) -> int | None:
    return bank.sources.index(name) if name in bank.sources else None


def _pick_row(rows: torch.Tensor, sources: torch.Tensor, prefer: int | None, generator: torch.Generator) -> torch.Tensor:
    """A random row of ``rows``; among those of source ``prefer`` when it is given and has any."""
    if prefer is not None:
        preferred = rows[sources[rows] == prefer]
        if len(preferred):
            rows = preferred
    return rows[int(torch.randint(len(rows), (1,), generator=generator))]


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    neighbours: torch.Tensor | None = None


def _lr_factor(recipe: DemoRecipe) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps))
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _parameter_groups(model: nn.Module, log_scale: nn.Parameter, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on norms, biases, embeddings and the temperature (standard for ViTs and CLIP).
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (plain if parameter.ndim <= 1 or "pos_embed" in name or "ret_token" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": [*plain, log_scale], "weight_decay": 0.0}]


def run(
    recipe: DemoRecipe,
    bank: PairBank,
    *,
    evaluate: Callable[[nn.Module, int], dict[str, Any]] | None = None,
    resume: bool = True,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Train ``recipe`` on ``bank``; returns the last train record (and evaluation when it ran).

    ``evaluate(model, step)`` is called every ``eval_every`` steps and at the end; its dict goes to
    ``metrics.jsonl``. With ``resume`` a ``last.pt`` in ``run_dir`` is continued (its recipe must
    match, except ``steps``, ``checkpoint_minutes``, ``eval_every``, ``log_every`` and ``threads``).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(recipe.threads)
    run_dir = Path(recipe.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    bf16 = recipe.bf16 and (device.type == "cuda" or bf16_supported())
    torch.manual_seed(recipe.seed)  # the initial weights are a function of the recipe
    model: Any = build_demo_model(recipe).to(device)
    model.train()
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / recipe.temperature), device=device))
    optimizer = torch.optim.AdamW(_parameter_groups(model, log_scale, recipe.weight_decay), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe))
    generator = torch.Generator().manual_seed(recipe.seed)
    state = TrainState()
    last = run_dir / LAST
    if resume and last.is_file():
        saved = torch.load(last, map_location=device, weights_only=False)
        _check_resumable(saved["recipe"], dataclasses.asdict(recipe), last)
        model.load_state_dict(saved["model"])
        log_scale.data.copy_(saved["log_scale"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe), last_epoch=saved["step"] - 1)
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = TrainState(saved["step"], saved["seconds"], saved["neighbours"])
        _log(run_dir, {"event": "resume", "step": state.step})
    write_json_atomic(run_dir / "recipe.json", dataclasses.asdict(recipe))

    instances = bank.trainable_instances()
    sketch_members, photo_members = bank.members("sketch"), bank.members("photo")
    sketch_concept = bank.instance_concept
    sketch_style, photo_style = MouseStyle(), PhotoJitter()
    negatives = recipe.relation_negatives

    def save() -> None:
        payload = {
            "model": model.state_dict(), "log_scale": log_scale.detach().cpu(),
            "optimizer": optimizer.state_dict(), "step": state.step, "seconds": state.seconds,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "neighbours": state.neighbours, "recipe": dataclasses.asdict(recipe),
        }
        write_atomic(last, lambda handle: torch.save(payload, handle))
        from models import save_checkpoint

        save_checkpoint(model, run_dir / MODEL, recipe=dataclasses.asdict(recipe), step=state.step)

    record: dict[str, Any] = {}
    saved_at = time.monotonic()
    window: list[float] = []
    while state.step < recipe.steps and not should_stop():
        started = time.perf_counter()
        if recipe.hard_fraction > 0 and state.step % recipe.refresh_every == 0 and state.step > 0:
            state.neighbours = nearest_instances(model, bank, instances, recipe.neighbours, device, bf16)
        chosen, sketch_rows, photo_rows = draw_batch(
            bank, instances, sketch_members, photo_members, state.neighbours, recipe, generator
        )
        grey = bank.sketches[sketch_rows]
        replaced, drawn = edge_sketches(bank, chosen, photo_members, recipe, generator)
        if len(replaced):
            grey[replaced] = drawn  # a fresh tensor: the bank is not written
        sketches = sketch_style(grey, generator).to(device)
        photos = photo_style(bank.photos[photo_rows], generator).to(device)
        concept = sketch_concept[chosen].to(device)
        weights = positive_weights(chosen.to(device), chosen.to(device), concept, concept, recipe.concept_weight)
        with _autocast(device, bf16):
            sketch_out = model.encoder(sketches)
            photo_out = model.encoder(photos)
        sketch_ret = F.normalize(sketch_out.tokens[:, 0].float(), dim=-1)
        photo_ret = F.normalize(photo_out.tokens[:, 0].float(), dim=-1)
        ret_loss = contrastive_ret_loss(sketch_ret, photo_ret, weights, log_scale)
        loss = ret_loss
        parts = {"ret": float(ret_loss.detach())}
        if recipe.relation_weight > 0 and negatives > 0:
            # Cross-attention costs about one SA block per pair and side, so the relation network
            # trains on the first relation_sketches sketches only: random seeds whose near neighbours
            # are in the batch (draw_batch), so their hard negatives are there.
            scored = min(recipe.relation_sketches, len(chosen))
            columns = torch.cat(
                [torch.arange(scored, device=device)[:, None],
                 hard_negatives(sketch_ret[:scored] @ photo_ret.T, weights[:scored], negatives)], dim=1
            )  # [b, 1 + h]
            with _autocast(device, bf16):
                logits, kernel = relation_logits_and_kernel(
                    model, sketch_out.tokens[:scored].repeat_interleave(1 + negatives, dim=0),
                    photo_out.tokens[columns.flatten()],
                )
            logits = logits.float().view(scored, 1 + negatives)
            relation_loss = relation_ranking_loss(logits, weights[:scored].gather(1, columns))
            loss = loss + recipe.relation_weight * relation_loss
            parts["relation"] = float(relation_loss.detach())
            if recipe.align_weight > 0:
                own = _own_style(bank, sketch_rows[:scored], photo_rows[:scored])
                own[replaced[replaced < scored]] = False  # an edge drawing is not in the photo's frame
                own = own.to(device)
                if own.any():
                    positives = kernel.float().view(scored, 1 + negatives, *kernel.shape[1:])[:, 0]
                    align = alignment_loss(positives[own], recipe.align_temperature)
                    loss = loss + recipe.align_weight * align
                    parts["align"] = float(align.detach())
            parts["relation_top1"] = float((logits.argmax(1) == 0).float().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            model.parameters(), recipe.grad_clip if recipe.grad_clip is not None else float("inf")
        ))
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            log_scale.clamp_(max=math.log(100.0))
        state.step += 1
        elapsed = time.perf_counter() - started
        state.seconds += elapsed
        window.append(elapsed)
        if state.step % recipe.log_every == 0 or state.step == recipe.steps:
            record = {
                "step": state.step, "loss": float(loss.detach()), **parts, "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0], "temperature": float(torch.exp(-log_scale.detach())),
                "images_per_s": 2 * recipe.batch * len(window) / sum(window), "seconds": round(state.seconds, 1),
            }
            window = []
            _log(run_dir, record)
        if time.monotonic() - saved_at > 60 * recipe.checkpoint_minutes:
            save()
            saved_at = time.monotonic()
        if evaluate is not None and (state.step % recipe.eval_every == 0 or state.step == recipe.steps):
            save()
            saved_at = time.monotonic()
            evaluation = {"step": state.step, "evaluation": evaluate(model, state.step)}
            _log(run_dir, evaluation)
            record = {**record, **evaluation}
    save()
    return record


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    free = {"steps", "checkpoint_minutes", "eval_every", "log_every", "threads", "run_dir", "data_root"}
    # A key added to the recipe after the run started has its default there.
    defaults = dataclasses.asdict(DemoRecipe())
    changed = sorted(
        key for key in set(saved) | set(current)
        if key not in free and saved.get(key, defaults.get(key)) != current.get(key, defaults.get(key))
    )
    if changed:
        raise RecipeError(
            f"{path}: cannot resume, the recipe changed in {', '.join(changed)} (start a new run_dir)"
        )


def _log(run_dir: Path, record: dict[str, Any]) -> None:
    line = json.dumps({"time": round(time.time(), 1), **record}, default=_jsonable)
    with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    logger.info("%s", line)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
