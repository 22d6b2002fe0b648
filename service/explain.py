"""Explanations of one sketch-photo pair, for GET /explain/{query_id}/{image_id} and `sbir explain`.

`explain(inputs, options)` computes one kind (`models.explain` does the model work) and returns an
`Explanation`: a JSON-ready body and a renderer of a PNG_SIZE picture (sketch left, photo or
synthesis right, each drawn at the model's 224x224 input so grid cells are exact).
`explain_query` is the service's entry: it resolves a cached query and a photo of the served index
and runs `explain` under the engine's compute lock.

Errors are domain errors (`service.errors`): NotFoundError for an unknown query or image,
InvalidParameterError (`validation_error`) for options that do not fit the kind or the model,
NotSupportedError (`explain_unavailable`) for what the model or index cannot give, StoredDataError
(`image_unreadable`) for a gallery file that no longer decodes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from service.errors import InvalidParameterError, NotFoundError, NotSupportedError, StoredDataError

PANEL_SIZE = 224  # each image is drawn at the model's input size, so grid cells are exact
GAP = 32
PNG_SIZE = (2 * PANEL_SIZE + GAP, PANEL_SIZE)  # (width, height) of every rendered explanation
PAIR_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
BOX_COLOUR = (255, 200, 0)

KINDS = ("correspondence", "attention", "influence", "synthesis")
SOURCES = ("retrieved", "gallery")
DEFAULT_TOP = {"correspondence": 10, "attention": 10, "influence": 10, "synthesis": 5}
MAX_SYNTHESIS_PHOTOS = 50
MAX_NEIGHBOURS = 50
REMOVAL = "kernel[i][j] set to 0 (the value the reference gives an undefined cosine), other entries unchanged"


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain. top: pairs to list (correspondence, influence) or photos to take patches from
    (synthesis, source "retrieved"); None = DEFAULT_TOP. level: "anchor" | "token" (correspondence).
    box: sketch region (x0, y0, x1, y1) in pixels of the 224 input (correspondence). head: attention
    head drawn in the PNG (None = mean of heads). source: "retrieved" | "gallery" (synthesis).
    k: gallery patches averaged per sketch patch (synthesis, source "gallery")."""

    kind: str = "correspondence"
    top: int | None = None
    level: str = "anchor"
    box: tuple[float, float, float, float] | None = None
    head: int | None = None
    source: str = "retrieved"
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
    """body: JSON-ready dict (the route's response models describe it); render(): PNG bytes, PNG_SIZE."""

    body: dict[str, Any]
    render: Callable[[], bytes]


