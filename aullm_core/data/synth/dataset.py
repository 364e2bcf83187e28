"""Synthetic datasets in the CASME II and SAMM on-disk formats, readable by the real readers.

``write_synthetic('casme2', out, subjects=26, clips_per_subject=10)`` writes
``out/CASME2_RAW_selected/subXX/<Filename>/img<N>.jpg`` and ``out/CASME2-coding-20140508.xlsx``;
the 'samm' style writes ``out/SAMM/<Subject>/<Filename>/<Subject>_<NNNNN>.jpg`` and
``out/SAMM_Micro_FACS_Codes_v2.xlsx``. Faces are procedural (``synth_face``), AU sets and
timing follow the real datasets' statistics (``synth_clips``), the sheets carry the real quirks
(``synth_sheets``). The result is a learning problem of measured difficulty: see
``bench/synth_difficulty.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from aullm_core.data.synth.clips import (
    CASME2_PATTERNS,
    SAMM_PATTERNS,
    AUCode,
    ClipPlan,
    Difficulty,
    deal_patterns,
    render_clip,
    unilateral_allowed,
)
from aullm_core.data.synth.face import FaceGeometry, random_geometry, render_neutral
from aullm_core.data.synth.sheets import write_casme2_sheet, write_samm_sheet
from aullm_core.errors import DataError

__all__ = ["DIFFICULTIES", "STYLES", "SynthStyle", "difficulty_of", "plan_clips", "write_synthetic"]

log = logging.getLogger(__name__)

MANIFEST = "synth.json"
SYNTH_VERSION = 1


@dataclass(frozen=True)
class SynthStyle:
    """How one synthetic dataset looks on disk and how hard it is."""

    name: str
    color: bool
    width: int
    height: int
    cropped: bool  # True: a face crop (CASME II 'Cropped'); False: head and background (SAMM)
    jpeg_quality: int
    sheet_name: str
    frames_dir: str
    difficulty: Difficulty
    side_rate: dict[int, float]  # AU -> share of codes with an L/R prefix
    intensity_rate: float  # share of AU codes with an intensity letter


_CASME2_SIDES = {
    1: 0.05,
    2: 0.1,
    4: 0.03,
    6: 0.1,
    7: 0.05,
    9: 0.05,
    10: 0.4,
    12: 0.3,
    14: 0.35,
    15: 0.2,
    20: 0.2,
}
_SAMM_SIDES = {2: 0.15, 4: 0.05, 6: 0.1, 7: 0.12, 10: 0.3, 12: 0.35, 14: 0.45, 15: 0.25, 20: 0.25, 23: 0.1}

#: Nuisance levels shared by both styles; each style sets its own AU amplitude.
_NUISANCE = Difficulty(
    amplitude=1.0,
    noise_sigma=2.5,
    head_jitter=0.6,
    head_move_rate=0.25,
    blink_rate=0.2,
    twitch_rate=0.3,
    illumination=0.03,
    flicker=0.012,
)

#: Named difficulty levels, as factors on a style's own levels (``realistic`` = the style itself).
#: ``easy`` is for laptop demos: AU motions seven times larger and every nuisance a third or less,
#: so that a handful of subjects carries enough signal to learn from (bench/synth_difficulty.py).
DIFFICULTY_FACTORS: dict[str, dict[str, float]] = {
    "realistic": {},
    "easy": {
        "amplitude": 7.0,
        "noise_sigma": 0.4,
        "head_jitter": 0.33,
        "head_move_rate": 0.2,
        "blink_rate": 0.25,
        "twitch_rate": 0.33,
        "illumination": 0.33,
        "flicker": 0.33,
    },
}
DIFFICULTIES = tuple(DIFFICULTY_FACTORS)

STYLES: dict[str, SynthStyle] = {
    "casme2": SynthStyle(
        name="casme2",
        color=True,
        width=140,
        height=170,
        cropped=True,
        jpeg_quality=90,
        sheet_name="CASME2-coding-20140508.xlsx",
        frames_dir="CASME2_RAW_selected",
        difficulty=replace(_NUISANCE, amplitude=1.4),
        side_rate=_CASME2_SIDES,
        intensity_rate=0.0,
    ),
    "samm": SynthStyle(
        name="samm",
        color=False,
        width=400,
        height=300,
        cropped=False,
        jpeg_quality=90,
        sheet_name="SAMM_Micro_FACS_Codes_v2.xlsx",
        frames_dir="SAMM",
        difficulty=replace(_NUISANCE, amplitude=1.8),
        side_rate=_SAMM_SIDES,
        intensity_rate=0.45,
    ),
}


def difficulty_of(style: str, name: str) -> Difficulty:
    """The nuisance and amplitude levels of ``style`` at the named difficulty."""
    if style not in STYLES:
        raise DataError(f"unknown synthetic style {style!r}: expected one of {', '.join(STYLES)}")
    if name not in DIFFICULTY_FACTORS:
        raise DataError(f"unknown synthetic difficulty {name!r}: expected one of {', '.join(DIFFICULTIES)}")
    base = STYLES[style].difficulty
    factors = DIFFICULTY_FACTORS[name]
    return replace(base, **{k: getattr(base, k) * f for k, f in factors.items()})


_INTENSITY_LETTERS, _INTENSITY_WEIGHTS = "ABCDE", (0.15, 0.3, 0.3, 0.17, 0.08)


def _subject_ids(style: SynthStyle, rng: np.random.Generator, n: int) -> list[str]:
    if style.name == "casme2":
        return [f"sub{i + 1:02d}" for i in range(n)]
    numbers = np.sort(rng.choice(np.arange(6, 6 + max(n, int(n * 1.25))), size=n, replace=False))
    return [f"{int(k):03d}" for k in numbers]


def _codes(
    style: SynthStyle, rng: np.random.Generator, emotion: str, aus: tuple[int, ...]
) -> tuple[AUCode, ...]:
    codes = []
    forced_side = emotion == "Contempt"  # contempt is one-sided by definition
    for au in aus:
        side = ""
        if unilateral_allowed(au) and (forced_side or rng.uniform() < style.side_rate.get(au, 0.0)):
            side = "LR"[int(rng.integers(2))]
        intensity = ""
        if rng.uniform() < style.intensity_rate:
            intensity = _INTENSITY_LETTERS[int(rng.choice(5, p=_INTENSITY_WEIGHTS))]
        codes.append(AUCode(au, side, intensity))
    return tuple(codes)


def _clip_name(style: SynthStyle, rng: np.random.Generator, subject_id: str, taken: set[str]) -> str:
    while True:
        if style.name == "casme2":
            episode, number = int(rng.integers(1, 20)), int(rng.integers(1, 20))
            name = f"EP{episode:02d}_{number:02d}{'f' if rng.uniform() < 0.3 else ''}"
        else:
            name = f"{subject_id}_{int(rng.integers(1, 8))}_{int(rng.integers(1, 12))}"
        if name not in taken:
            taken.add(name)
            return name


def plan_clips(
    style: SynthStyle, *, subjects: int, clips_per_subject: int, seed: int
) -> tuple[list[str], list[ClipPlan]]:
    """Subject ids and one plan per clip (AU codes, emotion, length, onset, apex); a function of ``seed``."""
    rng = np.random.default_rng([seed, 1])
    ids = _subject_ids(style, rng, subjects)
    table = CASME2_PATTERNS if style.name == "casme2" else SAMM_PATTERNS
    draws = deal_patterns(rng, table, subjects * clips_per_subject)
    plans = []
    for k, (emotion, aus) in enumerate(draws):
        subject = k // clips_per_subject
        taken = {p.clip for p in plans if p.subject == subject}
        n_frames = int(np.clip(round(np.exp(rng.normal(np.log(60), 0.35))), 30, 110))
        apex_cell = str(
            rng.choice(
                ["number", "/", "blank"],
                p=[0.92, 0.06, 0.02] if style.name == "casme2" else [0.97, 0.03, 0.0],
            )
        )
        onset = int(rng.integers(1, 300)) if style.name == "casme2" else int(rng.integers(1000, 9000))
        plans.append(
            ClipPlan(
                subject=subject,
                clip=_clip_name(style, rng, ids[subject], taken),
                emotion=emotion,
                codes=_codes(style, rng, emotion, aus),
                n_frames=n_frames,
                onset=onset,
                apex_index=round(n_frames * rng.uniform(0.3, 0.55)),
                apex_cell=apex_cell,
                seed=int(rng.integers(2**63)),
            )
        )
    return ids, plans


def _frame_name(style: SynthStyle, subject_id: str, number: int) -> str:
    return f"img{number}.jpg" if style.name == "casme2" else f"{subject_id}_{number:05d}.jpg"


def _render_subject(
    style: SynthStyle, geom: FaceGeometry, subject_id: str, plans: list[ClipPlan], root: Path
) -> int:
    """Render and save every clip of one subject; returns the number of frames written."""
    neutral, head_mask = render_neutral(geom, style.height, style.width)
    if not style.color:
        neutral = (neutral @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    written = 0
    for plan in plans:
        folder = root / style.frames_dir / subject_id / plan.clip
        folder.mkdir(parents=True, exist_ok=True)
        frames = render_clip(plan, geom, neutral, head_mask, style.difficulty)
        for i, frame in enumerate(frames):
            image = Image.fromarray(frame if style.color else frame[..., 0])
            image.save(
                folder / _frame_name(style, subject_id, plan.onset + i), "JPEG", quality=style.jpeg_quality
            )
        written += len(frames)
    return written


def _render_subject_args(args: tuple[SynthStyle, FaceGeometry, str, list[ClipPlan], Path]) -> int:
    return _render_subject(*args)


def write_synthetic(
    style: str,
    out: Path,
    *,
    subjects: int,
    clips_per_subject: int,
    seed: int = 0,
    progress: bool = True,
    frame_size: tuple[int, int] | None = None,
    difficulty: str = "realistic",
    amplitude: float | None = None,
    workers: int | None = None,
) -> Path:
    """Write a synthetic dataset in ``style``'s native layout under ``out``; returns ``out``.

    The folder is built beside ``out`` and renamed into place at the end. If ``out`` already holds
    a synthetic dataset written with the same arguments it is reused; any other non-empty ``out``
    is refused.

    Example:
        >>> root = write_synthetic("casme2", Path("synth"), subjects=3, clips_per_subject=2, seed=0)
        >>> get_reader("casme2").read(root)  # doctest: +SKIP

    Args:
        style: 'casme2' (colour face crops, 140x170) or 'samm' (grey head and background, 400x300).
        out: folder to create (absent or empty).
        subjects, clips_per_subject: dataset size (every subject gets the same number of clips).
        seed: everything (faces, AU sets, timing, noise) is a function of it.
        progress: show a progress bar over subjects.
        frame_size: (width, height) in pixels instead of the style's default, e.g. (2040, 1088).
        difficulty: a name in ``DIFFICULTIES``: 'realistic' (the style's calibrated levels) or 'easy'
            (larger AU motions, fewer nuisances: for laptop demos); recorded in the manifest.
        amplitude: AU amplitude factor instead of the difficulty's; lower is harder.
        workers: processes rendering subjects in parallel (None: one per CPU).
    """
    if style not in STYLES:
        raise DataError(f"unknown synthetic style {style!r}: expected one of {', '.join(STYLES)}")
    if subjects < 1 or clips_per_subject < 1:
        raise ValueError(f"need at least one subject and one clip, got {subjects=}, {clips_per_subject=}")
    if style == "samm" and subjects > 900:
        raise ValueError(f"SAMM subject ids have 3 digits: {subjects=} is too many")
    chosen = replace(STYLES[style], difficulty=difficulty_of(style, difficulty))
    if frame_size is not None:
        if min(frame_size) < 32:
            raise ValueError(f"frame_size must be at least 32x32 pixels, got {frame_size=}")
        chosen = replace(chosen, width=int(frame_size[0]), height=int(frame_size[1]))
    if amplitude is not None:
        if amplitude < 0:
            raise ValueError(f"amplitude must be >= 0, got {amplitude=}")
        chosen = replace(chosen, difficulty=replace(chosen.difficulty, amplitude=float(amplitude)))
    out = Path(out)
    manifest = {
        "version": SYNTH_VERSION,
        "code": _code_hash(),
        "style": asdict(chosen),
        "difficulty": difficulty,
        "subjects": subjects,
        "clips_per_subject": clips_per_subject,
        "seed": seed,
    }
    manifest = json.loads(json.dumps(manifest))  # int dict keys become strings, as when read back
    if _reusable(out, manifest):
        log.info("%s already holds this synthetic dataset; reused", out)
        return out
    ids, plans = plan_clips(chosen, subjects=subjects, clips_per_subject=clips_per_subject, seed=seed)
    geoms = [
        random_geometry(
            np.random.default_rng([seed, 0, i]),
            height=chosen.height,
            width=chosen.width,
            cropped=chosen.cropped,
        )
        for i in range(subjects)
    ]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tasks = [
            (chosen, geoms[i], ids[i], [p for p in plans if p.subject == i], tmp) for i in range(subjects)
        ]
        _run(tasks, workers, progress, style)
        sheet = tmp / chosen.sheet_name
        if style == "casme2":
            write_casme2_sheet(sheet, plans, [int(s[3:]) for s in ids])
        else:
            write_samm_sheet(sheet, plans, ids, np.random.default_rng([seed, 3]))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if out.is_dir():
            out.rmdir()  # empty, checked by _reusable
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d %s-style clips of %d subjects to %s", len(plans), style, subjects, out)
    return out


def _code_hash() -> str:
    """Hash of the synthesis modules: a dataset written by other code is never taken as reusable."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.read_bytes())
    return digest.hexdigest()[:16]


def _reusable(out: Path, manifest: dict[str, object]) -> bool:
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder (expected an absent or empty folder)")
    if not any(out.iterdir()):
        return False
    try:
        found = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        found = None
    if found == manifest:
        return True
    raise DataError(
        f"{out}: folder is not empty and holds no synthetic dataset of these settings; choose another --out"
    )


def _one_thread() -> None:
    """Worker processes render one subject each: one torch thread apiece avoids oversubscription."""
    import torch

    torch.set_num_threads(1)


def _run(
    tasks: list[tuple[SynthStyle, FaceGeometry, str, list[ClipPlan], Path]],
    workers: int | None,
    progress: bool,
    style: str,
) -> None:
    n_workers = min(len(tasks), workers or os.cpu_count() or 1)
    bar = tqdm(total=sum(len(t[3]) for t in tasks), unit="clip", desc=f"synth {style}", disable=not progress)
    with bar:
        if n_workers <= 1:
            for task in tasks:
                _render_subject_args(task)
                bar.update(len(task[3]))
            return
        with ProcessPoolExecutor(max_workers=n_workers, initializer=_one_thread) as pool:
            for task, _ in zip(tasks, pool.map(_render_subject_args, tasks)):
                bar.update(len(task[3]))
