"""Explanations of one sketch-photo pair, for GET /explain/{query_id}/{image_id} and `sbir explain`.

`explain(inputs, options)` computes one kind (`models.explain` does the model work) and returns an
`Explanation`: its typed body (the models of `service.api.schemas`, which the route returns and the
command writes as JSON) and a renderer of its PNG_SIZE picture, drawn by `service.explain_render`.
Both callers go through the same pieces: `pair_inputs` (checked inputs for one pair),
`check_options`, `explain`. `explain_query` is the server's entry: it resolves a cached query and
a photo of the served index and runs `explain` under the engine's compute lock.

Errors are domain errors (`service.errors`): NotFoundError for an unknown query or image,
InvalidParameterError (`validation_error`) for options that do not fit the kind or the model,
NotSupportedError (`explain_unavailable`) for what the model or index cannot give, StoredDataError
(`image_unreadable`) for a gallery file that no longer decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from service.api.schemas import (
    AttentionExplanation,
    AttentionSide,
    CorrespondenceExplanation,
    ExplanationBody,
    GridCell,
    InfluenceExplanation,
    InfluentialPair,
    MatchedPairPublic,
    PatchMatch,
    PatchSource,
    SynthesisExplanation,
)
from service.errors import InvalidParameterError, NotFoundError, NotSupportedError, StoredDataError
from service.explain_kinds import KINDS, SOURCES, Kind, Source
from service.explain_render import PANEL_SIZE, render_heatmaps, render_pairs, render_side_by_side

if TYPE_CHECKING:  # models.explain imports torch: only when an explanation is computed
    from models.explain import Level

DEFAULT_TOP: dict[Kind, int] = {"correspondence": 10, "attention": 10, "influence": 10, "synthesis": 5}
MAX_SYNTHESIS_PHOTOS = 50
MAX_NEIGHBOURS = 50
REMOVAL = "kernel[i][j] set to 0 (the value the reference gives an undefined cosine), other entries unchanged"
SYNTHESIS_TOKENS = "self-attention patch tokens, cosine"


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain. top: pairs to list (correspondence, influence) or photos to take patches from
    (synthesis, source "retrieved"); None = DEFAULT_TOP. level: "anchor" | "token" (correspondence).
    box: sketch region (x0, y0, x1, y1) in pixels of the 224 input (correspondence). head: attention
    head drawn in the PNG (None = mean of heads). source: "retrieved" | "gallery" (synthesis).
    k: gallery patches averaged per sketch patch (synthesis, source "gallery")."""

    kind: Kind = "correspondence"
    top: int | None = None
    level: Level = "anchor"
    box: tuple[float, float, float, float] | None = None
    head: int | None = None
    source: Source = "retrieved"
    k: int = 5


@dataclass(frozen=True)
class ExplainInputs:
    """One pair: a ZSE model on `device`, an opened index, the sketch as the model saw it (RGB 224x224)
    with its tokens (`indexer.retrieval.Tokens` [1, T, D] on the CPU), and a photo id with its record."""

    model: Any
    device: Any
    index: Any
    sketch_image: Image.Image
    sketch_tokens: Any
    image_id: int
    record: Any
    query_id: str | None = None


@dataclass(frozen=True)
class Explanation:
    """body: the typed JSON body (one of `service.api.schemas.ExplanationBody`); render(): PNG bytes,
    PNG_SIZE, drawn on demand (the page asks for the JSON first, the picture second)."""

    body: ExplanationBody
    render: Callable[[], bytes]


