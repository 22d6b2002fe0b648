"""The settings tables of docs/service.md and docs/operations.md against `service.settings.Settings`:
every field is in the reference table, every name in either table is a field, and each literal
default printed there is the class's default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROW = re.compile(r"^\|\s*(`SBIR_[A-Z_]+`(?:,\s*`SBIR_[A-Z_]+`)*)\s*\|\s*([^|]*?)\s*\|")


def _rows(page: str) -> list[tuple[list[str], str]]:
    rows = []
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            names = [name.strip("` ").removeprefix("SBIR_").lower() for name in match.group(1).split(",")]
            rows.append((names, match.group(2)))
    return rows


def _documented_defaults(cell: str, count: int) -> list[str | None]:
    """The backticked defaults of a cell, one per name; None where the cell says 'none' or derives
    the default in words (e.g. 'parent of SBIR_INDEX_DIR')."""
    literals = re.findall(r"`([^`]*)`", cell.split("(")[0])
    if cell.strip().lower() == "none" or len(literals) != count:
        return [None] * count
    return literals


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("page", ["service.md", "operations.md"])
def test_documented_settings_exist_with_their_defaults(page: str) -> None:
    fields = Settings.model_fields
    rows = _rows(page)
    assert rows, f"no settings table found in docs/{page}"
    for names, cell in rows:
        for name, documented in zip(names, _documented_defaults(cell, len(names)), strict=True):
            assert name in fields, f"docs/{page} documents SBIR_{name.upper()}, which Settings does not have"
            default = fields[name].get_default(call_default_factory=True)
            if default is None:  # derived at run time (e.g. from SBIR_INDEX_DIR), described in words
                continue
            assert documented is not None, f"docs/{page}: SBIR_{name.upper()} has no literal default (code {default!r})"
            assert documented == _as_text(default), f"docs/{page}: SBIR_{name.upper()} default {documented!r}, code {default!r}"


def test_every_setting_is_in_the_reference_table() -> None:
    documented = {name for names, _ in _rows("service.md") for name in names}
    assert set(Settings.model_fields) - documented == set()
