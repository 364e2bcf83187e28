"""Coding-sheet parsing shared by the readers: AU cells, frame numbers, subject ids, sheet rows.

The sheets are Excel files as distributed (method.md section 6). Their quirks are handled here:
AU cells written as numbers or as '+'-joined strings with spaces, L/R side prefixes and intensity
letters A-E; apex cells that are blank or '/'; subjects stored as numbers or text. A cell listing
alternatives ("12 or 14") is never guessed: it is refused unless an overrides file resolves it.
Every error is a ``DataError`` whose one-line message names the sheet, the row or clip and the cell.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aullm_core.data.preprocess import list_frames
from aullm_core.data.records import Annotation, AnnotationTable
from aullm_core.errors import DataError, one_line

__all__ = [
    "AUParseError",
    "SheetRow",
    "assemble_table",
    "cell_text",
    "find_sheet",
    "load_overrides",
    "normalise_header",
    "parse_apex",
    "parse_au_cell",
    "parse_frame_number",
    "read_sheet_rows",
]

log = logging.getLogger(__name__)

#: One AU token: optional 'AU', optional side (L/R), the AU number, optional intensity letter A-E.
_TOKEN = re.compile(r"^(?:AU\s*)?(?P<side>[LR])?\s*(?P<au>\d+)\s*(?P<intensity>[A-E])?$", re.IGNORECASE)
_ALTERNATIVE = re.compile(r"\bor\b|/", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_NO_APEX = {"", "/", "-", "--", "n/a", "na", "none"}


class AUParseError(DataError):
    """An AU cell that cannot be turned into a set of AU numbers without a human decision."""


def parse_au_cell(value: Any, *, where: str) -> tuple[int, ...]:
    """Parse one 'Action Units' cell into sorted unique AU numbers.

    Rule: a number is one AU; a string is split on '+', each token keeps its AU number, dropping a
    side prefix (``L10``, ``R12``) and an intensity letter (``R14A``). A token that is not of that
    form falls back to the community rule (keep its digits) only when it holds exactly one number;
    a cell listing alternatives ("12 or 14", "12/14") raises ``AUParseError``.

    Example:
        >>> parse_au_cell("R12 + R15", where="clip 006_1_2")
        (12, 15)
        >>> parse_au_cell(4.0, where="clip EP02_01f")
        (4,)

    Args:
        value: the cell as openpyxl returns it (int, float, str or None).
        where: what to name in an error message, e.g. "sheet.xlsx row 5 (clip EP02_01f)".
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AUParseError(f"{where}: the Action Units cell is empty (expected e.g. '4+L10')")
    if isinstance(value, bool):
        raise AUParseError(f"{where}: Action Units cell {value!r} is not an AU code")
    if isinstance(value, int):
        return (_check_au(value, value, where),)
    if isinstance(value, float):
        if not value.is_integer():
            raise AUParseError(f"{where}: Action Units cell {value!r} is not a whole AU number")
        return (_check_au(int(value), value, where),)
    text = str(value).strip()
    if _ALTERNATIVE.search(text):
        raise AUParseError(
            f"{where}: Action Units cell {text!r} lists alternatives; resolve it in an overrides file "
            f"(YAML: clip -> AU string, passed with --overrides)"
        )
    aus: set[int] = set()
    for token in text.split("+"):
        token = token.strip()
        if not token:
            continue
        aus.add(_check_au(_token_au(token, text, where), text, where))
    if not aus:
        raise AUParseError(f"{where}: Action Units cell {text!r} holds no AU number")
    return tuple(sorted(aus))


def _token_au(token: str, cell: str, where: str) -> int:
    match = _TOKEN.match(token)
    if match:
        return int(match["au"])
    numbers = re.findall(r"\d+", token)
    if len(numbers) == 1:
        log.debug("%s: AU token %r read as AU%s (digits kept)", where, token, numbers[0])
        return int(numbers[0])
    if not numbers:
        raise AUParseError(f"{where}: Action Units cell {cell!r}: token {token!r} has no AU number")
    raise AUParseError(
        f"{where}: Action Units cell {cell!r}: token {token!r} holds several numbers {numbers}; "
        f"resolve it in an overrides file (--overrides)"
    )