def invalid(field: str, message: str) -> InvalidParameterError:
    """A `validation_error` in the shape of the service's other parameter errors."""
    return InvalidParameterError("validation_error", f"{field}: {message}", field=field)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"x0,y0,x1,y1" -> floats, inside the 224x224 input with x0 < x1 and y0 < y1; `invalid` otherwise."""
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (float(part) for part in parts)
    except ValueError:
        raise invalid("box", "expected four numbers x0,y0,x1,y1 in pixels of the 224x224 sketch") from None
    if not (0 <= x0 < x1 <= PANEL_SIZE and 0 <= y0 < y1 <= PANEL_SIZE):
        raise invalid("box", f"needs 0 <= x0 < x1 <= {PANEL_SIZE} and 0 <= y0 < y1 <= {PANEL_SIZE}")
    return x0, y0, x1, y1


def check_options(options: ExplainOptions, model: Any) -> ExplainOptions:
    """Options that do not fit the kind or the model -> `invalid`; returns them with `top` resolved."""
    if options.kind not in KINDS:
        raise invalid("kind", f"must be one of {', '.join(KINDS)}")
    if options.box is not None and options.kind != "correspondence":
        raise invalid("box", "a sketch region applies to kind=correspondence only")
    config = model.config
    limits: dict[Kind, int] = {
        "correspondence": (config.anchor_grid if options.level == "anchor" else config.grid_size) ** 2,
        "attention": config.num_anchors**2, "influence": config.num_anchors**2, "synthesis": MAX_SYNTHESIS_PHOTOS,
    }
    top = DEFAULT_TOP[options.kind] if options.top is None else options.top
    if not 1 <= top <= limits[options.kind]:
        raise invalid("top", f"Input should be between 1 and {limits[options.kind]} for kind={options.kind}")
    if options.head is not None and not 0 <= options.head < config.num_heads:
        raise invalid("head", f"Input should be between 0 and {config.num_heads - 1} ({config.num_heads} heads)")
    if not 1 <= options.k <= MAX_NEIGHBOURS:
        raise invalid("k", f"Input should be between 1 and {MAX_NEIGHBOURS}")
    if options.level not in ("anchor", "token"):
        raise invalid("level", "must be anchor or token")
    if options.source not in SOURCES:
        raise invalid("source", f"must be one of {', '.join(SOURCES)}")
    return ExplainOptions(options.kind, top, options.level, options.box, options.head, options.source, options.k)


def pair_inputs(model: Any, device: Any, index: Any, sketch_image: Image.Image, sketch_tokens: Any, image_id: int,
                query_id: str | None = None) -> ExplainInputs:
    """The inputs of one pair, checked: NotFoundError for an id the index does not hold,
    NotSupportedError when there are no tokens to explain (AMFF models)."""
    from indexer.retrieval import can_rerank
    from service.engine import lookup_record

    record = lookup_record(index, image_id)
    if sketch_tokens is None or not can_rerank(model):
        name = getattr(getattr(model, "config", None), "name", "unknown")
        raise NotSupportedError("explain_unavailable",
                                f"{name} has no token correspondence to explain (ZSE models only)")
    return ExplainInputs(model, device, index, sketch_image, sketch_tokens, image_id, record, query_id)


# Entry points ------------------------------------------------------------------------------------


def explain_query(engine: Any, query_id: str, image_id: int, options: ExplainOptions) -> Explanation:
    """The explanation of a cached query and a photo of the served index (blocking; a worker thread)."""
    query = engine.queries.get(query_id)
    if query is None:
        raise NotFoundError("unknown_query", f"query {query_id!r} is unknown or has left the cache; search again")
    with engine.lease() as lease:
        inputs = pair_inputs(lease.model.model, lease.model.device, lease.index, query.sketch_image,
                             query.sketch_tokens, image_id, query_id)
        options = check_options(options, lease.model.model)
        key = (lease.generation, query_id, image_id, options)
        cached = engine.explanations.get(key)
        if cached is not None:
            return cached
        with engine.compute_lock:
            explanation = explain(inputs, options)
        engine.explanations.put(key, explanation)
        return explanation


def explain(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    """Compute one kind of explanation for a pair (options already checked by `check_options`)."""
    computations: dict[Kind, Callable[[ExplainInputs, ExplainOptions], Explanation]] = {
        "correspondence": _correspondence, "attention": _attention, "influence": _influence,
        "synthesis": _synthesis,
    }
    return computations[options.kind](inputs, options)


# Shared pieces -----------------------------------------------------------------------------------


def _photo_tokens(inputs: ExplainInputs, ids: Sequence[int]) -> Any:
    from indexer.retrieval import photo_tokens

    return photo_tokens(inputs.model, inputs.index, ids, inputs.device)


def _photo_image(inputs: ExplainInputs, image_id: int, record: Any | None = None) -> Image.Image:
    """A gallery photo as the model saw it: RGB, resized to 224x224 (`preprocess.photo_pixels`)."""
    from models.preprocess import load_rgb, photo_pixels

    record = inputs.record if record is None else record
    try:
        return photo_pixels(load_rgb(record.path), PANEL_SIZE)
    except (OSError, SyntaxError, ValueError) as error:
        raise StoredDataError("image_unreadable", f"the file of image {image_id} cannot be decoded") from error


def _cell(index: int, grid: int) -> GridCell:
    row, col = divmod(int(index), grid)
    return GridCell(row=row, col=col)


def _rounded(values: Any, digits: int = 6) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _sketch_tensor(inputs: ExplainInputs) -> Any:
    """The preprocessed sketch [1, 3, 224, 224] back from its cached image (exact: it was 8-bit)."""
    from models.preprocess import normalize

    return normalize(np.asarray(inputs.sketch_image.convert("RGB"), dtype=np.uint8)).unsqueeze(0)


# Correspondence ----------------------------------------------------------------------------------


def _correspondence(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    from models.explain import correspondence

    sketch = inputs.sketch_tokens.to(inputs.device)
    photo = _photo_tokens(inputs, [inputs.image_id])
    found = correspondence(inputs.model, sketch.tokens, photo.tokens, sketch.kept, photo.kept,
                           level=options.level, box=options.box)
    top = int(options.top or DEFAULT_TOP["correspondence"])
    pairs = [(int(s), int(p), float(v)) for s, p, v in
             zip(found.sketch_cells[:top], found.photo_cells[:top], found.scores[:top], strict=True)]
    body = CorrespondenceExplanation(
        query_id=inputs.query_id,
        image_id=inputs.image_id,
        level=found.level,
        grid=found.grid,
        box=None if options.box is None else list(options.box),
        region=None if found.region is None else [_cell(c, found.grid) for c in found.region],
        pairs=[MatchedPairPublic(sketch_cell=_cell(s, found.grid), photo_cell=_cell(p, found.grid), score=v)
               for s, p, v in pairs],
        kernel=_rounded(found.similarity),
    )

    def render() -> bytes:
        photo_image = _photo_image(inputs, inputs.image_id)
        return render_pairs(inputs.sketch_image, photo_image, pairs, found.grid, box=options.box)

    return Explanation(body, render)


# Attention ---------------------------------------------------------------------------------------


def _attention(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    import torch

    from models import preprocess
    from models.explain import attention_maps

    photo_image = _photo_image(inputs, inputs.image_id)
    sketch = attention_maps(inputs.model, _sketch_tensor(inputs).to(inputs.device), "sketch")
    photo_tensor = preprocess.normalize(np.asarray(photo_image, dtype=np.uint8)).unsqueeze(0)
    photo = attention_maps(inputs.model, photo_tensor.to(inputs.device), "photo")

    def side(maps: Any) -> AttentionSide:
        return AttentionSide(ret_self=_rounded(maps.ret_self[0]), maps=_rounded(maps.heads[0]),
                             mean=_rounded(maps.heads[0].mean(dim=0)), selections=maps.selections[0].tolist())

    body = AttentionExplanation(
        query_id=inputs.query_id, image_id=inputs.image_id, grid=int(sketch.heads.shape[-1]),
        heads=int(sketch.heads.shape[1]), selection_layers=list(sketch.layers), sketch=side(sketch), photo=side(photo),
    )

    def render() -> bytes:
        def heat(maps: Any) -> Any:
            return maps.heads[0].mean(dim=0) if options.head is None else maps.heads[0, options.head]

        def dropped(maps: Any) -> Any:
            kept = maps.selections[0, -1] if maps.selections.shape[1] else torch.ones_like(maps.heads[0, 0]).bool()
            return ~kept

        return render_heatmaps(inputs.sketch_image, photo_image, heat(sketch).numpy(), dropped(sketch).numpy(),
                               heat(photo).numpy(), dropped(photo).numpy())

    return Explanation(body, render)


# Influence ---------------------------------------------------------------------------------------


def _influence(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    import torch

    from models.explain import influence

    sketch = inputs.sketch_tokens.to(inputs.device)
    photo = _photo_tokens(inputs, [inputs.image_id])
    with torch.inference_mode():
        kernel = inputs.model.kernel(sketch.tokens, photo.tokens, sketch.kept, photo.kept)[0]
    result = influence(inputs.model.relation_head, kernel, top=int(options.top or DEFAULT_TOP["influence"]))
    kernel = kernel.float().cpu()
    grid = int(round(kernel.shape[0] ** 0.5))
    pairs = [(int(s), int(p)) for s, p in zip(result.sketch_anchors, result.photo_anchors, strict=True)]
    body = InfluenceExplanation(
        query_id=inputs.query_id,
        image_id=inputs.image_id,
        grid=grid,
        relation_score=result.score,
        removal=REMOVAL,
        pairs=[InfluentialPair(sketch_cell=_cell(s, grid), photo_cell=_cell(p, grid), cosine=float(kernel[s, p]),
                               score_without=float(result.without[s, p]),
                               drop_percent=float(result.drop_percent[s, p]))
               for s, p in pairs],
        drop_percent=_rounded(result.drop_percent, 4),
    )

    def render() -> bytes:
        photo_image = _photo_image(inputs, inputs.image_id)
        drawn = [(s, p, float(result.drop_percent[s, p])) for s, p in pairs]
        return render_pairs(inputs.sketch_image, photo_image, drawn, grid)

    return Explanation(body, render)


# Synthesis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patched:
    """A synthesis: the image uint8 [224, 224, 3], where each patch came from, and the source's own fields."""

    image: np.ndarray
    patches: list[PatchSource]
    photos: list[int] | None = None
    k: int | None = None
    patch_index: str | None = None


