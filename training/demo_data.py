"""The demo dataset: OpenMoji drawings rendered to a zero-shot sketch / photo folder layout.

OpenMoji (https://openmoji.org, CC BY-SA 4.0) ships every emoji twice as SVG: ``black/svg/<hexcode>.svg``
is black line art (our sketch) and ``color/svg/<hexcode>.svg`` the coloured design (our photo);
``data/openmoji.csv`` gives each hexcode's group and subgroup. The category of an emoji is its subgroup.

:func:`prepare` fetches the npm package ``openmoji@17.0.0`` with ``npm pack`` (into a cache folder, reused
when its sha512 matches the pinned integrity), renders both drawings to PNG with resvg (``resvg-py``, a
self-contained wheel) and writes, into ``data/demo/``::

    sketch/<subgroup>/<hexcode>.png   black drawings, RGB, white background, size x size
    photo/<subgroup>/<hexcode>.png    colour drawings, same
    split.json                        the zero-shot split: seen / unseen subgroups and counts
    manifest.csv                      the photo gallery (id, path, label, metadata) for the indexer
    ATTRIBUTION.md                    the CC BY-SA 4.0 attribution
    stamp.json                        the settings and counts of the run that wrote the folder

Selection: skin-tone variants are dropped (their black drawing is byte-identical to the base emoji's,
so they add no sketch and would put six copies of one drawing in a category); the ``component`` group
(skin-tone swatches, hair-style parts) is dropped (modifiers, not pictures); emojis without both SVGs
are skipped.

Split rule (:func:`split_subgroups`): subgroups are joined into units when they share a sketch that is
pixel-identical at 64x64 after thresholding (e.g. the plain-rectangle flags of ``country-flag`` and
``subdivision-flag``) and all subgroups whose name contains ``flag`` form one unit; the units that hold a
flag subgroup stay seen. The unseen subgroups are then drawn from the other units: target
``n = floor(unseen_fraction * all_subgroups + 0.5)``, units in sorted order shuffled by
``random.Random(seed)``, taken in that order while they fit in ``n``. So no sketch, and no flag, is on
both sides of the split.

A run is idempotent: a folder whose ``stamp.json`` matches the settings and whose files are all there is
only verified. A build goes to a temporary sibling folder that is renamed into place at the end, so an
interrupted run never leaves a half-written dataset.
"""

from __future__ import annotations

import base64
import concurrent.futures
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from indexer.publish import process_alive, publish
from models.errors import SbirError

OPENMOJI_VERSION = "17.0.0"
# `npm view openmoji@17.0.0 dist.integrity`. A published npm version is immutable, so pinning its hash
# verifies a cached tarball offline as well as online.
OPENMOJI_INTEGRITY = (
    "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="
)

# How the package is named in stamp.json: a folder prepared from another source is rebuilt.
OPENMOJI_SOURCE = f"openmoji@{OPENMOJI_VERSION} {OPENMOJI_INTEGRITY}"

ATTRIBUTION_LINE = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)

# Bump when the layout or the selection / split rules change, so that old folders are rebuilt.
FORMAT_VERSION = 1

# Unicode skin-tone modifiers U+1F3FB..U+1F3FF as they appear in OpenMoji hexcodes.
SKIN_TONE_MODIFIERS = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
DROPPED_GROUPS = frozenset({"component"})
# Side (px) of the thresholded sketch render whose hash decides which sketches count as the same drawing.
FINGERPRINT_SIZE = 64

_PACKAGE_MEMBER = re.compile(r"^package/(?:(?:black|color)/svg/[0-9A-Za-z-]+\.svg|data/openmoji\.csv)$")
_UNSAFE_NAME = re.compile(r"[^0-9A-Za-z._-]")

Modality = Literal["sketch", "photo"]


class DemoDataError(SbirError, RuntimeError):
    """The demo dataset cannot be prepared: npm missing or failing, a bad tarball, a malformed package."""


