"""The sweep's Optuna journal file, opened after repairing what a crash mid-write leaves behind.

Optuna's ``JournalFileBackend`` appends one JSON record per line. A process killed while writing
leaves a last line without its newline; Optuna then fails to read the file ("Expecting ','
delimiter") and, worse, appends the next record to the torn line, so every later read fails too.
``open_journal`` cuts a torn last record off (it never reached the study, so nothing that was
recorded is lost), keeps the cut bytes beside the journal and warns; damage before the last line is
not a crash artefact and is refused with the file and line named.

Optuna's writer holds ``<journal>.lock``, a symbolic link to the journal, while it appends. A writer
killed mid-append leaves the link behind; Optuna breaks such a lock after 30 s, judging its age by
``os.stat``, which follows the link: once the sweep folder has moved, the link dangles, ``os.stat``
fails and Optuna retries forever without sleeping (a resumed sweep spun at 100% CPU). ``open_journal``
removes a lock whose link dangles or that is older than Optuna's grace period, judged by the link
itself (``os.lstat``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from aullm_core.atomic import atomic_write_bytes
from aullm_core.errors import ConfigError

__all__ = ["open_journal", "remove_stale_lock", "repair_torn_tail"]

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


#: Optuna's ``JournalFileSymlinkLock`` grace period: a lock older than this is abandoned.
_LOCK_GRACE_S = 30.0


def remove_stale_lock(path: str | Path) -> bool:
    """Remove the journal's lock link if its writer is gone (the link dangles or is older than Optuna's grace
    period); True when one was removed."""
    lock = Path(f"{path}.lock")
    if not lock.is_symlink():
        return False
    dangling = not lock.exists()
    if not dangling and time.time() - lock.lstat().st_mtime < _LOCK_GRACE_S:
        return False
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    log.warning("%s: removed the lock a killed writer left (%s)", lock,
                "it points where the sweep folder was" if dangling else f"older than {_LOCK_GRACE_S:.0f} s")
    return True


def open_journal(path: str | Path) -> JournalStorage:
    """The Optuna storage of the journal at ``path``, a stale lock removed and its torn tail repaired first."""
    remove_stale_lock(path)
    repair_torn_tail(path)
    return JournalStorage(JournalFileBackend(str(path)))
