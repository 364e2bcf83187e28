"""Frame files to arrays: listing a clip folder and decoding, converting and resizing its frames.

``load_frames`` is the one function that turns JPEG files into model input; the HDF5 cache, the
cache benchmark and ``aullm predict`` all call it, so a cached clip and a clip read from a folder
go through the same steps: decode (at reduced scale with ``draft``), grey or colour, optional crop,
resize to ``size`` x ``size`` (aspect not kept, bilinear), uint8.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from aullm_core.errors import DataError

__all__ = ["FRAME_SUFFIXES", "RESAMPLE", "frame_options", "frame_sort_key", "list_frames", "load_frame", "load_frames"]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Resampling filter used to reach ``size`` x ``size`` (recorded in the cache's attributes).
RESAMPLE = "bilinear"
_DIGITS = re.compile(r"\d+")


def frame_sort_key(path: Path) -> tuple[tuple[int, ...], str]:
    """Sort key: the numbers in the file name, in order ('img9' before 'img10'), then the name."""
    return tuple(int(d) for d in _DIGITS.findall(path.stem)), path.name


def list_frames(folder: Path) -> list[Path]:
    """Frame files of one clip folder, sorted by the digits in their names.

    Raises ``DataError`` if ``folder`` is not a directory. An empty list means no frame was found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: clip folder not found")
    frames = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()]
    return sorted(frames, key=frame_sort_key)


def load_frame(
    path: Path,
    *,
    size: int = 64,
    color: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    draft: bool = True,
) -> np.ndarray:
    """Decode one frame to uint8 (size, size) grey or (size, size, 3) RGB.

    With ``draft``, libjpeg decodes at the smallest power-of-two reduction (1/2, 1/4, 1/8) that
    still leaves at least ``size`` pixels across the (cropped) face, which is several times
    faster on large frames and changes pixels slightly. ``crop`` is (x, y, w, h) in the frame's
    full-resolution pixels.
    """
    mode = "RGB" if color else "L"
    try:
        with Image.open(path) as image:
            full_w, full_h = image.size
            x, y, w, h = crop if crop is not None else (0, 0, full_w, full_h)
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > full_w or y + h > full_h:
                raise DataError(
                    f"{path}: crop x,y,w,h={x},{y},{w},{h} does not fit in the {full_w}x{full_h} frame"
                )
            if draft:
                image.draft(mode, (math.ceil(full_w * size / w), math.ceil(full_h * size / h)))
            sx, sy = image.size[0] / full_w, image.size[1] / full_h
            box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
            out = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR, box=box)
            return np.asarray(out, dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"{path}: frame file not found") from err
    except Image.DecompressionBombError as err:
        raise DataError(
            f"{path}: refused: the image has more pixels than Pillow's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS:,}); frames are expected at camera resolution"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode frame ({type(err).__name__}: {err})") from err


def load_frames(
    paths: Sequence[Path],
    *,
    size: int = 64,
    color: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    draft: bool = True,
) -> np.ndarray:
    """Decode a clip: uint8 (T, size, size) grey or (T, size, size, 3) colour, frames in the given order.

    Example:
        >>> clip = load_frames(list_frames(Path("CASME2_RAW_selected/sub01/EP02_01f")), size=64)
        >>> clip.shape  # doctest: +SKIP
        (42, 64, 64)
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size=}")
    if not paths:
        raise DataError("load_frames: no frame files given (empty clip)")
    return np.stack([load_frame(Path(p), size=size, color=color, crop=crop, draft=draft) for p in paths])


def frame_options(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``load_frames`` arguments from a cache's attributes as a checkpoint stores them (HDF5 attribute types
    vary): how new frames must be read to look like the training cache."""
    crop = attrs.get("crop")
    if isinstance(crop, str):
        crop = None if crop.strip().lower() in ("", "none", "null") else [int(v) for v in crop.split(",")]
    if crop is not None and len(crop) == 0:
        crop = None
    draft = attrs.get("draft", True)
    color = attrs.get("color", False)
    return {
        "size": int(attrs.get("size", 64)),
        "color": str(color).lower() == "true" if isinstance(color, str) else bool(color),
        "crop": tuple(int(v) for v in crop) if crop is not None else None,
        "draft": str(draft).lower() == "true" if isinstance(draft, str) else bool(draft),
    }
