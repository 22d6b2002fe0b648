"""Explanations of a ZSE-SBIR match, computed from the model (paper Figures 4 to 8).

Four kinds, each a pure function of the model and of already computed tokens or images:

- `correspondence`: cosine matches between a sketch's and a photo's tokens after cross-attention,
  optionally for a region of the sketch given as a box (Eq. 8, Figures 1 and 6).
- `attention_maps`: the [Ret] token's attention per head in the last self-attention block, on the
  14x14 token grid, and the tokens each token-selection layer kept (Figures 4 and 5).
- `influence`: the sketch-photo anchor pairs whose removal from the kernel lowers the relation
  score most, with the drop in percent (Figure 8b), in one batched pass of the relation network.
- `synthesize_from_photos` / `synthesize_from_neighbours`: sketch-to-photo synthesis by replacing
  each 16x16 sketch patch by photo patches (Figure 7).

Shapes: T = 1+N tokens ([Ret] first), N = 196 patch tokens on the G x G = 14x14 grid, D token width,
A = 49 anchors on the 7x7 grid, H heads, P photos, p = 16 pixels per patch side. Grid cells are
numbered row-major: cell i is (row, col) = divmod(i, G).

Two grids, two meanings. The kernel the relation network scores is over *anchors*: the reference
reads the (N, D) token buffer as a (D, 14, 14) map with a plain reshape before the 2x2 conv, so an
anchor mixes channels of tokens from all over the image and anchor (r, c) is a position of the
model's feature map, not the image region under cell (r, c). Anchor-level results are exact views
of what the relation network sees; their cells are nominal. Token-level correspondence (after
cross-attention, before the downsampling) keeps each token at its patch (the cross-attention's
residual is the token itself), so it is the one to read as image regions.

Call these with the model in eval mode (dropout off); they run under `torch.inference_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.relation import cosine_kernel

Level = Literal["anchor", "token"]
LEVELS: tuple[str, ...] = ("anchor", "token")
INFLUENCE_CHUNK = 512  # perturbed kernels per relation-network call: 512 x 2401 floats = 4.9 MB


# Grids and boxes ---------------------------------------------------------------------------------


def box_cells(box: Sequence[float], grid: int, image_size: int = 224) -> torch.Tensor:
    """Cells of a `grid` x `grid` partition of the image that a box overlaps: int64 [M], row-major.

    box: (x0, y0, x1, y1) in pixels of the model's `image_size` input, x to the right, y down, the
    box covering [x0, x1) x [y0, y1). A cell counts when the box covers any part of it, so a box
    inside one cell selects that cell. Raises ValueError for an empty or out-of-image box.
    """
    x0, y0, x1, y1 = (float(value) for value in box)
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise ValueError(f"box {list(box)} must satisfy 0 <= x0 < x1 <= {image_size} and 0 <= y0 < y1 <= {image_size}")
    cell = image_size / grid
    edges = torch.arange(grid, dtype=torch.float64) * cell
    cols = torch.nonzero((edges < x1) & (edges + cell > x0)).flatten()
    rows = torch.nonzero((edges < y1) & (edges + cell > y0)).flatten()
    return (rows[:, None] * grid + cols[None, :]).flatten()


def present_mask(kept: torch.Tensor | None, count: int) -> torch.Tensor:
    """bool [count]: which grid positions hold a real token (all of them without token selection).

    kept: None, or [n] / [1, n] kept grid positions of one image.
    """
    mask = torch.ones(count, dtype=torch.bool)
    if kept is not None:
        mask.zero_()
        mask[kept.reshape(-1).cpu()] = True
    return mask


# Correspondence ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correspondence:
    """Best photo cell for each sketch cell of interest, strongest first.

    level: "anchor" (the kernel the relation network scores, 7x7 grid) or "token" (cross-attention
    tokens, 14x14 grid). similarity [C, C] (C = grid^2): cos(sketch cell i, photo cell j); 0 where
    a cell holds no token (dropped by token selection), as the reference turns NaN cosines into 0.
    sketch_cells [M], photo_cells [M] (int64), scores [M]: the sketch cells of the region (all
    cells without a box) that hold a token, each with its best photo cell among those that hold one.
    """

    level: Level
    grid: int
    similarity: torch.Tensor
    sketch_cells: torch.Tensor
    photo_cells: torch.Tensor
    scores: torch.Tensor
    region: torch.Tensor | None  # [R] cells the box covers, None without a box


def correspondence(
    model: Any,
    sketch_tokens: torch.Tensor,
    photo_tokens: torch.Tensor,
    sketch_kept: torch.Tensor | None = None,
    photo_kept: torch.Tensor | None = None,
    *,
    level: Level = "anchor",
    box: Sequence[float] | None = None,
) -> Correspondence:
    """Cosine correspondence of one sketch-photo pair after cross-attention.

    sketch_tokens [1, T, D], photo_tokens [1, T, D]: self-attention outputs (`encode().tokens`);
    *_kept: None or [1, n] kept positions under token selection. box: optional sketch region
    (x0, y0, x1, y1) in pixels of the 224 input; only the cells it covers are matched.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    config = model.config
    with torch.inference_mode():
        if level == "anchor":
            grid = config.anchor_grid
            similarity = model.kernel(sketch_tokens, photo_tokens, sketch_kept, photo_kept)[0].float().cpu()
            # Every anchor is defined: the conv sees the whole grid (dropped slots as zeros).
            sketch_present = photo_present = torch.ones(grid * grid, dtype=torch.bool)
        else:
            grid = config.grid_size
            sketch_out, photo_out = model.cross_tokens(sketch_tokens, photo_tokens, sketch_kept, photo_kept)
            sketch_present = present_mask(sketch_kept, grid * grid)
            photo_present = present_mask(photo_kept, grid * grid)
            similarity = cosine_kernel(sketch_out[:1, 1:], photo_out[:1, 1:])[0].float().cpu()
            # A dropped slot's cross-attention output is no token of the image: leave it out.
            similarity = similarity * sketch_present[:, None] * photo_present[None, :]
    region = None if box is None else box_cells(box, grid, config.image_size)
    cells = torch.arange(grid * grid) if region is None else region
    cells = cells[sketch_present[cells]]
    candidates = similarity[cells].masked_fill(~photo_present[None, :], float("-inf"))
    best = candidates.argmax(dim=1) if len(cells) else torch.zeros(0, dtype=torch.int64)
    scores = similarity[cells, best]
    # Stable sort of the negated scores: ties keep cell order, as numpy's argsort(kind="stable").
    order = torch.sort(-scores, stable=True).indices
    return Correspondence(level, grid, similarity, cells[order], best[order], scores[order], region)


