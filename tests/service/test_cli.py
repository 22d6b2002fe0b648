"""`sbir`: areas add their subcommands through `sbir.commands` entry points, in a fixed order."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from service.cli import COMMAND_GROUP, build_parser, command_entry_points

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# `sbir --help` before the commands moved to entry points.
HELP_ORDER = ["model", "index", "serve", "search", "explain", "train", "evaluate", "demo", "bench"]


def subcommands(parser) -> list[str]:
    (action,) = [action for action in parser._actions if action.dest == "command"]
    return list(action.choices)


def test_subcommands_keep_their_order():
    assert subcommands(build_parser()) == HELP_ORDER


def test_installed_entry_points_are_the_ones_in_pyproject_sorted_by_name():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][COMMAND_GROUP]
    installed = command_entry_points()
    assert {entry.name: entry.value for entry in installed} == declared  # else: pip install -e .
    names = [entry.name for entry in installed]
    assert names == sorted(names, key=lambda name: int(name.split("-", 1)[0]))  # string order is number order
    assert all(entry.value.endswith(":register") for entry in installed)


def test_sbir_help_imports_no_heavy_module():
    code = ("import sys; from service.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
