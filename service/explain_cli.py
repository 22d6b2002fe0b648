"""`sbir explain SKETCH --index DIR --checkpoint CKPT --image-id ID --kind K --out FILE`: the
explanations of GET /explain for a sketch file, without a server.

Registration imports nothing heavy; the handler loads the model and the index when it runs. The
explanation goes through the route's own pieces (`service.explain`), so the JSON is the API's; its
domain errors (an unknown image id, options that do not fit) print as one line, as every SbirError.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.explain_kinds import KINDS, SOURCES


def register(subparsers: Any) -> None:
    """Add the `explain` command."""
    parser = subparsers.add_parser(
        "explain", help="explain why a sketch matches an indexed photo (JSON or PNG)",
        description="Explain a sketch-photo match as GET /explain does: correspondence, [Ret] attention, the "
                    "most influential kernel pairs, or sketch-to-photo synthesis (ZSE checkpoints only).")
    parser.add_argument("sketch", type=Path, help="sketch image (PNG, JPEG, WebP, ...)")
    parser.add_argument("--index", required=True, type=Path, help="index directory")
    parser.add_argument("--checkpoint", required=True, type=Path, help="the checkpoint the index was built with")
    parser.add_argument("--image-id", required=True, type=int, help="id of the photo in the index")
    parser.add_argument("--kind", choices=KINDS, default="correspondence")
    parser.add_argument("--out", required=True, type=Path, help="file to write")
    parser.add_argument("--format", choices=("json", "png"), default=None,
                        help="default: png when --out ends in .png, else json")
    parser.add_argument("--top", type=int, default=None,
                        help="correspondence / influence: pairs; synthesis (retrieved): photos")
    parser.add_argument("--level", choices=("anchor", "token"), default="anchor", help="correspondence grid")
    parser.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                        help="correspondence: sketch region in pixels of the 224x224 sketch")
    parser.add_argument("--head", type=int, default=None, help="attention PNG: head to draw (default: mean)")
    parser.add_argument("--source", choices=SOURCES, default="retrieved",
                        help="synthesis: patches from the top retrieved photos, or the gallery's patch index")
    parser.add_argument("--k", type=int, default=5, help="synthesis from the gallery: patches averaged")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.set_defaults(handler=_explain)


def _explain(args: argparse.Namespace) -> int:
    fmt = args.format or ("png" if args.out.suffix.lower() == ".png" else "json")
    data = _compute(args, fmt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({args.kind}, {fmt}, {len(data):,d} bytes)")
    return 0


def _compute(args: argparse.Namespace, fmt: str) -> bytes:
    """The explanation asked for, as the bytes of the output file."""
    import indexer
    import models
    from indexer import retrieval
    from models import preprocess
    from models.errors import CliError
    from service import explain

    if not args.sketch.is_file():
        raise CliError(f"sketch not found: {args.sketch}")
    if not args.checkpoint.is_file():
        raise CliError(f"checkpoint not found: {args.checkpoint}")
    box = None if args.box is None else explain.parse_box(args.box)
    try:
        loaded = models.load(args.checkpoint, args.device)
        device, model = loaded.device, loaded.model
        index = indexer.open(args.index, checkpoint_hash=loaded.sha256)
    except (RuntimeError, ValueError, indexer.IndexerError) as error:
        raise CliError(str(error).splitlines()[0]) from None
    with index:
        try:
            sketch_tensor = preprocess.sketch(preprocess.load_rgb(args.sketch))
        except (OSError, SyntaxError, ValueError) as error:
            raise CliError(f"cannot read the sketch {args.sketch}: {error}") from None
        embedding = retrieval.embed_sketch(model, sketch_tensor, device)
        inputs = explain.pair_inputs(model, device, index, preprocess.to_image(sketch_tensor), embedding.tokens,
                                     args.image_id)
        options = explain.ExplainOptions(kind=args.kind, top=args.top, level=args.level, box=box, head=args.head,
                                         source=args.source, k=args.k)
        explanation = explain.explain(inputs, explain.check_options(options, model))
        # Rendered while the index is open: a PNG may read photos through it.
        if fmt == "png":
            return explanation.render()
        return (json.dumps(explanation.body.model_dump(mode="json")) + "\n").encode()
