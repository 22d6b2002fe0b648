"""Other emoji styles and icon pairs: matching to OpenMoji, the unseen rules, rendering and the folder,
on small iconify-json packages written by the tests (no network: the cached tarball is reused)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from training.demo_data import DemoDataError, npm_tarball_name, sri_digest
from training.demo_extra import (
    STYLES_HEADING,
    Style,
    Target,
    code_key,
    emoji_jobs,
    icon_jobs,
    icon_svg,
    prepare_style,
    prepare_styles,
    slug,
    unseen_words,
)
from training.demo_styles import link_icons, style_items

SQUARE = '<path fill="currentColor" d="M4 4h16v16H4z"/>'
OUTLINE = '<path fill="none" stroke="currentColor" stroke-width="2" d="M4 4h16v16H4z"/>'


def test_slug_and_code_key() -> None:
    assert slug("Grinning face: big eyes") == "grinning-face-big-eyes"
    assert code_key("2764-fe0f") == "2764" and code_key("1f468-200d-1f469") == "1F468-200D-1F469"


def _icons(names: dict[str, str], aliases: dict[str, str] | None = None) -> dict:
    return {"prefix": "t", "width": 24, "height": 24, "icons": {name: {"body": body} for name, body in names.items()},
            "aliases": {alias: {"parent": parent} for alias, parent in (aliases or {}).items()}}


def test_icon_svg_follows_aliases_and_paints_current_colour() -> None:
    icons = _icons({"box": SQUARE}, {"crate": "box"})
    svg = icon_svg(icons, "crate", "#ff0000")
    assert svg is not None and 'viewBox="0 0 24 24"' in svg and "#ff0000" in svg and "currentColor" not in svg
    assert icon_svg(icons, "missing") is None


TARGETS = [
    Target("1F600", "grinning-face", "face-smiling", False),
    Target("2764", "red-heart", "heart", False),
    Target("1F426", "bird", "animal-bird", True),
]


def test_emoji_jobs_match_by_code_point_then_name_and_skip_unseen() -> None:
    package = {"icons": _icons({"grinning": SQUARE, "red-heart": SQUARE, "bird": SQUARE}),
               "chars": {"1f600": "grinning"}}
    style = Style("s", "@x/s", "1.0.0", "sha512-x", "MIT", "photo")
    jobs = emoji_jobs(style, package, TARGETS)
    assert [(code, group) for code, group, _ in jobs] == [("1F600", "face-smiling"), ("2764", "heart")]
    cross = Style("c", "@x/c", "1.0.0", "sha512-x", "MIT", "cross")
    assert [code for code, _, _ in emoji_jobs(cross, package, TARGETS)] == ["1F600", "2764", "1F426"]


def test_icon_rule_leaves_out_words_of_unseen_concepts() -> None:
    banned = unseen_words(TARGETS)
    assert {"bird", "animal"} <= banned and "heart" not in banned and "face" not in banned
    package = {"icons": _icons({"bird": OUTLINE, "bird-filled": SQUARE, "birds-nest": OUTLINE,
                                "birds-nest-filled": SQUARE, "heart": OUTLINE, "heart-filled": SQUARE,
                                "lonely": OUTLINE})}
    jobs, dropped = icon_jobs(package, banned)
    assert [name for name, *_ in jobs] == ["heart"] and dropped == 2  # "birds" counts as "bird"
    name, concept, outline, filled = jobs[0]
    assert concept == "heart" and 'stroke-width="1"' in outline and "currentColor" not in filled


def test_icon_jobs_pair_named_variants_as_phosphor_names_them() -> None:
    # Phosphor: <name> (regular), <name>-light (the outline used), <name>-fill; a pair needs both variants.
    light = '<path fill="currentColor" d="M1 1h2v2H1z"/>'
    package = {"icons": _icons({"key": SQUARE, "key-light": light, "key-fill": SQUARE, "cup": SQUARE,
                                "cup-fill": SQUARE, "bird-light": light, "bird-fill": SQUARE})}
    jobs, dropped = icon_jobs(package, {"bird"}, outline_suffix="-light", filled_suffix="-fill")
    assert [(name, concept) for name, concept, *_ in jobs] == [("key", "key")] and dropped == 1
    assert 'd="M1 1h2v2H1z"' in jobs[0][2] and "#" in jobs[0][3] and "currentColor" not in jobs[0][3]


def test_link_icons_moves_an_icon_named_as_one_seen_emoji_into_its_instance(tmp_path: Path) -> None:
    demo = _demo(tmp_path)  # seen: grinning face (1F600), red heart (2764); unseen: bird (1F426)
    icons = demo / "styles" / "ph"
    names = {"red-heart": "heart", "grinning-face": "grinning", "lamp": "lamp", "bird": "bird"}
    for name, concept in names.items():
        for modality in ("sketch", "photo"):
            (icons / modality / concept).mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 255).save(icons / modality / concept / f"{name}.png")
    (demo / "styles" / "noto" / "photo" / "heart").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(demo / "styles" / "noto" / "photo" / "heart" / "red-heart.png")
    items = style_items(demo, "ph") + style_items(demo, "noto")
    linked = {(item.source, item.path.stem): (item.instance, item.concept) for item in link_icons(demo, items)}
    assert linked[("ph-sketch", "red-heart")] == linked[("ph-photo", "red-heart")] == ("emoji:2764", "heart")
    assert linked[("ph-sketch", "grinning-face")] == ("emoji:1F600", "face-smiling")
    assert linked[("ph-sketch", "lamp")] == ("emoji:lamp", "lamp")  # no emoji of that name
    assert linked[("ph-sketch", "bird")] == ("emoji:bird", "bird")  # an unseen emoji is never a target
    assert linked[("noto-photo", "red-heart")] == ("emoji:red-heart", "heart")  # not an icon style: unchanged


def _demo(root: Path) -> Path:
    demo = root / "demo"
    demo.mkdir()
    (demo / "split.json").write_text(json.dumps({"seen": ["face-smiling", "heart"], "unseen": ["animal-bird"]}))
    with open(demo / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "label", "metadata"])
        for target, annotation in zip(TARGETS, ["grinning face", "red heart", "bird"], strict=True):
            writer.writerow([target.hexcode, f"photo/{target.subgroup}/{target.hexcode}.png", target.subgroup,
                             json.dumps({"annotation": annotation})])
    (demo / "ATTRIBUTION.md").write_text("# Attribution\n\nOpenMoji part.\n")
    return demo


def _package(cache: Path, name: str, icons: dict, chars: dict | None = None) -> Style:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / npm_tarball_name(f"@iconify-json/{name}", "1.0.0")
    with tarfile.open(path, "w:gz") as archive:
        for member, data in (("icons.json", icons), ("chars.json", chars or {}),
                             ("info.json", {"name": name.title(), "author": {"name": "Someone", "url": "https://x"},
                                            "license": {"title": "MIT", "url": "https://y"}})):
            blob = json.dumps(data).encode()
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return Style(name, f"@iconify-json/{name}", "1.0.0", sri_digest(path), "MIT", "photo")


def test_prepare_style_renders_verifies_and_feeds_the_bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo, cache = _demo(tmp_path), tmp_path / "cache"
    style = _package(cache, "fake", _icons({"grinning-face": SQUARE, "red-heart": SQUARE, "bird": SQUARE}))
    stamp = prepare_style(demo, style, cache, size=32, npm=str(tmp_path / "no-npm"))
    assert stamp["action"] == "built" and stamp["counts"]["photos"] == 2
    files = sorted(str(path.relative_to(demo)) for path in (demo / "styles").rglob("*.png"))
    assert files == ["styles/fake/photo/face-smiling/1F600.png", "styles/fake/photo/heart/2764.png"]
    with Image.open(demo / files[0]) as image:
        assert image.size == (32, 32) and image.getpixel((16, 16)) == (0, 0, 0)
        assert image.getpixel((1, 1)) == (255, 255, 255)
    assert prepare_style(demo, style, cache, size=32, npm=str(tmp_path / "no-npm"))["action"] == "verified"
    items = style_items(demo, "fake")
    assert {(item.instance, item.concept, item.modality) for item in items} == {
        ("emoji:1F600", "face-smiling", "photo"), ("emoji:2764", "heart", "photo")}

    import training.demo_extra as extra

    monkeypatch.setitem(extra.STYLES, "fake", style)
    lines = prepare_styles(demo, cache, names=["fake"], size=32, npm=str(tmp_path / "no-npm"))
    assert lines == ["style fake (photo) verified: 0 sketches, 2 photos"]
    text = (demo / "ATTRIBUTION.md").read_text()
    assert text.startswith("# Attribution\n\nOpenMoji part.") and text.count(STYLES_HEADING) == 1
    assert "Fake by Someone" in text and "MIT" in text
    prepare_styles(demo, cache, names=["fake"], size=32, npm=str(tmp_path / "no-npm"))
    assert (demo / "ATTRIBUTION.md").read_text() == text  # the section is replaced, not appended


def test_a_tampered_cached_package_is_refused_without_npm(tmp_path: Path) -> None:
    demo, cache = _demo(tmp_path), tmp_path / "cache"
    style = _package(cache, "fake", _icons({"red-heart": SQUARE}))
    wrong = Style(style.name, style.package, style.version, "sha512-AAAA", style.licence, style.role)
    with pytest.raises(DemoDataError, match="npm not found"):
        prepare_style(demo, wrong, cache, npm=str(tmp_path / "no-npm"))
    assert not (demo / "styles" / "fake").exists()
