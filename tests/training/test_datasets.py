"""Dataset readers on generated files: reference split lists, the generic folder layout and QMUL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from training.datasets import (
    DatasetError,
    Sample,
    check_files,
    load_generic,
    load_qmul,
    load_reference_split,
    read_class_file,
    read_split_file,
    split_classes,
    subsample_quick_test,
)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "white").save(path)
    return path


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Reference split files


def _make_tuberlin(root: Path, n_sketches: int = 7, n_photos: int = 41) -> tuple[list[str], list[str]]:
    """TU-Berlin zero split with 2 classes (one with a space) alternating; returns relative paths."""
    classes = ["bottle opener", "banana"]
    _write_lines(
        root / "TUBerlin/zeroshot/cname_cid_zero.txt", [f"{name} {i}" for i, name in enumerate(classes)]
    )
    sketches = [f"png_ready/{classes[i % 2]}/{i}.png" for i in range(n_sketches)]
    photos = [f"ImageResized_ready/{classes[i % 2]}/photo {i}.jpg" for i in range(n_photos)]
    _write_lines(
        root / "TUBerlin/zeroshot/png_ready_filelist_zero.txt",
        ["", *(f"{p} {i % 2}" for i, p in enumerate(sketches))],
    )
    _write_lines(
        root / "TUBerlin/zeroshot/ImageResized_ready_filelist_zero.txt",
        [f"{p} {i % 2}" for i, p in enumerate(photos)],
    )
    for relative in sketches + photos:
        _png(root / "TUBerlin" / relative)
    return sketches, photos


def test_reference_split_paths_labels_and_classes(tmp_path):
    sketches, photos = _make_tuberlin(tmp_path)
    split = load_reference_split("tuberlin", tmp_path, "zero")
    assert split.classes == ["bottle opener", "banana"]
    assert len(split.sketches) == 7 and len(split.photos) == 41
    # paths are relative to root/TUBerlin, spaces kept
    assert split.sketches[0] == Sample(
        tmp_path / "TUBerlin/png_ready/bottle opener/0.png", 0, "bottle opener"
    )
    assert split.photos[3] == Sample(tmp_path / "TUBerlin/ImageResized_ready/banana/photo 3.jpg", 1, "banana")
    assert [s.label for s in split.sketches] == [i % 2 for i in range(7)]
    assert split.missing is not None and split.missing.count == 0
    assert split.pairs is None


def test_reference_split_train_part_uses_cname_cid(tmp_path):
    folder = tmp_path / "Sketchy/zeroshot1"
    _write_lines(folder / "cname_cid.txt", ["airplane 1", "teddy_bear 0"])
    _write_lines(folder / "sketch_tx_000000000000_ready_filelist_train.txt", ["256x256/sketch/a/x-1.png 1"])
    _write_lines(
        folder / "all_photo_filelist_train.txt", ["256x256/photo/a/x.jpg 0", "256x256/photo/a/y.jpg 1"]
    )
    split = load_reference_split("sketchy25", tmp_path, "train", check=False)
    assert split.classes == ["teddy_bear", "airplane"]
    assert split.sketches == [Sample(tmp_path / "Sketchy/256x256/sketch/a/x-1.png", 1, "airplane")]
    assert [p.class_name for p in split.photos] == ["teddy_bear", "airplane"]
    # sketchy21 reads zeroshot0, which does not exist here
    with pytest.raises(DatasetError, match="zeroshot0"):
        load_reference_split("sketchy21", tmp_path, "train")


def test_quick_test_keeps_every_nth_item(tmp_path):
    sketches, photos = _make_tuberlin(tmp_path, n_sketches=7, n_photos=41)
    split = load_reference_split("tuberlin", tmp_path, "zero")
    quick = subsample_quick_test(split, "tuberlin")  # every 3rd sketch, 20th photo
    assert [s.path.name for s in quick.sketches] == ["0.png", "3.png", "6.png"]
    assert [p.path.name for p in quick.photos] == ["photo 0.jpg", "photo 20.jpg", "photo 40.jpg"]
    assert quick.classes == split.classes
    direct = load_reference_split("tuberlin", tmp_path, "zero", quick_test=True)
    assert (direct.sketches, direct.photos) == (quick.sketches, quick.photos)
    assert direct.missing.total == 3 + 3  # checked after subsampling
    # Sketchy: every 20th sketch and 10th photo; QuickDraw: every 120th / 30th
    many = type(split)(sketches=split.sketches * 40, photos=split.photos * 4, classes=split.classes)
    assert len(subsample_quick_test(many, "sketchy25").sketches) == len(range(0, 280, 20))
    assert len(subsample_quick_test(many, "sketchy21").photos) == len(range(0, 164, 10))
    assert len(subsample_quick_test(many, "quickdraw").sketches) == len(range(0, 280, 120))
    assert len(subsample_quick_test(many, "quickdraw").photos) == len(range(0, 164, 30))


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "list.txt", ["a/b c.png 0", "", "a/only-a-path.png", "a/d.png 1"])
    with pytest.raises(DatasetError, match=rf"{path}:3: .*only-a-path"):
        read_split_file(path)
    _write_lines(path, ["a/b.png 0", "a/c.png x7"])
    with pytest.raises(DatasetError, match=rf"{path}:2: "):
        read_split_file(path)
    _write_lines(path, ["a/b.png -1"])
    with pytest.raises(DatasetError, match=rf"{path}:1: "):
        read_split_file(path)


def test_read_split_file_keeps_spaces_and_joins_root(tmp_path):
    path = _write_lines(tmp_path / "list.txt", ["png_ready/hot air balloon/1.png 14", "   ", "x.png\t3"])
    assert read_split_file(path) == [(Path("png_ready/hot air balloon/1.png"), 14), (Path("x.png"), 3)]
    assert read_split_file(path, tmp_path)[1] == (tmp_path / "x.png", 3)


def test_read_class_file(tmp_path):
    path = _write_lines(tmp_path / "cname_cid_zero.txt", ["palm tree 1", "bat 0"])
    assert read_class_file(path) == ["bat", "palm tree"]
    _write_lines(path, ["bat 0", "cow 0"])
    with pytest.raises(DatasetError, match="used twice"):
        read_class_file(path)
    _write_lines(path, ["bat 0", "cow 2"])
    with pytest.raises(DatasetError, match="missing"):
        read_class_file(path)


def test_label_without_class_is_an_error(tmp_path):
    _make_tuberlin(tmp_path)
    _write_lines(tmp_path / "TUBerlin/zeroshot/cname_cid_zero.txt", ["bottle opener 0"])
    with pytest.raises(DatasetError, match="label 1"):
        load_reference_split("tuberlin", tmp_path, "zero")


def test_unknown_reference_name(tmp_path):
    with pytest.raises(DatasetError, match="sketchy25"):
        load_reference_split("sketchy", tmp_path)


# ------------------------------------------------------------------------------------------------
# Missing files


def _touched_samples(folder: Path, count: int) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        path.touch()
        samples.append(Sample(path, 0, "c"))
    return samples


def test_missing_files_reported_once(tmp_path, caplog):
    samples = _touched_samples(tmp_path / "c", 200)
    samples[7].path.unlink()
    samples.append(Sample(tmp_path / "no-such-folder" / "x.png", 0, "c"))  # 2 of 201 < 1%
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        report = check_files(samples, max_missing_fraction=0.01)
    assert report.count == 2 and report.total == 201
    assert report.examples == [samples[7].path, samples[200].path]
    assert report.indices == [7, 200]
    assert len(caplog.records) == 1
    assert "2 of 201" in caplog.records[0].getMessage()


def test_too_many_missing_files_raise_with_count_and_examples(tmp_path, caplog):
    samples = _touched_samples(tmp_path / "c", 100)
    for index in (3, 5, 8, 13, 21, 34, 55):
        samples[index].path.unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError) as error:
        check_files(samples, max_missing_fraction=0.05)
    message = str(error.value)
    assert "7 of 100" in message
    assert str(samples[3].path) in message and str(samples[21].path) in message
    assert str(samples[34].path) not in message  # only the first few
    assert not caplog.records  # the error is the one message
    assert check_files(samples, max_missing_fraction=0.1).count == 7


def test_reference_split_drops_missing_files(tmp_path):
    _make_tuberlin(tmp_path, n_sketches=7, n_photos=200)
    (tmp_path / "TUBerlin/ImageResized_ready/banana/photo 5.jpg").unlink()
    split = load_reference_split("tuberlin", tmp_path, "zero")
    assert split.missing.count == 1 and len(split.photos) == 199
    assert all(p.path.name != "photo 5.jpg" for p in split.photos)
    (tmp_path / "TUBerlin/png_ready/banana/1.png").unlink()
    with pytest.raises(DatasetError, match="2 of 207"):
        load_reference_split("tuberlin", tmp_path, "zero", max_missing_fraction=0.005)


# ------------------------------------------------------------------------------------------------
# Generic layout


CLASSES = ["ant", "bottle opener", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"]


def _make_generic(root: Path) -> None:
    for class_name in CLASSES:
        _png(root / "photo" / class_name / "p1.png")
        _png(root / "photo" / class_name / "more" / "p2.JPG")  # nested, upper-case extension
        _png(root / "sketch" / class_name / "p1-1.png")
        _png(root / "sketch" / class_name / "p1-2.webp")
        _png(root / "sketch" / class_name / "p2_3.jpeg")
        _png(root / "sketch" / class_name / "lonely.bmp")
        (root / "sketch" / class_name / "notes.txt").write_text("not an image")
        _png(root / "sketch" / class_name / "._p1-1.png")  # macOS resource fork: skipped


def test_generic_counts_labels_and_classes(tmp_path):
    _make_generic(tmp_path)
    zero = load_generic(tmp_path, unseen_classes=["dog", "bottle opener"], part="zero")
    assert zero.classes == ["bottle opener", "dog"]
    assert len(zero.sketches) == 8 and len(zero.photos) == 4
    assert [p.path.relative_to(tmp_path).as_posix() for p in zero.photos] == [
        "photo/bottle opener/more/p2.JPG",
        "photo/bottle opener/p1.png",
        "photo/dog/more/p2.JPG",
        "photo/dog/p1.png",
    ]
    assert [(s.label, s.class_name) for s in zero.sketches[::4]] == [(0, "bottle opener"), (1, "dog")]
    train = load_generic(tmp_path, unseen_classes=["dog", "bottle opener"], part="train")
    assert train.classes == [c for c in CLASSES if c not in ("dog", "bottle opener")]
    assert len(train.sketches) == 32 and {s.label for s in train.sketches} == set(range(8))
    assert train.pairs is None


def test_generic_seeded_split_is_reproducible_and_disjoint(tmp_path):
    _make_generic(tmp_path)
    zero = load_generic(tmp_path, unseen_fraction=0.3, seed=4, part="zero")
    train = load_generic(tmp_path, unseen_fraction=0.3, seed=4, part="train")
    assert len(zero.classes) == 3 and len(train.classes) == 7
    assert set(zero.classes).isdisjoint(train.classes)
    assert sorted(zero.classes + train.classes) == CLASSES
    assert load_generic(tmp_path, unseen_fraction=0.3, seed=4).classes == zero.classes
    assert zero.classes == split_classes(reversed(CLASSES), 0.3, seed=4)  # input order does not matter
    assert len({tuple(split_classes(CLASSES, 0.3, seed)) for seed in range(10)}) > 1  # the seed matters
    # rounding: 0.25 * 10 = 2.5 -> 3; tiny fractions still hold out one class, and keep one seen
    assert len(split_classes(CLASSES, 0.25)) == 3
    assert len(split_classes(CLASSES, 0.01)) == 1
    assert len(split_classes(CLASSES, 0.99)) == 9


def test_generic_unseen_classes_from_file(tmp_path):
    _make_generic(tmp_path)
    class_file = _write_lines(tmp_path / "unseen.txt", ["# test classes", "cat", "", "bottle opener"])
    assert load_generic(tmp_path, unseen_classes=class_file).classes == ["bottle opener", "cat"]
    assert load_generic(tmp_path, unseen_classes=str(class_file)).classes == ["bottle opener", "cat"]
    with pytest.raises(DatasetError, match="zebra"):
        load_generic(tmp_path, unseen_classes=["cat", "zebra"])


def test_generic_pairs_by_stem(tmp_path):
    _make_generic(tmp_path)
    split = load_generic(tmp_path, unseen_classes=["ant", "cat"], pair_by_stem=True)
    photo_names = [p.path.relative_to(tmp_path).as_posix() for p in split.photos]
    paired = {
        s.path.relative_to(tmp_path).as_posix(): (photo_names[i] if i >= 0 else None)
        for s, i in zip(split.sketches, split.pairs, strict=True)
    }
    assert paired["sketch/ant/p1-1.png"] == "photo/ant/p1.png"
    assert paired["sketch/ant/p1-2.webp"] == "photo/ant/p1.png"
    assert paired["sketch/cat/p2_3.jpeg"] == "photo/cat/more/p2.JPG"  # same class only
    assert paired["sketch/cat/lonely.bmp"] is None


def test_generic_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="sketch"):
        load_generic(tmp_path)


# ------------------------------------------------------------------------------------------------
# QMUL


def _make_qmul(root: Path) -> None:
    for name in ("2429245009_1.png", "2429245009_2.png", "111_1.png"):
        _png(root / "trainA" / name)
    for name in ("111.png", "2429245009.png", "99.png"):
        _png(root / "trainB" / name)
    _png(root / "testA" / "5_1.png")
    _png(root / "testB" / "5.png")


def test_qmul_pairs_sketches_with_photos(tmp_path):
    _make_qmul(tmp_path / "ShoeV2")
    split = load_qmul(tmp_path, "shoe", "train")  # finds the ShoeV2/ subfolder
    assert split.classes == ["111", "2429245009", "99"]
    assert [p.label for p in split.photos] == [0, 1, 2]
    assert [(s.path.name, s.label, s.class_name) for s in split.sketches] == [
        ("111_1.png", 0, "111"),
        ("2429245009_1.png", 1, "2429245009"),
        ("2429245009_2.png", 1, "2429245009"),
    ]
    assert split.pairs == [0, 1, 1]
    test = load_qmul(tmp_path / "ShoeV2", "shoe", "test")
    assert len(test.sketches) == 1 and test.pairs == [0]


def test_qmul_unpaired_sketch_is_an_error(tmp_path):
    _make_qmul(tmp_path)
    _png(tmp_path / "testA" / "7_1.png")
    with pytest.raises(DatasetError, match=r"1 of 2 sketches .*7_1\.png"):
        load_qmul(tmp_path, "chair", "test")
    with pytest.raises(DatasetError, match="testA"):
        load_qmul(tmp_path / "nowhere", "chair", "test")