@dataclass(frozen=True)
class DemoSettings:
    """What a prepared folder depends on (recorded in ``stamp.json``).

    seed: seeds the shuffle that draws the unseen subgroups.
    unseen_fraction: the share of all subgroups drawn as unseen (zero-shot test classes).
    size: side in pixels of the rendered PNGs.
    """

    seed: int = 0
    unseen_fraction: float = 0.2
    size: int = 224

    def __post_init__(self) -> None:
        if not 0.0 <= self.unseen_fraction < 1.0:
            raise ValueError(f"unseen_fraction must be in [0, 1), got {self.unseen_fraction}")
        if not 16 <= self.size <= 4096:
            raise ValueError(f"size must be between 16 and 4096 pixels, got {self.size}")


@dataclass
class PrepareReport:
    """The result of :func:`prepare`: ``action`` is ``"built"`` or ``"verified"`` (already up to date)."""

    out: Path
    action: Literal["built", "verified"]
    counts: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines: what was done, the counts and the time taken."""
        counts = self.counts
        verb = "built" if self.action == "built" else "already up to date (verified)"
        lines = [
            f"demo dataset {verb}: {self.out}",
            f"  {counts['sketches']} sketches, {counts['photos']} photos in {counts['subgroups']} subgroups "
            f"({counts['seen_subgroups']} seen / {counts['unseen_subgroups']} unseen; "
            f"{counts['seen_sketches']} / {counts['unseen_sketches']} sketches)",
        ]
        skipped = {name: number for name, number in counts.get("skipped", {}).items() if number}
        if skipped:
            lines.append("  skipped: " + ", ".join(f"{number} {name.replace('_', ' ')}" for name, number in skipped.items()))
        lines.extend(f"  {note}" for note in self.notes)
        lines.append(f"  took {self.seconds:.1f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class Emoji:
    """One selected OpenMoji entry (a row of ``data/openmoji.csv`` with both SVGs present)."""

    hexcode: str
    emoji: str
    annotation: str
    group: str
    subgroup: str
    author: str


# ----------------------------------------------------------------------------------------------
# Fetching and extracting the npm package


def sri_digest(path: str | os.PathLike[str]) -> str:
    """The Subresource Integrity string (``sha512-<base64>``) of a file, as npm reports ``dist.integrity``."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def fetch_openmoji(
    cache: str | os.PathLike[str],
    *,
    version: str = OPENMOJI_VERSION,
    integrity: str = OPENMOJI_INTEGRITY,
    npm: str = "npm",
) -> Path:
    """Return ``cache/openmoji-<version>.tgz``, running ``npm pack openmoji@<version>`` when it is missing
    (see :func:`fetch_npm_package`)."""
    return fetch_npm_package(cache, "openmoji", version, integrity, npm=npm)


def npm_tarball_name(package: str, version: str) -> str:
    """The file ``npm pack`` writes: ``@scope/name`` -> ``scope-name-<version>.tgz``."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_npm_package(
    cache: str | os.PathLike[str], package: str, version: str, integrity: str, *, npm: str = "npm"
) -> Path:
    """Return the tarball of ``package@version`` in ``cache``, running ``npm pack`` when it is missing.

    A cached tarball is reused when its sha512 equals ``integrity``; one that does not (a truncated
    download, another file) is fetched again. ``npm`` is the npm executable.

    Raises:
        DemoDataError: npm is not installed or fails, or the fetched tarball does not match ``integrity``.
    """
    cache = Path(cache)
    spec = f"{package}@{version}"
    tarball = cache / npm_tarball_name(package, version)
    if tarball.is_file():
        if sri_digest(tarball) == integrity:
            return tarball
        tarball.unlink()
    executable = shutil.which(npm)
    if executable is None:
        raise DemoDataError(
            f"npm not found (needed once to fetch {spec}); install Node.js or put {tarball.name} into {cache}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    # npm pack writes into its working folder: a private one, so that only a complete file is renamed in.
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=cache) as scratch:
        try:
            result = subprocess.run(
                [executable, "pack", spec, "--silent"],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoDataError(f"npm pack {spec} did not finish in 10 minutes") from None
        packed = Path(scratch) / tarball.name
        if result.returncode != 0 or not packed.is_file():
            detail = _last_line(result.stderr) or _last_line(result.stdout) or f"exit status {result.returncode}"
            raise DemoDataError(f"npm pack {spec} failed: {detail}")
        found = sri_digest(packed)
        if found != integrity:
            raise DemoDataError(f"{spec} tarball has integrity {found}, expected {integrity}")
        os.replace(packed, tarball)
    return tarball


def _last_line(text: str | None) -> str:
    # npm prints warnings about local config first; the reason for a failure is on the last line.
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def extract_openmoji(tarball: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract what the demo needs (``black/svg``, ``color/svg``, ``data/openmoji.csv``) into ``dest``.

    Only regular files whose names match the expected paths are written, so a hostile archive cannot
    write outside ``dest``. Returns the package folder (``dest/package``).

    Raises:
        DemoDataError: the file is not a gzip tarball, or it lacks ``package/data/openmoji.csv``.
    """
    dest = Path(dest)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                if not (member.isfile() and _PACKAGE_MEMBER.match(member.name)):
                    continue
                source = archive.extractfile(member)
                if source is None:
                    continue
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DemoDataError(f"cannot read {tarball}: {error}") from error
    package = dest / "package"
    if not (package / "data" / "openmoji.csv").is_file():
        raise DemoDataError(f"{tarball}: no package/data/openmoji.csv in the archive")
    return package


