"""The dataset readers: what a reader is (``Reader``), what CASME II's and SAMM's share
(``NativeReader``: find the sheet and the frame folder, check every clip) and the lookup by name.

Each dataset's own layout and sheet parsing live in ``casme2.py`` and ``samm.py``; the sheet-cell
parsing both use (AU codes, frame numbers, overrides) in ``annotations.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aullm_core.data.annotations import SheetRow, assemble_table, find_sheet
from aullm_core.data.records import DATASETS, AnnotationTable
from aullm_core.errors import DataError

__all__ = ["NativeReader", "Reader", "get_reader"]


class Reader(Protocol):
    """Reads one dataset as distributed. Errors are ``DataError`` with a one-line message."""

    name: str

    def read(
        self,
        root: Path,
        *,
        frames: Path | None = None,
        annotations: Path | None = None,
        overrides: Path | None = None,
        lenient: bool = False,
    ) -> AnnotationTable: ...


class NativeReader:
    """What both readers share: locate the sheet and the frame folder, then check every clip.

    A subclass names its layout (``name``, ``title``, ``sheet_name``, ``sheet_pattern``,
    ``frames_dir``, ``frames_layout``, ``time_columns``) and parses its own sheet in ``_rows``.
    """

    name: str
    title: str
    sheet_name: str
    sheet_pattern: str
    frames_dir: str
    frames_layout: str
    time_columns: tuple[str, str, str]

    def read(
        self,
        root: Path,
        *,
        frames: Path | None = None,
        annotations: Path | None = None,
        overrides: Path | None = None,
        lenient: bool = False,
    ) -> AnnotationTable:
        """Parse the coding sheet and check every clip folder; ``DataError`` on bad input."""
        root = Path(root)
        if (frames is None or annotations is None) and not root.is_dir():
            raise DataError(
                f"{root}: {self.title} root folder not found (expected the folder holding "
                f"{self.frames_dir}/ and {self.sheet_name})"
            )
        sheet = (
            Path(annotations)
            if annotations is not None
            else find_sheet(root, self.sheet_name, self.sheet_pattern, self.title)
        )
        frames_root = Path(frames) if frames is not None else root / self.frames_dir
        if not frames_root.is_dir():
            raise DataError(
                f"{frames_root}: {self.title} frame folder not found (expected {self.frames_layout}; "
                f"pass --frames)"
            )
        return assemble_table(
            self._rows(sheet),
            sheet=sheet,
            clip_folder=lambda r: frames_root / r.subject / r.clip,
            overrides=overrides,
            lenient=lenient,
            columns=self.time_columns,
        )

    def _rows(self, sheet: Path) -> list[SheetRow]:
        raise NotImplementedError


def get_reader(name: str) -> Reader:
    """The reader for ``name`` ('casme2' or 'samm', case ignored); ``DataError`` for any other name."""
    from aullm_core.data.casme2 import Casme2Reader
    from aullm_core.data.samm import SammReader

    readers: dict[str, type[NativeReader]] = {"casme2": Casme2Reader, "samm": SammReader}
    key = str(name).strip().lower()
    if key not in readers:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return readers[key]()
