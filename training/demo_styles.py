"""Which images the demo recipe trains and evaluates on, by style name.

Styles: ``openmoji`` (the black / colour pairs of the seen subgroups). Others are added by
``sbir demo prepare`` into ``<root>/styles/<name>/`` (see :mod:`training.demo_extra`), each in the
same layout: ``sketch/<concept>/<key>.png`` and/or ``photo/<concept>/<key>.png``, where ``key`` is
the instance (an emoji's hexcode pairs it with OpenMoji's drawings of that emoji).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from training.demo_bank import BankItem, PairBank, build_bank, openmoji_items

BANK_CACHE = Path("data/cache/banks")


def style_items(root: Path, style: str) -> list[BankItem]:
    """The images of one extra style folder ``root/styles/<style>``."""
    folder = root / "styles" / style
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: style {style!r} is not prepared (run `sbir demo prepare`)")
    items = []
    for modality in ("sketch", "photo"):
        for path in sorted((folder / modality).glob("*/*.png")):
            key = path.stem
            instance = key if ":" in key else f"emoji:{key}"
            items.append(BankItem(path, modality, instance, path.parent.name, f"{style}-{modality}"))
    return items


def training_bank(root: str | os.PathLike[str], styles: Sequence[str], cache: Path | None = BANK_CACHE) -> PairBank:
    """The seen-split images of ``styles``, decoded (cached in ``cache``)."""
    root = Path(root)
    items: list[BankItem] = []
    for style in styles:
        items.extend(openmoji_items(root, "seen") if style == "openmoji" else style_items(root, style))
    return build_bank(items, cache=cache)


def evaluation_banks(root: str | os.PathLike[str], cache: Path | None = BANK_CACHE) -> tuple[PairBank, PairBank]:
    """(unseen OpenMoji sketches, all OpenMoji photos): the demo's zero-shot queries and its gallery."""
    root = Path(root)
    queries = build_bank([item for item in openmoji_items(root, "unseen") if item.modality == "sketch"], cache=cache)
    gallery = build_bank([item for item in openmoji_items(root, "all") if item.modality == "photo"], cache=cache)
    return queries, gallery