# Attention maps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionMaps:
    """[Ret] attention of the last self-attention block, and token selection, for B images.

    heads [B, H, G, G]: attention weight of [Ret] to each patch token, per head (0 at positions
    dropped by token selection before the last block); ret_self [B, H]: weight of [Ret] to itself.
    Each head's row is a softmax, so heads.sum((2, 3)) + ret_self == 1 and every weight >= 0.
    selections [B, L, G, G] bool: tokens kept after each of the L selection layers (L = 0 when
    selection is off); layers [L]: their 0-based block numbers.
    """

    heads: torch.Tensor
    ret_self: torch.Tensor
    selections: torch.Tensor
    layers: tuple[int, ...]


def _last_block_positions(model: Any, selections: list[torch.Tensor]) -> torch.Tensor | None:
    """Grid positions [B, n] of the tokens that enter the last block, None when all do.

    A block computes its attention before its own selection, so when the last block is itself a
    selection layer its [Ret] row covers the tokens kept by the previous one.
    """
    last = model.config.depth - 1
    before = [layer for layer in _selection_layers(model, len(selections)) if layer < last]
    return selections[len(before) - 1] if before else None


def _selection_layers(model: Any, count: int) -> tuple[int, ...]:
    return tuple(sorted(model.config.selection_layers))[:count] if count else ()


def attention_maps(model: Any, images: torch.Tensor, modality: str) -> AttentionMaps:
    """images [B, 3, 224, 224] (preprocessed for `modality`, "sketch" or "photo") -> AttentionMaps."""
    with torch.inference_mode():
        encoded = model.encode(images, modality=modality, trace=True)
    if encoded.ret_attention is None or encoded.selections is None:
        raise ValueError("the model's encode(trace=True) gave no [Ret] attention to explain")
    attention = encoded.ret_attention.float().cpu()  # [B, H, 1+n]
    batch, heads, _ = attention.shape
    grid = model.config.grid_size
    selections = [kept.cpu() for kept in encoded.selections]
    positions = _last_block_positions(model, selections)
    per_patch = attention[:, :, 1:]
    if positions is None:
        maps = per_patch
    else:
        maps = torch.zeros(batch, heads, grid * grid)
        maps.scatter_(2, positions[:, None, :].expand(-1, heads, -1), per_patch)
    masks = torch.zeros(batch, len(selections), grid * grid, dtype=torch.bool)
    for number, kept in enumerate(selections):
        masks[:, number].scatter_(1, kept, True)
    return AttentionMaps(
        heads=maps.reshape(batch, heads, grid, grid),
        ret_self=attention[:, :, 0],
        selections=masks.reshape(batch, len(selections), grid, grid),
        layers=_selection_layers(model, len(selections)),
    )


