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


def test_a_lock_left_by_a_killed_writer_in_a_moved_folder_does_not_block_the_next_writer(tmp_path):
    """Optuna's lock is a symbolic link to the journal; after the folder moved, a link left by a killed
    writer dangles and Optuna alone would retry forever. The next opening removes it and writes at once."""
    import os
    import threading

    import optuna

    from orchestration.search.journal import open_journal

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    optuna.create_study(storage=open_journal(old / "optuna.journal"), study_name="s").ask()
    os.symlink(old / "optuna.journal", old / "optuna.journal.lock")  # the writer killed while appending
    old.rename(new)
    assert os.path.islink(new / "optuna.journal.lock") and not os.path.exists(new / "optuna.journal.lock")
    done = threading.Event()

    def write() -> None:
        optuna.load_study(storage=open_journal(new / "optuna.journal"), study_name="s").ask()
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(20), "the stale lock blocked the journal"
    assert len(optuna.load_study(storage=open_journal(new / "optuna.journal"), study_name="s").trials) == 2


def test_a_fresh_lock_of_a_live_writer_is_left_alone(tmp_path):
    import os

    from orchestration.search.journal import remove_stale_lock

    (tmp_path / "optuna.journal").write_text("")
    os.symlink(tmp_path / "optuna.journal", tmp_path / "optuna.journal.lock")
    assert not remove_stale_lock(tmp_path / "optuna.journal")
    assert os.path.islink(tmp_path / "optuna.journal.lock")
