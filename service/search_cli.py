"""`sbir search SKETCH --index DIR [--checkpoint CKPT] [-k N] [--json]`: POST /search without a server.

The search runs through the service's own engine (`service.engine.SearchEngine.search`, which goes
through `indexer.retrieval`), so the order, the scores and the refusals (a blank sketch, an index
of another checkpoint) are the server's. The checkpoint defaults to the one the index manifest
records. Registration imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the `search` command."""
    parser = subparsers.add_parser(
        "search", help="rank an index's photos for a sketch file, without a server",
        description="Search an index for a sketch as POST /search does (ANN shortlist, then relation re-ranking "
                    "for ZSE checkpoints) and print the ranked keys, labels and scores; ids are those "
                    "`sbir explain --image-id` takes.")
    parser.add_argument("sketch", type=Path, help="sketch image (PNG, JPEG or WebP)")
    parser.add_argument("--index", required=True, type=Path, help="index directory")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the checkpoint the index was built with (default: the one its manifest records)")
    parser.add_argument("-k", type=_positive, default=10, help="results to print (default 10)")
    parser.add_argument("--shortlist", type=_positive, default=100,
                        help="ANN candidates to re-rank (default 100; raised to k when smaller)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON, as POST /search gives them")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs: auto (CUDA when available), cpu or cuda")
    parser.add_argument("--rerank-mode", default="fp32", metavar="MODE",
                        help="fp32 (exact, default), bf16, int8, bf16+cascadeM, int8+cascadeM, prescoreM or bf16+prescoreM "
                             "(as SBIR_RERANK_MODE; docs/service.md)")
    parser.add_argument("--ann-weight", type=float, default=0.0, metavar="W",
                        help="order re-ranked results by relation + W x [Ret] cosine (as SBIR_ANN_WEIGHT; "
                             "default 0, the paper's rule)")
    parser.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from models.errors import CliError
    from service.engine import SearchEngine
    from service.results import search_results
    from service.settings import Settings
    from service.uploads import decode_sketch

    if not args.sketch.is_file():
        raise CliError(f"sketch not found: {args.sketch}")
    from models.rerank_mode import RerankMode

    try:
        rerank_mode = RerankMode.parse(args.rerank_mode).label
    except ValueError as error:
        raise CliError(f"--rerank-mode: {error}") from None
    if not args.ann_weight >= 0:
        raise CliError(f"--ann-weight must be at least 0, got {args.ann_weight}")
    checkpoint = args.checkpoint or _recorded_checkpoint(args.index)
    if not checkpoint.is_file():
        raise CliError(f"checkpoint not found: {checkpoint}")
    # The defaults of every other setting; nothing is read from SBIR_* variables meant for a server.
    settings = Settings.model_construct(checkpoint=checkpoint, index_dir=args.index, device=args.device,
                                        query_cache_size=1, rerank_mode=rerank_mode,
                                        ann_weight=args.ann_weight)
    engine = SearchEngine(settings)
    try:
        engine.load_model(checkpoint)
        engine.swap_index(engine.open_index(args.index))
        image = decode_sketch(args.sketch.read_bytes(), max_pixels=settings.max_pixels)
        outcome = engine.search(image, k=args.k, shortlist=args.shortlist, rerank=None)
    finally:
        engine.close()
    results = search_results(outcome, show_paths=True)
    if args.json:
        print(json.dumps({"index": {"name": outcome.index_name, "size": outcome.index_size},
                          "reranked": outcome.reranked, "shortlist": outcome.shortlist_size,
                          "results": [result.model_dump(mode="json") for result in results]}))
        return 0
    score = "ann" if not outcome.reranked else ("relation" if not args.ann_weight else "fused")
    rule = f" (relation + {args.ann_weight:g} x ann)" if score == "fused" else ""
    print(f"index {outcome.index_name} ({outcome.index_size} photos), ranked by {score} score{rule}")
    print(f"{'rank':>4}  {'id':>6}  {score:>8}  {'label':<16} key")
    for result in results:
        print(f"{result.rank:>4}  {result.image_id:>6}  {result.score:>8.4f}  {result.label or '-':<16} {result.key}")
    return 0


def _recorded_checkpoint(index: Path) -> Path:
    """The checkpoint path the index manifest records (IndexerError when `index` is not an index)."""
    from indexer.manifest import read_manifest
    from models.errors import CliError

    recorded = (read_manifest(index).get("model") or {}).get("checkpoint_path")
    if not recorded:
        raise CliError(f"{index}/manifest.json records no checkpoint path: pass --checkpoint")
    path = Path(recorded)
    if not path.is_file():
        raise CliError(f"the checkpoint {path} recorded in {index}/manifest.json does not exist: pass --checkpoint")
    return path
