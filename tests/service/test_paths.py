"""resolve_under_roots: the one gate for client-supplied paths."""

from __future__ import annotations

import os

import pytest

from service.errors import ServiceError, http_status
from service.paths import resolve_under_roots


@pytest.fixture
def roots(tmp_path):
    first, second, outside = tmp_path / "first", tmp_path / "second", tmp_path / "outside"
    for folder in (first / "a", second / "b", outside):
        folder.mkdir(parents=True)
    os.symlink(outside, first / "escape")
    os.symlink(second / "b", first / "to-second")
    return first, second, outside


def status(raw, roots, **kwargs):
    with pytest.raises(ServiceError) as caught:
        resolve_under_roots(raw, roots, "gallery", **kwargs)
    return http_status(caught.value)[0], caught.value.code, caught.value.field


def test_relative_paths_resolve_in_the_root_that_has_them(roots):
    first, second, _ = roots
    assert resolve_under_roots("a", [first, second], "gallery") == first / "a"
    assert resolve_under_roots("b", [first, second], "gallery") == second / "b"
    assert resolve_under_roots(str(second / "b"), [first, second], "gallery") == second / "b"
    assert resolve_under_roots("to-second", [first, second], "gallery") == second / "b"  # link into a root


def test_refusals(roots):
    first, second, outside = roots
    assert status("../outside", [first]) == (400, "invalid_path", "gallery")
    assert status("a/../../outside", [first]) == (400, "invalid_path", "gallery")
    assert status("a\x00b", [first]) == (400, "invalid_path", "gallery")
    assert status("", [first]) == (400, "invalid_path", "gallery")
    assert status(str(outside), [first]) == (403, "path_outside_data_roots", "gallery")
    assert status("escape", [first]) == (403, "path_outside_data_roots", "gallery")
    assert status("to-second", [first]) == (403, "path_outside_data_roots", "gallery")  # second is no root here
    assert status("missing", [first]) == (400, "path_not_found", "gallery")
    assert status("a", []) == (403, "no_data_roots", "gallery")
    assert resolve_under_roots("not-yet", [first], "gallery", must_exist=False) == first / "not-yet"


def test_a_sibling_with_a_common_prefix_is_outside(tmp_path):
    root, sibling = tmp_path / "data", tmp_path / "data-evil"
    root.mkdir()
    sibling.mkdir()
    assert status(str(sibling), [root]) == (403, "path_outside_data_roots", "gallery")
