"""Synthetic datasets: read by the real readers, real-like statistics and sheet quirks, local AU motion."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from openpyxl import load_workbook

from aullm_core.data import AU_SETS, get_reader, load_frames, write_synthetic
from aullm_core.data.synth import STYLES, plan_clips
from aullm_core.data.synth.clips import ClipPlan, Difficulty, render_clip
from aullm_core.data.synth.face import AU_MOTIONS, AU_SHADING, motion_field, random_geometry, render_neutral
from aullm_core.data.synth.sheets import write_samm_sheet
from aullm_core.errors import DataError

#: Positive counts of the real datasets (method.md section 1).
REAL = {
    "casme2": (256, {1: 26, 2: 22, 4: 130, 7: 39, 12: 34, 14: 27, 15: 16, 17: 25}),
    "samm": (159, {2: 18, 4: 23, 7: 46, 12: 28}),
}


@pytest.fixture(scope="module")
def casme2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        "casme2",
        tmp_path_factory.mktemp("s") / "casme2",
        subjects=3,
        clips_per_subject=2,
        seed=5,
        progress=False,
    )


@pytest.fixture(scope="module")
def samm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        "samm",
        tmp_path_factory.mktemp("s") / "samm",
        subjects=3,
        clips_per_subject=2,
        seed=5,
        progress=False,
        frame_size=(200, 150),
    )


def test_casme2_style_is_read_by_the_real_reader(casme2_root: Path) -> None:
    table = get_reader("casme2").read(casme2_root)
    assert len(table) == 6 and table.subjects == ["sub01", "sub02", "sub03"]
    assert (casme2_root / "CASME2-coding-20140508.xlsx").is_file()
    for a in table:
        assert 30 <= a.n_frames <= 110 and a.frames[0].name == f"img{a.onset}.jpg"
        assert a.frames[0].parent == casme2_root / "CASME2_RAW_selected" / a.subject / a.clip
    clip = load_frames(table[0].frames[:2], size=32, color=True, draft=False)
    assert clip.shape == (2, 32, 32, 3) and clip.std() > 10  # a drawn face, not a flat image
    from PIL import Image

    with Image.open(table[0].frames[0]) as image:
        assert image.mode == "RGB" and image.size == (140, 170)
    sheet = load_workbook(casme2_root / "CASME2-coding-20140508.xlsx").active
    header = [c.value for c in sheet[1]]
    assert header[2] is None and header[6] is None and header[3] == "OnsetFrame"  # blank header cells


def test_samm_style_is_read_by_the_real_reader(samm_root: Path) -> None:
    table = get_reader("samm").read(samm_root)
    assert len(table) == 6 and all(len(s) == 3 and s.isdigit() for s in table.subjects)
    a = table[0]
    assert a.frames[0].name == f"{a.subject}_{a.onset:05d}.jpg"
    from PIL import Image

    with Image.open(a.frames[0]) as image:
        assert image.mode == "L" and image.size == (200, 150)
    sheet = load_workbook(samm_root / "SAMM_Micro_FACS_Codes_v2.xlsx").active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[13][0] == "Subject" and all(r[0] != "Subject" for r in rows[:13])  # 13 preamble rows
    manifest = json.loads((samm_root / "synth.json").read_text())
    assert manifest["seed"] == 5 and manifest["style"]["width"] == 200


@pytest.mark.parametrize("style", ["casme2", "samm"])
def test_au_frequencies_close_to_the_real_ones(style: str) -> None:
    n_real, counts = REAL[style]
    _, plans = plan_clips(STYLES[style], subjects=n_real, clips_per_subject=1, seed=3)
    got = Counter(au for p in plans for au in p.aus)
    for au, real in counts.items():
        assert abs(got[au] - real) <= max(3, 0.15 * real), (style, au, got[au], real)
    assert set(AU_SETS[style]) <= set(got)


def test_co_occurrences() -> None:
    _, plans = plan_clips(STYLES["casme2"], subjects=26, clips_per_subject=10, seed=0)
    sets = [set(p.aus) for p in plans]
    with_1 = [s for s in sets if 1 in s]
    assert sum(2 in s for s in with_1) / len(with_1) > 0.6  # AU1 and AU2 go together (surprise)
    assert 25 <= sum({4, 7} <= s for s in sets) <= 45  # AU4 + AU7 often (35 of 255 in the real counts)
    assert sum({4, 7} <= s for s in sets) / sum(7 in s for s in sets) > 0.6


def test_sheet_quirks_at_realistic_size(tmp_path: Path) -> None:
    ids, plans = plan_clips(STYLES["samm"], subjects=30, clips_per_subject=5, seed=1)
    tokens = [c.token for p in plans for c in p.codes]
    assert any(t[0] in "LR" for t in tokens) and any(t[-1] in "ABCDE" for t in tokens)
    path = tmp_path / "samm.xlsx"
    write_samm_sheet(path, plans, ids, np.random.default_rng(0))
    cells = list(load_workbook(path).active.iter_rows(min_row=15, values_only=True))
    subjects = [row[0] for row in cells]
    assert any(isinstance(s, int) for s in subjects) and any(isinstance(s, str) for s in subjects)
    aus = [row[8] for row in cells]
    assert any(isinstance(a, int) for a in aus) and any(isinstance(a, str) and " + " in a for a in aus)
    _, casme2 = plan_clips(STYLES["casme2"], subjects=26, clips_per_subject=10, seed=0)
    assert {p.apex_cell for p in casme2} >= {"number", "/"}
    assert any(c.side for p in casme2 for c in p.codes)
    assert all(30 <= p.n_frames <= 110 and 0 < p.apex_index < p.n_frames - 1 for p in casme2)


def _centroid(field: np.ndarray, geom) -> tuple[float, float]:
    magnitude = np.hypot(field[..., 0], field[..., 1])
    y, x = np.mgrid[0 : field.shape[0], 0 : field.shape[1]]
    total = magnitude.sum()
    u = ((x - geom.cx) / geom.b * magnitude).sum() / total
    v = ((y - geom.cy) / geom.b * magnitude).sum() / total
    return float(u), float(v)


def test_each_au_moves_its_own_region() -> None:
    geom = random_geometry(np.random.default_rng(0), height=170, width=140, cropped=True)
    regions = {
        "brows": ({1, 2, 4}, lambda v: v < geom.eye_v - 0.05),
        "eyes": ({5, 7}, lambda v: abs(v - geom.eye_v) < 0.08),
        "cheeks": ({6}, lambda v: geom.eye_v < v < geom.nose_v),
        "nose": ({9}, lambda v: geom.eye_v < v < geom.mouth_v),
        "mouth": ({10, 12, 14, 15, 20, 23, 24, 25}, lambda v: abs(v - geom.mouth_v) < 0.12),
        "chin": ({17}, lambda v: v > geom.mouth_v),
    }
    assert set().union(*(aus for aus, _ in regions.values())) == set(AU_MOTIONS)
    for name, (aus, inside) in regions.items():
        for au in aus:
            _, v = _centroid(motion_field(geom, AU_MOTIONS[au], (-1.0, 1.0), 170, 140), geom)
            assert inside(v), (name, au, v)
    # directions: AU1/AU2 raise, AU4 lowers the brows; AU12 pulls the corners up, AU15 down
    for au, sign in ((1, -1), (2, -1), (4, 1), (12, -1), (15, 1), (17, -1)):
        dy = motion_field(geom, AU_MOTIONS[au], (-1.0, 1.0), 170, 140)[..., 1]
        assert np.sign(dy[np.abs(dy).argmax() // 140, np.abs(dy).argmax() % 140]) == sign, au
    # a one-sided code moves one side only: L is the subject's left, the image's right
    left = motion_field(geom, AU_MOTIONS[12], (1.0,), 170, 140)
    u, _ = _centroid(left, geom)
    assert u > 0.1 and np.abs(left[:, : int(geom.cx) - 5]).max() < 1e-3


def test_rendered_motion_is_local_and_deterministic() -> None:
    style = STYLES["casme2"]
    geom = random_geometry(np.random.default_rng(2), height=style.height, width=style.width, cropped=True)
    neutral, mask = render_neutral(geom, style.height, style.width)
    quiet = Difficulty(
        amplitude=1.5,
        noise_sigma=0.0,
        head_jitter=0.0,
        head_move_rate=0.0,
        blink_rate=0.0,
        twitch_rate=0.0,
        illumination=0.0,
        flicker=0.0,
    )
    from aullm_core.data.synth.clips import AUCode

    def energy(au: int) -> np.ndarray:
        plan = ClipPlan(0, "c", "x", (AUCode(au),), 40, 100, 20, "number", seed=9)
        frames = render_clip(plan, geom, neutral, mask, quiet).astype(np.float32)
        return np.abs(frames[20] - frames[0]).mean(axis=(1, 2))  # per image row

    mouth_row = int(geom.cy + geom.mouth_v * geom.b)
    brow_row = int(geom.cy + geom.brow_v * geom.b)
    smile, brows = energy(12), energy(1)
    assert smile[mouth_row - 10 : mouth_row + 10].sum() > 5 * smile[: brow_row + 10].sum()
    assert brows[: brow_row + 10].sum() > 5 * brows[mouth_row - 10 : mouth_row + 10].sum()
    plan = ClipPlan(0, "c", "x", (AUCode(4), AUCode(7)), 35, 100, 15, "number", seed=4)
    noisy = style.difficulty
    np.testing.assert_array_equal(
        render_clip(plan, geom, neutral, mask, noisy), render_clip(plan, geom, neutral, mask, noisy)
    )
    assert set(AU_SHADING) <= set(AU_MOTIONS)


def test_reuse_and_refusal(tmp_path: Path, casme2_root: Path) -> None:
    before = sorted(p.stat().st_mtime_ns for p in casme2_root.rglob("*.jpg"))
    again = write_synthetic("casme2", casme2_root, subjects=3, clips_per_subject=2, seed=5, progress=False)
    assert again == casme2_root and sorted(p.stat().st_mtime_ns for p in casme2_root.rglob("*.jpg")) == before
    with pytest.raises(DataError, match="not empty"):
        write_synthetic("casme2", casme2_root, subjects=3, clips_per_subject=2, seed=6, progress=False)
    with pytest.raises(DataError, match="unknown synthetic style 'smic'"):
        write_synthetic("smic", tmp_path / "x", subjects=1, clips_per_subject=1)
    with pytest.raises(ValueError, match="subjects=0"):
        write_synthetic("samm", tmp_path / "x", subjects=0, clips_per_subject=1)
    assert not (tmp_path / "x").exists()


def test_parallel_workers_write_the_same_dataset(tmp_path: Path) -> None:
    kwargs = {"subjects": 2, "clips_per_subject": 1, "seed": 11, "progress": False, "frame_size": (64, 80)}
    one = write_synthetic("casme2", tmp_path / "one", workers=1, **kwargs)
    two = write_synthetic("casme2", tmp_path / "two", workers=2, **kwargs)
    a, b = get_reader("casme2").read(one), get_reader("casme2").read(two)
    assert [(x.clip, x.aus, x.n_frames) for x in a] == [(x.clip, x.aus, x.n_frames) for x in b]
    diff = np.abs(
        load_frames(a[0].frames, size=32).astype(int) - load_frames(b[0].frames, size=32).astype(int)
    )
    assert diff.max() <= 2  # the same frames, up to float rounding in one thread vs several


def test_difficulty_levels_scale_the_styles_own_levels_and_are_recorded(tmp_path: Path) -> None:
    from aullm_core.data.cache import load_cache, make_cache
    from aullm_core.data.synth import DIFFICULTIES, DIFFICULTY_FACTORS, difficulty_of

    assert DIFFICULTIES == ("realistic", "easy")
    for style in STYLES:
        assert difficulty_of(style, "realistic") == STYLES[style].difficulty
        easy, real = difficulty_of(style, "easy"), difficulty_of(style, "realistic")
        assert easy.amplitude == pytest.approx(real.amplitude * DIFFICULTY_FACTORS["easy"]["amplitude"])
        assert easy.amplitude > real.amplitude
        assert easy.noise_sigma < real.noise_sigma and easy.head_jitter < real.head_jitter
    with pytest.raises(DataError, match="unknown synthetic difficulty 'hard'"):
        difficulty_of("casme2", "hard")
    root = write_synthetic("casme2", tmp_path / "easy", subjects=2, clips_per_subject=1, seed=0,
                           difficulty="easy", progress=False, workers=1)
    manifest = json.loads((root / "synth.json").read_text())
    assert manifest["difficulty"] == "easy"
    assert manifest["style"]["difficulty"]["amplitude"] == pytest.approx(difficulty_of("casme2", "easy").amplitude)
    clips = load_cache(make_cache("casme2", root, tmp_path / "easy.h5", size=16, workers=1, progress=False).path)
    assert clips.attrs["synthetic"]["difficulty"] == "easy"
    assert clips.attrs["synthetic"]["amplitude"] == pytest.approx(difficulty_of("casme2", "easy").amplitude)


def test_easy_clips_move_more_than_realistic_ones(tmp_path: Path) -> None:
    def motion(difficulty: str) -> float:
        root = write_synthetic("casme2", tmp_path / difficulty, subjects=2, clips_per_subject=3, seed=4,
                               difficulty=difficulty, progress=False, workers=1)
        table = get_reader("casme2").read(root)
        diffs = []
        for a in table:
            apex = (a.apex - a.onset) if a.apex is not None else a.n_frames // 2
            first, peak = load_frames([a.frames[0], a.frames[apex]], size=32, color=False).astype(np.float32)
            diffs.append(np.percentile(np.abs(peak - first), 99))  # the local AU motion, not the noise
        return float(np.mean(diffs))

    assert motion("easy") > 1.5 * motion("realistic")
