"""Publication of an index directory by renames; recovery of an interrupted swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer import publish
from indexer.errors import IndexerError


def staged(out: Path, marker: str) -> Path:
    staging = publish.make_staging(out)
    (staging / publish.MANIFEST_FILE).write_text(marker)
    return staging


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_new_then_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda first, second: False)
    out = tmp_path / "index"
    publish.publish(staged(out, "one"), out)
    assert (out / publish.MANIFEST_FILE).read_text() == "one"
    publish.publish(staged(out, "two"), out)
    assert (out / publish.MANIFEST_FILE).read_text() == "two"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # nothing left aside


def test_check_target_refuses_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(IndexerError, match="not an index directory"):
        publish.check_target(tmp_path / "photos")
    publish.check_target(tmp_path / "new")


def test_recover_restores_an_index_renamed_aside_and_drops_dead_staging(tmp_path: Path) -> None:
    out = tmp_path / "index"
    aside = tmp_path / ".index.old-123"
    aside.mkdir()
    (aside / publish.MANIFEST_FILE).write_text("old")
    dead = tmp_path / ".index.staging-999999999-abc"  # no such process
    dead.mkdir()
    publish.recover(out)
    assert (out / publish.MANIFEST_FILE).read_text() == "old"
    assert not aside.exists() and not dead.exists()


def test_writer_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    out = tmp_path / "index"
    with publish.writer_lock(out):
        with pytest.raises(IndexerError, match="another build or add"):
            with publish.writer_lock(out):
                pass
    with publish.writer_lock(out):
        pass


def test_a_published_folder_has_the_umask_permissions_not_mkdtemps_0700(tmp_path: Path) -> None:
    import os

    from indexer.publish import make_staging, publish

    previous = os.umask(0o022)
    try:
        staging = make_staging(tmp_path / "index")
        (staging / "manifest.json").write_text("{}")
        publish(staging, tmp_path / "index")
    finally:
        os.umask(previous)
    assert (tmp_path / "index").stat().st_mode & 0o777 == 0o755
