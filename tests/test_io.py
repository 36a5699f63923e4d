"""``io.atomic_dir``: a folder is built beside its final name, then renamed into place."""

from __future__ import annotations

import pytest

from rigsa_lightning.io import atomic_dir


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_dir_builds_then_renames(tmp_path):
    final = tmp_path / "sub" / "out"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".out.")
        assert not final.exists()
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new"
    assert _hidden(final.parent) == []


@pytest.mark.parametrize("keep_complete", [None, "done"])
def test_atomic_dir_failure_leaves_no_partial_folder(tmp_path, keep_complete):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final, keep_complete=keep_complete) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep_complete", [None, "done"])
def test_atomic_dir_failure_keeps_an_existing_folder(tmp_path, keep_complete):
    final = tmp_path / "out"
    final.mkdir()
    (final / "done").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final, keep_complete=keep_complete) as tmp:
            (tmp / "done").write_text("partial")
            raise RuntimeError("boom")
    assert (final / "done").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_dir_replaces_an_existing_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert _hidden(tmp_path) == []


def test_atomic_dir_keeps_an_existing_complete_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "done").write_text("first")
    with atomic_dir(final, keep_complete="done") as tmp:
        (tmp / "done").write_text("second")
    assert (final / "done").read_text() == "first"
    assert _hidden(tmp_path) == []


def test_atomic_dir_refuses_an_incomplete_folder_it_may_not_replace(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "junk").write_text("x")
    with pytest.raises(OSError):
        with atomic_dir(final, keep_complete="done") as tmp:
            (tmp / "done").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["junk"]
    assert _hidden(tmp_path) == []