# Influence ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Influence:
    """How much each sketch-photo anchor pair holds up the relation score.

    score: relation score of the intact kernel. without [A, A]: score with kernel[i, j] removed
    (set to 0). drop_percent [A, A] = 100 * (score - without) / score (negative where removing the
    pair raises the score). sketch_anchors [K], photo_anchors [K]: the `top` pairs whose removal
    lowers the score most, biggest drop first.
    """

    score: float
    without: torch.Tensor
    drop_percent: torch.Tensor
    sketch_anchors: torch.Tensor
    photo_anchors: torch.Tensor


def pair_removal_scores(relation_head: Any, kernel: torch.Tensor, chunk: int = INFLUENCE_CHUNK) -> torch.Tensor:
    """Relation score with each single kernel entry removed: [A, A] for a kernel [A, A].

    "Removing" pair (i, j) sets kernel[i, j] to 0 and leaves the other A*A - 1 entries as they are.
    0 because the kernel holds cosines and the reference writes 0 for a pair whose cosine is
    undefined (a zero anchor), so 0 is the relation network's own "no evidence" value; it is also
    the cosine of unrelated (orthogonal) anchors. Deleting the entry instead is not possible: the
    network's first layer takes all A*A entries. The A*A perturbed kernels are built as one batch,
    `chunk` at a time, and each chunk is scored with one relation-network call.
    """
    anchors = kernel.shape[-1]
    flat = kernel.reshape(1, anchors * anchors).float()
    pairs = anchors * anchors
    out = torch.empty(pairs)
    with torch.inference_mode():
        for start in range(0, pairs, chunk):
            stop = min(start + chunk, pairs)
            batch = flat.expand(stop - start, -1).clone()
            rows = torch.arange(stop - start, device=flat.device)
            batch[rows, start + rows] = 0.0  # perturbed kernel k zeroes entry start + k
            out[start:stop] = relation_head(batch.reshape(-1, anchors, anchors)).float().cpu()
    return out.reshape(anchors, anchors)


