"""Dataset readers for training and evaluation: lists of (image path, label), no images are opened.

Three sources, all returning a :class:`SplitData`:

- :func:`load_reference_split`: the zero-shot splits shipped with the ZSE-SBIR reference code
  (Sketchy Ext 25 / 21, TU-Berlin Ext, QuickDraw Ext) as split files.
- :func:`load_generic`: any ``ROOT/sketch/<class>/...`` + ``ROOT/photo/<class>/...`` folder, with a
  seen/unseen class split given as a list or drawn with a seed.
- :func:`load_qmul`: the fine-grained QMUL Shoe-V2 / Chair-V2 sets (``trainA/trainB/testA/testB``).

Labels index ``SplitData.classes`` and are local to the part: the unseen ("zero") classes are
numbered 0..n-1 on their own, like the reference's ``cname_cid_zero.txt``, and the seen ("train")
classes likewise. This module has no torch dependency; a torch ``Dataset`` wraps it elsewhere.
"""

from __future__ import annotations

import logging
import math
import os
import random
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from models.errors import SbirError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# Every dataset name the project accepts (training configs, `sbir evaluate --dataset`, the API's job
# bodies): the one list, which the others import.
DatasetName = Literal[
    "sketchy25", "sketchy21", "tuberlin", "quickdraw", "qmul-chair", "qmul-shoe", "generic", "openmoji-demo"
]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
REFERENCE_DATASETS = ("sketchy25", "sketchy21", "tuberlin", "quickdraw")

Part = Literal["zero", "train"]

# How many example paths an error or report names.
_EXAMPLES = 5


class DatasetError(SbirError, ValueError):
    """A dataset on disk does not match the expected layout (missing files, malformed lists...)."""


@dataclass(frozen=True)
class Sample:
    """One image: its absolute (or root-joined) ``path``, integer ``label`` and ``class_name``.

    For QMUL (fine-grained) the "class" is the photo instance: ``label`` is the index of the photo.
    """

    path: Path
    label: int
    class_name: str


@dataclass(frozen=True)
class MissingFilesReport:
    """Result of :func:`check_files`: how many of ``total`` sample files do not exist.

    ``examples`` holds the first few missing paths, ``indices`` the positions of all missing samples
    in the list that was checked.
    """

    count: int
    total: int
    examples: list[Path] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def __str__(self) -> str:
        if self.count == 0:
            return f"all {self.total} files present"
        shown = ", ".join(str(path) for path in self.examples)
        more = ", ..." if self.count > len(self.examples) else ""
        return f"{self.count} of {self.total} files missing ({100 * self.fraction:.2f}%): {shown}{more}"


@dataclass
class SplitData:
    """The sketches and photos of one part (train or zero-shot test) of a dataset.

    Attributes:
        sketches: queries, in file (reference) or sorted (folder) order.
        photos: gallery.
        classes: class names; ``sample.label`` indexes this list.
        pairs: for instance-level data, ``pairs[i]`` is the index in ``photos`` of sketch ``i``'s photo
            (-1 when it has none); ``None`` for category-level data without pairing.
        missing: the report of the missing-file check when the loader ran one (missing samples were
            dropped from ``sketches`` / ``photos``), else ``None``. Its ``indices`` refer to the lists
            as they were checked (sketches, then photos), not to later subsets.
    """

    sketches: list[Sample]
    photos: list[Sample]
    classes: list[str]
    pairs: list[int] | None = None
    missing: MissingFilesReport | None = None


# ----------------------------------------------------------------------------------------------
# Split and class files


def _split_line(line: str) -> tuple[str, str] | None:
    """``"some/path with spaces 12"`` -> ``("some/path with spaces", "12")``; None for a blank line.

    The path is everything before the last whitespace-separated word, with its inner whitespace kept
    as written (the reference re-joins words with single spaces, which only differs for runs of spaces).
    """
    stripped = line.strip()
    if not stripped:
        return None
    words = stripped.rsplit(maxsplit=1)
    if len(words) != 2:
        return stripped, ""
    return words[0], words[1]


