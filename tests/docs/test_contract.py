"""docs/CONTRACT.md names importable things: each dotted name it gives under a top-level package
(`models.load`, `indexer.retrieval.shortlist`, `service.engine.SearchEngine`, ...) must resolve, so the
contract cannot silently fall behind a rename."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "CONTRACT.md"
NAME = re.compile(r"`((?:models|indexer|service|training|benchmarks)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_name_in_the_contract_resolves() -> None:
    names = sorted(set(NAME.findall(CONTRACT.read_text(encoding="utf-8"))))
    assert len(names) > 20  # the contract does name things; an empty match would prove nothing
    missing = [name for name in names if not _resolve(name)]
    assert missing == []


def test_the_resolver_refuses_a_name_that_is_not_there() -> None:
    assert _resolve("models.load") and not _resolve("models.fast_relation.relation_scores")
