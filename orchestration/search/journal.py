"""The sweep's Optuna journal file, opened after repairing what a crash mid-write leaves behind.

Optuna's ``JournalFileBackend`` appends one JSON record per line. A process killed while writing
leaves a last line without its newline; Optuna then fails to read the file ("Expecting ','
delimiter") and, worse, appends the next record to the torn line, so every later read fails too.
``open_journal`` cuts a torn last record off (it never reached the study, so nothing that was
recorded is lost), keeps the cut bytes beside the journal and warns; damage before the last line is
not a crash artefact and is refused with the file and line named.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from aullm_core.atomic import atomic_write_bytes
from aullm_core.errors import ConfigError

__all__ = ["open_journal", "repair_torn_tail"]

log = logging.getLogger(__name__)


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def repair_torn_tail(path: str | Path) -> int:
    """Truncate a torn last record of the journal at ``path``; returns the bytes removed (0: intact).

    The removed bytes are saved as ``<path>.torn``. A damaged line before the last one raises
    ``ConfigError`` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # a healthy journal ends with a newline: tail == b""
    for number, line in enumerate(complete, start=1):
        if line.strip() and not _is_record(line):
            if number == len(complete) and not tail:
                tail, complete = line + b"\n", complete[:-1]  # the last line is torn but ended
                break
            raise ConfigError(
                f"{path}: line {number} is not a journal record (the file is damaged before its end); "
                "restore it from a backup or start a new sweep"
            )
    if not tail:
        return 0
    if _is_record(tail):  # the record was written whole, only its newline was not
        with open(path, "ab") as handle:
            handle.write(b"\n")
        log.warning("%s: its last record had no newline (a crash while writing); added it", path)
        return 0
    keep = sum(len(line) + 1 for line in complete)
    atomic_write_bytes(path.with_name(path.name + ".torn"), data[keep:])
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "%s: its last record was torn (a crash while writing); cut %d bytes, kept in %s.torn",
        path, len(data) - keep, path.name,
    )
    return len(data) - keep


def open_journal(path: str | Path) -> JournalStorage:
    """The Optuna storage of the journal at ``path``, its torn tail repaired first."""
    repair_torn_tail(path)
    return JournalStorage(JournalFileBackend(str(path)))
