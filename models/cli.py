"""`sbir model ...`: inspect a checkpoint, convert a reference checkpoint to this project's format."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("model", help="inspect or convert model checkpoints")
    commands = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    info = commands.add_parser("info", help="print a checkpoint's family, config, parameters and hash")
    info.add_argument("checkpoint")
    info.set_defaults(handler=_info)

    convert = commands.add_parser(
        "convert", help="convert a reference ZSE-SBIR best_checkpoint.pth into this project's format"
    )
    convert.add_argument("reference")
    convert.add_argument("out")
    convert.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    convert.set_defaults(handler=_convert)


def _load(path: str) -> Any:
    from models import load_checkpoint

    return load_checkpoint(path)


def _info(args: argparse.Namespace) -> int:
    from models import checkpoint_hash

    model = _load(args.checkpoint)
    summary = {
        "checkpoint": args.checkpoint,
        "sha256": checkpoint_hash(args.checkpoint),
        "family": model.family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "embed_dim": model.embed_dim,
        "config": model.config.to_dict(),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from models import save_checkpoint

    model = _load(args.reference)
    save_checkpoint(model, args.out, dtype=torch.float16 if args.fp16 else None, source=args.reference)
    print(f"wrote {args.out} ({model.config.name})")
    return 0
