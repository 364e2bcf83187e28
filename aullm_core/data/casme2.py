"""CASME II as distributed: ``CASME2_RAW_selected/subXX/<Filename>/img<N>.jpg`` and its coding sheet.

The sheet (``CASME2-coding-20140508.xlsx`` or a later ``CASME2-coding-*.xlsx``) has its header on
row 1 and is read by column POSITION, because two header cells are blank:

    A Subject | B Filename | C (blank) | D OnsetFrame | E ApexFrame | F OffsetFrame | G (blank)
    | H Action Units | I Estimated Emotion

Subjects are numbers 1..26 in the sheet and ``subXX`` folders on disk; both become 'sub01' ids.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from aullm_core.data.annotations import (
    SheetRow,
    cell_text,
    normalise_header,
    read_sheet_rows,
)
from aullm_core.data.readers import NativeReader
from aullm_core.errors import DataError

__all__ = ["COLUMNS", "Casme2Reader", "casme2_subject"]

log = logging.getLogger(__name__)

#: (position, header) of the columns the reader uses; blank header cells sit at C and G.
COLUMNS: tuple[tuple[int, str], ...] = (
    (0, "Subject"),
    (1, "Filename"),
    (3, "OnsetFrame"),
    (4, "ApexFrame"),
    (5, "OffsetFrame"),
    (7, "Action Units"),
    (8, "Estimated Emotion"),
)
_LAYOUT = (
    "Subject, Filename, (blank), OnsetFrame, ApexFrame, OffsetFrame, (blank), Action Units, Estimated Emotion"
)


def casme2_subject(value: Any) -> str:
    """Sheet subject (1, '01', 'sub1', 'sub01') -> 'sub01'; raises ValueError on anything else."""
    text = cell_text(value).lower()
    match = re.fullmatch(r"(?:sub)?0*(\d+)", text)
    if not match:
        raise ValueError(f"subject {value!r} is not a CASME II subject number")
    return f"sub{int(match[1]):02d}"


class Casme2Reader(NativeReader):
    """Reads CASME II (``name = 'casme2'``). See the module docstring for the layout."""

    name = "casme2"
    sheet_name = "CASME2-coding-20140508.xlsx"
    sheet_pattern = "CASME2-coding-*.xlsx"
    title = "CASME II"
    frames_layout = "subXX/<Filename>/img<N>.jpg"
    time_columns = ("OnsetFrame", "ApexFrame", "OffsetFrame")
    frames_dir = "CASME2_RAW_selected"

    def _rows(self, sheet: Path) -> list[SheetRow]:
        rows = read_sheet_rows(sheet)
        if not rows:
            raise DataError(f"{sheet}: the first worksheet is empty (expected a header row: {_LAYOUT})")
        _check_header(sheet, rows[0][1])
        out = []
        for number, cells in rows[1:]:
            cells = tuple(cells) + (None,) * (9 - len(cells))
            if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
                continue
            clip = cell_text(cells[1])
            try:
                subject = casme2_subject(cells[0])
            except ValueError as err:
                raise DataError(f"{sheet} row {number} (clip {clip}): {err}") from None
            if not clip:
                raise DataError(f"{sheet} row {number}: Filename (column B) is empty")
            out.append(SheetRow(number, subject, clip, cells[3], cells[4], cells[5], cells[7], cells[8]))
        return out


def _check_header(sheet: Path, header: tuple[Any, ...]) -> None:
    for position, name in COLUMNS:
        found = header[position] if position < len(header) else None
        if normalise_header(found) != normalise_header(name):
            column = chr(ord("A") + position)
            raise DataError(
                f"{sheet}: row 1 column {column} is {found!r}, expected {name!r} "
                f"(columns are read by position: {_LAYOUT})"
            )
