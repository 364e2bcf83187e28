"""Procedural faces for the synthetic datasets: per-subject geometry, a neutral image, AU motions.

Coordinates: a face is drawn in isotropic face units (u, v) = ((x - cx) / b, (y - cy) / b), where
(cx, cy) is the face centre in pixels and b its half-height; u grows to the image right (the
subject's LEFT side), v grows downwards. Each AU is a small displacement field made of Gaussian
bumps placed at anatomical anchors of the subject (inner brow, lower lid, lip corner...), plus for
some AUs a shading change (furrows, dimples). A frame is the neutral image warped by the sum of
the active fields, so the motion follows each subject's own feature positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AU_MOTIONS",
    "AU_SHADING",
    "BLINK",
    "MIDLINE_AUS",
    "FaceGeometry",
    "Motion",
    "Shade",
    "bump_field",
    "motion_field",
    "random_geometry",
    "render_neutral",
    "shading_map",
]


@dataclass(frozen=True)
class FaceGeometry:
    """One subject's face: placement in the frame (pixels) and feature layout (face units)."""

    cx: float
    cy: float
    b: float  # face half-height in pixels
    aspect: float  # face half-width / half-height
    eye_dx: float
    eye_v: float
    eye_w: float
    eye_h: float
    brow_dx: float
    brow_v: float
    brow_w: float
    brow_t: float
    brow_arch: float
    nose_v: float  # nostril height
    mouth_v: float
    mouth_w: float
    lip_t: float
    chin_v: float
    hairline_v: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lips: tuple[float, float, float]
    iris: float
    light: tuple[float, float]  # shading gradient along u and v
    expressiveness: float  # multiplies every AU amplitude of this subject
    texture_seed: int

    def anchors(self) -> dict[str, tuple[float, float]]:
        """Anatomical anchors on the subject's left side (u > 0), in face units."""
        return {
            "brow_inner": (self.brow_dx - 0.75 * self.brow_w, self.brow_v + 0.01),
            "brow_mid": (self.brow_dx, self.brow_v),
            "brow_outer": (self.brow_dx + 0.7 * self.brow_w, self.brow_v + 0.01),
            "forehead": (0.1, self.brow_v - 0.14),
            "glabella": (0.045, self.brow_v + 0.05),
            "upper_lid": (self.eye_dx, self.eye_v - self.eye_h),
            "lower_lid": (self.eye_dx, self.eye_v + self.eye_h),
            "eye_corner": (self.eye_dx + self.eye_w + 0.04, self.eye_v),
            "cheek": (self.eye_dx + 0.02, self.eye_v + 0.22),
            "nose_side": (0.08, self.nose_v - 0.12),
            "nose_bridge": (0.0, self.eye_v + 0.03),
            "upper_lip": (0.09, self.mouth_v - 1.3 * self.lip_t),
            "upper_lip_mid": (0.0, self.mouth_v - 0.7 * self.lip_t),
            "mouth_corner": (self.mouth_w, self.mouth_v),
            "dimple": (self.mouth_w + 0.045, self.mouth_v - 0.01),
            "nasolabial": (0.5 * (0.1 + self.mouth_w + 0.02), 0.5 * (self.nose_v + self.mouth_v)),
            "lower_lip": (0.0, self.mouth_v + self.lip_t),
            "mouth_line": (0.0, self.mouth_v),
            "chin": (0.0, self.chin_v - 0.1),
        }


@dataclass(frozen=True)
class Motion:
    """A Gaussian displacement bump at ``anchor``: (du, dv) peak, (su, sv) spread; face units."""

    anchor: str
    du: float
    dv: float
    su: float
    sv: float


@dataclass(frozen=True)
class Shade:
    """A darkening bump (furrow, dimple) at ``anchor`` + (ou, ov), spread (su, sv), depth ``strength``."""

    anchor: str
    ou: float
    ov: float
    su: float
    sv: float
    strength: float