# ----------------------------------------------------------------------------------------------
# Selecting emojis


def is_skin_tone_variant(row: dict[str, str]) -> bool:
    """True for a skin-tone variant: the csv's ``skintone`` is set or the hexcode has a modifier.

    The bare modifiers (``1F3FB``... in group ``component``) are not variants of anything; they are
    dropped with their group.
    """
    codes = row.get("hexcode", "").split("-")
    return bool((row.get("skintone") or "").strip()) or (len(codes) > 1 and bool(SKIN_TONE_MODIFIERS & set(codes)))


def select_emojis(package: str | os.PathLike[str]) -> tuple[list[Emoji], Counter[str]]:
    """Read ``data/openmoji.csv`` of an extracted package and keep the emojis the demo uses.

    Returns the kept emojis sorted by (subgroup, hexcode) and a counter of the skipped ones by reason:
    ``skin_tone_variants``, ``components``, ``missing_svg``, ``duplicate_rows``, ``unlisted_svgs``
    (SVG pairs with no csv row).

    Raises:
        DemoDataError: the csv is missing or lacks the hexcode / group / subgroups columns.
    """
    package = Path(package)
    table = package / "data" / "openmoji.csv"
    black_dir, color_dir = package / "black" / "svg", package / "color" / "svg"
    try:
        with open(table, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"hexcode", "group", "subgroups"} - set(reader.fieldnames or [])
            if missing:
                raise DemoDataError(f"{table}: missing column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except OSError as error:
        raise DemoDataError(f"cannot read {table}: {error.strerror}") from error
    black = {path.stem for path in black_dir.glob("*.svg")}
    color = {path.stem for path in color_dir.glob("*.svg")}

    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    kept: list[Emoji] = []
    for row in rows:
        hexcode = (row.get("hexcode") or "").strip()
        if not hexcode:
            continue
        if hexcode in seen:
            skipped["duplicate_rows"] += 1
            continue
        seen.add(hexcode)
        group = (row.get("group") or "").strip()
        subgroup = (row.get("subgroups") or "").strip()
        subgroup = folder_name(subgroup) if subgroup else ""  # the category is also a folder name
        if group in DROPPED_GROUPS:
            skipped["components"] += 1
        elif is_skin_tone_variant(row):
            skipped["skin_tone_variants"] += 1
        elif hexcode not in black or hexcode not in color or not subgroup:
            skipped["missing_svg"] += 1
        else:
            kept.append(
                Emoji(
                    hexcode=hexcode,
                    emoji=row.get("emoji") or "",
                    annotation=(row.get("annotation") or "").strip(),
                    group=group,
                    subgroup=subgroup,
                    author=(row.get("openmoji_author") or "").strip(),
                )
            )
    skipped["unlisted_svgs"] = len((black & color) - seen)
    kept.sort(key=lambda emoji: (emoji.subgroup, emoji.hexcode))
    return kept, skipped


def folder_name(subgroup: str) -> str:
    """A subgroup as a folder name: OpenMoji's are already safe (``face-smiling``); anything else is
    replaced by ``_`` so that no name can climb out of the dataset folder."""
    name = _UNSAFE_NAME.sub("_", subgroup)
    return "_" + name if name.startswith(".") or not name else name


# ----------------------------------------------------------------------------------------------
# Rendering


def render_svg(svg_path: str | os.PathLike[str], size: int) -> Image.Image:
    """Render an SVG file to an RGB ``size`` x ``size`` image on white (resvg, no system fonts)."""
    import resvg_py  # a compiled extension: imported where it is used, so importing this module stays cheap

    png = resvg_py.svg_to_bytes(
        svg_path=str(svg_path), width=size, height=size, background="#ffffff", skip_system_fonts=True
    )
    with Image.open(io.BytesIO(bytes(png))) as image:
        # resvg paints the background into an RGBA canvas; it is opaque, so dropping alpha loses nothing.
        return image.convert("RGB")


def sketch_fingerprint(sketch: Image.Image) -> str:
    """A hash of a sketch reduced to 64x64 black/white: equal for drawings that differ only in detail
    below that resolution, which is what may not be split between seen and unseen."""
    small = sketch if sketch.size == (FINGERPRINT_SIZE, FINGERPRINT_SIZE) else sketch.resize(
        (FINGERPRINT_SIZE, FINGERPRINT_SIZE), Image.Resampling.BILINEAR
    )
    bits = small.convert("L").point(lambda value: 255 if value >= 128 else 0)
    return hashlib.sha1(bits.tobytes()).hexdigest()


@dataclass(frozen=True)
class _RenderTask:
    hexcode: str
    black_svg: str
    color_svg: str
    sketch_png: str
    photo_png: str
    size: int


def _render_emoji(task: _RenderTask) -> tuple[str, str | None, str | None]:
    """Render one emoji's sketch and photo; returns (hexcode, sketch fingerprint, error message)."""
    try:
        sketch = render_svg(task.black_svg, task.size)
        photo = render_svg(task.color_svg, task.size)
        # The fingerprint comes from its own 64 px render so that the split does not depend on --size.
        small = sketch if task.size == FINGERPRINT_SIZE else render_svg(task.black_svg, FINGERPRINT_SIZE)
        sketch.save(task.sketch_png)
        photo.save(task.photo_png)
    except (ValueError, OSError) as error:  # resvg raises ValueError for an SVG it cannot render
        return task.hexcode, None, f"{type(error).__name__}: {error}"
    return task.hexcode, sketch_fingerprint(small), None


def _run_tasks(tasks: Sequence[_RenderTask], workers: int) -> Iterator[tuple[str, str | None, str | None]]:
    if workers <= 1:
        yield from map(_render_emoji, tasks)
        return
    # spawn, not fork: the caller may be a threaded server, and forking a process with threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_render_emoji, tasks, chunksize=32)


# ----------------------------------------------------------------------------------------------
# The split


def _join(parent: dict[str, str], name: str) -> str:
    # Union-find root with path halving.
    while parent[name] != name:
        parent[name] = parent[parent[name]]
        name = parent[name]
    return name


def split_units(subgroups: Iterable[str], linked: Iterable[Iterable[str]]) -> list[tuple[str, ...]]:
    """Group subgroups into units that must stay on one side of the split.

    ``linked`` holds sets of subgroups that must go together (e.g. those sharing a sketch); linking is
    transitive. Returns the units as sorted tuples, in sorted order.
    """
    parent = {name: name for name in subgroups}
    for group in linked:
        members = [name for name in group if name in parent]
        for name in members[1:]:
            parent[_join(parent, name)] = _join(parent, members[0])
    units: dict[str, list[str]] = {}
    for name in parent:
        units.setdefault(_join(parent, name), []).append(name)
    return sorted(tuple(sorted(members)) for members in units.values())


def is_flag_subgroup(subgroup: str) -> bool:
    """Flags (``flag``, ``country-flag``, ``subdivision-flag``, extras' ``flags``): rectangles that differ
    mostly in colour, kept together on the seen side."""
    return "flag" in subgroup


def split_subgroups(
    subgroups: Iterable[str],
    linked: Iterable[Iterable[str]] = (),
    *,
    unseen_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Draw the zero-shot split; returns ``(seen, unseen)`` subgroup names, each sorted.

    Rule: all flag subgroups are linked together and to ``linked``; units (:func:`split_units`) that
    hold a flag subgroup are seen. ``n = floor(unseen_fraction * len(subgroups) + 0.5)``, at least 1
    when the fraction is positive and an eligible unit exists. The other units, in sorted order, are
    shuffled by ``random.Random(seed)`` and taken in that order while they fit in ``n``.
    """
    names = sorted(set(subgroups))
    flags = [name for name in names if is_flag_subgroup(name)]
    units = split_units(names, [*linked, flags])
    eligible = [unit for unit in units if not any(is_flag_subgroup(name) for name in unit)]
    target = math.floor(unseen_fraction * len(names) + 0.5)
    if unseen_fraction > 0 and eligible:
        target = max(target, min(len(unit) for unit in eligible))
    target = min(target, len(names) - 1)  # both parts non-empty
    order = list(eligible)
    random.Random(seed).shuffle(order)
    unseen: list[str] = []
    for unit in order:
        if len(unseen) + len(unit) <= target:
            unseen.extend(unit)
        if len(unseen) == target:
            break
    unseen_set = set(unseen)
    return [name for name in names if name not in unseen_set], sorted(unseen)


# ----------------------------------------------------------------------------------------------
# Writing the folder


def _stamp_key(settings: DemoSettings, source: str) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "source": source, **asdict(settings)}


def read_stamp(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``stamp.json`` of a prepared folder, or None when there is none (or it is unreadable)."""
    try:
        with open(Path(out) / "stamp.json", encoding="utf-8") as handle:
            stamp = json.load(handle)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def verify(out: str | os.PathLike[str], settings: DemoSettings, source: str) -> dict[str, Any] | None:
    """The counts of ``out`` when it was prepared with these settings from this source and is complete
    (every file of the manifest and of the stamp's counts is there); None when it must be (re)built."""
    out = Path(out)
    stamp = read_stamp(out)
    if stamp is None or {key: stamp.get(key) for key in _stamp_key(settings, source)} != _stamp_key(settings, source):
        return None
    counts = stamp.get("counts")
    if not isinstance(counts, dict):
        return None
    if not all((out / name).is_file() for name in ("split.json", "manifest.csv", "ATTRIBUTION.md")):
        return None
    for modality, key in (("sketch", "sketches"), ("photo", "photos")):
        if sum(1 for _ in (out / modality).glob("*/*.png")) != counts.get(key):
            return None
    with open(out / "manifest.csv", encoding="utf-8", newline="") as handle:
        if not all((out / row["path"]).is_file() for row in csv.DictReader(handle)):
            return None
    return counts


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _attribution(size: int, source: str) -> str:
    return f"""# Attribution

The images in this folder are derived from OpenMoji {OPENMOJI_VERSION} (https://openmoji.org),
taken from its npm package (package and integrity: `{source}`).

{ATTRIBUTION_LINE}
(https://creativecommons.org/licenses/by-sa/4.0/).

Changes: the SVG files of `black/svg` and `color/svg` were rendered to {size}x{size} PNG on a white
background (`sketch/` and `photo/` respectively) and sorted into folders by OpenMoji subgroup; skin-tone
variants and the `component` group were left out. The PNGs are shared under the same licence,
CC BY-SA 4.0. The designer of each emoji is in `manifest.csv` (metadata field `author`).
"""


def _scratch(out: Path, kind: str) -> Path:
    """A private working folder beside ``out``: ``.NAME.KIND-PID`` (KIND: tmp, old, extract)."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


def _clean_stale(out: Path) -> None:
    # A run killed outright (SIGKILL, power loss) leaves its working folders; remove those whose
    # process is gone. The folders of this process are its own business.
    for kind in ("tmp", "old", "extract"):
        for stale in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def prepare_from_package(
    package: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: DemoSettings = DemoSettings(),
    *,
    source: str = OPENMOJI_SOURCE,
    workers: int = 2,
) -> PrepareReport:
    """Build the demo folder ``out`` from an extracted OpenMoji package folder (``.../package``).

    ``source`` names the package in ``stamp.json``, ``split.json`` and ``ATTRIBUTION.md``; a folder already
    prepared from the same source with the same settings is only verified. ``workers`` processes render
    (1: in this process).

    Raises:
        DemoDataError: the package is malformed or has no emoji with both drawings.
    """
    started = time.monotonic()
    out = Path(out)
    counts = verify(out, settings, source)
    if counts is not None:
        return PrepareReport(out, "verified", counts, time.monotonic() - started)

    emojis, skipped = select_emojis(package)
    if not emojis:
        raise DemoDataError(f"{package}: no emoji has both a black and a colour SVG")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    build = _scratch(out, "tmp")
    shutil.rmtree(build, ignore_errors=True)  # a leftover of an earlier call in this process
    try:
        counts = _build(Path(package), build, emojis, skipped, settings, source, workers)
        publish(build, out)  # one atomic exchange on Linux: there is always a demo folder
    finally:
        # Whatever stopped the build (an error, Ctrl-C), no half-written folder is left behind.
        shutil.rmtree(build, ignore_errors=True)
    notes = []
    if counts["skipped"].get("render_failed"):
        notes.append("render failures: " + ", ".join(counts["render_failures"][:5]))
    return PrepareReport(out, "built", counts, time.monotonic() - started, notes)


def _build(
    package: Path,
    build: Path,
    emojis: list[Emoji],
    skipped: Counter[str],
    settings: DemoSettings,
    source: str,
    workers: int,
) -> dict[str, Any]:
    tasks = []
    for emoji in emojis:
        for modality in ("sketch", "photo"):
            (build / modality / emoji.subgroup).mkdir(parents=True, exist_ok=True)
        tasks.append(
            _RenderTask(
                hexcode=emoji.hexcode,
                black_svg=str(package / "black" / "svg" / f"{emoji.hexcode}.svg"),
                color_svg=str(package / "color" / "svg" / f"{emoji.hexcode}.svg"),
                sketch_png=str(build / "sketch" / emoji.subgroup / f"{emoji.hexcode}.png"),
                photo_png=str(build / "photo" / emoji.subgroup / f"{emoji.hexcode}.png"),
                size=settings.size,
            )
        )
    fingerprints: dict[str, str] = {}
    failures: list[str] = []
    for hexcode, fingerprint, error in _run_tasks(tasks, workers):
        if fingerprint is None:
            failures.append(f"{hexcode} ({error})")
        else:
            fingerprints[hexcode] = fingerprint
    for task in tasks:
        if task.hexcode not in fingerprints:  # a failed pair: remove whichever half was written
            for png in (task.sketch_png, task.photo_png):
                Path(png).unlink(missing_ok=True)
    emojis = [emoji for emoji in emojis if emoji.hexcode in fingerprints]
    skipped["render_failed"] = len(failures)
    if not emojis:
        raise DemoDataError(f"no emoji could be rendered (first failure: {failures[0]})")
    for folder in (*build.glob("sketch/*"), *build.glob("photo/*")):
        if not any(folder.iterdir()):
            folder.rmdir()

    by_drawing: dict[str, set[str]] = {}
    for emoji in emojis:
        by_drawing.setdefault(fingerprints[emoji.hexcode], set()).add(emoji.subgroup)
    subgroups = sorted({emoji.subgroup for emoji in emojis})
    linked = [sorted(names) for names in by_drawing.values() if len(names) > 1]
    linked.append([name for name in subgroups if is_flag_subgroup(name)])
    seen, unseen = split_subgroups(subgroups, linked, unseen_fraction=settings.unseen_fraction, seed=settings.seed)
    unseen_set = set(unseen)
    per_subgroup = Counter(emoji.subgroup for emoji in emojis)
    unseen_sketches = sum(per_subgroup[name] for name in unseen)
    counts: dict[str, Any] = {
        "sketches": len(emojis),
        "photos": len(emojis),
        "subgroups": len(subgroups),
        "seen_subgroups": len(seen),
        "unseen_subgroups": len(unseen),
        "seen_sketches": len(emojis) - unseen_sketches,
        "unseen_sketches": unseen_sketches,
        "skipped": {
            name: skipped.get(name, 0)
            for name in (
                "skin_tone_variants", "components", "missing_svg", "duplicate_rows", "unlisted_svgs", "render_failed"
            )
        },
        "per_subgroup": dict(sorted(per_subgroup.items())),
    }
    if failures:
        counts["render_failures"] = failures

    split = {
        "seed": settings.seed,
        "unseen_fraction": settings.unseen_fraction,
        "seen": seen,
        "unseen": unseen,
        "counts": counts,
        "rule": (
            "units = subgroups joined when they share a sketch identical at 64x64 after thresholding, "
            "all flag subgroups joined; units with a flag subgroup are seen; "
            "n = floor(unseen_fraction * subgroups + 0.5); other units sorted, shuffled by "
            "random.Random(seed), taken in order while they fit in n"
        ),
        # The units of more than one subgroup: what the rule kept together.
        "linked": [list(unit) for unit in split_units(subgroups, linked) if len(unit) > 1],
        "source": source,
    }
    _write_text(build / "split.json", json.dumps(split, indent=2, ensure_ascii=False) + "\n")

    with open(build / "manifest.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "label", "metadata"])
        for emoji in emojis:
            metadata = {
                "hexcode": emoji.hexcode,
                "emoji": emoji.emoji,
                "annotation": emoji.annotation,
                "group": emoji.group,
                "subgroup": emoji.subgroup,
                "skintone": None,  # skin-tone variants are left out; the field keeps the schema explicit
                "split": "unseen" if emoji.subgroup in unseen_set else "seen",
                "author": emoji.author,
            }
            writer.writerow(
                [
                    emoji.hexcode,
                    f"photo/{emoji.subgroup}/{emoji.hexcode}.png",
                    emoji.subgroup,
                    json.dumps(metadata, ensure_ascii=False),
                ]
            )
    _write_text(build / "ATTRIBUTION.md", _attribution(settings.size, source))
    stamp = {**_stamp_key(settings, source), "counts": counts, "renderer": _renderer_version()}
    # Written last: a folder with a stamp is a complete folder.
    _write_text(build / "stamp.json", json.dumps(stamp, indent=2, ensure_ascii=False) + "\n")
    return counts


def _renderer_version() -> str:
    from importlib import metadata

    try:
        return f"resvg-py {metadata.version('resvg-py')}"
    except metadata.PackageNotFoundError:
        return "resvg-py"


def prepare(
    out: str | os.PathLike[str] = "data/demo",
    settings: DemoSettings = DemoSettings(),
    *,
    cache: str | os.PathLike[str] = "data/cache",
    workers: int = 2,
    npm: str = "npm",
) -> PrepareReport:
    """Prepare the demo dataset in ``out``: fetch ``openmoji@17.0.0`` into ``cache`` if needed, extract
    it to a temporary folder, render and split (see the module docstring). A folder already prepared with
    the same settings is only verified, without network or npm.

    Raises:
        DemoDataError: npm missing or failing, a bad tarball, or a malformed package.
    """
    started = time.monotonic()
    out = Path(out)
    source = OPENMOJI_SOURCE
    counts = verify(out, settings, source)
    if counts is not None:
        return PrepareReport(out, "verified", counts, time.monotonic() - started)
    tarball = fetch_openmoji(cache, npm=npm)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    scratch = _scratch(out, "extract")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        package = extract_openmoji(tarball, scratch)
        report = prepare_from_package(package, out, settings, source=source, workers=workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = time.monotonic() - started
    report.notes.insert(0, f"source: {tarball}")
    return report
