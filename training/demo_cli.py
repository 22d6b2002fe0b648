"""`sbir demo ...`: prepare the OpenMoji demo dataset (see training.demo_data) and index it."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="the OpenMoji demo dataset")
    commands = parser.add_subparsers(dest="demo_command", metavar="ACTION", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="fetch OpenMoji 17.0.0 with npm, render sketches and photos to PNG, write the zero-shot split",
        description=(
            "Fetch openmoji@17.0.0 (npm pack, cached), render its black SVGs (sketches) and colour SVGs "
            "(photos) to PNG by subgroup, and write split.json, manifest.csv and ATTRIBUTION.md. "
            "A folder already prepared with the same arguments is only verified."
        ),
    )
    prepare.add_argument("--out", default="data/demo", help="dataset folder (default: %(default)s)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the unseen-subgroup draw (default: %(default)s)")
    prepare.add_argument(
        "--unseen-fraction",
        type=float,
        default=0.2,
        help="share of subgroups held out as unseen (default: %(default)s)",
    )
    prepare.add_argument("--size", type=int, default=224, help="PNG side in pixels (default: %(default)s)")
    prepare.add_argument(
        "--cache", default="data/cache", help="folder for the npm tarball, reused when valid (default: %(default)s)"
    )
    prepare.add_argument("--workers", type=int, default=2, help="rendering processes (default: %(default)s)")
    prepare.set_defaults(handler=_prepare)

    train = commands.add_parser(
        "train",
        help="train the demo model with the demo recipe (in-memory data, contrastive [Ret], hard negatives)",
        description="Train zse-tiny on the prepared demo folder with a recipe file (see training.demo_train). "
        "A run with last.pt in its run_dir is resumed unless --restart is given.",
    )
    train.add_argument("--recipe", default="configs/demo/zse-tiny-demo.yaml", help="recipe YAML (default: %(default)s)")
    train.add_argument("--steps", type=int, default=None, help="override the recipe's total steps")
    train.add_argument("--run-dir", default=None, help="override the recipe's run_dir")
    train.add_argument("--restart", action="store_true", help="ignore an existing last.pt")
    train.set_defaults(handler=_train)

    prescore = commands.add_parser(
        "prescore",
        help="distil a checkpoint's relation network into its pre-scorer (the prescoreM re-rank modes)",
        description="Score the [Ret] shortlist of every seen OpenMoji drawing with the relation network, train "
        "the checkpoint's pre-scorer to reproduce those orders (training.prescore) and write the checkpoint "
        "with it; every other weight is unchanged. Reports how much of the exact top 10 of the unseen "
        "drawings the pre-score's top M keeps.",
    )
    prescore.add_argument("--checkpoint", default="weights/zse-openmoji-demo.pt", help="ZSE checkpoint (default: %(default)s)")
    prescore.add_argument("--data", default="data/demo", help="prepared demo folder (default: %(default)s)")
    prescore.add_argument("--out", required=True, help="checkpoint to write (may be --checkpoint itself)")
    prescore.add_argument("--shortlist", type=int, default=100, help="photos per shortlist, K (default: %(default)s)")
    prescore.add_argument("--steps", type=int, default=1500, help="training steps (default: %(default)s)")
    prescore.add_argument("--styles", default="openmoji",
                          help="comma-separated styles whose seen drawings are the training queries: openmoji and "
                               "any prepared sketch style (tabler, ph, emojione-monotone, fluent-emoji-high-contrast)"
                               " (default: %(default)s)")
    prescore.add_argument("--seed", type=int, default=0)
    prescore.set_defaults(handler=_prescore)


def _prepare(args: argparse.Namespace) -> int:
    from models.errors import CliError
    from training.demo_data import DemoSettings, prepare

    try:
        settings = DemoSettings(seed=args.seed, unseen_fraction=args.unseen_fraction, size=args.size)
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    report = prepare(args.out, settings, cache=args.cache, workers=args.workers)
    print(report.summary())
    from training.demo_extra import prepare_styles

    for line in prepare_styles(args.out, args.cache, size=args.size):
        print(f"  {line}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.errors import CliError
    from training.demo_eval import evaluate_bank
    from training.demo_styles import evaluation_banks, training_bank
    from training.demo_train import DemoRecipe, run

    recipe = DemoRecipe.from_file(args.recipe, steps=args.steps, run_dir=args.run_dir)
    try:
        bank = training_bank(recipe.data_root, recipe.styles, icons_to_emoji=recipe.icons_to_emoji)
        queries, gallery = evaluation_banks(recipe.data_root)
    except FileNotFoundError as error:
        missing = error.filename or str(error)
        raise CliError(f"{missing}: not found (run `sbir demo prepare --out {recipe.data_root}` first)") from None
    print(f"training bank: {len(bank.sketches)} sketches, {len(bank.photos)} photos, "
          f"{len(bank.trainable_instances())} instances; evaluating {len(queries.sketches)} unseen sketches "
          f"against {len(gallery.photos)} photos", flush=True)
    try:
        record = run(recipe, bank, evaluate=lambda model, step: evaluate_bank(model, queries, gallery),
                     resume=not args.restart)
    except KeyboardInterrupt:
        raise CliError(f"interrupted; the last checkpoint is in {recipe.run_dir} (run again to resume)") from None
    print(record)
    return 0


def _prescore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.errors import CliError
    from training.prescore import DistillSettings, distill_demo

    if args.shortlist < 10 or args.steps < 1:
        raise CliError(f"--shortlist must be at least 10 and --steps at least 1, got {args.shortlist} and {args.steps}")
    try:
        held_out = distill_demo(Path(args.checkpoint), Path(args.data), Path(args.out), args.shortlist,
                                DistillSettings(steps=args.steps, seed=args.seed),
                                log=lambda line: print(line, flush=True),
                                styles=[style.strip() for style in args.styles.split(",") if style.strip()])
    except FileNotFoundError as error:
        if error.filename is None:  # a style folder that was not prepared: the message says so
            raise CliError(str(error)) from None
        raise CliError(f"{error.filename}: not found (run `sbir demo prepare --out {args.data}` first)") from None
    except ValueError as error:  # not a ZSE checkpoint
        raise CliError(str(error)) from None
    shares = ", ".join(f"{share:.3f} at M = {keep}" for keep, share in held_out.items())
    print(f"unseen drawings, share of the exact top 10 inside the pre-score top M: {shares}")
    print(f"wrote {args.out}")
    return 0
