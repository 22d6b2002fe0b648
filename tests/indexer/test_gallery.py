"""Gallery readers: folder, CSV and JSON Lines manifests, reference split files, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.errors import GalleryError
from indexer.gallery import fingerprint, read_gallery


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_is_recursive_sorted_and_labelled_by_parent(tmp_path: Path) -> None:
    for relative in ["zebra/b.jpg", "ant/z.PNG", "ant/a.png", "ant/sub/deep.webp", "top.png",
                     "ant/notes.txt", ".hidden/x.png", "ant/.x.png"]:
        touch(tmp_path / relative)
    gallery = read_gallery(tmp_path)
    assert gallery.kind == "folder"
    assert [item.key for item in gallery.items] == ["ant/a.png", "ant/sub/deep.webp", "ant/z.PNG", "top.png",
                                                   "zebra/b.jpg"]
    assert [item.label for item in gallery.items] == ["ant", "sub", "ant", None, "zebra"]
    assert all(item.path.is_absolute() and item.path.exists() for item in gallery.items)


def test_folder_ids_are_stable_when_listing_order_changes(tmp_path: Path) -> None:
    for name in ["c.png", "a.png", "b.png"]:
        touch(tmp_path / "k" / name)
    first = [item.key for item in read_gallery(tmp_path).items]
    (tmp_path / "k" / "a.png").unlink()
    touch(tmp_path / "k" / "a.png")  # re-created: another directory-entry order on many file systems
    assert [item.key for item in read_gallery(tmp_path).items] == first == ["k/a.png", "k/b.png", "k/c.png"]


def test_csv_manifest_resolves_relative_paths_and_keeps_metadata(tmp_path: Path) -> None:
    touch(tmp_path / "photos" / "one.png")
    absolute = touch(tmp_path / "elsewhere" / "two.png")
    manifest = tmp_path / "photos" / "list.csv"
    manifest.write_text("id,path,label,source,metadata\n"
                        'p1,one.png,cat,web,"{""year"": 2020}"\n'
                        f"p2,{absolute},,scan,\n")
    gallery = read_gallery(manifest)
    assert gallery.kind == "csv"
    first, second = gallery.items
    assert (first.key, first.path, first.label) == ("p1", tmp_path / "photos" / "one.png", "cat")
    assert first.metadata == {"source": "web", "year": 2020}
    assert (second.key, second.path, second.label, second.metadata) == ("p2", absolute, None, {"source": "scan"})


def test_jsonl_manifest_merges_extra_keys_into_metadata(tmp_path: Path) -> None:
    manifest = tmp_path / "list.jsonl"
    lines = [{"id": 7, "path": "a/x.png", "label": "dog", "metadata": {"w": 3}, "shop": "s1"},
             {"path": "b/y.png"}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    root = tmp_path / "root"
    root.mkdir()
    gallery = read_gallery(manifest, root=root)
    assert [(item.key, item.path, item.label) for item in gallery.items] == [
        ("7", root / "a/x.png", "dog"), ("b/y.png", root / "b/y.png", None)]
    assert gallery.items[0].metadata == {"w": 3, "shop": "s1"}


def test_split_file_with_spaces_in_paths_and_root(tmp_path: Path) -> None:
    split = tmp_path / "lists" / "test_photos.txt"
    split.parent.mkdir()
    split.write_text("# reference split\nphoto/hot air balloon/n1 2.jpg 3\n\nphoto/cat/c.jpg 0\n")
    root = tmp_path / "dataset"
    root.mkdir()
    gallery = read_gallery(split, root=root)
    assert gallery.kind == "split"
    assert [(item.key, item.path, item.label) for item in gallery.items] == [
        ("photo/hot air balloon/n1 2.jpg", root / "photo/hot air balloon/n1 2.jpg", "3"),
        ("photo/cat/c.jpg", root / "photo/cat/c.jpg", "0"),
    ]
    # Without --root, paths are relative to the split file's folder.
    assert read_gallery(split).items[0].path == split.parent / "photo/hot air balloon/n1 2.jpg"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "file,label\na.png,x\n", "no 'path' column"),
        ("dup.csv", "id,path\n1,a.png\n1,b.png\n", "duplicate id '1'"),
        ("bad.jsonl", '{"path": "a.png"}\n{not json\n', ":2: invalid JSON"),
        ("nopath.jsonl", '{"id": 1}\n', "missing 'path'"),
        ("split.txt", "a.png 1\nonlyonefield\n", ":2: expected 'relative/path label'"),
        ("empty.txt", "# nothing\n\n", "gallery is empty"),
    ],
)
def test_malformed_gallery_files_are_one_line_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GalleryError, match=message) as caught:
        read_gallery(path)
    assert "\n" not in str(caught.value)


def test_missing_and_empty_galleries(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="gallery not found"):
        read_gallery(tmp_path / "nope")
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(GalleryError, match="gallery is empty"):
        read_gallery(tmp_path / "empty")
    with pytest.raises(GalleryError, match="--root applies"):
        read_gallery(tmp_path / "empty", root=tmp_path)


def test_fingerprint_changes_when_a_photo_changes(tmp_path: Path) -> None:
    photo = touch(tmp_path / "k" / "a.png", b"one")
    before = fingerprint(read_gallery(tmp_path))
    assert fingerprint(read_gallery(tmp_path)) == before
    photo.write_bytes(b"two and more")
    assert fingerprint(read_gallery(tmp_path)) != before
