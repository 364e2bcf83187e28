"""The driver's tracking ledger: what was sent to MLflow, persisted; damage refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_damaged_tracking_ledger_is_refused_naming_the_file(tmp_path: Path) -> None:
    from aullm_core.errors import ConfigError
    from orchestration.sweep_driver import Ledger

    path = tmp_path / "tracked.json"
    ledger = Ledger(path)
    ledger.add("fold:a")
    assert "fold:a" in Ledger(path)
    for damaged in ('["fold:a", "fold:', '{"fold:a": 1}'):
        path.write_text(damaged)
        with pytest.raises(ConfigError, match=r"tracked.json: not a readable tracking ledger") as info:
            Ledger(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
