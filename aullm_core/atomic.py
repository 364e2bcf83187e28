"""Whole-or-nothing file writes: a reader sees the old file or the new one, never a partial one.

Every write goes to a uniquely named temporary file beside its target (same file system, so the
final rename is atomic; unique, so concurrent writers never share a temporary), and the temporary
is removed whatever happens. A folder (an exported model) is built in a staging folder beside it
and swapped in whole (``replace_folder``).

    >>> with atomic_path(Path("cache.h5")) as tmp:   # doctest: +SKIP
    ...     write_hdf5(tmp)                           # a library that wants a path
    >>> atomic_write_text(Path("result.json"), "{}")  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "process_alive", "remove_stale_staging",
    "remove_stale_temps", "replace_folder", "sibling_temp", "staging_folder", "write_synced",
]


def sibling_temp(path: Path) -> Path:
    """A new, empty, uniquely named file ``.<name>.<pid>.*.tmp`` in ``path``'s folder (created if missing);
    the pid lets ``remove_stale_temps`` tell a dead writer's leftover from a live writer's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that died (a killed process cannot clean up)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk before returning."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; it replaces ``path`` when the block ends without an error."""
    tmp = sibling_temp(Path(path))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` (flushed to the disk first); returns ``path``."""
    with atomic_path(path) as tmp:
        write_synced(tmp, data)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` in UTF-8; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


_STAGING = ".{name}.staging-{pid}-"


def staging_folder(target: Path) -> Path:
    """A new empty folder beside ``target`` to build its replacement in (``replace_folder`` swaps it in)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=_STAGING.format(name=target.name, pid=os.getpid())))


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove staging folders of ``target`` left by processes that died (killed mid-write); returns them."""
    target = Path(target)
    removed = []
    for path in target.parent.glob(f".{target.name}.staging-*"):
        try:
            pid = int(path.name.split("staging-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EXDEV):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def replace_folder(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` in place of ``target`` whole: atomically exchanged where the system can
    (``staging`` then holds the old folder, for the caller to delete), else the old one is renamed aside
    first, so at every moment one complete folder is at ``target`` or beside it."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    aside.rmdir()
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)
