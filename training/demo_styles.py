"""Which images the demo recipe trains and evaluates on, by style name.

Styles: ``openmoji`` (the black / colour pairs of the seen subgroups). Others are added by
``sbir demo prepare`` into ``<root>/styles/<name>/`` (see :mod:`training.demo_extra`), each in the
same layout: ``sketch/<concept>/<key>.png`` and/or ``photo/<concept>/<key>.png``, where ``key`` is
the instance (an emoji's hexcode pairs it with OpenMoji's drawings of that emoji).
"""

from __future__ import annotations

import dataclasses
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


def link_icons(root: Path, items: Sequence[BankItem]) -> list[BankItem]:
    """``items`` with each icon that is named as exactly one seen OpenMoji emoji moved into that emoji's
    instance and subgroup (Phosphor's ``umbrella`` joins ``emoji:2602``, umbrella).

    Its outline then counts as one more drawing of the emoji and its filled icon as one more picture,
    which ties the icons' doodle-like line art to the gallery's colour emoji. Names are compared with
    the slug of OpenMoji's annotation; a name shared by several emoji stays an icon concept of its own.
    Only seen emoji are candidates (icons of unseen concepts are not rendered at all).
    """
    from training.demo_extra import STYLES, read_targets

    by_slug: dict[str, list[tuple[str, str]]] = {}
    for target in read_targets(root):
        if not target.unseen:
            by_slug.setdefault(target.slug, []).append((target.hexcode, target.subgroup))
    icon_sources = {f"{name}-{modality}" for name, style in STYLES.items() if style.role == "icons"
                    for modality in ("sketch", "photo")}
    linked = []
    for item in items:
        match = by_slug.get(item.path.stem, []) if item.source in icon_sources else []
        if len(match) == 1:
            hexcode, subgroup = match[0]
            item = dataclasses.replace(item, instance=f"emoji:{hexcode}", concept=subgroup)
        linked.append(item)
    return linked


def training_bank(root: str | os.PathLike[str], styles: Sequence[str], cache: Path | None = BANK_CACHE,
                  icons_to_emoji: bool = False) -> PairBank:
    """The seen-split images of ``styles``, decoded (cached in ``cache``); with ``icons_to_emoji``, icons
    named as an emoji are linked to it (`link_icons`)."""
    root = Path(root)
    items: list[BankItem] = []
    for style in styles:
        items.extend(openmoji_items(root, "seen") if style == "openmoji" else style_items(root, style))
    if icons_to_emoji:
        items = link_icons(root, items)
    return build_bank(items, cache=cache)


def evaluation_banks(root: str | os.PathLike[str], cache: Path | None = BANK_CACHE) -> tuple[PairBank, PairBank]:
    """(unseen OpenMoji sketches, all OpenMoji photos): the demo's zero-shot queries and its gallery."""
    root = Path(root)
    queries = build_bank([item for item in openmoji_items(root, "unseen") if item.modality == "sketch"], cache=cache)
    gallery = build_bank([item for item in openmoji_items(root, "all") if item.modality == "photo"], cache=cache)
    return queries, gallery
