"""AU cells, apex cells and overrides files as the real coding sheets write them."""

from __future__ import annotations

import pytest

from aullm_core.data.annotations import (
    AUParseError,
    load_overrides,
    parse_apex,
    parse_au_cell,
    parse_frame_number,
)
from aullm_core.errors import DataError


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (4, (4,)),  # a single AU stored as a number
        (12.0, (12,)),  # ... or as a float by the spreadsheet
        ("4+L10", (4, 10)),  # CASME II side prefix
        ("R12", (12,)),
        ("1+2", (1, 2)),
        ("L2+1", (1, 2)),  # sorted
        ("R12 + R15", (12, 15)),  # SAMM spaces
        ("R14A", (14,)),  # SAMM intensity letter
        ("4B + 7C + L43E", (4, 7, 43)),
        (" 4 + 7 ", (4, 7)),
        ("AU12+AU14", (12, 14)),
        ("4+4", (4,)),  # duplicates collapse
        ("4+", (4,)),  # a trailing '+'
        ("12?", (12,)),  # community rule: a single number in an odd token keeps its digits
    ],
)
def test_au_cells(cell: object, expected: tuple[int, ...]) -> None:
    assert parse_au_cell(cell, where="sheet.xlsx row 2") == expected


@pytest.mark.parametrize("cell", ["12 or 14", "R12 OR R14", "12/14"])
def test_alternatives_are_refused_not_glued(cell: str) -> None:
    with pytest.raises(AUParseError) as err:
        parse_au_cell(cell, where="SAMM.xlsx row 20 (clip 006_1_2)")
    message = str(err.value)
    assert "006_1_2" in message and repr(cell) in message and "\n" not in message
    assert "1214" not in message


@pytest.mark.parametrize("cell", [None, "", "  ", "x", "12 14", 4.5, "R", True, 0, 140])
def test_bad_au_cells(cell: object) -> None:
    with pytest.raises(AUParseError, match="row 7"):
        parse_au_cell(cell, where="sheet.xlsx row 7")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [(None, None), ("/", None), (" / ", None), ("-", None), (57, 57), (57.0, 57), ("57", 57)],
)
def test_apex_cells(cell: object, expected: int | None) -> None:
    assert parse_apex(cell, where="w", column="ApexFrame") == expected


@pytest.mark.parametrize("cell", [None, "abc", -3, 2.5])
def test_bad_frame_numbers(cell: object) -> None:
    with pytest.raises(DataError, match="OnsetFrame"):
        parse_frame_number(cell, where="sheet.xlsx row 3", column="OnsetFrame")


def test_overrides_file(tmp_path) -> None:
    path = tmp_path / "fix.yaml"
    path.write_text("006_1_2: '12'\nsub01/EP02_01f: [4, 7]\n007_2_3: 14\n")
    # keys stay text: plain YAML 1.1 would read 006_1_2 as the octal integer 394
    assert load_overrides(path) == {"006_1_2": "12", "sub01/EP02_01f": "4+7", "007_2_3": "14"}
    assert load_overrides(None) == {}


def test_bad_overrides_files(tmp_path) -> None:
    with pytest.raises(DataError, match="missing.yaml"):
        load_overrides(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="bad.yaml.*mapping"):
        load_overrides(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(DataError, match="broken.yaml.*YAML"):
        load_overrides(broken)