#: AU -> displacement bumps, written for the subject's left side and mirrored for the right.
#: Peaks are in face half-heights: 0.02 is about 1.8 px on a 170-px-high CASME II crop.
AU_MOTIONS: dict[int, tuple[Motion, ...]] = {
    1: (Motion("brow_inner", 0.0, -0.030, 0.07, 0.06), Motion("forehead", 0.0, -0.014, 0.10, 0.08)),
    2: (Motion("brow_outer", 0.0, -0.030, 0.08, 0.06),),
    4: (Motion("brow_inner", -0.016, 0.022, 0.09, 0.06), Motion("brow_mid", 0.0, 0.012, 0.10, 0.06)),
    5: (Motion("upper_lid", 0.0, -0.014, 0.09, 0.03),),
    6: (Motion("cheek", 0.0, -0.020, 0.10, 0.08), Motion("lower_lid", 0.0, -0.008, 0.09, 0.03)),
    7: (Motion("lower_lid", 0.0, -0.04, 0.10, 0.035), Motion("upper_lid", 0.0, 0.015, 0.09, 0.025)),
    9: (Motion("nose_side", 0.0, -0.018, 0.05, 0.08), Motion("upper_lip", 0.0, -0.010, 0.08, 0.04)),
    10: (Motion("upper_lip", 0.0, -0.020, 0.08, 0.04),),
    12: (Motion("mouth_corner", 0.018, -0.022, 0.06, 0.05),),
    14: (Motion("mouth_corner", -0.020, -0.004, 0.05, 0.04),),
    15: (Motion("mouth_corner", 0.0, 0.035, 0.07, 0.06),),
    17: (Motion("chin", 0.0, -0.022, 0.14, 0.07), Motion("lower_lip", 0.0, -0.012, 0.10, 0.04)),
    20: (Motion("mouth_corner", 0.020, 0.004, 0.06, 0.05),),
    23: (Motion("mouth_corner", -0.010, 0.0, 0.05, 0.04), Motion("lower_lip", 0.0, -0.006, 0.10, 0.03)),
    24: (Motion("upper_lip_mid", 0.0, 0.008, 0.12, 0.03), Motion("lower_lip", 0.0, -0.010, 0.12, 0.03)),
    25: (Motion("lower_lip", 0.0, 0.014, 0.12, 0.04),),
}
#: AUs whose bumps sit on the midline: drawn once, never mirrored, never coded with a side.
MIDLINE_AUS = frozenset({17, 24, 25})
#: AU -> shading change at full amplitude (multiplicative darkening).
AU_SHADING: dict[int, tuple[Shade, ...]] = {
    4: (Shade("glabella", 0.0, 0.0, 0.008, 0.05, 0.08),),
    7: (Shade("lower_lid", 0.0, 0.025, 0.09, 0.02, 0.14),),
    6: (Shade("eye_corner", 0.0, 0.0, 0.025, 0.03, 0.06),),
    9: (Shade("nose_bridge", 0.0, 0.0, 0.05, 0.008, 0.10),),
    12: (Shade("nasolabial", 0.0, 0.0, 0.02, 0.07, 0.06),),
    14: (Shade("dimple", 0.0, 0.0, 0.025, 0.025, 0.15),),
    15: (Shade("mouth_corner", 0.01, 0.04, 0.05, 0.035, 0.12),),
    17: (Shade("chin", 0.0, 0.02, 0.08, 0.03, 0.06),),
    25: (Shade("mouth_line", 0.0, 0.0, 0.12, 0.008, 0.20),),
}
#: A blink: the upper lid closes (a distractor, never coded as an AU here).
BLINK: tuple[Motion, ...] = (Motion("upper_lid", 0.0, 0.075, 0.10, 0.04),)