def _check_au(au: int, cell: Any, where: str) -> int:
    if not 0 < au < 100:
        raise AUParseError(f"{where}: Action Units cell {cell!r}: AU{au} is not an AU number (1..99)")
    return au


def parse_frame_number(value: Any, *, where: str, column: str) -> int:
    """A frame number cell (int, integral float or digit string) as an int."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: {column} is {value!r}, expected a frame number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise DataError(f"{where}: {column} is {value!r}, expected a frame number")
    if number < 0:
        raise DataError(f"{where}: {column} is {number}, expected a frame number >= 0")
    return number


def parse_apex(value: Any, *, where: str, column: str) -> int | None:
    """An apex cell: None where the sheet has none (blank, '/', '-'), else a frame number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_APEX):
        return None
    return parse_frame_number(value, where=where, column=column)


def normalise_header(value: Any) -> str:
    """Lower-case letters and digits only: 'Onset Frame' and 'OnsetFrame' both give 'onsetframe'."""
    return re.sub(r"[^a-z0-9]", "", str(value).lower()) if value is not None else ""


def load_overrides(path: Path | None) -> dict[str, Any]:
    """Read an overrides YAML file: a mapping clip -> AU string (or number, or list of numbers).

    Keys are clip names (the sheet's Filename) or 'subject/clip' where a clip name repeats across
    subjects. Values are parsed with the same rules as sheet cells when they are used.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: overrides file not found (expected YAML: clip -> AU string)")
    try:
        # BaseLoader keeps every scalar a string: YAML 1.1 would read the SAMM clip 006_1_2 as the
        # octal integer 394 and 1_2 as 12.
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid YAML ({one_line(err)})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a YAML mapping clip -> AU string, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = "+".join(str(v) for v in value)
        out[str(key).strip()] = value
    return out


def read_sheet_rows(path: Path) -> list[tuple[int, tuple[Any, ...]]]:
    """(1-based row number, cell values) of every row of the first worksheet of an .xlsx file."""
    from openpyxl import load_workbook  # imported here: only the readers need it

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: coding sheet not found")
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, KeyError, InvalidFileException...
        raise DataError(f"{path}: cannot read as an .xlsx workbook ({type(err).__name__}: {err})") from err
    try:
        sheet = workbook.worksheets[0]
        return [(number, tuple(row)) for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)]
    except DataError:
        raise
    except Exception as err:  # a damaged sheet part fails only when read
        raise DataError(f"{path}: cannot read the first worksheet ({type(err).__name__}: {err})") from err
    finally:
        workbook.close()


@dataclass(frozen=True)
class SheetRow:
    """One data row of a coding sheet, cells still raw; ``row`` is the 1-based sheet row."""

    row: int
    subject: str
    clip: str
    onset: Any
    apex: Any
    offset: Any
    aus: Any
    emotion: Any


def assemble_table(
    rows: list[SheetRow],
    *,
    sheet: Path,
    clip_folder: Callable[[SheetRow], Path],
    overrides: Path | None,
    lenient: bool,
    columns: tuple[str, str, str] = ("OnsetFrame", "ApexFrame", "OffsetFrame"),
) -> AnnotationTable:
    """Check each sheet row against its frame folder and build the annotation table.

    A row whose cells cannot be read, whose clip folder is missing or empty, or whose frame count
    differs from offset - onset + 1 raises ``DataError``; with ``lenient`` it is skipped instead and
    a warning names it (one per clip). A folder holding MORE frames is accepted when its frame
    numbers include every frame of onset..offset: those are the clip.
    """
    resolved = load_overrides(overrides)
    used: set[str] = set()
    seen: dict[tuple[str, str], int] = {}
    table: list[Annotation] = []
    skipped: list[str] = []
    for r in rows:
        where = f"{sheet} row {r.row} (clip {r.subject}/{r.clip})"
        try:
            if (r.subject, r.clip) in seen:
                raise DataError(f"{where}: clip repeats row {seen[r.subject, r.clip]}")
            seen[r.subject, r.clip] = r.row
            table.append(_annotation(r, where, sheet, clip_folder, resolved, overrides, used, columns))
        except DataError as err:
            if not lenient:
                raise
            reason = str(err).replace(f"{where}: ", "")
            skipped.append(f"{r.subject}/{r.clip}: {reason}")
            log.warning("skipped clip %s/%s: %s", r.subject, r.clip, reason)
    unused = sorted(set(resolved) - used)
    if unused:
        log.warning("%s: overrides for unknown clips ignored: %s", overrides, ", ".join(unused))
    if not table:
        raise DataError(f"{sheet}: no usable clip found ({len(rows)} rows, {len(skipped)} skipped)")
    return AnnotationTable(table, skipped=skipped, sheet=sheet, overrides=overrides)


def _annotation(
    r: SheetRow,
    where: str,
    sheet: Path,
    clip_folder: Callable[[SheetRow], Path],
    resolved: dict[str, Any],
    overrides: Path | None,
    used: set[str],
    columns: tuple[str, str, str],
) -> Annotation:
    onset = parse_frame_number(r.onset, where=where, column=columns[0])
    apex = parse_apex(r.apex, where=where, column=columns[1])
    offset = parse_frame_number(r.offset, where=where, column=columns[2])
    if offset < onset:
        raise DataError(f"{where}: {columns[2]} {offset} is before {columns[0]} {onset}")
    if offset == onset:
        log.warning("%s: one frame (%s = %s = %d): no motion to see; every sampled frame repeats it",
                    where, columns[0], columns[2], onset)
    if apex is not None and not onset <= apex <= offset:
        log.warning("%s: %s %d lies outside %d..%d", where, columns[1], apex, onset, offset)
    key = next((k for k in (f"{r.subject}/{r.clip}", r.clip) if k in resolved), None)
    if key is not None:
        used.add(key)
        aus = parse_au_cell(resolved[key], where=f"{overrides} (override for clip {key})")
    else:
        aus = parse_au_cell(r.aus, where=where)
    folder = clip_folder(r)
    if not folder.is_dir():
        raise DataError(f"{where}: frame folder {folder} not found")
    frames = list_frames(folder)
    if not frames:
        raise DataError(f"{where}: frame folder {folder} holds no frame (.jpg/.png/.bmp)")
    expected = offset - onset + 1
    if len(frames) > expected:
        frames = _onset_to_offset(frames, onset, offset) or frames
    if len(frames) != expected:
        raise DataError(
            f"{where}: frame folder {folder} holds {len(frames)} frames, expected {expected} "
            f"(onset {onset} .. offset {offset})"
        )
    emotion = "" if r.emotion is None else str(r.emotion).strip()
    return Annotation(r.subject, r.clip, onset, apex, offset, aus, emotion, len(frames), tuple(frames))


def _onset_to_offset(frames: list[Path], onset: int, offset: int) -> list[Path] | None:
    """The frames numbered onset..offset (by the last number in each name), if all are present.

    A folder holding a longer stretch of the video than the sheet's clip is then read as the clip;
    None when some frame of onset..offset is missing (the caller reports the count mismatch).
    """
    numbered = {}
    for frame in frames:
        digits = _DIGITS.findall(frame.stem)
        if digits:
            numbered.setdefault(int(digits[-1]), frame)
    wanted = range(onset, offset + 1)
    if not all(n in numbered for n in wanted):
        return None
    log.debug("%s: %d frames, using %d..%d", frames[0].parent, len(frames), onset, offset)
    return [numbered[n] for n in wanted]


def find_sheet(root: Path, default: str, pattern: str, dataset: str) -> Path:
    """The coding sheet under ``root``: ``default`` if present, else the last name matching ``pattern``."""
    candidate = root / default
    if candidate.is_file():
        return candidate
    later = sorted(root.glob(pattern))
    if later:
        log.info("%s: using coding sheet %s", dataset, later[-1].name)
        return later[-1]
    raise DataError(
        f"{root}: {dataset} coding sheet not found (expected {default} or {pattern}; pass --annotations)"
    )


def cell_text(value: Any) -> str:
    """A cell holding an id (subject, clip name) as text: integral floats lose their '.0'."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
