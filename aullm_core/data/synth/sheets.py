"""Coding sheets of the synthetic datasets, written with openpyxl in each real sheet's layout.

The quirks are reproduced on purpose so the synthetic data exercises the real readers:
CASME II has blank header cells (columns C and G), single AUs stored as numbers, '+'-joined AU
strings with L/R prefixes and apex cells that are '/' or blank; SAMM has preamble rows above
its header, subjects written as numbers or as 3-digit text, AU strings joined by ' + ' with side
prefixes and intensity letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from openpyxl import Workbook

from aullm_core.atomic import atomic_path
from aullm_core.data.synth.clips import ClipPlan

__all__ = ["CASME2_HEADER", "SAMM_HEADER", "SAMM_PREAMBLE", "write_casme2_sheet", "write_samm_sheet"]

# fmt: off
CASME2_HEADER = (
    "Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
    "Estimated Emotion",
)
SAMM_HEADER = (
    "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
    "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes",
)
#: 13 rows above the SAMM header, as in the v2 sheet (content is ours).
SAMM_PREAMBLE: tuple[tuple[str | None, ...], ...] = (
    ("SAMM micro-movement FACS codes (synthetic data written by aullm; layout of the v2 sheet)",),
    (None,),
    ("Objective classes:",),
    ("1", "Action units related to happiness"),
    ("2", "Action units related to surprise"),
    ("3", "Action units related to anger"),
    ("4", "Action units related to disgust"),
    ("5", "Action units related to sadness"),
    ("6", "Action units related to fear"),
    ("7", "Other"),
    (None,),
    ("Notes: frame numbers are absolute; AU intensity letters A (trace) to E (maximum).",),
    (None,),
)
# fmt: on

_OBJECTIVE = {"Happiness": 1, "Surprise": 2, "Anger": 3, "Contempt": 3, "Disgust": 4, "Sadness": 5, "Fear": 6}


def _apex(plan: ClipPlan) -> int | str | None:
    if plan.apex_cell == "/":
        return "/"
    if plan.apex_cell == "blank":
        return None
    return plan.onset + plan.apex_index


def _save(workbook: Workbook, path: Path) -> None:
    with atomic_path(path) as tmp:
        workbook.save(tmp)


def write_casme2_sheet(path: Path, plans: Sequence[ClipPlan], subject_numbers: Sequence[int]) -> None:
    """CASME II layout: header on row 1, blank header cells at C and G, subjects as 1..26."""
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(CASME2_HEADER)
    for plan in plans:
        if len(plan.codes) == 1 and not plan.codes[0].side:
            aus: int | str = plan.codes[0].au  # a single AU is stored as a number
        else:
            aus = "+".join(c.token for c in plan.codes)
        offset = plan.onset + plan.n_frames - 1
        sheet.append(
            (
                subject_numbers[plan.subject],
                plan.clip,
                None,
                plan.onset,
                _apex(plan),
                offset,
                None,
                aus,
                plan.emotion,
            )
        )
    _save(workbook, path)


def write_samm_sheet(
    path: Path, plans: Sequence[ClipPlan], subject_ids: Sequence[str], rng: np.random.Generator
) -> None:
    """SAMM layout: preamble rows, then the header whose first cell is 'Subject', then the clips."""
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "FACS codes"
    for row in SAMM_PREAMBLE:
        sheet.append(row)
    sheet.append(SAMM_HEADER)
    for plan in plans:
        subject_id = subject_ids[plan.subject]
        subject: int | str = int(subject_id) if rng.uniform() < 0.5 else subject_id
        code = plan.codes[0]
        if len(plan.codes) == 1 and not code.side and not code.intensity and rng.uniform() < 0.5:
            aus: int | str = code.au
        else:
            aus = " + ".join(c.token for c in plan.codes)
        offset = plan.onset + plan.n_frames - 1
        inducement = int(plan.clip.split("_")[1])
        sheet.append(
            (
                subject,
                plan.clip,
                inducement,
                plan.onset,
                _apex(plan),
                offset,
                plan.n_frames,
                "Micro - 1/2",
                aus,
                plan.emotion,
                _OBJECTIVE.get(plan.emotion, 7),
                None,
            )
        )
    _save(workbook, path)