def invalid(field: str, message: str) -> InvalidParameterError:
    """A `validation_error` in the shape of the service's other parameter errors."""
    return InvalidParameterError("validation_error", f"{field}: {message}", field=field)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"x0,y0,x1,y1" -> floats, inside the 224x224 input with x0 < x1 and y0 < y1; 422 otherwise."""
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (float(part) for part in parts)
    except ValueError:
        raise invalid("box", "expected four numbers x0,y0,x1,y1 in pixels of the 224x224 sketch") from None
    if not (0 <= x0 < x1 <= PANEL_SIZE and 0 <= y0 < y1 <= PANEL_SIZE):
        raise invalid("box", f"needs 0 <= x0 < x1 <= {PANEL_SIZE} and 0 <= y0 < y1 <= {PANEL_SIZE}")
    return x0, y0, x1, y1


def check_options(options: ExplainOptions, model: Any) -> ExplainOptions:
    """Options that do not fit the kind or the model -> 422; returns them with `top` resolved."""
    if options.kind not in KINDS:
        raise invalid("kind", f"must be one of {', '.join(KINDS)}")
    if options.box is not None and options.kind != "correspondence":
        raise invalid("box", "a sketch region applies to kind=correspondence only")
    config = model.config
    limits = {"correspondence": (config.anchor_grid if options.level == "anchor" else config.grid_size) ** 2,
              "attention": config.num_anchors**2, "influence": config.num_anchors**2,
              "synthesis": MAX_SYNTHESIS_PHOTOS}
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


# Entry points ------------------------------------------------------------------------------------


def explain_query(engine: Any, query_id: str, image_id: int, options: ExplainOptions) -> Explanation:
    """The explanation of a cached query and a photo of the served index (blocking; a worker thread)."""
    from indexer.retrieval import can_rerank
    from service.engine import lookup_record

    query = engine.queries.get(query_id)
    if query is None:
        raise NotFoundError("unknown_query", f"query {query_id!r} is unknown or has left the cache; search again")
    with engine.lease() as lease:
        record = lookup_record(lease.index, image_id)
        if query.sketch_tokens is None or not can_rerank(lease.model.model):
            raise NotSupportedError("explain_unavailable",
                                    f"{lease.model.name} has no token correspondence to explain (ZSE models only)")
        inputs = ExplainInputs(lease.model.model, lease.model.device, lease.index, query.sketch_image,
                               query.sketch_tokens, image_id, record, query_id)
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
    computations: dict[str, Callable[[ExplainInputs, ExplainOptions], Explanation]] = {
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


def _cell(index: int, grid: int) -> dict[str, int]:
    row, col = divmod(int(index), grid)
    return {"row": row, "col": col}


def _rounded(values: Any, digits: int = 6) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _base(inputs: ExplainInputs, kind: str) -> dict[str, Any]:
    return {"kind": kind, "query_id": inputs.query_id, "image_id": inputs.image_id}


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
    body = {
        **_base(inputs, "correspondence"),
        "level": found.level,
        "grid": found.grid,
        "box": None if options.box is None else list(options.box),
        "region": None if found.region is None else [_cell(c, found.grid) for c in found.region],
        "pairs": [{"sketch_cell": _cell(s, found.grid), "photo_cell": _cell(p, found.grid), "score": v}
                  for s, p, v in pairs],
        "kernel": _rounded(found.similarity),
    }

    def render() -> bytes:
        photo_image = _photo_image(inputs, inputs.image_id)
        return render_pairs(inputs.sketch_image, photo_image, pairs, found.grid, box=options.box)

    return Explanation(body, render)


def render_pairs(sketch: Image.Image, photo: Image.Image, pairs: Sequence[tuple[int, int, float]], grid: int,
                 *, box: Sequence[float] | None = None) -> bytes:
    """PNG of size PNG_SIZE: sketch left, photo right, each pair's cells (index on a `grid` x `grid`
    partition) boxed in one colour and linked; an optional sketch region outlined."""
    canvas = _side_by_side(sketch, photo)
    draw = ImageDraw.Draw(canvas)
    size = PANEL_SIZE / grid
    if box is not None:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=BOX_COLOUR, width=3)
    for number, (sketch_cell, photo_cell, _) in enumerate(pairs):
        colour = PAIR_COLOURS[number % len(PAIR_COLOURS)]
        sketch_box = _cell_box(divmod(sketch_cell, grid), size, 0)
        photo_box = _cell_box(divmod(photo_cell, grid), size, PANEL_SIZE + GAP)
        draw.rectangle(sketch_box, outline=colour, width=2)
        draw.rectangle(photo_box, outline=colour, width=2)
        draw.line([_centre(sketch_box), _centre(photo_box)], fill=colour, width=2)
    return _png(canvas)


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", PNG_SIZE, (255, 255, 255))
    canvas.paste(left.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (0, 0))
    canvas.paste(right.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (PANEL_SIZE + GAP, 0))
    return canvas


def _png(canvas: Image.Image) -> bytes:
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell_box(cell: tuple[int, int], size: float, x_offset: int) -> tuple[float, float, float, float]:
    row, col = cell
    return (x_offset + col * size, row * size, x_offset + (col + 1) * size - 1, (row + 1) * size - 1)


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# Attention ---------------------------------------------------------------------------------------


def _attention(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    import torch

    from models import preprocess
    from models.explain import attention_maps

    photo_image = _photo_image(inputs, inputs.image_id)
    sketch = attention_maps(inputs.model, _sketch_tensor(inputs).to(inputs.device), "sketch")
    photo_tensor = preprocess.normalize(np.asarray(photo_image, dtype=np.uint8)).unsqueeze(0)
    photo = attention_maps(inputs.model, photo_tensor.to(inputs.device), "photo")

    def side(maps: Any) -> dict[str, Any]:
        return {"ret_self": _rounded(maps.ret_self[0]), "maps": _rounded(maps.heads[0]),
                "mean": _rounded(maps.heads[0].mean(dim=0)), "selections": maps.selections[0].tolist()}

    body = {**_base(inputs, "attention"), "grid": int(sketch.heads.shape[-1]), "heads": int(sketch.heads.shape[1]),
            "selection_layers": list(sketch.layers), "sketch": side(sketch), "photo": side(photo)}

    def render() -> bytes:
        def heat(maps: Any) -> Any:
            return maps.heads[0].mean(dim=0) if options.head is None else maps.heads[0, options.head]

        def dropped(maps: Any) -> Any:
            kept = maps.selections[0, -1] if maps.selections.shape[1] else torch.ones_like(maps.heads[0, 0]).bool()
            return ~kept

        left = overlay_heatmap(inputs.sketch_image, heat(sketch).numpy(), dropped(sketch).numpy())
        right = overlay_heatmap(photo_image, heat(photo).numpy(), dropped(photo).numpy())
        return _png(_side_by_side(left, right))

    return Explanation(body, render)


# Colours of a perceptual dark-to-bright ramp (viridis at 0, 1/4, 1/2, 3/4, 1), interpolated.
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def overlay_heatmap(image: Image.Image, heat: np.ndarray, dropped: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The image with a [G, G] map blended over it (scaled to its maximum; each cell one colour) and
    the cells in `dropped` [G, G] bool darkened (tokens removed by token selection)."""
    grid = heat.shape[0]
    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else np.zeros_like(heat)
    position = np.clip(scaled, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    colours = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction  # [G, G, 3]
    cell = PANEL_SIZE // grid
    colour_map = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    base = np.asarray(image.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), dtype=np.float64)
    blended = base * (1 - alpha) + colour_map * alpha
    shade = np.repeat(np.repeat(dropped.astype(bool), cell, axis=0), cell, axis=1)
    blended[shade] *= 0.25
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


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
    body = {
        **_base(inputs, "influence"),
        "grid": grid,
        "relation_score": result.score,
        "removal": REMOVAL,
        "pairs": [{"sketch_cell": _cell(s, grid), "photo_cell": _cell(p, grid), "cosine": float(kernel[s, p]),
                   "score_without": float(result.without[s, p]), "drop_percent": float(result.drop_percent[s, p])}
                  for s, p in pairs],
        "drop_percent": _rounded(result.drop_percent, 4),
    }

    def render() -> bytes:
        photo_image = _photo_image(inputs, inputs.image_id)
        drawn = [(s, p, float(result.drop_percent[s, p])) for s, p in pairs]
        return render_pairs(inputs.sketch_image, photo_image, drawn, grid)

    return Explanation(body, render)