def random_geometry(rng: np.random.Generator, *, height: int, width: int, cropped: bool) -> FaceGeometry:
    """Draw one subject: face shape, placement, feature positions, colours, expressiveness."""
    if cropped:  # a face crop: the face fills the frame, forehead and chin slightly cut
        b = height / 1.9 * rng.uniform(0.95, 1.05)
        cx = width / 2 + rng.normal(0, 3)
        cy = height / 2 + rng.normal(0, 3) - 0.04 * b
    else:  # the whole head against a background, as in SAMM
        b = height * 0.36 * rng.uniform(0.92, 1.08)
        cx = width / 2 + rng.normal(0, width * 0.03)
        cy = height * 0.47 + rng.normal(0, height * 0.02)
    tone = rng.uniform(0.55, 0.95)
    skin = (tone, tone * rng.uniform(0.72, 0.82), tone * rng.uniform(0.58, 0.70))
    hair_v = rng.uniform(0.05, 0.25)
    return FaceGeometry(
        cx=float(cx),
        cy=float(cy),
        b=float(b),
        aspect=float(rng.uniform(0.70, 0.80)),
        eye_dx=float(rng.uniform(0.26, 0.32)),
        eye_v=float(rng.uniform(-0.16, -0.09)),
        eye_w=float(rng.uniform(0.11, 0.14)),
        eye_h=float(rng.uniform(0.038, 0.052)),
        brow_dx=float(rng.uniform(0.27, 0.32)),
        brow_v=float(rng.uniform(-0.32, -0.25)),
        brow_w=float(rng.uniform(0.14, 0.18)),
        brow_t=float(rng.uniform(0.022, 0.036)),
        brow_arch=float(rng.uniform(0.01, 0.04)),
        nose_v=float(rng.uniform(0.18, 0.26)),
        mouth_v=float(rng.uniform(0.42, 0.50)),
        mouth_w=float(rng.uniform(0.16, 0.21)),
        lip_t=float(rng.uniform(0.03, 0.045)),
        chin_v=float(rng.uniform(0.78, 0.86)),
        hairline_v=float(rng.uniform(-0.68, -0.52)),
        skin=skin,
        hair=(hair_v, hair_v * 0.85, hair_v * 0.7),
        lips=(tone * 0.85, tone * 0.45, tone * 0.45),
        iris=float(rng.uniform(0.08, 0.3)),
        light=(float(rng.normal(0, 0.12)), float(rng.normal(-0.05, 0.05))),
        expressiveness=float(np.exp(rng.normal(0, 0.25))),
        texture_seed=int(rng.integers(2**31)),
    )


