"""Small native-format datasets built by the data tests: coding sheets (openpyxl) and JPEG frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from openpyxl import Workbook
from PIL import Image

# fmt: off
CASME2_HEADER = (
    "Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units", "Estimated Emotion",
)
SAMM_HEADER = (
    "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration", "Micro",
    "Action Units", "Estimated Emotion", "Objective Classes", "Notes",
)
# fmt: on


def write_jpeg(path: Path, value: int, size: tuple[int, int] = (24, 16), color: bool = False) -> None:
    """A frame whose mean grey level is about ``value`` (so tests can tell frames apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if color else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8)).save(path, "JPEG", quality=95)


def write_sheet(path: Path, rows: Sequence[Sequence[Any]]) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def casme2_dist(
    root: Path,
    clips: Sequence[dict[str, Any]],
    *,
    header: Sequence[Any] = CASME2_HEADER,
    sheet_name: str = "CASME2-coding-20140508.xlsx",
) -> Path:
    """A CASME II distribution: the sheet plus ``CASME2_RAW_selected/subXX/<clip>/img<N>.jpg``.

    Each clip dict holds the sheet cells (subject, clip, onset, apex, offset, aus, emotion) and
    optionally ``folder`` (subject folder name, default 'subXX'), ``n_frames`` (frames written,
    default offset - onset + 1) and ``first`` (number of the first frame file, default onset).
    """
    rows = [header]
    for c in clips:
        rows.append(
            (
                c["subject"],
                c["clip"],
                None,
                c["onset"],
                c.get("apex"),
                c["offset"],
                None,
                c["aus"],
                c.get("emotion", "others"),
            )
        )
        number = str(c["subject"]).removeprefix("sub")
        folder = root / "CASME2_RAW_selected" / c.get("folder", f"sub{int(float(number)):02d}") / c["clip"]
        first = c.get("first", c["onset"])  # frame numbering, when the onset cell is not a number
        count = c["n_frames"] if "n_frames" in c else c["offset"] - first + 1
        for k in range(count):
            write_jpeg(folder / f"img{first + k}.jpg", (10 * k) % 250)
    (root / "CASME2_RAW_selected").mkdir(parents=True, exist_ok=True)
    write_sheet(root / sheet_name, rows)
    return root


def samm_dist(
    root: Path,
    clips: Sequence[dict[str, Any]],
    *,
    preamble: int = 13,
    header: Sequence[Any] = SAMM_HEADER,
    sheet_name: str = "SAMM_Micro_FACS_Codes_v2.xlsx",
) -> Path:
    """A SAMM distribution: the sheet (``preamble`` rows first), ``SAMM/<sss>/<clip>/<sss>_<NNNNN>.jpg``."""
    rows: list[Sequence[Any]] = [(f"preamble line {i}",) if i % 3 else (None,) for i in range(preamble)]
    rows.append(header)
    for c in clips:
        subject3 = f"{int(float(c['subject'])):03d}"
        rows.append(
            (
                c["subject"],
                c["clip"],
                1,
                c["onset"],
                c.get("apex"),
                c["offset"],
                None,
                "Micro - 1/2",
                c["aus"],
                c.get("emotion", "Other"),
                7,
                None,
            )
        )
        folder = root / "SAMM" / subject3 / c["clip"]
        count = c["n_frames"] if "n_frames" in c else c["offset"] - c["onset"] + 1
        for k in range(count):
            write_jpeg(folder / f"{subject3}_{c['onset'] + k:05d}.jpg", (10 * k) % 250)
    (root / "SAMM").mkdir(parents=True, exist_ok=True)
    write_sheet(root / sheet_name, rows)
    return root
