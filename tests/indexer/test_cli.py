"""`sbir index build|add|info` through the real console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from tests.support.datasets import make_folder_gallery
from tests.support.images import make_png


def test_build_add_info(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 2, "b": 1})
    out = tmp_path / "index"
    common = ["--checkpoint", str(checkpoint), "--workers", "0", "--batch-size", "2", "--no-progress"]
    assert main(["index", "build", "--gallery", str(gallery), "--out", str(out), "--tokens", "int8",
                 "--index-type", "HNSW16", "--name", "demo", *common]) == 0
    assert "3 photos, 0 skipped" in capsys.readouterr().out
    make_png(gallery / "c" / "0.png", seed=40)
    assert main(["index", "add", str(out), "--gallery", str(gallery), *common]) == 0
    assert main(["index", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(printed[printed.index("{"): printed.index("\n}\n") + 2])
    assert (manifest["name"], manifest["count"], manifest["tokens"]["format"]) == ("demo", 4, "int8")
    assert manifest["faiss"]["factory"] == "HNSW16" and manifest["faiss"]["efSearch"] == 128
    assert "index.faiss" in printed and "B per photo" in printed


def test_user_errors_are_one_line_with_status_2(tmp_path: Path, checkpoint: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_folder_gallery(tmp_path / "gallery", {"a": 1})
    status = main(["index", "build", "--gallery", str(tmp_path / "gallery"), "--checkpoint", str(checkpoint),
                   "--out", str(tmp_path / "x"), "--index-type", "IVF4096,Flat", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "4096 lists but the gallery lists only 1" in error
    assert main(["index", "info", str(tmp_path / "gallery")]) == 2
    assert "not an index directory" in capsys.readouterr().err


def test_registration_does_not_import_torch_or_faiss() -> None:
    code = ("import argparse, sys; import indexer, indexer.cli; "
            "indexer.cli.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"


def test_skip_current_keeps_an_index_of_the_same_files_and_weights_and_rebuilds_otherwise(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 2})
    out = tmp_path / "index"
    build = ["index", "build", "--gallery", str(gallery), "--out", str(out), "--checkpoint", str(checkpoint),
             "--workers", "0", "--no-progress", "--skip-current"]
    assert main(build) == 0 and "2 photos" in capsys.readouterr().out
    built = (out / "manifest.json").read_bytes()
    assert main(build) == 0 and "up to date" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == built  # left as it was
    make_png(gallery / "a" / "9.png", seed=41)  # a new photo: the listing changed
    assert main(build) == 0 and "3 photos" in capsys.readouterr().out
    # An index written before the token layout recorded pre-scorer anchors is rebuilt.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["tokens"]["anchors"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(build) == 0 and "3 photos" in capsys.readouterr().out
    assert "anchors" in json.loads((out / "manifest.json").read_text())["tokens"]
    assert main(build) == 0 and "up to date" in capsys.readouterr().out


def test_summary_counts_this_runs_skipped_photos_and_add_with_nothing_new_exits_0(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 2})
    (gallery / "a" / "broken.png").write_text("not an image\n")
    (gallery / "a" / "notes.txt").write_text("a note beside the photos\n")
    out = tmp_path / "index"
    common = ["--gallery", str(gallery), "--checkpoint", str(checkpoint), "--workers", "0", "--no-progress"]
    assert main(["index", "build", "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 2 photos, 1 skipped (see skipped.jsonl)" in printed
    assert "1 files that are not images left out (a/notes.txt)" in printed

    # Nothing new (the broken photo was already skipped once): exit 0, a message, the index untouched.
    before = (out / "manifest.json").read_bytes()
    assert main(["index", "add", str(out), *common]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(f"nothing to add: all 3 photos of {gallery} are already in {out}")
    assert "1 of them skipped as unreadable before" in captured.out
    assert (out / "manifest.json").read_bytes() == before

    make_png(gallery / "b" / "0.png", seed=41)
    (gallery / "b" / "broken.png").write_bytes(b"")
    assert main(["index", "add", str(out), *common]) == 0
    assert f"{out}: added 1 photos, 1 skipped; 3 photos in all" in capsys.readouterr().out


def test_add_with_another_checkpoint_names_the_recorded_checkpoint_path_and_both_hashes(
        tmp_path: Path, checkpoint: Path, other_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    gallery = tmp_path / "gallery"
    make_folder_gallery(gallery, {"a": 1})
    out = tmp_path / "index"
    assert main(["index", "build", "--gallery", str(gallery), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "add", str(out), "--gallery", str(gallery), "--checkpoint", str(other_checkpoint),
                 "--workers", "0", "--no-progress"]) == 2
    error = capsys.readouterr().err
    built, other = (hashlib.sha256(path.read_bytes()).hexdigest() for path in (checkpoint, other_checkpoint))
    assert error.count("\n") == 1
    assert f"was built with checkpoint {checkpoint.absolute()} (sha256 {built})" in error
    assert f"but {other_checkpoint.absolute()} has sha256 {other}" in error
