"""Free space a sweep keeps in its folder: checked before Ray starts and while the sweep runs.

A disk that fills up in the middle of a write tears what is being written (Ray Tune's experiment
state, a fold record, the MLflow database). The sweep therefore stops itself, cleanly, while the
folder's file system still has ``min_free`` bytes, and says in one line how much is free and how much
it needs; ``--resume`` continues once space is freed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskReserve"]


@dataclass(frozen=True)
class DiskReserve:
    """``min_free`` bytes kept free on the file system holding ``path``."""

    path: Path
    min_free: int

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def problem(self) -> str | None:
        """One line naming the folder and the space, when less than ``min_free`` is free; else None."""
        free = self.free()
        if free >= self.min_free:
            return None
        return (f"{self.path}: {free / 2**20:.0f} MiB free on its disk, the sweep keeps at least "
                f"{self.min_free / 2**20:.0f} MiB (--min-free-mb): free space, then --resume")