def _synthesis(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    grid = int(inputs.model.config.grid_size)
    sketch_pixels = np.asarray(inputs.sketch_image.convert("RGB"), dtype=np.uint8)
    if options.source == "gallery":
        patched = _synthesis_gallery(inputs, options, sketch_pixels, grid)
    else:
        patched = _synthesis_retrieved(inputs, options, sketch_pixels, grid)
    body = SynthesisExplanation(
        query_id=inputs.query_id, image_id=inputs.image_id, source=options.source, grid=grid,
        patch_size=PANEL_SIZE // grid, tokens=SYNTHESIS_TOKENS, photos=patched.photos, k=patched.k,
        patch_index=patched.patch_index, patches=patched.patches,
    )

    def render() -> bytes:
        return render_side_by_side(inputs.sketch_image, Image.fromarray(patched.image))

    return Explanation(body, render)


def source_photos(inputs: ExplainInputs, count: int) -> list[int]:
    """The clicked photo, then the query's nearest photos by [Ret] (the ANN ranking that gave the
    search its shortlist), `count` photos in all."""
    import torch.nn.functional as F

    ret = F.normalize(inputs.sketch_tokens.tokens[:, 0].float(), dim=-1).cpu().numpy()
    ids, _ = inputs.index.search(ret, min(count, len(inputs.index)))
    chosen = [inputs.image_id]
    for image_id in ids[0]:
        if image_id >= 0 and int(image_id) not in chosen and len(chosen) < count:
            chosen.append(int(image_id))
    return chosen


def _synthesis_retrieved(inputs: ExplainInputs, options: ExplainOptions, sketch_pixels: np.ndarray,
                         grid: int) -> _Patched:
    from models.explain import synthesize_from_photos

    photo_ids = source_photos(inputs, int(options.top or DEFAULT_TOP["synthesis"]))
    photos = _photo_tokens(inputs, photo_ids)
    records = [inputs.record] + [inputs.index.record(image_id) for image_id in photo_ids[1:]]
    pixels = np.stack([np.asarray(_photo_image(inputs, image_id, record), dtype=np.uint8)
                       for image_id, record in zip(photo_ids, records, strict=True)])
    sketch = inputs.sketch_tokens
    result = synthesize_from_photos(sketch.tokens, photos.tokens, pixels, sketch_pixels, sketch.kept, photos.kept,
                                    grid=grid)
    patches = []
    for cell in range(grid * grid):
        matches = []
        if result.source[cell] >= 0:
            matches.append(PatchMatch(image_id=photo_ids[int(result.source[cell])],
                                      cell=_cell(result.source_cell[cell], grid), score=float(result.score[cell])))
        patches.append(PatchSource(cell=_cell(cell, grid), matches=matches))
    return _Patched(result.image, patches, photos=photo_ids)


def _synthesis_gallery(inputs: ExplainInputs, options: ExplainOptions, sketch_pixels: np.ndarray,
                       grid: int) -> _Patched:
    from models.explain import patch_vectors, synthesize_from_neighbours

    patch_index = getattr(inputs.index, "patch_index", None)
    if patch_index is None:
        raise NotSupportedError("explain_unavailable",
                                f"index {inputs.index.name!r} has no patch index for source=gallery; build it with "
                                "`sbir index build --patch-index`, or use source=retrieved")
    count = grid * grid
    vectors, present = patch_vectors(inputs.sketch_tokens.tokens, inputs.sketch_tokens.kept, count)
    image_ids, cells, scores = patch_index.search(vectors[0].numpy(), options.k)
    valid = (image_ids >= 0) & present[0].numpy()[:, None]
    side = PANEL_SIZE // grid
    neighbours = np.zeros((count, options.k, side, side, 3), dtype=np.uint8)
    if valid.any():
        neighbours[valid] = patch_index.pixels(image_ids[valid], cells[valid])
    image = synthesize_from_neighbours(neighbours, valid, sketch_pixels)
    patches = [PatchSource(cell=_cell(cell, grid),
                           matches=[PatchMatch(image_id=int(image_ids[cell, n]), cell=_cell(cells[cell, n], grid),
                                               score=float(scores[cell, n])) for n in range(options.k) if valid[cell, n]])
               for cell in range(count)]
    return _Patched(image, patches, k=options.k, patch_index=patch_index.entry["factory"])
