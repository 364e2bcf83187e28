"""The CASME II and SAMM readers on distributions the tests build: every sheet quirk, every error."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from _data_builders import CASME2_HEADER, SAMM_HEADER, casme2_dist, samm_dist, write_jpeg, write_sheet

from aullm_core.data import AUParseError, get_reader, list_frames, load_frames
from aullm_core.data.records import Annotation
from aullm_core.errors import DataError

CASME2_CLIPS = [
    {
        "subject": 1,
        "clip": "EP02_01f",
        "onset": 46,
        "apex": 59,
        "offset": 57 + 4,
        "aus": "1+2",
        "emotion": "surprise",
    },
    {
        "subject": "01",
        "clip": "EP03_02",
        "onset": 8,
        "apex": "/",
        "offset": 19,
        "aus": 4,
        "emotion": "disgust",
    },
    {"subject": 2.0, "clip": "EP02_01f", "onset": 95, "apex": None, "offset": 102, "aus": "4+L10"},
    {
        "subject": "sub3",
        "clip": "EP19_05",
        "onset": 1,
        "apex": 4,
        "offset": 9,
        "aus": "R12",
        "emotion": "happiness",
    },
]
SAMM_CLIPS = [
    {"subject": 6, "clip": "006_1_2", "onset": 5562, "apex": 5588, "offset": 5575, "aus": "R12 + R15"},
    {"subject": "006", "clip": "006_1_3", "onset": 99, "apex": 101, "offset": 108, "aus": "R14A"},
    {"subject": "7", "clip": "007_3_1", "onset": 2000, "apex": "/", "offset": 2011, "aus": 7},
    {
        "subject": 11.0,
        "clip": "011_2_4",
        "onset": 10,
        "apex": 12,
        "offset": 16,
        "aus": "4 + 7B",
        "emotion": "Anger",
    },
]


def _by_clip(table: list[Annotation]) -> dict[tuple[str, str], Annotation]:
    return {(a.subject, a.clip): a for a in table}


def test_casme2_quirks(tmp_path: Path) -> None:
    root = casme2_dist(tmp_path, CASME2_CLIPS)
    table = get_reader("casme2").read(root)
    clips = _by_clip(table)
    assert list(clips) == [
        ("sub01", "EP02_01f"),
        ("sub01", "EP03_02"),
        ("sub02", "EP02_01f"),
        ("sub03", "EP19_05"),
    ]
    first = clips["sub01", "EP02_01f"]
    assert (first.onset, first.apex, first.offset, first.aus, first.emotion) == (
        46,
        59,
        61,
        (1, 2),
        "surprise",
    )
    assert first.n_frames == 16 and len(first.frames) == 16
    assert clips["sub01", "EP03_02"].apex is None and clips["sub01", "EP03_02"].aus == (4,)
    assert clips["sub02", "EP02_01f"].apex is None and clips["sub02", "EP02_01f"].aus == (4, 10)
    assert clips["sub03", "EP19_05"].aus == (12,)
    assert table.sheet == root / "CASME2-coding-20140508.xlsx"
    frame = table.to_frame()
    assert list(frame.columns) == ["subject", "clip", "onset", "apex", "offset", "aus", "emotion", "n_frames"]
    assert frame["apex"].isna().tolist() == [False, True, True, False]


def test_casme2_frames_sorted_by_digits(tmp_path: Path) -> None:
    root = casme2_dist(
        tmp_path, [{"subject": 4, "clip": "EP01_01", "onset": 8, "apex": 9, "offset": 12, "aus": "4"}]
    )
    table = get_reader("casme2").read(root)
    names = [p.name for p in table[0].frames]
    assert names == ["img8.jpg", "img9.jpg", "img10.jpg", "img11.jpg", "img12.jpg"]  # not img10 < img8
    assert [p.name for p in list_frames(table[0].frames[0].parent)] == names


def test_longer_folder_is_cut_to_onset_offset(tmp_path: Path) -> None:
    clip = {"subject": 6, "clip": "006_1_2", "onset": 5562, "apex": 5565, "offset": 5567, "aus": "R12 + R15"}
    root = samm_dist(tmp_path, [clip])
    folder = root / "SAMM" / "006" / "006_1_2"
    for n in (5560, 5561, 5568, 5569, 5570):  # the folder holds a longer stretch of the video
        write_jpeg(folder / f"006_{n:05d}.jpg", 0)
    a = get_reader("samm").read(root)[0]
    assert a.n_frames == 6 and [p.name for p in a.frames] == [f"006_{n:05d}.jpg" for n in range(5562, 5568)]
    (folder / "006_05564.jpg").unlink()  # a gap inside onset..offset is still an error
    with pytest.raises(DataError, match="holds 10 frames, expected 6"):
        get_reader("samm").read(root)


def test_casme2_later_sheet_version_and_explicit_paths(tmp_path: Path) -> None:
    root = casme2_dist(tmp_path / "d", CASME2_CLIPS[:1], sheet_name="CASME2-coding-20170101.xlsx")
    assert get_reader("casme2").read(root).sheet.name == "CASME2-coding-20170101.xlsx"
    moved = tmp_path / "elsewhere"
    (root / "CASME2_RAW_selected").rename(moved)
    table = get_reader("casme2").read(
        tmp_path / "no-root", frames=moved, annotations=root / "CASME2-coding-20170101.xlsx"
    )
    assert table[0].frames[0].parent.parent.parent == moved


def test_samm_quirks(tmp_path: Path) -> None:
    clips = [dict(c) for c in SAMM_CLIPS]
    clips[0]["offset"] = 5600  # apex 5588 inside
    root = samm_dist(tmp_path, clips)
    table = get_reader("samm").read(root)
    got = _by_clip(table)
    assert list(got) == [("006", "006_1_2"), ("006", "006_1_3"), ("007", "007_3_1"), ("011", "011_2_4")]
    assert got["006", "006_1_2"].aus == (12, 15) and got["006", "006_1_2"].n_frames == 39
    assert got["006", "006_1_3"].aus == (14,)
    assert got["007", "007_3_1"].aus == (7,) and got["007", "007_3_1"].apex is None
    assert got["011", "011_2_4"].aus == (4, 7) and got["011", "011_2_4"].emotion == "Anger"
    assert got["006", "006_1_2"].frames[0].name == "006_05562.jpg"
    assert table.subjects == ["006", "007", "011"]


@pytest.mark.parametrize("preamble", [0, 13, 20])
def test_samm_header_found_after_any_preamble(tmp_path: Path, preamble: int) -> None:
    root = samm_dist(tmp_path, SAMM_CLIPS[1:2], preamble=preamble)
    assert [a.clip for a in get_reader("samm").read(root)] == ["006_1_3"]


def test_samm_columns_found_by_name_in_any_order(tmp_path: Path) -> None:
    header = list(SAMM_HEADER)
    header[7] = "Type"  # 'Micro' is called 'Type' in other versions
    root = samm_dist(tmp_path, SAMM_CLIPS[1:2], header=header)
    assert get_reader("samm").read(root)[0].aus == (14,)


def test_ambiguous_au_refused_then_resolved_by_overrides(tmp_path: Path) -> None:
    clips = [
        dict(SAMM_CLIPS[1]),
        {"subject": 6, "clip": "006_5_1", "onset": 1, "apex": 2, "offset": 4, "aus": "12 or 14"},
    ]
    root = samm_dist(tmp_path, clips)
    with pytest.raises(AUParseError) as err:
        get_reader("samm").read(root)
    message = str(err.value)
    assert "006_5_1" in message and "'12 or 14'" in message and "SAMM_Micro_FACS_Codes_v2.xlsx" in message
    assert "\n" not in message
    overrides = tmp_path / "fix.yaml"
    overrides.write_text("006_5_1: R12\n")
    table = get_reader("samm").read(root, overrides=overrides)
    assert _by_clip(table)["006", "006_5_1"].aus == (12,)
    assert _by_clip(table)["006", "006_1_3"].aus == (14,)  # untouched


def test_override_by_subject_and_clip(tmp_path: Path) -> None:
    root = casme2_dist(tmp_path, CASME2_CLIPS)
    overrides = tmp_path / "fix.yaml"
    overrides.write_text("sub02/EP02_01f: 4+7\n")
    clips = _by_clip(get_reader("casme2").read(root, overrides=overrides))
    assert clips["sub02", "EP02_01f"].aus == (4, 7)
    assert clips["sub01", "EP02_01f"].aus == (1, 2)  # same clip name, other subject: not overridden


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing_folder", "EP03_02 not found"),
        ("empty_folder", "holds no frame"),
        ("too_few_frames", "holds 11 frames, expected 12"),
        ("too_many_frames", "holds 13 frames, expected 12"),
    ],
)
def test_clip_folder_errors_and_lenient(tmp_path: Path, change: str, expected: str, caplog) -> None:
    clips = [dict(c) for c in CASME2_CLIPS]
    if change == "too_few_frames":
        clips[1]["n_frames"] = 11
    if change == "too_many_frames":
        clips[1]["n_frames"] = 13
        clips[1]["first"] = clips[1]["onset"] + 1  # more frames, yet the onset frame is missing
    root = casme2_dist(tmp_path, clips)
    folder = root / "CASME2_RAW_selected" / "sub01" / "EP03_02"
    if change in ("missing_folder", "empty_folder"):
        for frame in folder.iterdir():
            frame.unlink()
        if change == "missing_folder":
            folder.rmdir()
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(root)
    message = _one_line(err)
    assert expected in message and "sub01/EP03_02" in message and "row 3" in message
    with caplog.at_level(logging.WARNING, logger="aullm_core"):
        table = get_reader("casme2").read(root, lenient=True)
    assert [a.clip for a in table] == ["EP02_01f", "EP02_01f", "EP19_05"]
    assert len(table.skipped) == 1 and table.skipped[0].startswith("sub01/EP03_02:")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sub01/EP03_02" in w and expected in w for w in warnings)


def test_lenient_lists_each_clip_skipped(tmp_path: Path, caplog) -> None:
    clips = [dict(c) for c in CASME2_CLIPS]
    clips[0]["n_frames"] = 3
    clips[3]["aus"] = "12 or 14"
    root = casme2_dist(tmp_path, clips)
    with caplog.at_level(logging.WARNING, logger="aullm_core"):
        table = get_reader("casme2").read(root, lenient=True)
    assert [a.clip for a in table] == ["EP03_02", "EP02_01f"]
    assert [s.split(":")[0] for s in table.skipped] == ["sub01/EP02_01f", "sub03/EP19_05"]
    assert sum("skipped clip" in r.getMessage() for r in caplog.records) == 2


def test_missing_root_sheet_and_frames(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(tmp_path / "absent")
    assert "absent" in _one_line(err) and "root folder not found" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        get_reader("samm").read(tmp_path / "empty")
    assert "SAMM_Micro_FACS_Codes_v2.xlsx" in _one_line(err)
    root = casme2_dist(tmp_path / "d", CASME2_CLIPS[:1])
    (root / "CASME2_RAW_selected").rename(root / "moved")
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(root)
    assert "CASME2_RAW_selected" in _one_line(err) and "--frames" in str(err.value)
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(root, annotations=root / "nope.xlsx", frames=root / "moved")
    assert "nope.xlsx" in _one_line(err)


def test_wrong_columns(tmp_path: Path) -> None:
    header = list(CASME2_HEADER)
    header[3] = "Onset"
    root = casme2_dist(tmp_path / "c", CASME2_CLIPS[:1], header=header)
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(root)
    message = _one_line(err)
    assert "CASME2-coding-20140508.xlsx" in message and "column D" in message and "'OnsetFrame'" in message
    header = [h for h in SAMM_HEADER if h != "Action Units"]
    root = samm_dist(tmp_path / "s", [], header=header)
    with pytest.raises(DataError) as err:
        get_reader("samm").read(root)
    assert "'Action Units'" in _one_line(err) and "row 14" in str(err.value)
    write_sheet(tmp_path / "s" / "SAMM_Micro_FACS_Codes_v2.xlsx", [("no",), ("header", "here")])
    with pytest.raises(DataError, match="first cell is 'Subject'"):
        get_reader("samm").read(tmp_path / "s")


def test_not_an_xlsx(tmp_path: Path) -> None:
    root = casme2_dist(tmp_path, CASME2_CLIPS[:1])
    (root / "CASME2-coding-20140508.xlsx").write_bytes(b"not a zip file")
    with pytest.raises(DataError) as err:
        get_reader("casme2").read(root)
    assert "CASME2-coding-20140508.xlsx" in _one_line(err) and ".xlsx" in str(err.value)


def test_bad_cells_name_row_and_column(tmp_path: Path) -> None:
    clips = [dict(CASME2_CLIPS[0]), dict(CASME2_CLIPS[1])]
    clips[1]["onset"] = "eight"
    clips[1]["first"] = 8
    root = casme2_dist(tmp_path, clips)
    with pytest.raises(DataError, match=r"row 3 \(clip sub01/EP03_02\): OnsetFrame is 'eight'"):
        get_reader("casme2").read(root)
    clips = [dict(CASME2_CLIPS[0]), dict(CASME2_CLIPS[0])]
    root = casme2_dist(tmp_path / "dup", clips)
    with pytest.raises(DataError, match="repeats row 2"):
        get_reader("casme2").read(root)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'casme3': expected one of casme2, samm"):
        get_reader("casme3")
    assert get_reader("SAMM").name == "samm"


def test_load_frames(tmp_path: Path) -> None:
    for k, value in enumerate((10, 200)):
        write_jpeg(tmp_path / f"f{k}.jpg", value, size=(80, 40), color=True)
    paths = [tmp_path / "f0.jpg", tmp_path / "f1.jpg"]
    grey = load_frames(paths, size=16)
    assert grey.shape == (2, 16, 16) and grey.dtype == np.uint8
    assert abs(int(grey[0].mean()) - 10) <= 3 and abs(int(grey[1].mean()) - 200) <= 3
    colour = load_frames(paths, size=8, color=True, crop=(40, 0, 40, 40), draft=False)
    assert colour.shape == (2, 8, 8, 3)
    with pytest.raises(DataError, match="does not fit"):
        load_frames(paths, size=8, crop=(50, 0, 40, 40))


def test_crop_picks_the_region(tmp_path: Path) -> None:
    image = np.zeros((40, 80), np.uint8)
    image[:, 40:] = 255
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "half.png")
    for draft in (True, False):
        left = load_frames([tmp_path / "half.png"], size=8, crop=(0, 0, 36, 40), draft=draft)
        right = load_frames([tmp_path / "half.png"], size=8, crop=(44, 0, 36, 40), draft=draft)
        assert left.max() == 0 and right.min() == 255


def test_unreadable_jpeg(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "ok.jpg", 50)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError) as err:
        load_frames([tmp_path / "ok.jpg", tmp_path / "bad.jpg"])
    assert "bad.jpg" in _one_line(err) and "cannot decode" in str(err.value)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_frames([tmp_path / "cut.jpg"])


def test_a_one_frame_clip_is_read_with_a_warning_naming_it(tmp_path: Path, caplog) -> None:
    clips = [dict(c) for c in CASME2_CLIPS]
    clips[2].update(onset=40, apex=40, offset=40)
    root = casme2_dist(tmp_path, clips)
    with caplog.at_level(logging.WARNING, logger="aullm_core"):
        table = get_reader("casme2").read(root)
    assert len(table) == len(CASME2_CLIPS) and table[2].n_frames == 1
    warnings = [r.getMessage() for r in caplog.records if "one frame" in r.getMessage()]
    assert len(warnings) == 1 and "sub02/EP02_01f" in warnings[0] and "row 4" in warnings[0]
