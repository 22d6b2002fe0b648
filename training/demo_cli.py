"""`sbir demo ...`: prepare the OpenMoji demo dataset (see training.demo_data)."""

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


def _prepare(args: argparse.Namespace) -> int:
    from service.cli import CliError
    from training.demo_data import DemoDataError, DemoSettings, prepare

    try:
        settings = DemoSettings(seed=args.seed, unseen_fraction=args.unseen_fraction, size=args.size)
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    try:
        report = prepare(args.out, settings, cache=args.cache, workers=args.workers)
    except DemoDataError as error:
        raise CliError(str(error)) from None
    print(report.summary())
    return 0
