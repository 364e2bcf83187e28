"""SAMM as distributed: ``SAMM/<Subject>/<Filename>/<Subject>_<frame 5 digits>.jpg`` and its sheet.

The sheet ``SAMM_Micro_FACS_Codes_v2.xlsx`` opens with preamble rows (13 in v2); the header is
the first row whose first cell is 'Subject', and columns are found by their header names
(spacing and case ignored): Subject, Filename, Onset Frame, Apex Frame, Offset Frame,
Action Units, Estimated Emotion. Subjects may be numbers (6) or text ('006'); both become '006'.
"""

from __future__ import annotations

import logging
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

__all__ = ["REQUIRED_COLUMNS", "SammReader", "samm_subject"]

log = logging.getLogger(__name__)

#: Header names the reader needs, as written in the v2 sheet.
REQUIRED_COLUMNS = (
    "Subject",
    "Filename",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Action Units",
    "Estimated Emotion",
)
#: How far down the header row may sit (v2 has 13 preamble rows).
MAX_HEADER_ROW = 50


def samm_subject(value: Any) -> str:
    """Sheet subject (6, 6.0, '6', '006') -> '006'; raises ValueError on anything else."""
    text = cell_text(value)
    if not text.isdigit():
        raise ValueError(f"subject {value!r} is not a SAMM subject number")
    return f"{int(text):03d}"


class SammReader(NativeReader):
    """Reads SAMM (``name = 'samm'``). See the module docstring for the layout."""

    name = "samm"
    sheet_name = "SAMM_Micro_FACS_Codes_v2.xlsx"
    sheet_pattern = "SAMM_Micro_FACS_Codes_v*.xlsx"
    title = "SAMM"
    frames_layout = "<Subject>/<Filename>/<Subject>_<frame>.jpg"
    time_columns = ("Onset Frame", "Apex Frame", "Offset Frame")
    frames_dir = "SAMM"

    def _rows(self, sheet: Path) -> list[SheetRow]:
        rows = read_sheet_rows(sheet)
        header_at = next(
            (
                i
                for i, (_, cells) in enumerate(rows[:MAX_HEADER_ROW])
                if cells and normalise_header(cells[0]) == "subject"
            ),
            None,
        )
        if header_at is None:
            raise DataError(
                f"{sheet}: no header row found (expected a row whose first cell is 'Subject' "
                f"within the first {MAX_HEADER_ROW} rows)"
            )
        header_row, header = rows[header_at]
        position = {normalise_header(h): i for i, h in reversed(list(enumerate(header))) if h is not None}
        missing = [name for name in REQUIRED_COLUMNS if normalise_header(name) not in position]
        if missing:
            raise DataError(
                f"{sheet}: header row {header_row} lacks column(s) {', '.join(repr(m) for m in missing)} "
                f"(expected {', '.join(REQUIRED_COLUMNS)})"
            )
        col = {name: position[normalise_header(name)] for name in REQUIRED_COLUMNS}
        out = []
        for number, cells in rows[header_at + 1 :]:
            cells = tuple(cells) + (None,) * (len(header) - len(cells))
            subject_cell, clip = cells[col["Subject"]], cell_text(cells[col["Filename"]])
            if cell_text(subject_cell) == "" and clip == "":
                continue  # blank rows and notes below the table
            try:
                subject = samm_subject(subject_cell)
            except ValueError as err:
                raise DataError(f"{sheet} row {number} (clip {clip}): {err}") from None
            if not clip:
                raise DataError(f"{sheet} row {number}: Filename is empty")
            out.append(
                SheetRow(
                    number,
                    subject,
                    clip,
                    cells[col["Onset Frame"]],
                    cells[col["Apex Frame"]],
                    cells[col["Offset Frame"]],
                    cells[col["Action Units"]],
                    cells[col["Estimated Emotion"]],
                )
            )
        return out
