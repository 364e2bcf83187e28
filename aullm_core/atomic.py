"""Whole-or-nothing file writes: a reader sees the old file or the new one, never a partial one.

Every write goes to a uniquely named temporary file beside its target (same file system, so the
final rename is atomic; unique, so concurrent writers never share a temporary), and the temporary
is removed whatever happens.

    >>> with atomic_path(Path("cache.h5")) as tmp:   # doctest: +SKIP
    ...     write_hdf5(tmp)                           # a library that wants a path
    >>> atomic_write_text(Path("result.json"), "{}")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "sibling_temp", "write_synced"]


def sibling_temp(path: Path) -> Path:
    """A new, empty, uniquely named file ``.<name>.*.tmp`` in ``path``'s folder (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


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
