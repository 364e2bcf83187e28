"""What each synthetic clip shows (AU codes, emotion, timing) and how its frames are rendered.

AU sets are drawn from per-emotion patterns whose weights reproduce the real datasets' emotion
counts, AU positive counts (method.md section 1) and co-occurrences (AU1 with AU2 in surprise,
AU4 with AU7 in disgust and 'others'). Clips are dealt from a deck of these patterns, so a
dataset of realistic size has close to the real counts and a small one is an unbiased sample.

Frames: the subject's neutral face warped by the active AU fields (each with an onset -> apex ->
offset time course), plus what makes the task hard: head jitter and occasional head moves, blinks
and uncoded twitches, illumination drift and 100 Hz flicker, sensor noise, JPEG compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from aullm_core.data.synth.face import (
    AU_MOTIONS,
    AU_SHADING,
    BLINK,
    MIDLINE_AUS,
    FaceGeometry,
    bump_field,
    motion_field,
    shading_map,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CASME2_PATTERNS",
    "SAMM_PATTERNS",
    "AUCode",
    "ClipPlan",
    "Difficulty",
    "au_course",
    "deal_patterns",
    "render_clip",
]

Pattern = tuple[tuple[int, ...], int]

# fmt: off
#: CASME II: emotion -> (AU set, weight); weights sum to the real emotion counts (255 clips).
CASME2_PATTERNS: dict[str, tuple[Pattern, ...]] = {
    "others": (
        ((4,), 35), ((4, 7), 18), ((7,), 4), ((14,), 7), ((4, 14), 3), ((17,), 5), ((4, 17), 3),
        ((14, 17), 2), ((4, 15), 2), ((15,), 1), ((12,), 1), ((4, 6), 2), ((10,), 3), ((9,), 2),
        ((24,), 3), ((6,), 2), ((20,), 2), ((25,), 2), ((5,), 2),
    ),
    "disgust": (
        ((4,), 25), ((4, 7), 14), ((4, 9), 6), ((9,), 3), ((4, 10), 4), ((10,), 3), ((4, 7, 9), 3),
        ((4, 14), 2), ((17,), 1), ((4, 15), 2),
    ),
    "happiness": (((12,), 18), ((6, 12), 8), ((12, 17), 2), ((6, 12, 25), 2), ((4,), 2)),
    "repression": (
        ((14,), 8), ((15,), 3), ((17,), 4), ((14, 17), 3), ((15, 17), 4), ((24,), 2), ((12, 14), 1),
        ((12,), 2),
    ),
    "surprise": (((1, 2), 15), ((1, 2, 5), 3), ((1,), 3), ((2,), 2), ((1, 2, 25), 2)),
    "sadness": (((4, 15), 2), ((1, 4), 1), ((1, 4, 15), 1), ((15, 17), 1), ((4,), 1), ((14,), 1)),
    "fear": (((4, 20), 1), ((1, 2, 4), 1)),
}
#: SAMM: emotion -> (AU set, weight); weights sum to the real emotion counts (159 clips).
SAMM_PATTERNS: dict[str, tuple[Pattern, ...]] = {
    "Anger": (
        ((7,), 18), ((4, 7), 6), ((4,), 4), ((24,), 5), ((17,), 4), ((7, 10), 3), ((9,), 2),
        ((14,), 3), ((7, 24), 3), ((23,), 3), ((7, 23), 2), ((10,), 2), ((4, 7, 9), 2),
    ),
    "Contempt": (((12,), 3), ((14,), 6), ((12, 14), 1), ((7,), 2)),
    "Disgust": (((4, 7), 2), ((9,), 2), ((10,), 2), ((4,), 2), ((7, 9), 1)),
    "Fear": (((4,), 2), ((20,), 2), ((1, 2, 4), 1), ((7,), 1), ((5,), 1), ((4, 7), 1)),
    "Happiness": (((12,), 10), ((6, 12), 8), ((12, 25), 2), ((6, 7, 12), 2), ((7, 12), 2), ((6,), 2)),
    "Other": (
        ((2,), 3), ((1, 2), 2), ((4,), 1), ((7,), 1), ((14,), 3), ((17,), 3), ((24,), 3), ((10,), 2),
        ((15,), 3), ((25,), 2), ((9,), 1), ((6,), 2),
    ),
    "Sadness": (((4,), 1), ((15,), 2), ((1, 4), 1), ((17,), 1), ((4, 15), 1)),
    "Surprise": (((1, 2), 9), ((2,), 2), ((1, 2, 5), 2), ((5,), 1), ((1,), 1)),
}
# fmt: on
#: Intensity letter -> amplitude factor (FACS A trace .. E maximum); '' = not coded.
INTENSITY = {"": 0.85, "A": 0.45, "B": 0.65, "C": 0.85, "D": 1.05, "E": 1.25}


@dataclass(frozen=True)
class AUCode:
    """One coded AU: number, side ('' both, 'L' subject's left, 'R' right), intensity ('' or A-E)."""

    au: int
    side: str = ""
    intensity: str = ""

    @property
    def token(self) -> str:
        return f"{self.side}{self.au}{self.intensity}"

    @property
    def sides(self) -> tuple[float, ...]:
        """Image sides the motion is drawn on: +1 is the subject's left (image right)."""
        return {"L": (1.0,), "R": (-1.0,)}.get(self.side, (-1.0, 1.0))


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one synthetic clip except its pixels."""

    subject: int  # index into the dataset's subjects
    clip: str
    emotion: str
    codes: tuple[AUCode, ...]
    n_frames: int
    onset: int  # absolute frame number of the first frame
    apex_index: int  # apex, counted from the onset frame
    apex_cell: str  # how the sheet shows the apex: 'number', '/' or 'blank'
    seed: int

    @property
    def aus(self) -> tuple[int, ...]:
        return tuple(sorted({c.au for c in self.codes}))


@dataclass(frozen=True)
class Difficulty:
    """Nuisance levels of a style; amplitudes are relative to ``AU_MOTIONS``."""

    amplitude: float  # global AU amplitude factor
    noise_sigma: float  # sensor noise, grey levels
    head_jitter: float  # head translation random walk, pixels (standard deviation)
    head_move_rate: float  # share of clips with a larger head move
    blink_rate: float  # share of clips with a blink
    twitch_rate: float  # share of clips with an uncoded local twitch
    illumination: float  # illumination drift over a clip (relative, standard deviation)
    flicker: float  # largest 100 Hz flicker amplitude (relative)


def deal_patterns(
    rng: np.random.Generator, table: dict[str, tuple[Pattern, ...]], n: int
) -> list[tuple[str, tuple[int, ...]]]:
    """``n`` (emotion, AU set) draws: whole decks of the weighted patterns, then a random part of one."""
    deck = [(emotion, aus) for emotion, patterns in table.items() for aus, w in patterns for _ in range(w)]
    out = []
    while len(out) < n:
        take = min(n - len(out), len(deck))
        out += [deck[i] for i in rng.permutation(len(deck))[:take]]
    return [out[i] for i in rng.permutation(len(out))]


def au_course(rng: np.random.Generator, n_frames: int, apex: int) -> np.ndarray:
    """One AU's activation over a clip: 0 at onset, 1 near the apex, a residual at offset."""
    t = np.arange(n_frames, dtype=np.float32)
    start = int(rng.integers(0, max(1, apex // 4) + 1))
    peak = int(np.clip(apex + rng.integers(-3, 4), start + 2, n_frames - 2))
    residual = rng.uniform(0.0, 0.3)
    rise = _smoothstep((t - start) / (peak - start))
    fall = 1.0 - (1.0 - residual) * _smoothstep((t - peak) / max(1, n_frames - 1 - peak))
    return np.where(t <= peak, rise, fall).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _bell(n_frames: int, start: int, length: int) -> np.ndarray:
    t = (np.arange(n_frames, dtype=np.float32) - start) / max(1, length)
    return np.where((t >= 0) & (t <= 1), np.sin(np.pi * np.clip(t, 0, 1)) ** 2, 0.0).astype(np.float32)


def _walk(rng: np.random.Generator, n_frames: int, scale: float) -> np.ndarray:
    """A smooth random walk with standard deviation ``scale``, starting at 0."""
    steps = rng.standard_normal(n_frames)
    walk = np.cumsum(np.convolve(steps, np.ones(8) / 8, mode="same"))
    walk -= walk[0]
    return (walk / (walk.std() + 1e-8) * scale).astype(np.float32)


def render_clip(
    plan: ClipPlan,
    geom: FaceGeometry,
    neutral: np.ndarray,
    head_mask: np.ndarray,
    difficulty: Difficulty,
    *,
    chunk: int | None = None,
) -> np.ndarray:
    """The clip's frames: uint8 (T, H, W, C) with C the channels of ``neutral`` (1 or 3).

    ``chunk`` frames are rendered at a time (default: 16, fewer for large frames to bound memory).
    """
    rng = np.random.default_rng(plan.seed)
    height, width = neutral.shape[:2]
    n = plan.n_frames
    fields, courses, shades, shade_courses = [], [], [], []
    for code in plan.codes:
        scale = difficulty.amplitude * geom.expressiveness * rng.uniform(0.6, 1.4) * INTENSITY[code.intensity]
        course = au_course(rng, n, plan.apex_index) * scale
        fields.append(motion_field(geom, AU_MOTIONS[code.au], code.sides, height, width))
        courses.append(course)
        if code.au in AU_SHADING:
            shades.append(shading_map(geom, AU_SHADING[code.au], code.sides, height, width))
            shade_courses.append(course)
    if rng.uniform() < difficulty.blink_rate:
        length = int(rng.integers(14, 30))
        fields.append(motion_field(geom, BLINK, (-1.0, 1.0), height, width))
        courses.append(_bell(n, int(rng.integers(-length // 2, n - 4)), length))
    if rng.uniform() < difficulty.twitch_rate:
        at = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.6, 0.8)))
        angle = rng.uniform(0, 2 * np.pi)
        size = difficulty.amplitude * rng.uniform(0.01, 0.025)
        fields.append(
            bump_field(geom, at, (size * np.cos(angle), size * np.sin(angle)), (0.07, 0.07), height, width)
        )
        length = int(rng.integers(10, n))
        courses.append(_bell(n, int(rng.integers(0, n - length + 1)), length))
    tx, ty, rot, gain, tilt = _nuisance(rng, n, difficulty)
    chunk = chunk or max(1, min(16, 2_000_000 // (height * width)))
    import torch  # here, not at module level: readers and the cache import this package without torch

    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    with torch.no_grad():
        return _warp_frames(
            neutral,
            head_mask,
            geom,
            fields,
            courses,
            shades,
            shade_courses,
            (tx, ty, rot, gain, tilt),
            difficulty.noise_sigma,
            generator,
            chunk,
        )


def _warp_frames(
    neutral: np.ndarray,
    head_mask: np.ndarray,
    geom: FaceGeometry,
    fields: list[np.ndarray],
    courses: list[np.ndarray],
    shades: list[np.ndarray],
    shade_courses: list[np.ndarray],
    nuisance: tuple[np.ndarray, ...],
    noise_sigma: float,
    generator: torch.Generator,
    chunk: int,
) -> np.ndarray:
    """Warp, shade, light, add noise and quantise every frame (torch's grid_sample does the warp).

    The sampling grid of every frame is one linear combination: identity grid + AU fields weighted
    by their time courses + head translation/rotation fields (masked to the head) weighted by the
    head motion; so a chunk of frames costs one matrix product before ``grid_sample``.
    """
    import torch
    import torch.nn.functional as F

    height, width, channels = neutral.shape
    tx, ty, rot, gain, tilt = nuisance
    n = len(tx)
    to_grid = np.array([2.0 / (width - 1), 2.0 / (height - 1)], np.float32)  # pixels -> [-1, 1] units
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx_c, dy_c = x - geom.cx, y - geom.cy
    mask = head_mask.astype(np.float32)
    zero = np.zeros_like(mask)
    head = [np.stack(f, -1) for f in ((mask, zero), (zero, mask), (-mask * dy_c, mask * dx_c))]
    basis = np.stack([*fields, *head]).reshape(len(fields) + 3, -1, 2) * -to_grid  # sample at x - disp
    coefs = np.stack([*courses, tx, ty, rot], axis=1).astype(np.float32)  # (T, M + 3)
    identity = np.stack((x * to_grid[0] - 1.0, y * to_grid[1] - 1.0), -1).reshape(-1, 2)
    basis_t = torch.from_numpy(np.ascontiguousarray(basis.reshape(len(basis), -1)))
    identity_t = torch.from_numpy(identity.reshape(-1))
    light_basis = torch.from_numpy(np.stack([np.full_like(x, 255.0), 255.0 * dx_c / width]).reshape(2, -1))
    light_coefs = torch.from_numpy(np.stack([gain, gain * tilt], axis=1).astype(np.float32))
    shade_t = torch.from_numpy(np.stack(shades).reshape(len(shades), -1)) if shades else None
    shade_c = torch.from_numpy(np.stack(shade_courses, axis=1)) if shades else None
    image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(neutral, -1, 0)))[None]  # (1, C, H, W)
    coefs_t = torch.from_numpy(coefs)
    out = np.empty((n, height, width, channels), np.uint8)
    for t0 in range(0, n, chunk):
        t1 = min(n, t0 + chunk)
        t = t1 - t0
        grid = torch.addmm(identity_t, coefs_t[t0:t1], basis_t).view(t, height, width, 2)
        frames = F.grid_sample(
            image.expand(t, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=True
        )  # (t, C, H, W)
        light = light_coefs[t0:t1] @ light_basis  # (t, H*W)
        if shade_t is not None:
            light *= 1.0 - (shade_c[t0:t1] @ shade_t).clamp_(0.0, 0.9)
        frames *= light.view(t, 1, height, width)
        frames += torch.randn(frames.shape, generator=generator).mul_(noise_sigma).add_(0.5)  # +0.5 rounds
        out[t0:t1] = frames.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _nuisance(
    rng: np.random.Generator, n: int, d: Difficulty
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame head translation (px), rotation (rad), illumination gain and left-right tilt."""
    tx, ty = _walk(rng, n, d.head_jitter), _walk(rng, n, d.head_jitter)
    rot = _walk(rng, n, 0.003 * d.head_jitter)  # radians: ~0.1 degree at the default jitter
    if rng.uniform() < d.head_move_rate:
        length = int(rng.integers(8, max(9, n // 2)))
        start = int(rng.integers(0, n - length + 1))
        step = _smoothstep((np.arange(n, dtype=np.float32) - start) / length)
        angle, size = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0) * max(d.head_jitter, 0.3)
        tx, ty = tx + size * np.cos(angle) * step, ty + size * np.sin(angle) * step
    t = np.arange(n, dtype=np.float32) / max(1, n - 1)
    flicker = rng.uniform(0, d.flicker) * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    gain = 1.0 + rng.normal(0, d.illumination) * t + _walk(rng, n, d.illumination / 4) + flicker
    tilt = rng.normal(0, d.illumination) * t
    return tx, ty, rot, gain.astype(np.float32), tilt.astype(np.float32)


def unilateral_allowed(au: int) -> bool:
    """Midline AUs are never coded with a side."""
    return au not in MIDLINE_AUS
