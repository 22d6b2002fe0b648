"""Datasets and galleries on disk, built from the generators in `tests.support.images`: galleries
for the indexer and the service, sketch/photo datasets in the layouts the training code reads, and
the service tests' whole data root (galleries, a checkpoint and two built indexes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support.checkpoints import write_checkpoint
from tests.support.images import SHAPES, draw_photo, draw_shape, make_png, sketch_png

LABELS = ("circle", "square")

# ------------------------------------------------------------------------------------------------
# Galleries (folders of photos, one subfolder per class)


def write_gallery(folder: Path, count: int, seed: int) -> None:
    """``folder/<circle|square>/<nn>.png``: `count` drawn photos, alternating labels, seeds from `seed`."""
    for number in range(count):
        label = LABELS[number % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        draw_photo(seed + number, label).save(folder / label / f"{number:02d}.png")


def make_folder_gallery(root: Path, per_class: dict[str, int], seed: int = 0) -> list[Path]:
    """`root/<class>/<i>.png` gradient photos; returns the files in sorted relative-path order (= id order)."""
    files = []
    for number, (label, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            files.append(make_png(root / label / f"{i:02d}.png", seed=seed + 100 * number + i))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def hash_tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# ------------------------------------------------------------------------------------------------
# Sketch/photo datasets in the layouts `training.datasets` reads


def make_generic(
    root: Path,
    classes: tuple[str, ...] = SHAPES,
    per_class: int = 4,
    seed: int = 0,
    unseen: list[str] | None = None,
) -> Path:
    """``root/sketch/<class>/<class>_<i>.png`` and ``root/photo/<class>/<class>_<i>.png`` (sketch i pairs with
    photo i by stem), jittered 32-px shapes; with ``unseen``, also ``root/split.json`` as ``sbir demo
    prepare`` writes it."""
    rng = np.random.default_rng(seed)
    for kind, name in enumerate(classes):
        for i in range(per_class):
            for modality in ("sketch", "photo"):
                path = root / modality / name / f"{name}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_shape(kind, modality, rng).save(path)
    if unseen is not None:
        seen = [name for name in classes if name not in unseen]
        (root / "split.json").write_text(json.dumps({"seen": seen, "unseen": unseen}), encoding="utf-8")
    return root


def make_tuberlin(
    root: Path,
    train_classes: tuple[str, ...] = SHAPES[:4],
    zero_classes: tuple[str, ...] = SHAPES[4:],
    per_class: int = 4,
    missing: int = 0,
    seed: int = 0,
) -> Path:
    """The reference TU-Berlin split-file layout under ``root/TUBerlin``, jittered 32-px shapes; the
    last ``missing`` listed training photos are not written."""
    rng = np.random.default_rng(seed)
    folder = root / "TUBerlin"
    (folder / "zeroshot").mkdir(parents=True, exist_ok=True)
    for part, classes in (("train", train_classes), ("zero", zero_classes)):
        class_file = "cname_cid.txt" if part == "train" else "cname_cid_zero.txt"
        (folder / "zeroshot" / class_file).write_text(
            "".join(f"{name} {label}\n" for label, name in enumerate(classes)), encoding="utf-8"
        )
        lines: dict[str, list[str]] = {"sketch": [], "photo": []}
        for label, name in enumerate(classes):
            kind = SHAPES.index(name)
            for i in range(per_class):
                for modality, subdir in (("sketch", "png_ready"), ("photo", "ImageResized_ready")):
                    relative = f"{subdir}/{name}/{i}.png"
                    lines[modality].append(f"{relative} {label}")
                    image = draw_shape(kind, modality, rng)
                    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                    image.save(folder / relative)
        if part == "train":
            for line in lines["photo"][len(lines["photo"]) - missing :]:
                (folder / line.rsplit(maxsplit=1)[0]).unlink()
        (folder / "zeroshot" / f"png_ready_filelist_{part}.txt").write_text("\n".join(lines["sketch"]) + "\n")
        (folder / "zeroshot" / f"ImageResized_ready_filelist_{part}.txt").write_text(
            "\n".join(lines["photo"]) + "\n"
        )
    return root


def write_generic_dataset(root: Path, seed: int = 0) -> None:
    """``root/sketch/<class>/<n>.png`` and ``root/photo/<class>/<n>.png``, paired by file stem: 8 pairs in
    4 classes drawn as the service's pictures (64-px `sketch_png`, `draw_photo`), not as `make_generic`'s
    shapes; triangle and cross are drawn as circle and square."""
    for number in range(8):
        label = ("circle", "square", "triangle", "cross")[number % 4]
        for part in ("sketch", "photo"):
            (root / part / label).mkdir(parents=True, exist_ok=True)
        shape = "circle" if label == "circle" else "square"
        (root / "sketch" / label / f"{number}.png").write_bytes(sketch_png(shape, size=64))
        draw_photo(seed + number, shape).save(root / "photo" / label / f"{number}.png")


# ------------------------------------------------------------------------------------------------
# The service tests' data root


@dataclass(frozen=True)
class Workspace:
    """root: the data root; gallery (8 photos) and gallery_small (5 photos) under it."""

    root: Path
    gallery: Path
    gallery_small: Path
    checkpoint: Path
    index_dir: Path  # fp16 token store
    index_dir_no_tokens: Path  # tokens recomputed from the photos


def make_workspace(root: Path) -> Workspace:
    """Under ``root``: two drawn-photo galleries, a zse-tiny checkpoint (seed 0) and two indexes over
    ``gallery`` built with it (fp16 token store, and none)."""
    import indexer

    write_gallery(root / "gallery", 8, seed=0)
    write_gallery(root / "gallery-small", 5, seed=100)
    checkpoint = write_checkpoint(root / "zse-tiny.pt", "zse-tiny", seed=0)
    index_dir = indexer.build(root / "gallery", checkpoint, root / "indexes" / "main", tokens="fp16",
                              device="cpu", num_workers=0, progress=False)
    no_tokens = indexer.build(root / "gallery", checkpoint, root / "indexes" / "main-no-tokens", tokens="none",
                              device="cpu", num_workers=0, progress=False)
    return Workspace(root, root / "gallery", root / "gallery-small", checkpoint, index_dir, no_tokens)