def _parse_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _read_numbered_lines(path: Path, what: str) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    with open(path, encoding="utf-8-sig") as handle:  # utf-8-sig: tolerate a BOM written by Windows tools
        for line_number, line in enumerate(handle, start=1):
            fields = _split_line(line)
            if fields is None:
                continue
            number = _parse_int(fields[1])
            if number is None:
                raise DatasetError(
                    f"{path}:{line_number}: expected '<{what}> <non-negative integer>', got {line.rstrip()!r}"
                )
            entries.append((fields[0], number))
    return entries


def read_split_file(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> list[tuple[Path, int]]:
    """Read a split file: one ``relative/path with spaces allowed <int label>`` per line.

    Args:
        path: the split file.
        root: when given, each returned path is ``root / relative_path``; otherwise the relative path
            as written.

    Returns:
        ``[(path, label), ...]`` in file order. Blank lines are skipped.

    Raises:
        DatasetError: a line without a trailing non-negative integer, naming the file and line number.
    """
    base = Path(root) if root is not None else None
    entries = _read_numbered_lines(Path(path), "relative path")
    return [(base / relative if base is not None else Path(relative), label) for relative, label in entries]


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Read a class file (``class name <int id>`` lines, e.g. ``cname_cid_zero.txt``).

    Returns:
        Class names ordered by id (``names[id]``). Ids must be exactly 0..n-1, each once.

    Raises:
        DatasetError: malformed line (file and line number), duplicate or missing ids.
    """
    path = Path(path)
    entries = _read_numbered_lines(path, "class name")
    by_id: dict[int, str] = {}
    for name, class_id in entries:
        if class_id in by_id:
            raise DatasetError(f"{path}: class id {class_id} used twice ({by_id[class_id]!r} and {name!r})")
        by_id[class_id] = name
    absent = sorted(set(range(len(by_id))) - set(by_id))
    if absent:
        raise DatasetError(f"{path}: class ids must be 0..{len(by_id) - 1}; missing {absent[:_EXAMPLES]}")
    return [by_id[class_id] for class_id in range(len(by_id))]


# ----------------------------------------------------------------------------------------------
# Missing files


def check_files(samples: Sequence[Sample], max_missing_fraction: float = 0.01) -> MissingFilesReport:
    """Check that every sample's file exists; report once, raise when too many are missing.

    Directories are listed once each (not one ``stat`` per file), which keeps this fast for the
    ~150k files of QuickDraw Ext and on network file systems.

    Args:
        samples: the samples to check.
        max_missing_fraction: the largest tolerated ``missing / total``.

    Returns:
        A :class:`MissingFilesReport`; when files are missing, one warning is logged with the count
        and the first few paths.

    Raises:
        DatasetError: more than ``max_missing_fraction`` of the files are missing (names how many and
            the first few).
    """
    listings: dict[Path, frozenset[str]] = {}
    missing: list[int] = []
    for index, sample in enumerate(samples):
        parent = sample.path.parent
        names = listings.get(parent)
        if names is None:
            try:
                with os.scandir(parent) as entries:
                    names = frozenset(entry.name for entry in entries if entry.is_file())
            except OSError:  # the folder itself is missing or unreadable
                names = frozenset()
            listings[parent] = names
        if sample.path.name not in names:
            missing.append(index)

    report = MissingFilesReport(
        count=len(missing),
        total=len(samples),
        examples=[samples[index].path for index in missing[:_EXAMPLES]],
        indices=missing,
    )
    if report.count and report.fraction > max_missing_fraction:
        raise DatasetError(f"{report} (more than the allowed {100 * max_missing_fraction:.2f}%)")
    if report.count:
        logger.warning("%s; these samples are skipped", report)
    return report


def _drop_missing(split: SplitData, max_missing_fraction: float) -> SplitData:
    """Check sketches and photos together (one report) and drop the missing samples."""
    report = check_files([*split.sketches, *split.photos], max_missing_fraction)
    if not report.count:
        return replace(split, missing=report)
    gone = set(report.indices)
    n_sketches = len(split.sketches)
    keep_sketches = [i for i in range(n_sketches) if i not in gone]
    keep_photos = [i for i in range(len(split.photos)) if i + n_sketches not in gone]
    return replace(_select(split, keep_sketches, keep_photos), missing=report)


def _select(split: SplitData, sketch_indices: Sequence[int], photo_indices: Sequence[int]) -> SplitData:
    """Sub-split keeping the given sketches and photos; ``pairs`` are renumbered (-1 if the photo went)."""
    pairs = None
    if split.pairs is not None:
        new_photo_index = {old: new for new, old in enumerate(photo_indices)}
        pairs = [new_photo_index.get(split.pairs[i], -1) for i in sketch_indices]
    return SplitData(
        sketches=[split.sketches[i] for i in sketch_indices],
        photos=[split.photos[i] for i in photo_indices],
        classes=list(split.classes),
        pairs=pairs,
        missing=split.missing,
    )


# ----------------------------------------------------------------------------------------------
# Reference zero-shot splits (ZSE-SBIR / SAKE file lists)


@dataclass(frozen=True)
class _ReferenceLayout:
    folder: str  # under the data root; list paths are relative to it
    split_dir: str  # under `folder`, holds the lists
    sketch_list: str  # with {part} in ("train", "zero")
    photo_list: str
    quick_sketch_step: int
    quick_photo_step: int


_SKETCHY_SKETCHES = "sketch_tx_000000000000_ready_filelist_{part}.txt"
_SKETCHY_PHOTOS = "all_photo_filelist_{part}.txt"
_REFERENCE_LAYOUTS = {
    "sketchy25": _ReferenceLayout("Sketchy", "zeroshot1", _SKETCHY_SKETCHES, _SKETCHY_PHOTOS, 20, 10),
    "sketchy21": _ReferenceLayout("Sketchy", "zeroshot0", _SKETCHY_SKETCHES, _SKETCHY_PHOTOS, 20, 10),
    "tuberlin": _ReferenceLayout(
        "TUBerlin",
        "zeroshot",
        "png_ready_filelist_{part}.txt",
        "ImageResized_ready_filelist_{part}.txt",
        3,
        20,
    ),
    "quickdraw": _ReferenceLayout(
        "QuickDraw", "zeroshot", "sketch_{part}.txt", "all_photo_{part}.txt", 120, 30
    ),
}
_CLASS_FILES = {"train": "cname_cid.txt", "zero": "cname_cid_zero.txt"}


def _reference_layout(name: str) -> _ReferenceLayout:
    try:
        return _REFERENCE_LAYOUTS[name]
    except KeyError:
        raise DatasetError(
            f"unknown reference dataset {name!r}; expected one of {', '.join(REFERENCE_DATASETS)}"
        ) from None


def _check_part(part: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if part not in allowed:
        raise ValueError(f"part must be one of {allowed}, got {part!r}")


def load_reference_split(
    name: str,
    root: str | os.PathLike[str],
    part: Part = "zero",
    *,
    quick_test: bool = False,
    check: bool = True,
    max_missing_fraction: float = 0.01,
) -> SplitData:
    """Load a reference zero-shot split from its file lists.

    Expected layout (``root`` is the folder that holds ``Sketchy/``, ``TUBerlin/``, ``QuickDraw/``)::

        root/Sketchy/zeroshot1/{sketch_tx_000000000000_ready_filelist,all_photo_filelist}_{train,zero}.txt
        root/Sketchy/zeroshot1/cname_cid.txt, cname_cid_zero.txt          (sketchy25; sketchy21: zeroshot0)
        root/TUBerlin/zeroshot/{png_ready_filelist,ImageResized_ready_filelist}_{train,zero}.txt + cname_cid*
        root/QuickDraw/zeroshot/{sketch,all_photo}_{train,zero}.txt + cname_cid*

    Paths in the lists are relative to the dataset folder, not to the list's folder: a line
    ``png_ready/banana/836.png 0`` of TU-Berlin names ``root/TUBerlin/png_ready/banana/836.png``,
    as the reference joins ``data_path + '/TUBerlin/' + path``.

    Args:
        name: ``sketchy25``, ``sketchy21``, ``tuberlin`` or ``quickdraw``.
        root: the data root.
        part: ``"zero"`` (unseen test classes, labels from ``cname_cid_zero.txt``) or ``"train"``
            (seen classes, ``cname_cid.txt``).
        quick_test: apply :func:`subsample_quick_test` (before the missing-file check, so the same
            items as the reference are kept).
        check: run :func:`check_files` on sketches and photos together; missing samples are dropped.
        max_missing_fraction: passed to :func:`check_files`.

    Raises:
        DatasetError: unknown name, missing list or class file, malformed line, label without a class,
            or too many missing images.
    """
    layout = _reference_layout(name)
    _check_part(part, _CLASS_FILES)
    dataset_dir = Path(root) / layout.folder
    list_dir = dataset_dir / layout.split_dir
    files = {
        "sketch": list_dir / layout.sketch_list.format(part=part),
        "photo": list_dir / layout.photo_list.format(part=part),
        "class": list_dir / _CLASS_FILES[part],
    }
    absent = [str(path) for path in files.values() if not path.is_file()]
    if absent:
        raise DatasetError(
            f"{name}: missing split file(s) {', '.join(absent)} (is --root the folder holding {layout.folder}/?)"
        )

    classes = read_class_file(files["class"])

    def samples(list_file: Path) -> list[Sample]:
        entries = read_split_file(list_file, dataset_dir)
        for path, label in entries:
            if label >= len(classes):
                raise DatasetError(
                    f"{list_file}: label {label} of {path} has no class in {files['class']} ({len(classes)} classes)"
                )
        return [Sample(path, label, classes[label]) for path, label in entries]

    split = SplitData(sketches=samples(files["sketch"]), photos=samples(files["photo"]), classes=classes)
    if quick_test:
        split = subsample_quick_test(split, name)
    if check:
        split = _drop_missing(split, max_missing_fraction)
    return split


def subsample_quick_test(split: SplitData, name: str, factor: int = 1) -> SplitData:
    """The reference's quick evaluation subset: every n-th sketch and photo, in list order.

    Sketchy (25 and 21): every 20th sketch, 10th photo (15,229 -> 762, 17,101 -> 1,711);
    TU-Berlin: every 3rd sketch, 20th photo (2,400 -> 800, 27,989 -> 1,400);
    QuickDraw: every 120th sketch, 30th photo (92,291 -> 770, 54,151 -> 1,806).
    ``factor`` multiplies both steps (the reference's ``--split``). Apply it to a split as loaded
    (before missing files are dropped) to keep exactly the reference's items.
    """
    layout = _reference_layout(name)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    sketch_step = layout.quick_sketch_step * factor
    photo_step = layout.quick_photo_step * factor
    return _select(split, range(0, len(split.sketches), sketch_step), range(0, len(split.photos), photo_step))


# ----------------------------------------------------------------------------------------------
# Folder layouts


def _is_image(path: Path) -> bool:
    # Names starting with "." are skipped: macOS "._x.png" resource forks have image extensions.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _scan_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, following links), sorted by their relative path."""
    found: list[Path] = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(Path(directory) / file_name for file_name in names if _is_image(Path(file_name)))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _stem_candidates(stem: str) -> list[str]:
    """``"n02691156_10151-1"`` -> ``["n02691156_10151-1", "n02691156_10151", "n02691156"]``.

    The sketch's own stem first, then shorter prefixes cut at the last ``-`` or ``_``: a sketch is
    paired with the photo whose stem is the longest such prefix (QMUL ``2429245009_1`` -> ``2429245009``,
    Sketchy ``n02691156_10151-1`` -> ``n02691156_10151``).
    """
    candidates = [stem]
    while True:
        cut = max(stem.rfind("-"), stem.rfind("_"))
        if cut <= 0:
            return candidates
        stem = stem[:cut]
        candidates.append(stem)


def _pair_by_stem(sketches: Sequence[Sample], photos: Sequence[Sample]) -> list[int]:
    """Index in ``photos`` of each sketch's photo (same label, stem rule of :func:`_stem_candidates`), or -1."""
    by_stem: dict[tuple[int, str], int] = {}
    duplicates: list[str] = []
    for index, photo in enumerate(photos):
        key = (photo.label, photo.path.stem)
        if key in by_stem:
            duplicates.append(f"{photos[by_stem[key]].path} / {photo.path}")
        by_stem[key] = index
    if duplicates:
        raise DatasetError(
            f"pairing by file stem needs unique photo stems per class; {len(duplicates)} clash(es): "
            + "; ".join(duplicates[:_EXAMPLES])
        )
    pairs = []
    for sketch in sketches:
        match = -1
        for candidate in _stem_candidates(sketch.path.stem):
            match = by_stem.get((sketch.label, candidate), -1)
            if match >= 0:
                break
        pairs.append(match)
    return pairs


def _read_class_list(classes: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """A list of class names, or a file with one name a line (blank lines and ``#`` comments skipped).

    A string that names no file is a comma-separated list of names (``"star"``, ``"star,moon"``), as
    ``sbir evaluate --unseen`` takes it; a path object that names no file is an error.
    """
    if isinstance(classes, str | os.PathLike):
        path = Path(classes)
        if not path.is_file():
            if isinstance(classes, os.PathLike):
                raise DatasetError(f"{path}: no such file of unseen class names")
            return [name.strip() for name in classes.split(",") if name.strip()]
        try:
            with open(path, encoding="utf-8-sig") as handle:
                lines = [line.strip() for line in handle]
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"{path}: cannot read the unseen class names ({error})") from None
        return [line for line in lines if line and not line.startswith("#")]
    return [str(name) for name in classes]


def format_names(names: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` (the first ``limit`` names, then how many more)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def held_out_problem(split: SplitData) -> str | None:
    """Why the held-out (unseen) part ``split`` cannot give meaningful figures, or None.

    Fewer than 2 classes: every photo is relevant to every sketch, so mAP is 1.0 whatever the model
    does. A class without photos: its sketches have nothing to find (they score nothing).
    """
    if len(split.classes) < 2:
        names = format_names(split.classes) or "none"
        return (f"only {len(split.classes)} held-out (unseen) class ({names}): every photo is relevant to every "
                "sketch, so mAP would be 1.0 whatever the model does; hold out at least 2 classes")
    with_photos = {sample.label for sample in split.photos}
    without = [name for label, name in enumerate(split.classes) if label not in with_photos]
    if without:
        return (f"{len(without)} held-out (unseen) class(es) have no photo ({format_names(without)}): their "
                "sketches have nothing to find; add photos or hold out other classes")
    return None


def split_classes(classes: Iterable[str], unseen_fraction: float = 0.2, seed: int = 0) -> list[str]:
    """Draw the unseen classes: deterministic for a given (set of classes, fraction, seed).

    Rule: sort the class names; ``n = floor(unseen_fraction * len + 0.5)`` (half rounds up), kept
    within ``[1, len - 1]`` when ``0 < unseen_fraction < 1`` so that both parts are non-empty;
    ``random.Random(seed).sample(sorted_names, n)``; return the drawn names sorted.
    """
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ValueError(f"unseen_fraction must be in [0, 1], got {unseen_fraction}")
    names = sorted(set(classes))
    count = math.floor(unseen_fraction * len(names) + 0.5)
    if 0.0 < unseen_fraction < 1.0 and len(names) >= 2:
        count = min(max(count, 1), len(names) - 1)
    return sorted(random.Random(seed).sample(names, count))


def load_generic(
    root: str | os.PathLike[str],
    unseen_classes: str | os.PathLike[str] | Sequence[str] | None = None,
    unseen_fraction: float = 0.2,
    seed: int = 0,
    part: Part = "zero",
    *,
    pair_by_stem: bool = False,
) -> SplitData:
    """Load ``ROOT/sketch/<class>/**/<image>`` and ``ROOT/photo/<class>/**/<image>``.

    Images are files with extension png, jpg, jpeg, webp or bmp (any case), found recursively within
    each class folder; hidden files and folders are skipped, files directly under ``sketch/`` or
    ``photo/`` are ignored. The classes are the union of the class folders of both modalities (a
    class with only one modality is logged once). Samples are ordered by class, then relative path.

    Args:
        root: the dataset folder.
        unseen_classes: the zero-shot classes, as a list, a file with one class name a line, or a
            string that names no file, read as comma-separated names; when
            ``None`` they are drawn by :func:`split_classes` with ``unseen_fraction`` and ``seed``.
        unseen_fraction, seed: see :func:`split_classes`.
        part: ``"zero"`` (unseen classes) or ``"train"`` (the others); labels number the part's classes
            in sorted order.
        pair_by_stem: fill ``SplitData.pairs``: each sketch gets the index of the photo of its class
            with the same stem, else the longest stem prefix cut at ``-``/``_`` (``cat_3-2`` ->
            ``cat_3`` -> ``cat``); -1 when none matches.

    Raises:
        DatasetError: missing ``sketch``/``photo`` folder, no classes, unknown unseen class names,
            an empty part, or photo stems that clash when pairing.
    """
    _check_part(part, ("zero", "train"))
    root = Path(root)
    modality_dirs = {"sketch": root / "sketch", "photo": root / "photo"}
    for modality, folder in modality_dirs.items():
        if not folder.is_dir():
            raise DatasetError(
                f"{root}: expected a folder {folder.name}/ with one subfolder per class ({modality}es)"
            )
    class_dirs = {
        modality: {
            entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
        }
        for modality, folder in modality_dirs.items()
    }
    all_classes = sorted(class_dirs["sketch"] | class_dirs["photo"])
    if not all_classes:
        raise DatasetError(f"{root}: no class folders under sketch/ or photo/")
    one_sided = sorted(class_dirs["sketch"] ^ class_dirs["photo"])
    if one_sided:
        logger.warning(
            "%s: %d class(es) have only sketches or only photos: %s",
            root,
            len(one_sided),
            ", ".join(one_sided[:_EXAMPLES]) + (", ..." if len(one_sided) > _EXAMPLES else ""),
        )

    if unseen_classes is None:
        unseen = split_classes(all_classes, unseen_fraction, seed)
    else:
        unseen = sorted(set(_read_class_list(unseen_classes)))
        unknown = sorted(set(unseen) - set(all_classes))
        if unknown:
            raise DatasetError(
                f"{root}: unseen class(es) not found as folders: {', '.join(unknown[:_EXAMPLES])} "
                f"(classes: {format_names(all_classes)})"
            )
    unseen_set = set(unseen)
    classes = unseen if part == "zero" else [name for name in all_classes if name not in unseen_set]
    if not classes:
        raise DatasetError(
            f"{root}: the {part!r} part has no classes ({len(all_classes)} classes, {len(unseen)} unseen)"
        )

    def samples(modality: str) -> list[Sample]:
        found: list[Sample] = []
        for label, class_name in enumerate(classes):
            class_dir = modality_dirs[modality] / class_name
            if class_dir.is_dir():
                found.extend(Sample(path, label, class_name) for path in _scan_images(class_dir))
        return found

    split = SplitData(sketches=samples("sketch"), photos=samples("photo"), classes=classes)
    if pair_by_stem:
        split.pairs = _pair_by_stem(split.sketches, split.photos)
        if split.sketches and max(split.pairs) < 0:
            raise DatasetError(
                f"{root}: pair_by_stem found no sketch whose stem matches a photo of its class"
            )
    return split


def unpaired_sketches(split: SplitData) -> list[Path]:
    """The sketches of a split paired by stem that have no photo of their stem (all, when unpaired)."""
    if split.pairs is None:
        return [sample.path for sample in split.sketches]
    return [sample.path for sample, pair in zip(split.sketches, split.pairs, strict=True) if pair < 0]


_QMUL_FOLDERS = {"chair": "ChairV2", "shoe": "ShoeV2"}


def load_qmul(
    root: str | os.PathLike[str], name: str = "chair", part: Literal["train", "test"] = "test"
) -> SplitData:
    """Load QMUL-Chair-V2 or QMUL-Shoe-V2 (fine-grained, one photo per sketch).

    Expected layout (``root`` holds the four folders directly, or holds ``ChairV2/`` / ``ShoeV2/``
    that does)::

        root/trainA/*.png   training sketches      root/trainB/*.png   training photos
        root/testA/*.png    test sketches          root/testB/*.png    test photos

    A sketch pairs with the photo whose stem is the longest prefix of the sketch's stem cut at ``_``
    or ``-`` (``2429245009_1.png`` -> ``2429245009.png``; an identical stem also pairs).

    Every photo is its own class: ``classes`` are the photo stems (sorted), a photo's label is its
    index, a sketch's label that of its photo, and ``pairs[i] == sketches[i].label``. So
    ``relevance_from_labels`` gives one relevant photo per sketch, as acc@1 / acc@10 need.

    Raises:
        DatasetError: unknown name, missing folders, no images, or sketches without a photo
            (count and first few named).
    """
    if name not in _QMUL_FOLDERS:
        raise DatasetError(f"unknown QMUL set {name!r}; expected 'chair' or 'shoe'")
    _check_part(part, ("train", "test"))
    root = Path(root)
    if not (root / f"{part}A").is_dir() and (root / _QMUL_FOLDERS[name] / f"{part}A").is_dir():
        root = root / _QMUL_FOLDERS[name]
    sketch_dir, photo_dir = root / f"{part}A", root / f"{part}B"
    for folder in (sketch_dir, photo_dir):
        if not folder.is_dir():
            raise DatasetError(
                f"{root}: expected folders {part}A/ (sketches) and {part}B/ (photos); {folder.name}/ is missing"
            )

    photo_paths = _scan_images(photo_dir)
    sketch_paths = _scan_images(sketch_dir)
    if not photo_paths or not sketch_paths:
        raise DatasetError(f"{root}: no images in {sketch_dir.name}/ or {photo_dir.name}/")
    # Label 0 for everything while pairing (one pool), then relabel by photo instance.
    photos = [Sample(path, 0, path.stem) for path in photo_paths]
    pairs = _pair_by_stem([Sample(path, 0, "") for path in sketch_paths], photos)
    unpaired = [path for path, pair in zip(sketch_paths, pairs, strict=True) if pair < 0]
    if unpaired:
        raise DatasetError(
            f"{root}: {len(unpaired)} of {len(sketch_paths)} sketches have no photo in {photo_dir.name}/: "
            + ", ".join(str(path) for path in unpaired[:_EXAMPLES])
        )
    classes = [photo.class_name for photo in photos]
    return SplitData(
        sketches=[Sample(path, pair, classes[pair]) for path, pair in zip(sketch_paths, pairs, strict=True)],
        photos=[Sample(photo.path, index, photo.class_name) for index, photo in enumerate(photos)],
        classes=classes,
        pairs=pairs,
    )
