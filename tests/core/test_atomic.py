"""Whole-or-nothing writes: the old file survives a failed write and no temporary is left behind."""

from pathlib import Path

import pytest

from aullm_core.atomic import atomic_path, atomic_write_text, sibling_temp


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    assert atomic_write_text(target, "first") == target  # the folder is created
    atomic_write_text(target, "second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "cache.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.h5"]


def test_temporaries_are_unique_and_hidden_beside_the_target(tmp_path: Path) -> None:
    a, b = sibling_temp(tmp_path / "x.json"), sibling_temp(tmp_path / "x.json")
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".x.json.") and a.name.endswith(".tmp")