# Synthesis ---------------------------------------------------------------------------------------


def _synthesis(inputs: ExplainInputs, options: ExplainOptions) -> Explanation:
    grid = int(inputs.model.config.grid_size)
    sketch_pixels = np.asarray(inputs.sketch_image.convert("RGB"), dtype=np.uint8)
    if options.source == "gallery":
        image, patches, extra = _synthesis_gallery(inputs, options, sketch_pixels, grid)
    else:
        image, patches, extra = _synthesis_retrieved(inputs, options, sketch_pixels, grid)
    body = {**_base(inputs, "synthesis"), "source": options.source, "grid": grid,
            "patch_size": PANEL_SIZE // grid, "tokens": "self-attention patch tokens, cosine",
            **extra, "patches": patches}

    def render() -> bytes:
        return _png(_side_by_side(inputs.sketch_image, Image.fromarray(image)))

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
                         grid: int) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
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
            matches.append({"image_id": photo_ids[int(result.source[cell])],
                            "cell": _cell(result.source_cell[cell], grid), "score": float(result.score[cell])})
        patches.append({"cell": _cell(cell, grid), "matches": matches})
    return result.image, patches, {"photos": photo_ids, "k": None, "patch_index": None}


def _synthesis_gallery(inputs: ExplainInputs, options: ExplainOptions, sketch_pixels: np.ndarray,
                       grid: int) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
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
    patches = [{"cell": _cell(cell, grid),
                "matches": [{"image_id": int(image_ids[cell, n]), "cell": _cell(cells[cell, n], grid),
                             "score": float(scores[cell, n])} for n in range(options.k) if valid[cell, n]]}
               for cell in range(count)]
    return image, patches, {"photos": None, "k": options.k, "patch_index": patch_index.entry["factory"]}
