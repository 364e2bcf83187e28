"""The Optuna journal survives a crash mid-write: a torn last record is cut (and kept aside), a
damaged line before the end is refused with the file and line named."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from aullm_core.errors import ConfigError
from orchestration.search.journal import open_journal, repair_torn_tail


def _journal(path: Path, n: int = 3) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_journal(path), direction="maximize")
    for k in range(n):
        study.enqueue_trial({"x": float(k)})
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 10))


def test_a_torn_last_record_is_cut_kept_aside_and_the_study_reopens(tmp_path: Path, caplog) -> None:
    path = tmp_path / "optuna.journal"
    _journal(path)
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"op_code": 4, "worker_id": "ab')
    with caplog.at_level(logging.WARNING):
        study = optuna.load_study(study_name="s", storage=open_journal(path))
    assert "torn" in caplog.text and str(path) in caplog.text
    assert path.read_bytes() == intact
    assert (tmp_path / "optuna.journal.torn").read_bytes() == b'{"op_code": 4, "worker_id": "ab'
    assert [t.value for t in study.trials] == [0.0, 1.0, 2.0]
    trial = study.ask()  # and new records land on a line of their own
    study.tell(trial, trial.suggest_float("x", 0, 10))
    assert len(optuna.load_study(study_name="s", storage=open_journal(path)).trials) == 4


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    _journal(path)
    intact = path.read_bytes()
    path.write_bytes(intact[:-1])
    assert repair_torn_tail(path) == 0
    assert path.read_bytes() == intact


def test_damage_before_the_last_line_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    _journal(path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError, match=r"optuna.journal: line 2 is not a journal record"):
        open_journal(path)
