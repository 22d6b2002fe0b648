"""The `sbir` console command.

Each area registers its own subcommands through a `register(subparsers)` function in its
`cli` module. Registration must stay cheap (no torch or faiss import) so that `sbir --help`
answers at once; handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Every area's domain errors derive from SbirError (models.errors, no torch import); main() is the one
# place where they become a one-line message and exit status 2.
from models.errors import SbirError

# Modules that contribute subcommands, in the order they appear in `sbir --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "models.cli",
    "indexer.cli",
    "service.serve_cli",
    "service.explain_cli",
    "training.cli",
    "training.demo_cli",
    "benchmarks.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbir",
        description="Zero-shot sketch-based image retrieval: models, FAISS indexer and search service.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # An area that has not landed yet contributes nothing; any other import error is real.
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except SbirError as error:
        print(f"sbir {args.command}: error: {error}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