def influence(relation_head: Any, kernel: torch.Tensor, top: int = 10, chunk: int = INFLUENCE_CHUNK) -> Influence:
    """The `top` most influential anchor pairs of one kernel [A, A] (see `pair_removal_scores`)."""
    with torch.inference_mode():
        score = float(relation_head(kernel[None].float())[0])
    without = pair_removal_scores(relation_head, kernel, chunk)
    drop = (score - without) / score * 100.0
    order = torch.sort(-drop.flatten(), stable=True).indices[:top]
    anchors = kernel.shape[-1]
    return Influence(score, without, drop, order // anchors, order % anchors)


# Synthesis ---------------------------------------------------------------------------------------


def image_patches(pixels: np.ndarray, grid: int) -> np.ndarray:
    """uint8 [..., S, S, 3] images -> [..., G*G, S/G, S/G, 3] patches in row-major cell order."""
    *lead, size, _, channels = pixels.shape
    side = size // grid
    split = pixels.reshape(*lead, grid, side, grid, side, channels)
    moved = np.moveaxis(split, -4, -3)  # [..., G, G, side, side, 3]
    return moved.reshape(*lead, grid * grid, side, side, channels)


def patches_to_image(patches: np.ndarray) -> np.ndarray:
    """[N, p, p, 3] patches in row-major cell order -> [G*p, G*p, 3] image (inverse of image_patches)."""
    count, side, _, channels = patches.shape
    grid = int(round(count**0.5))
    tiled = patches.reshape(grid, grid, side, side, channels).transpose(0, 2, 1, 3, 4)
    return tiled.reshape(grid * side, grid * side, channels)


def patch_vectors(tokens: torch.Tensor, kept: torch.Tensor | None, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention patch tokens on the full grid, L2-normalised, with a presence mask.

    tokens [B, 1+n, D], kept None or [B, n] -> (vectors float32 [B, count, D] (zeros where a token
    was dropped by selection), present bool [B, count]).
    """
    tokens = tokens.float().cpu()
    batch, _, dim = tokens.shape
    vectors = F.normalize(tokens[:, 1:], dim=-1)
    if kept is None:
        return vectors, torch.ones(batch, count, dtype=torch.bool)
    kept = kept.cpu()
    full = torch.zeros(batch, count, dim)
    full.scatter_(1, kept[..., None].expand(-1, -1, dim), vectors)
    present = torch.zeros(batch, count, dtype=torch.bool)
    present.scatter_(1, kept, True)
    return full, present


@dataclass(frozen=True)
class Synthesis:
    """A sketch rebuilt from photo patches.

    image uint8 [S, S, 3]. For each of the N sketch cells: source [N] (which photo of the given
    ones for `synthesize_from_photos`; -1 = the sketch's own pixels kept, because the sketch token
    was dropped or no photo patch was available), source_cell [N] (the photo's cell), score [N]
    (cosine of the two tokens).
    """

    image: np.ndarray
    source: np.ndarray
    source_cell: np.ndarray
    score: np.ndarray


def synthesize_from_photos(
    sketch_tokens: torch.Tensor,
    photo_tokens: torch.Tensor,
    photo_pixels: np.ndarray,
    sketch_pixels: np.ndarray,
    sketch_kept: torch.Tensor | None = None,
    photo_kept: torch.Tensor | None = None,
    *,
    grid: int = 14,
) -> Synthesis:
    """Replace each sketch patch by its best-matching patch among P photos (Figure 7a).

    Matching uses the self-attention patch tokens (cosine of L2-normalised tokens), not the
    cross-attention ones: cross-attention tokens depend on which photo they were paired with, so
    a patch has no single cross-attention token to compare across photos or to index (7b).
    sketch_tokens [1, T, D], photo_tokens [P, T, D]; photo_pixels uint8 [P, S, S, 3] and
    sketch_pixels uint8 [S, S, 3]: the images as the model saw them (S = 224); grid: G (`config.grid_size`).
    """
    count = grid * grid
    sketch_vectors, sketch_present = patch_vectors(sketch_tokens, sketch_kept, count)
    photo_vectors, photo_present = patch_vectors(photo_tokens, photo_kept, count)
    photos = photo_vectors.shape[0]
    similarity = sketch_vectors[0] @ photo_vectors.reshape(photos * count, -1).T  # [N, P*N]
    similarity = similarity.masked_fill(~photo_present.reshape(1, -1), float("-inf"))
    score, flat = similarity.max(dim=1)
    source, source_cell = (flat // count).numpy(), (flat % count).numpy()
    usable = sketch_present[0].numpy() & np.isfinite(score.numpy())
    patches = image_patches(sketch_pixels, grid).copy()
    photo_patches = image_patches(photo_pixels, grid)
    patches[usable] = photo_patches[source[usable], source_cell[usable]]
    source = np.where(usable, source, -1)
    source_cell = np.where(usable, source_cell, -1)
    scores = np.where(usable, score.numpy(), np.nan).astype(np.float32)
    return Synthesis(patches_to_image(patches), source.astype(np.int64), source_cell.astype(np.int64), scores)


def synthesize_from_neighbours(
    neighbour_patches: np.ndarray, valid: np.ndarray, sketch_pixels: np.ndarray
) -> np.ndarray:
    """Each sketch patch replaced by the mean of its k nearest gallery patches (Figure 7b).

    neighbour_patches uint8 [N, k, p, p, 3]; valid bool [N, k] (False for padding: the neighbour
    search found fewer than k); sketch_pixels uint8 [S, S, 3], kept where no neighbour is valid.
    Returns uint8 [S, S, 3]; the mean is rounded to the nearest grey level.
    """
    count = neighbour_patches.shape[0]
    grid = int(round(count**0.5))
    weights = valid.astype(np.float64)[:, :, None, None, None]
    totals = weights.sum(axis=1)
    mean = (neighbour_patches.astype(np.float64) * weights).sum(axis=1) / np.maximum(totals, 1.0)
    patches = image_patches(sketch_pixels, grid).copy()
    found = valid.any(axis=1)
    patches[found] = np.clip(np.rint(mean[found]), 0, 255).astype(np.uint8)
    return patches_to_image(patches)
