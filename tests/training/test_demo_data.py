"""The OpenMoji demo dataset preparation, on a tiny fake OpenMoji package written by the tests (no network)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from training import demo_data
from training.demo_data import (
    ATTRIBUTION_LINE,
    OPENMOJI_SOURCE,
    DemoDataError,
    DemoSettings,
    extract_openmoji,
    fetch_openmoji,
    prepare,
    prepare_from_package,
    select_emojis,
    split_subgroups,
    split_units,
    sri_digest,
    verify,
)

SIZE = 48
COLUMNS = ["emoji", "hexcode", "group", "subgroups", "annotation", "openmoji_author", "skintone",
           "skintone_base_hexcode"]


def _line_art(index: int) -> str:
    """A distinct black line drawing for each index: a circle whose place and radius depend on it."""
    cx, cy, r = 20 + (index * 7) % 32, 20 + (index * 11) % 32, 8 + index % 9
    return (f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="{cx}" cy="{cy}" r="{r}" '
            f'fill="none" stroke="#000000" stroke-width="2"/><line x1="10" y1="{60 - index % 20}" x2="62" '
            f'y2="{40 + index % 25}" stroke="#000" stroke-width="2"/></svg>')


def _colour(svg: str, index: int) -> str:
    return svg.replace('fill="none"', f'fill="#{(index * 40) % 200 + 40:02x}8040"')


FLAG_SKETCH = ('<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><rect x="8" y="18" width="56" '
               'height="36" fill="none" stroke="#000" stroke-width="2"/></svg>')


def _flag_colour(index: int) -> str:
    return FLAG_SKETCH.replace('fill="none"', f'fill="#{index * 20 % 255:02x}2020"')


# subgroup -> group; two emojis each unless said otherwise below.
SUBGROUPS = {
    "face-smiling": "smileys-emotion", "face-affection": "smileys-emotion", "hand-fingers-open": "people-body",
    "animal-mammal": "animals-nature", "animal-bird": "animals-nature", "food-fruit": "food-drink",
    "food-sweet": "food-drink", "transport-ground": "travel-places", "sport": "activities",
    "game": "activities", "household": "objects", "tool": "objects", "zodiac": "symbols",
    "geometric": "symbols", "sky-weather": "travel-places", "brand": "extras-openmoji",
}


def make_package(root: Path) -> Path:
    """Write a fake extracted OpenMoji package; returns its ``package`` folder.

    Contents: 2 emojis in each of 16 ordinary subgroups (``geometric`` and ``sky-weather`` share one
    identical sketch), 3 flag subgroups whose sketches are the same rectangle, 5 skin-tone variants of
    ``1F44B``, one ``component`` row, one row without a colour SVG and one SVG pair without a row.
    """
    package = root / "package"
    for folder in ("black/svg", "color/svg", "data"):
        (package / folder).mkdir(parents=True)
    rows: list[dict[str, str]] = []

    def add(hexcode: str, group: str, subgroup: str, black: str | None, color: str | None, **extra: str) -> None:
        rows.append({"emoji": "?", "hexcode": hexcode, "group": group, "subgroups": subgroup,
                     "annotation": f"emoji {hexcode}", "openmoji_author": "Test Author", **extra})
        if black is not None:
            (package / "black/svg" / f"{hexcode}.svg").write_text(black)
        if color is not None:
            (package / "color/svg" / f"{hexcode}.svg").write_text(color)

    index = 0
    for subgroup, group in SUBGROUPS.items():
        for _ in range(2):
            index += 1
            add(f"1F{index:03X}", group, subgroup, _line_art(index), _colour(_line_art(index), index))
    # The same drawing in two subgroups (OpenMoji has such pairs, e.g. a square in geometric and in sky-weather).
    shared = _line_art(999)
    add("2B1B", "symbols", "geometric", shared, _colour(shared, 1))
    add("2B1C", "travel-places", "sky-weather", shared, _colour(shared, 2))
    for number, (group, subgroup) in enumerate(
        [("flags", "flag"), ("flags", "country-flag"), ("flags", "country-flag"), ("flags", "country-flag"),
         ("extras-unicode", "subdivision-flag"), ("extras-openmoji", "flags")]
    ):
        add(f"1F1{number:02X}-1F1E6", group, subgroup, FLAG_SKETCH, _flag_colour(number))
    add("1F44B", "people-body", "hand-fingers-open", _line_art(500), _colour(_line_art(500), 5))
    for tone, modifier in enumerate(("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"), start=1):
        add(f"1F44B-{modifier}", "people-body", "hand-fingers-open", _line_art(500), _colour(_line_art(500), tone),
            skintone=str(tone), skintone_base_hexcode="1F44B")
    add("1F9B0", "component", "hair-style", _line_art(600), _colour(_line_art(600), 6))
    add("1F9FF", "objects", "household", _line_art(700), None)  # no colour drawing
    (package / "black/svg/E999.svg").write_text(_line_art(800))  # a pair with no csv row
    (package / "color/svg/E999.svg").write_text(_colour(_line_art(800), 8))

    with open(package / "data/openmoji.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("openmoji"))


@pytest.fixture(scope="module")
def built(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared folder shared by the read-only tests (rendering in 2 processes, as the CLI does)."""
    out = tmp_path_factory.mktemp("prepared") / "demo"
    report = prepare_from_package(package, out, DemoSettings(size=SIZE), workers=2)
    assert report.action == "built"
    return out


