"""The `sbir` console command.

Each area registers its own subcommands with a `register(subparsers)` function, named as a package
entry point in the `sbir.commands` group (pyproject.toml, `[project.entry-points."sbir.commands"]`),
so this module names no area: the layers above the service (benchmarks) plug in the same way as
those below. `sbir --help` lists them in the order of the entry-point names, sorted as strings;
the names are `POSITION-AREA` with a two-digit position (`10-model`, `20-index`, ...).

Registration must stay cheap (no torch or faiss import) so that `sbir --help` answers at once;
handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points

# Every area's domain errors derive from SbirError (models.errors, no torch import); main() is the one
# place where they become a one-line message and exit status 2.
from models.errors import SbirError

COMMAND_GROUP = "sbir.commands"


def command_entry_points() -> list[EntryPoint]:
    """The `sbir.commands` entry points in `sbir --help` order (by name)."""
    found = sorted(entry_points(group=COMMAND_GROUP), key=lambda entry: entry.name)
    if not found:
        raise RuntimeError(f"no {COMMAND_GROUP} entry points: install the package (pip install -e .)")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbir",
        description="Zero-shot sketch-based image retrieval: models, FAISS indexer and search service.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in command_entry_points():
        entry.load()(subparsers)
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