def _grid(geom: FaceGeometry, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return (x - geom.cx) / geom.b, (y - geom.cy) / geom.b


def _blob(u: np.ndarray, v: np.ndarray, cu: float, cv: float, su: float, sv: float) -> np.ndarray:
    return np.exp(-0.5 * (((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2))


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, edge: float
) -> np.ndarray:
    """Soft filled ellipse: 1 inside, 0 outside, a ramp ``edge`` wide (in ellipse radii) between."""
    r = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (FFT), rescaled to unit standard deviation."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    return (out / (out.std() + 1e-8)).astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, color: np.ndarray | tuple[float, ...]) -> None:
    img *= 1.0 - mask[..., None]
    img += mask[..., None] * np.asarray(color, dtype=np.float32)


def render_neutral(geom: FaceGeometry, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject's neutral frame, float32 RGB in [0, 1], and a soft head mask (for head motion)."""
    rng = np.random.default_rng(geom.texture_seed)
    u, v = _grid(geom, height, width)
    a = geom.aspect
    img = np.empty((height, width, 3), np.float32)
    wall = 0.45 + 0.15 * rng.uniform() + 0.025 * _smooth_noise(rng, (height, width), 12) + 0.08 * v / 3
    img[:] = wall[..., None] * np.array([0.95, 1.0, 1.05], np.float32)
    skin = np.asarray(geom.skin, np.float32)
    texture = (
        1 + 0.035 * _smooth_noise(rng, (height, width), 0.8) + 0.04 * _smooth_noise(rng, (height, width), 4)
    )
    # neck and shoulders, then the head
    neck = np.clip((0.42 * a - np.abs(u)) * 40, 0, 1) * np.clip((v - 0.6) * 20, 0, 1)
    _paint(img, neck, skin * 0.78)
    _paint(
        img, np.clip((v - 1.35) * 10, 0, 1) * np.clip((2.2 * a - np.abs(u)) * 10, 0, 1), (0.25, 0.27, 0.35)
    )
    head = _ellipse(u, v, 0, 0, a, 1.0, 0.04)
    sphere = np.sqrt(np.clip(1 - (u / a) ** 2 - v**2, 0, 1))
    shade = (0.78 + 0.22 * sphere + geom.light[0] * u + geom.light[1] * v) * texture
    img *= 1.0 - head[..., None]
    img += head[..., None] * shade[..., None] * skin
    # hair: above a wavy hairline and down the sides
    hair_tex = 1 + 0.15 * _smooth_noise(rng, (height, width), 1.5)
    outer = _ellipse(u, v, 0, -0.02, a * 1.06, 1.08, 0.05)
    top = np.clip((geom.hairline_v + 0.04 * np.cos(u * 9) - v) * 25, 0, 1)
    sides = np.clip((np.abs(u) - 0.92 * a) * 30, 0, 1) * np.clip((0.1 - v) * 10, 0, 1)
    _paint(img, outer * np.maximum(top, sides), np.asarray(geom.hair, np.float32) * hair_tex[..., None])
    for side in (-1.0, 1.0):
        _draw_eye_and_brow(img, u, v, geom, side, skin)
    # nose: side shading, tip highlight, nostrils
    for side in (-1.0, 1.0):
        ridge = _blob(u, v, side * 0.055, geom.nose_v - 0.13, 0.02, 0.11)
        img *= 1 - (0.10 + 0.06 * side * np.sign(geom.light[0] + 1e-6)) * ridge[..., None]
        img *= 1 - 0.55 * _ellipse(u, v, side * 0.055, geom.nose_v, 0.028, 0.014, 0.5)[..., None]
        img *= (
            1
            - 0.05
            * _blob(u, v, side * (0.1 + geom.mouth_w) / 2, 0.5 * (geom.nose_v + geom.mouth_v), 0.02, 0.07)[
                ..., None
            ]
        )
        img *= 1 + 0.05 * _blob(u, v, side * 0.3, 0.2, 0.07, 0.06)[..., None] * np.array(
            [1, -0.3, -0.5], np.float32
        )
    img *= 1 + 0.08 * _blob(u, v, 0, geom.nose_v - 0.04, 0.03, 0.025)[..., None]
    # mouth: lips, the line between them, the shadow under the lower lip
    lips = _ellipse(u, v, 0, geom.mouth_v, geom.mouth_w, geom.lip_t, 0.35)
    _paint(img, 0.9 * lips, np.asarray(geom.lips, np.float32) * shade[..., None])
    img *= 1 - 0.6 * _ellipse(u, v, 0, geom.mouth_v, geom.mouth_w * 0.95, 0.006, 0.8)[..., None]
    img *= 1 - 0.12 * _blob(u, v, 0, geom.mouth_v + geom.lip_t + 0.05, 0.08, 0.025)[..., None]
    return np.clip(img, 0, 1), np.clip(head + neck, 0, 1)


def _draw_eye_and_brow(
    img: np.ndarray, u: np.ndarray, v: np.ndarray, geom: FaceGeometry, side: float, skin: np.ndarray
) -> None:
    cu = side * geom.eye_dx
    socket = _blob(u, v, cu, geom.eye_v - 0.02, geom.eye_w * 1.1, 0.07)
    img *= 1 - 0.10 * socket[..., None]
    sclera = _ellipse(u, v, cu, geom.eye_v, geom.eye_w, geom.eye_h, 0.3)
    _paint(img, sclera, (0.86, 0.84, 0.82))
    iris = _ellipse(u, v, cu, geom.eye_v, geom.eye_h * 1.05, geom.eye_h * 1.05, 0.3) * sclera
    _paint(img, iris, (geom.iris, geom.iris * 0.8, geom.iris * 0.6))
    upper = _ellipse(u, v, cu, geom.eye_v - 0.004, geom.eye_w * 1.04, geom.eye_h * 1.1, 0.3)
    lid = np.clip(upper - sclera, 0, 1) * (v < geom.eye_v + 0.005)
    _paint(img, 0.9 * lid, (0.12, 0.09, 0.08))
    lower = np.clip(_ellipse(u, v, cu, geom.eye_v, geom.eye_w, geom.eye_h * 1.2, 0.3) - sclera, 0, 1)
    img *= 1 - 0.25 * (lower * (v > geom.eye_v))[..., None]
    # brow: an arched bar, thicker towards the inner end
    bu = (u - side * geom.brow_dx) / geom.brow_w
    arch = geom.brow_v - geom.brow_arch * (1 - bu**2)
    thick = geom.brow_t * (1.15 - 0.3 * side * bu)
    brow = np.clip((1 - np.abs(bu)) * 6, 0, 1) * np.clip((1 - np.abs(v - arch) / thick) * 3, 0, 1)
    _paint(img, 0.9 * brow, np.asarray(geom.hair, np.float32) * 1.1)


def _mirror(anchor: tuple[float, float], side: float) -> tuple[float, float]:
    return side * anchor[0], anchor[1]


def motion_field(
    geom: FaceGeometry, motions: tuple[Motion, ...], sides: tuple[float, ...], height: int, width: int
) -> np.ndarray:
    """Displacement field (height, width, 2) in pixels (dx, dy) for ``motions`` on ``sides``.

    ``sides`` holds +1 (subject's left, image right), -1 (right) or both; midline anchors (u = 0)
    are drawn once whatever the sides.
    """
    u, v = _grid(geom, height, width)
    field = np.zeros((height, width, 2), np.float32)
    anchors = geom.anchors()
    for m in motions:
        au, av = anchors[m.anchor]
        for side in sides if au != 0.0 else (1.0,):
            _add_bump(field, geom, u, v, (side * au, av), (side * m.du, m.dv), (m.su, m.sv))
    return field


def bump_field(
    geom: FaceGeometry,
    at: tuple[float, float],
    shift: tuple[float, float],
    spread: tuple[float, float],
    height: int,
    width: int,
) -> np.ndarray:
    """One displacement bump anywhere on the face (used for uncoded twitches), pixels (H, W, 2)."""
    u, v = _grid(geom, height, width)
    field = np.zeros((height, width, 2), np.float32)
    _add_bump(field, geom, u, v, at, shift, spread)
    return field


def _add_bump(
    field: np.ndarray,
    geom: FaceGeometry,
    u: np.ndarray,
    v: np.ndarray,
    at: tuple[float, float],
    shift: tuple[float, float],
    spread: tuple[float, float],
) -> None:
    w = _blob(u, v, at[0], at[1], spread[0], spread[1])
    field[..., 0] += shift[0] * geom.b * w
    field[..., 1] += shift[1] * geom.b * w


def shading_map(
    geom: FaceGeometry, shades: tuple[Shade, ...], sides: tuple[float, ...], height: int, width: int
) -> np.ndarray:
    """Darkening (height, width) at full amplitude for ``shades`` on ``sides``."""
    u, v = _grid(geom, height, width)
    out = np.zeros((height, width), np.float32)
    anchors = geom.anchors()
    for s in shades:
        au, av = anchors[s.anchor]
        for side in sides if au != 0.0 else (1.0,):
            out += s.strength * _blob(u, v, side * (au + s.ou), av + s.ov, s.su, s.sv)
    return out
