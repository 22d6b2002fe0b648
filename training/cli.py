"""`sbir train` and `sbir evaluate`.

Registration imports nothing heavy (no torch): handlers import the training modules when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# training.datasets imports only the standard library at module level, so registration stays cheap.
from training.datasets import DATASETS as EVALUATE_DATASETS


def register(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a ZSE-SBIR or AMFF model from a YAML or JSON config",
        description="Train from a config file (examples in configs/). Under torchrun (WORLD_SIZE > 1) "
        "it trains data-parallel on all processes.",
    )
    train.add_argument("--config", required=True, metavar="FILE", help="YAML or JSON training config")
    train.add_argument(
        "--resume", action="store_true", help="continue the interrupted run from RUN_DIR/checkpoints/last.pt"
    )
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure a checkpoint on a zero-shot split and write a JSON report",
        description="Zero-shot evaluation: mAP@all, mAP@200, Prec@100, Prec@200 (and acc@1 / acc@10 for "
        "fine-grained and instance data), in the reference's and the standard definitions.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT")
    evaluate.add_argument("--dataset", required=True, choices=EVALUATE_DATASETS)
    evaluate.add_argument("--root", required=True, metavar="DIR", help="data root (see docs/training.md, section Datasets)")
    evaluate.add_argument(
        "--unseen",
        metavar="NAMES|FILE",
        help="generic / openmoji-demo: the unseen (held-out) classes, a file with one name a line or, "
        "when no such file exists, comma-separated names (star,moon)",
    )
    evaluate.add_argument(
        "--pair-by-stem",
        action="store_true",
        help="generic: pair each sketch with the photo of its class of the same file stem and also "
        "report acc@1 / acc@10 of finding its own photo",
    )
    evaluate.add_argument(
        "--allow-small-split",
        action="store_true",
        help="evaluate even when fewer than 2 classes are held out or a held-out class has no photo "
        "(refused by default: with one class mAP is 1.0 whatever the model does)",
    )
    evaluate.add_argument(
        "--retrieval",
        choices=("ret", "rn", "two-stage"),
        default="ret",
        help="ret: embedding distance; rn: every pair's relation score; two-stage: "
        "ANN shortlist then relation re-rank (default: ret)",
    )
    evaluate.add_argument(
        "--shortlist", type=int, default=100, metavar="K", help="two-stage shortlist size (default: 100)"
    )
    evaluate.add_argument(
        "--rerank-mode", default="fp32", metavar="MODE",
        help="relation scores: fp32 (exact), bf16, int8, bf16+cascadeM, int8+cascadeM, prescoreM, bf16+prescoreM "
             "(default: fp32)",
    )
    evaluate.add_argument(
        "--ann-weight", type=float, default=0.0, metavar="W",
        help="rn / two-stage rank by relation + W x [Ret] cosine (default: 0, the paper's rule; "
        "the demo serves with 1)",
    )
    evaluate.add_argument("--quick", action="store_true", help="the reference's subsampled quick test")
    evaluate.add_argument(
        "--gallery",
        choices=("unseen", "all"),
        default="unseen",
        help="unseen: rank the unseen classes' photos (the benchmarks' protocol); all: every photo of "
        "the dataset, seen classes too, as a user's gallery (default: unseen)",
    )
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    evaluate.add_argument("--num-workers", type=int, default=None, help="image loading processes")
    evaluate.add_argument("--out", required=True, metavar="REPORT.json")
    evaluate.set_defaults(handler=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config

    try:
        from training.train import train

        config = load_config(args.config, **({"resume": True} if args.resume else {}))
        report = train(config)
    except KeyboardInterrupt:
        print(f"sbir train: {_interrupted(args)}", file=sys.stderr)
        return 130
    if report["rank"] == 0:  # under torchrun every process returns; one summary is enough
        _print_json(
            {
                key: report[key]
                for key in (
                    "status",
                    "message",
                    "step",
                    "total_steps",
                    "last_checkpoint",
                    "best_checkpoint",
                    "best",
                    "final_loss",
                )
            }
        )
    return 0 if report["status"] in ("completed", "stopped") else 1


def _interrupted(args: argparse.Namespace) -> str:
    """The one line for Ctrl-C: the exact command that continues the run, when it has a checkpoint."""
    import shlex
    from pathlib import Path

    from training.checkpointing import checkpoint_paths
    from training.config import ConfigError, load_config

    command = f"sbir train --config {shlex.quote(args.config)}"
    try:
        last, _ = checkpoint_paths(Path(load_config(args.config).run_dir))
    except ConfigError:
        return "interrupted"
    if last.is_file():
        return f"interrupted; resume with: {command} --resume (from the last checkpoint, {last})"
    return f"interrupted before the first checkpoint was saved; start again with: {command}"


def _evaluate(args: argparse.Namespace) -> int:
    from models.errors import CliError

    if args.shortlist < 1:
        raise CliError(f"--shortlist must be at least 1, got {args.shortlist}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.ann_weight >= 0:
        raise CliError(f"--ann-weight must be at least 0, got {args.ann_weight}")
    from models.rerank_mode import RerankMode

    try:
        RerankMode.parse(args.rerank_mode)
    except ValueError as error:
        raise CliError(f"--rerank-mode: {error}") from None
    from training.evaluate import evaluate

    report = evaluate(
        args.checkpoint,
        args.dataset,
        args.root,
        retrieval=args.retrieval,
        shortlist=args.shortlist,
        rerank_mode=args.rerank_mode,
        ann_weight=args.ann_weight,
        unseen=args.unseen,
        quick=args.quick,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        num_workers=args.num_workers,
        gallery=args.gallery,
        pair_by_stem=args.pair_by_stem,
        allow_small_split=args.allow_small_split,
    )
    from training.datasets import format_names

    held_out = report["dataset"]["held_out_classes"]
    print(f"sbir evaluate: {len(held_out)} held-out (unseen) classes: {format_names(held_out)}", file=sys.stderr)
    for warning in report["warnings"]:
        print(f"sbir evaluate: warning: {warning}", file=sys.stderr)
    _print_json(
        {
            "out": args.out,
            "held_out_classes": held_out,
            "metrics": report["metrics"],
            "pair_fraction": report["pair_fraction"],
            "total_s": report["timings"]["total_s"],
        }
    )
    return 0


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