def _settings(**changes: object) -> DemoSettings:
    return DemoSettings(**{"size": SIZE, **changes})  # type: ignore[arg-type]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_ino)
            for path in folder.rglob("*") if path.is_file()}


# ----------------------------------------------------------------------------------------------
# Selection


def test_select_emojis_drops_skin_tones_components_and_incomplete_pairs(package: Path) -> None:
    emojis, skipped = select_emojis(package)
    hexcodes = {emoji.hexcode for emoji in emojis}
    assert skipped["skin_tone_variants"] == 5
    assert skipped["components"] == 1
    assert skipped["missing_svg"] == 1
    assert skipped["unlisted_svgs"] == 1
    assert "1F44B" in hexcodes and not any("1F3F" in code for code in hexcodes)
    assert {"1F9B0", "1F9FF", "E999"}.isdisjoint(hexcodes)
    assert len(emojis) == 2 * len(SUBGROUPS) + 2 + 6 + 1
    assert emojis == sorted(emojis, key=lambda emoji: (emoji.subgroup, emoji.hexcode))


def test_select_emojis_rejects_a_csv_without_subgroups(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/openmoji.csv").write_text("hexcode,group\n1F600,smileys-emotion\n")
    with pytest.raises(DemoDataError, match="subgroups"):
        select_emojis(tmp_path)


# ----------------------------------------------------------------------------------------------
# The split rule


def test_split_units_joins_transitively() -> None:
    units = split_units(["a", "b", "c", "d", "e"], [["a", "c"], ["c", "e"]])
    assert units == [("a", "c", "e"), ("b",), ("d",)]


def test_split_is_seeded_disjoint_and_near_the_fraction() -> None:
    names = [f"subgroup-{number:02d}" for number in range(50)]
    seen, unseen = split_subgroups(names, unseen_fraction=0.2, seed=7)
    assert (seen, unseen) == split_subgroups(list(reversed(names)), unseen_fraction=0.2, seed=7)
    assert set(seen).isdisjoint(unseen) and set(seen) | set(unseen) == set(names)
    assert len(unseen) == 10
    assert seen == sorted(seen) and unseen == sorted(unseen)
    draws = {tuple(split_subgroups(names, unseen_fraction=0.2, seed=seed)[1]) for seed in range(5)}
    assert len(draws) == 5


def test_split_rule_matches_its_description() -> None:
    # The documented rule, computed independently: sorted units shuffled by random.Random(seed).
    names = sorted(f"s{number}" for number in range(12))
    expected_order = [(name,) for name in names]
    random.Random(3).shuffle(expected_order)
    expected = sorted(name for (name,) in expected_order[:2])  # floor(0.2 * 12 + 0.5) = 2
    assert split_subgroups(names, unseen_fraction=0.2, seed=3)[1] == expected


def test_flags_and_linked_subgroups_never_straddle() -> None:
    names = [f"subgroup-{number:02d}" for number in range(30)] + ["flag", "country-flag", "subdivision-flag"]
    linked = [["subgroup-01", "subgroup-02"], ["subgroup-02", "subgroup-03"], ["subgroup-10", "country-flag"]]
    for seed in range(40):
        seen, unseen = split_subgroups(names, linked, unseen_fraction=0.3, seed=seed)
        assert {"flag", "country-flag", "subdivision-flag", "subgroup-10"} <= set(seen)
        trio = {"subgroup-01", "subgroup-02", "subgroup-03"}
        assert trio <= set(seen) or trio <= set(unseen)
        assert len(unseen) == 10  # floor(0.3 * 33 + 0.5)


def test_split_keeps_both_sides_non_empty() -> None:
    assert split_subgroups(["a", "b"], unseen_fraction=0.9, seed=0)[0]
    assert len(split_subgroups(["a", "b", "c"], unseen_fraction=0.01, seed=0)[1]) == 1
    assert split_subgroups(["a", "b", "c"], unseen_fraction=0.0, seed=0) == (["a", "b", "c"], [])


# ----------------------------------------------------------------------------------------------
# A prepared folder


def test_layout_images_and_counts(built: Path, package: Path) -> None:
    emojis, _ = select_emojis(package)
    for emoji in emojis:
        for modality in ("sketch", "photo"):
            path = built / modality / emoji.subgroup / f"{emoji.hexcode}.png"
            with Image.open(path) as image:
                assert image.mode == "RGB" and image.size == (SIZE, SIZE)
                assert image.getpixel((0, 0)) == (255, 255, 255)  # white background, no transparency
                if modality == "sketch":
                    assert image.convert("L").getextrema()[0] < 64  # black ink is there
    assert sorted(path.stem for path in built.glob("sketch/*/*.png")) == sorted(emoji.hexcode for emoji in emojis)
    assert sorted(path.stem for path in built.glob("photo/*/*.png")) == sorted(emoji.hexcode for emoji in emojis)

    split = json.loads((built / "split.json").read_text())
    counts = split["counts"]
    assert counts["sketches"] == counts["photos"] == len(emojis)
    assert counts["subgroups"] == len({emoji.subgroup for emoji in emojis}) == 20
    assert counts["seen_subgroups"] + counts["unseen_subgroups"] == counts["subgroups"]
    assert counts["skipped"]["skin_tone_variants"] == 5
    assert split["seed"] == 0 and split["unseen_fraction"] == 0.2
    assert len(split["unseen"]) == 4  # floor(0.2 * 20 + 0.5)
    per_subgroup = {emoji.subgroup for emoji in emojis}
    assert set(split["seen"]) | set(split["unseen"]) == per_subgroup
    assert set(split["seen"]).isdisjoint(split["unseen"])
    unseen_sketches = sum(1 for emoji in emojis if emoji.subgroup in split["unseen"])
    assert counts["unseen_sketches"] == unseen_sketches


def test_split_keeps_flags_and_shared_drawings_on_one_side(built: Path) -> None:
    split = json.loads((built / "split.json").read_text())
    assert {"flag", "country-flag", "subdivision-flag", "flags"} <= set(split["seen"])
    # geometric and sky-weather share a drawing: one side for both, and the split says why.
    assert ("geometric" in split["seen"]) == ("sky-weather" in split["seen"])
    assert ["geometric", "sky-weather"] in split["linked"]
    # The skin-tone variants were dropped, so the base's drawing appears once and in one subgroup.
    assert not list(built.glob("*/*/*1F3F*.png"))


def test_split_is_reproducible_across_runs(built: Path, package: Path, tmp_path: Path) -> None:
    again = prepare_from_package(package, tmp_path / "again", _settings(), workers=1)
    assert again.action == "built"
    first = json.loads((built / "split.json").read_text())
    second = json.loads((tmp_path / "again" / "split.json").read_text())
    assert (first["seen"], first["unseen"]) == (second["seen"], second["unseen"])


def test_manifest_lists_every_photo_for_the_indexer(built: Path) -> None:
    with open(built / "manifest.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = json.loads((built / "split.json").read_text())
    assert len(rows) == split["counts"]["photos"]
    assert {row["path"] for row in rows} == {str(path.relative_to(built)) for path in built.glob("photo/*/*.png")}
    for row in rows:
        metadata = json.loads(row["metadata"])
        assert row["id"] == metadata["hexcode"] == Path(row["path"]).stem
        assert row["label"] == metadata["subgroup"] == Path(row["path"]).parent.name
        assert metadata["split"] == ("unseen" if row["label"] in split["unseen"] else "seen")
        assert {"annotation", "group", "skintone", "author"} <= set(metadata)


def test_manifest_reads_as_an_indexer_gallery(built: Path) -> None:
    gallery_module = pytest.importorskip("indexer.gallery")
    gallery = gallery_module.read_gallery(built / "manifest.csv")
    assert len(gallery) == json.loads((built / "split.json").read_text())["counts"]["photos"]
    assert all(item.path.is_file() for item in gallery.items)


def test_folder_loads_with_the_generic_reader(built: Path) -> None:
    from training.datasets import load_generic

    split = json.loads((built / "split.json").read_text())
    zero = load_generic(built, unseen_classes=split["unseen"], part="zero", pair_by_stem=True)
    assert len(zero.sketches) == split["counts"]["unseen_sketches"]
    assert zero.pairs is not None and -1 not in zero.pairs


def test_attribution(built: Path) -> None:
    text = (built / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert ATTRIBUTION_LINE in text and "https://openmoji.org" in text and "CC BY-SA 4.0" in text


# ----------------------------------------------------------------------------------------------
# Idempotence and interrupted runs


def test_second_run_only_verifies(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    prepare_from_package(package, out, _settings(), workers=1)
    before = _snapshot(out)
    report = prepare_from_package(package, out, _settings(), workers=1)
    assert report.action == "verified"
    assert _snapshot(out) == before
    assert "verified" in report.summary()


def test_a_missing_file_or_other_arguments_rebuild(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    prepare_from_package(package, out, _settings(), workers=1)
    victim = next(out.glob("photo/*/*.png"))
    victim.unlink()
    assert prepare_from_package(package, out, _settings(), workers=1).action == "built"
    assert victim.is_file()

    report = prepare_from_package(package, out, _settings(seed=5), workers=1)
    assert report.action == "built"
    assert json.loads((out / "split.json").read_text())["seed"] == 5
    assert verify(out, _settings(seed=5), OPENMOJI_SOURCE) == report.counts
    assert verify(out, _settings(), OPENMOJI_SOURCE) is None
    assert verify(out, _settings(seed=5), "openmoji@16.0.0 sha512-other") is None


def test_interrupted_run_leaves_nothing_half_written(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "demo"
    real_render = demo_data.render_svg
    calls = 0

    def render_then_interrupt(svg_path: str, size: int) -> Image.Image:
        nonlocal calls
        calls += 1
        if calls > 10:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of rendering
        return real_render(svg_path, size)

    monkeypatch.setattr(demo_data, "render_svg", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_from_package(package, out, _settings(), workers=1)
    assert not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == []

    monkeypatch.setattr(demo_data, "render_svg", real_render)
    prepare_from_package(package, out, _settings(), workers=1)
    before = _snapshot(out)
    calls = 0
    monkeypatch.setattr(demo_data, "render_svg", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_from_package(package, out, _settings(seed=9), workers=1)
    # The earlier, complete dataset is untouched and still verifies.
    assert _snapshot(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]
    assert verify(out, _settings(), OPENMOJI_SOURCE) is not None


def test_leftovers_of_a_killed_run_are_removed(package: Path, tmp_path: Path) -> None:
    # A build killed with SIGKILL leaves its temporary folder; the pid in its name no longer exists.
    stale = [tmp_path / f".demo.{kind}-999999999" for kind in ("tmp", "old", "extract")]
    for folder in stale:
        (folder / "sketch").mkdir(parents=True)
    running = tmp_path / f".demo.tmp-{os.getppid()}"  # a live process's build is left alone
    running.mkdir()
    prepare_from_package(package, tmp_path / "demo", _settings(), workers=1)
    assert not any(folder.exists() for folder in stale)
    assert running.exists()


def test_an_svg_that_does_not_render_is_skipped_and_reported(package: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(package, broken / "package")
    (broken / "package/color/svg/1F001.svg").write_text("this is not svg")
    report = prepare_from_package(broken / "package", tmp_path / "demo", _settings(), workers=1)
    assert report.counts["skipped"]["render_failed"] == 1
    assert not list((tmp_path / "demo").glob("*/*/1F001.png"))  # neither half of the pair
    assert "1F001" in report.summary()


# ----------------------------------------------------------------------------------------------
# The npm tarball


def _tarball(package: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(package, arcname="package")
        extra = b"not needed"
        for name in ("package/README.md", "package/../escaped.svg", "package/black/svg/../../../up.svg"):
            info = tarfile.TarInfo(name)
            info.size = len(extra)
            archive.addfile(info, io.BytesIO(extra))
    return path


def test_extract_takes_only_the_needed_files(package: Path, tmp_path: Path) -> None:
    tarball = _tarball(package, tmp_path / "openmoji-17.0.0.tgz")
    extracted = extract_openmoji(tarball, tmp_path / "x")
    assert (extracted / "data/openmoji.csv").is_file()
    names = {str(path.relative_to(tmp_path / "x")) for path in (tmp_path / "x").rglob("*") if path.is_file()}
    assert names == {str(path.relative_to(package.parent)) for path in package.rglob("*") if path.is_file()}
    assert not (tmp_path / "escaped.svg").exists() and not (tmp_path / "up.svg").exists()


def test_extract_rejects_a_broken_tarball(tmp_path: Path) -> None:
    bad = tmp_path / "openmoji-17.0.0.tgz"
    bad.write_bytes(b"truncated")
    with pytest.raises(DemoDataError, match="cannot read"):
        extract_openmoji(bad, tmp_path / "x")


def _fake_npm(tmp_path: Path, tarball: Path) -> Path:
    """A stand-in for `npm`: `npm pack NAME` copies a prepared tarball into the working folder."""
    script = tmp_path / "fake-npm"
    script.write_text(f'#!/bin/sh\necho "npm warn something" >&2\ncp "{tarball}" ./openmoji-17.0.0.tgz\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_fetch_reuses_a_valid_cached_tarball_without_npm(package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    tarball = _tarball(package, cache / "openmoji-17.0.0.tgz")
    found = fetch_openmoji(cache, integrity=sri_digest(tarball), npm=str(tmp_path / "no-such-npm"))
    assert found == tarball


def test_fetch_packs_with_npm_and_checks_integrity(package: Path, tmp_path: Path) -> None:
    source = _tarball(package, tmp_path / "source.tgz")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openmoji-17.0.0.tgz").write_bytes(b"a truncated earlier download")
    fetched = fetch_openmoji(cache, integrity=sri_digest(source), npm=str(_fake_npm(tmp_path, source)))
    assert fetched.read_bytes() == source.read_bytes()
    assert sorted(path.name for path in cache.iterdir()) == ["openmoji-17.0.0.tgz"]  # no scratch left

    with pytest.raises(DemoDataError, match="integrity"):
        fetch_openmoji(tmp_path / "other-cache", integrity="sha512-wrong", npm=str(_fake_npm(tmp_path, source)))
    assert not (tmp_path / "other-cache" / "openmoji-17.0.0.tgz").exists()


def test_fetch_without_npm_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DemoDataError, match="npm not found"):
        fetch_openmoji(tmp_path / "cache", npm=str(tmp_path / "no-such-npm"))


def test_prepare_verifies_an_up_to_date_folder_without_npm(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    prepare_from_package(package, out, _settings(), workers=1)  # the default source is openmoji@17.0.0
    report = prepare(out, _settings(), cache=tmp_path / "cache", npm=str(tmp_path / "no-such-npm"))
    assert report.action == "verified"
    assert not (tmp_path / "cache").exists()


def test_prepare_rejects_a_tarball_that_is_not_openmoji_17(package: Path, tmp_path: Path) -> None:
    fake = _fake_npm(tmp_path, _tarball(package, tmp_path / "source.tgz"))
    with pytest.raises(DemoDataError, match="integrity"):
        prepare(tmp_path / "demo", _settings(), cache=tmp_path / "cache", npm=str(fake))
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------------------------
# The command


def _parser() -> argparse.ArgumentParser:
    from training import demo_cli

    parser = argparse.ArgumentParser(prog="sbir")
    demo_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prepare_prints_what_it_did(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    prepare_from_package(package, out, _settings(), workers=1)
    args = _parser().parse_args(["demo", "prepare", "--out", str(out), "--size", str(SIZE),
                                 "--cache", str(tmp_path / "cache")])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "took" in printed and "sketches" in printed


@pytest.mark.parametrize("arguments", [["--unseen-fraction", "1.5"], ["--size", "4"], ["--workers", "0"]])
def test_cli_rejects_bad_arguments_in_one_line(arguments: list[str], tmp_path: Path) -> None:
    from models.errors import CliError

    args = _parser().parse_args(["demo", "prepare", "--out", str(tmp_path / "demo"), *arguments])
    with pytest.raises(CliError):
        args.handler(args)


def test_cli_reports_a_missing_npm_as_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    status = main(["demo", "prepare", "--out", str(tmp_path / "demo"), "--cache", str(tmp_path / "cache")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "npm not found" in error
    assert not (tmp_path / "demo").exists()


def test_subgroup_names_cannot_leave_the_dataset_folder() -> None:
    from training.demo_data import folder_name

    assert folder_name("face-smiling") == "face-smiling"
    for hostile in ("../etc", "a/b", ".hidden", ""):
        name = folder_name(hostile)
        assert "/" not in name and not name.startswith(".") and name
