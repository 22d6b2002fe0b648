"""More styles for the demo: other emoji sets and line / filled icon pairs, all from npm packages.

Each style is an ``@iconify-json/<set>`` package (pinned version and integrity, fetched once with
``npm pack`` into the cache, like OpenMoji). Its ``icons.json`` holds every icon as an SVG body;
``chars.json`` maps code points to icon names where the set has it. Roles:

- ``photo``: a colour emoji set; each emoji is another gallery-style picture of an OpenMoji emoji;
- ``sketch``: a monochrome emoji set; each emoji is another "drawing" of an OpenMoji emoji;
- ``icons``: an icon set with outline / filled pairs (Tabler: ``<name>`` and ``<name>-filled``;
  Phosphor: ``<name>-light`` and ``<name>-fill``); the outline is the sketch, the filled icon the
  photo (in a colour picked from the name, since the gallery is colour);
- ``cross``: a colour set kept out of training and tuning, for the cross-style test.

Matching an emoji to OpenMoji: by code point where ``chars.json`` has it (``FE0F`` ignored), else by
the slug of OpenMoji's annotation (``grinning face`` -> ``grinning-face``), which is how the sets name
their icons. Written under ``<demo>/styles/<style>/``::

    sketch/<concept>/<key>.png, photo/<concept>/<key>.png   (key: hexcode, or icon name)
    stamp.json                                               package, settings and counts

Zero-shot stays honest: no style of an emoji of an unseen subgroup is rendered for training styles,
and an icon is left out when a word of its name (a trailing ``s`` dropped) is a word of an unseen
subgroup's name or of the annotation of an emoji in an unseen subgroup, except the stop words
:data:`STOP_WORDS`. The ``cross`` style renders every matched emoji (the test uses the unseen ones).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from indexer.publish import publish
from training.demo_data import DemoDataError, fetch_npm_package

Role = Literal["photo", "sketch", "icons", "cross"]
FORMAT_VERSION = 1
STOP_WORDS = frozenset(
    {"a", "an", "and", "at", "button", "face", "for", "in", "mark", "of", "on", "sign", "symbol", "the",
     "to", "with", "off", "filled", "circle", "square", "up", "down", "left", "right"}
)
# The filled icons are painted in one of these (OpenMoji's main palette), chosen by the icon's name.
ICON_COLOURS = ("#EA5A47", "#F1B31C", "#5C9E31", "#1E50A0", "#92D3F5", "#B399C8", "#D0CFCE", "#A57939")


@dataclass(frozen=True)
class Style:
    """One package: its npm name, pinned version and integrity, licence and role."""

    name: str
    package: str
    version: str
    integrity: str
    licence: str
    role: Role
    # Icon sets: the name suffixes of an icon's outline and filled variants.
    outline_suffix: str = ""
    filled_suffix: str = "-filled"


STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style("noto", "@iconify-json/noto", "1.2.9",
              "sha512-DQiuXENbun41ch+XPSV55H9FaWKpHTyz46YIKtSaKYD4fIDDzL1tR6H4np/T38jfrTAeI3rcKF0mqHYeZVAuaw==",
              "Apache-2.0", "photo"),
        Style("fluent-emoji-flat", "@iconify-json/fluent-emoji-flat", "1.2.6",
              "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s29sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw==",
              "MIT", "photo"),
        Style("emojione", "@iconify-json/emojione", "1.2.3",
              "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8zb9CMMg==",
              "CC-BY-4.0", "photo"),
        Style("fluent-emoji-high-contrast", "@iconify-json/fluent-emoji-high-contrast", "1.2.6",
              "sha512-esqhZPpkrF7sNX3NsLoh8KW64okEr/bzko7WNnFP+qTJGAqDPDYjp0925yxuivXy3HtVQB8xhIKu3+Nq1byX5w==",
              "MIT", "sketch"),
        Style("emojione-monotone", "@iconify-json/emojione-monotone", "1.2.1",
              "sha512-cZSNcPsuiAD6HCzCh/2dYKGh3pNI0jJlxBxQWfC33cQsPtqYZqulGBvlkThXYNvDl8VxgVHT9u+izyX/yeEIkA==",
              "CC-BY-4.0", "sketch"),
        Style("tabler", "@iconify-json/tabler", "1.2.41",
              "sha512-GHg+H/cnr0anaCoV383JONiOMxZQOdojWYNLgL3x0fRE07YW7c+AHiYmIhXet//oq26T830qitdP7l43ojiCXw==",
              "MIT", "icons"),
        # Phosphor's light weight (12 of 256 wide) is the closest of its weights to the page's thin pen.
        Style("ph", "@iconify-json/ph", "1.2.2",
              "sha512-PgkEZNtqa8hBGjHXQa4pMwZa93hmfu8FUSjs/nv4oUU6yLsgv+gh9nu28Kqi8Fz9CCVu4hj1MZs9/60J57IzFw==",
              "MIT", "icons", outline_suffix="-light", filled_suffix="-fill"),
        # Remix Icon draws each concept as a line icon and a filled one (an outline of filled shapes,
        # not a stroke): more everyday things (keys, boats, notes) in a second hand.
        Style("ri", "@iconify-json/ri", "1.2.10",
              "sha512-WWMhoncVVM+Xmu9T5fgu2lhYRrKTEWhKk3Com0KiM111EeEsRLiASjpsFKnC/SrB6covhUp95r2mH8tGxhgd5Q==",
              "Apache-2.0", "icons", outline_suffix="-line", filled_suffix="-fill"),
        Style("twemoji", "@iconify-json/twemoji", "1.2.5",
              "sha512-uKpuIEV0v6K5BW3Mjdyl+XKFVAbbcPxAgifKvEMtZoUZB5+YiY5zaMm2uNNCxyXzAWU9yNLlj41WU6/mvgALsw==",
              "CC-BY-4.0", "cross"),
    )
}
STYLES_HEADING = "## Other styles (training and the cross-style test)"
TRAINING_STYLES = tuple(name for name, style in STYLES.items() if style.role != "cross")


@dataclass(frozen=True)
class Target:
    """An OpenMoji emoji as the styles see it: hexcode, annotation slug, subgroup, split side."""

    hexcode: str
    slug: str
    subgroup: str
    unseen: bool


def slug(text: str) -> str:
    """``"Grinning face: big eyes"`` -> ``"grinning-face-big-eyes"`` (the sets' icon names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def code_key(hexcode: str) -> str:
    """A code point sequence without variation selectors, upper case: ``2764-fe0f`` -> ``2764``."""
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


def read_targets(demo: Path) -> list[Target]:
    """The OpenMoji emojis of a prepared demo folder (its manifest.csv and split.json)."""
    import csv

    with open(demo / "split.json", encoding="utf-8") as handle:
        unseen = set(json.load(handle)["unseen"])
    targets = []
    with open(demo / "manifest.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            metadata = json.loads(row["metadata"])
            targets.append(Target(row["id"], slug(metadata.get("annotation", "")), row["label"], row["label"] in unseen))
    return targets


def read_package(tarball: Path) -> dict[str, Any]:
    """``icons.json``, ``chars.json`` (or {}) and ``info.json`` of an iconify-json tarball."""
    wanted = {"package/icons.json": "icons", "package/chars.json": "chars", "package/info.json": "info"}
    found: dict[str, Any] = {"chars": {}, "info": {}}
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                if member.isfile() and member.name in wanted:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[wanted[member.name]] = json.load(handle)
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise DemoDataError(f"cannot read {tarball}: {error}") from error
    if "icons" not in found:
        raise DemoDataError(f"{tarball}: no package/icons.json")
    return found


def icon_svg(icons: dict[str, Any], name: str, colour: str = "#000000") -> str | None:
    """The SVG document of an icon (aliases followed), ``currentColor`` painted ``colour``; None if absent."""
    table, aliases = icons.get("icons", {}), icons.get("aliases", {})
    seen: set[str] = set()
    while name not in table and name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name].get("parent", "")
    entry = table.get(name)
    if entry is None:
        return None
    left, top = entry.get("left", icons.get("left", 0)), entry.get("top", icons.get("top", 0))
    width = entry.get("width", icons.get("width", 16))
    height = entry.get("height", icons.get("height", 16))
    body = entry["body"].replace("currentColor", colour)
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{left} {top} {width} {height}">{body}</svg>'


def render_string(svg: str, size: int) -> Image.Image:
    """Render an SVG document to an RGB ``size`` x ``size`` image on white."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff",
                                skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as image:
        return image.convert("RGB")


def emoji_jobs(style: Style, package: dict[str, Any], targets: Sequence[Target]) -> list[tuple[str, str, str]]:
    """(hexcode, subgroup, svg) of each OpenMoji emoji this set draws (training roles: seen only)."""
    icons = package["icons"]
    by_code = {code_key(code): name for code, name in package["chars"].items()}
    jobs = []
    for target in targets:
        if target.unseen and style.role != "cross":
            continue
        name = by_code.get(code_key(target.hexcode)) or target.slug
        svg = icon_svg(icons, name) if name else None
        if svg is not None:
            jobs.append((target.hexcode, target.subgroup, svg))
    return jobs


def unseen_words(targets: Iterable[Target]) -> set[str]:
    """The words an icon name may not contain: of unseen subgroup names and unseen annotations."""
    words: set[str] = set()
    for target in targets:
        if target.unseen:
            words.update(_words(target.subgroup))
            words.update(_words(target.slug))
    return words - STOP_WORDS


def _words(name: str) -> set[str]:
    return {word[:-1] if word.endswith("s") and len(word) > 3 else word
            for word in re.split(r"[^a-z]+", name.lower()) if len(word) > 1}


def icon_jobs(package: dict[str, Any], banned: set[str], stroke: float = 1.0, outline_suffix: str = "",
              filled_suffix: str = "-filled") -> tuple[list[tuple[str, str, str, str]], int]:
    """(name, concept, outline svg, filled svg) of each outline / filled pair not touching ``banned``;
    and how many pairs were left out. ``name`` is the icon's base name: its variants are
    ``name + outline_suffix`` and ``name + filled_suffix``. A stroked outline's stroke is set to
    ``stroke`` (of 24): the page's pen is thinner, relative to a drawing, than Tabler's 2."""
    icons = package["icons"]
    table = icons.get("icons", {})
    jobs, dropped = [], 0
    bases = sorted(name[:-len(filled_suffix)] for name in table if name.endswith(filled_suffix))
    for name in bases:
        if f"{name}{outline_suffix}" not in table:
            continue
        if _words(name) & banned:
            dropped += 1
            continue
        outline = icon_svg(icons, f"{name}{outline_suffix}")
        colour = ICON_COLOURS[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(ICON_COLOURS)]
        filled = icon_svg(icons, f"{name}{filled_suffix}", colour)
        if outline is None or filled is None:
            continue
        outline = outline.replace('stroke-width="2"', f'stroke-width="{stroke:g}"')
        jobs.append((name, name.split("-")[0], outline, filled))
    return jobs, dropped


def _stamp(style: Style, size: int) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "package": f"{style.package}@{style.version}", "integrity": style.integrity,
            "size": size}


def prepare_style(demo: str | os.PathLike[str], style: Style, cache: str | os.PathLike[str], *,
                  size: int = 224, npm: str = "npm") -> dict[str, Any]:
    """Render one style into ``demo/styles/<name>`` (built aside, renamed into place); a folder with
    a matching stamp is kept. Returns the stamp (with counts and ``action``)."""
    demo = Path(demo)
    out = demo / "styles" / style.name
    try:
        with open(out / "stamp.json", encoding="utf-8") as handle:
            stamp = json.load(handle)
        if {key: stamp.get(key) for key in _stamp(style, size)} == _stamp(style, size):
            return {**stamp, "action": "verified"}
    except (OSError, ValueError):
        pass
    started = time.monotonic()
    tarball = fetch_npm_package(cache, style.package, style.version, style.integrity, npm=npm)
    package = read_package(tarball)
    targets = read_targets(demo)
    build = out.parent / f".{style.name}.tmp-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    counts: dict[str, int] = {"sketches": 0, "photos": 0, "left_out_unseen": 0, "render_failed": 0}
    try:
        if style.role == "icons":
            jobs, counts["left_out_unseen"] = icon_jobs(package, unseen_words(targets), outline_suffix=style.outline_suffix,
                                                        filled_suffix=style.filled_suffix)
            for name, concept, outline, filled in jobs:
                _save(build / "sketch" / concept / f"{name}.png", outline, size, counts, "sketches")
                _save(build / "photo" / concept / f"{name}.png", filled, size, counts, "photos")
        else:
            modality, key = ("sketch", "sketches") if style.role == "sketch" else ("photo", "photos")
            for hexcode, subgroup, svg in emoji_jobs(style, package, targets):
                _save(build / modality / subgroup / f"{hexcode}.png", svg, size, counts, key)
        info = package.get("info", {})
        stamp = {**_stamp(style, size), "counts": counts, "licence": style.licence, "role": style.role,
                 "name": info.get("name", style.name), "author": info.get("author", {}),
                 "licence_detail": info.get("license", {})}
        build.mkdir(parents=True, exist_ok=True)
        (build / "stamp.json").write_text(json.dumps(stamp, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        publish(build, out)  # the project's folder publish: one atomic exchange on Linux
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {**stamp, "action": "built", "seconds": round(time.monotonic() - started, 1)}


def _save(path: Path, svg: str, size: int, counts: dict[str, int], key: str) -> None:
    try:
        image = render_string(svg, size)
    except ValueError:  # resvg refuses an SVG it cannot render
        counts["render_failed"] += 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    counts[key] += 1


def prepare_styles(demo: str | os.PathLike[str], cache: str | os.PathLike[str], *,
                   names: Sequence[str] = tuple(STYLES), size: int = 224, npm: str = "npm") -> list[str]:
    """Prepare every style in ``names`` and put their attribution into ``demo/ATTRIBUTION.md`` (a section
    after OpenMoji's, replaced on every run); returns one summary line per style."""
    lines = []
    for name in names:
        stamp = prepare_style(demo, STYLES[name], cache, size=size, npm=npm)
        counts = stamp["counts"]
        extra = f", {counts['left_out_unseen']} left out as unseen concepts" if counts.get("left_out_unseen") else ""
        verb = "built" if stamp["action"] == "built" else "verified"
        lines.append(f"style {name} ({STYLES[name].role}) {verb}: {counts['sketches']} sketches, "
                     f"{counts['photos']} photos{extra}")
    from models.atomic import write_bytes_atomic

    path = Path(demo) / "ATTRIBUTION.md"
    base = path.read_text(encoding="utf-8").split(STYLES_HEADING)[0].rstrip("\n")
    text = f"{base}\n\n{STYLES_HEADING}\n\n{attribution(demo)}\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    return lines


def attribution(demo: str | os.PathLike[str]) -> str:
    """The attribution section of every prepared style (from their stamps), as Markdown."""
    lines = []
    for style in STYLES.values():
        try:
            stamp = json.loads((Path(demo) / "styles" / style.name / "stamp.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        author = stamp.get("author") or {}
        detail = stamp.get("licence_detail") or {}
        lines.append(
            f"- `styles/{style.name}/` ({style.role}): {stamp.get('name', style.name)} by "
            f"{author.get('name', 'its authors')} ({author.get('url', '')}), from the npm package "
            f"`{stamp['package']}`, licence {detail.get('title', style.licence)} ({detail.get('url', '')}). "
            f"Rendered to {stamp['size']} px PNG; {stamp['counts'].get('sketches', 0)} sketches, "
            f"{stamp['counts'].get('photos', 0)} photos."
        )
    return "\n".join(lines)
