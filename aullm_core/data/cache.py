"""The HDF5 clip cache: every clip of a dataset decoded once, loaded for training in one call.

One file per dataset and preprocessing setting; its layout and checksums are ``cache_format``'s.
The file is written under a temporary name and renamed when complete, so a crash never leaves a
file that looks whole. Building again with the same sources and parameters reuses the file; with
other ones it is refused unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from aullm_core.atomic import atomic_path, remove_stale_temps
from aullm_core.data.cache_format import (
    SCHEMA,
    SCHEMA_VERSION,
    Digest,
    checksum,
    header_checksum,
    read_cache,
)
from aullm_core.data.preprocess import RESAMPLE, load_frames
from aullm_core.data.readers import get_reader
from aullm_core.data.records import AU_SETS, AnnotationTable, ClipSet
from aullm_core.data.synth import MANIFEST
from aullm_core.errors import CacheError
from aullm_core.model.config import MIN_FRAME_SIZE

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "CacheBuild",
    "load_cache",
    "make_cache",
    "verify_cache",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CacheBuild:
    """What ``make_cache`` did: the file, whether an existing one was reused, its size, the time taken."""

    path: Path
    reused: bool
    n_clips: int
    n_frames: int
    seconds: float
    skipped: tuple[str, ...] = ()


def make_cache(
    dataset: str,
    root: Path,
    out: Path,
    *,
    frames: Path | None = None,
    annotations: Path | None = None,
    overrides: Path | None = None,
    lenient: bool = False,
    size: int = 64,
    color: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CacheBuild:
    """Read ``dataset`` with its reader, decode its clips in parallel and write the cache ``out``.

    Example:
        >>> make_cache("casme2", Path("CASME2"), Path("casme2_64.h5"), size=64).reused  # doctest: +SKIP
        False

    Args:
        dataset: 'casme2' or 'samm'.
        root, frames, annotations, overrides, lenient: as for the reader (``get_reader(dataset).read``).
        size: frames are resized to size x size (aspect not kept).
        color: keep RGB (default grey, as the paper).
        crop: (x, y, w, h) in full-resolution pixels, applied before resizing.
        force: rebuild ``out`` even if it exists (else an existing valid cache of the same sources
            and parameters is reused, and any other existing file is refused).
        workers: decoding processes (None: one per CPU; 1: decode in this process).
        progress: show a progress bar over frames.
    """
    start = time.perf_counter()
    if size < MIN_FRAME_SIZE:  # the 3D-CNN's smallest input: a smaller cache would fail inside the model
        raise ValueError(f"size must be at least {MIN_FRAME_SIZE} pixels (the 3D-CNN's smallest input), got {size=}")
    if crop is not None and (len(crop) != 4 or min(crop[2:]) <= 0 or min(crop[:2]) < 0):
        raise ValueError(f"crop must be x,y,w,h with w,h > 0 and x,y >= 0, got {crop=}")
    reader = get_reader(dataset)
    table = reader.read(root, frames=frames, annotations=annotations, overrides=overrides, lenient=lenient)
    params = {
        "dataset": reader.name,
        "reader": type(reader).__name__,
        "size": int(size),
        "color": bool(color),
        "crop": list(crop) if crop is not None else None,
        "draft": True,
        "resample": RESAMPLE,
        "lenient": bool(lenient),
    }
    fingerprint = source_fingerprint(table)
    out = Path(out)
    n_frames = sum(a.n_frames for a in table)
    if out.exists() and not force and _reusable(out, params, fingerprint):
        log.info("%s: same sources and parameters, reused", out)
        return CacheBuild(out, True, len(table), n_frames, time.perf_counter() - start, tuple(table.skipped))
    for stale in remove_stale_temps(out):  # a build killed earlier could not remove its own
        log.info("removed %s, left by a build that was killed", stale)
    with atomic_path(out) as tmp:
        _write(tmp, table, params, fingerprint, synthetic_source(root), workers, progress)
    log.info("%s: wrote %d clips, %d frames", out, len(table), n_frames)
    return CacheBuild(out, False, len(table), n_frames, time.perf_counter() - start, tuple(table.skipped))


def synthetic_source(root: Path) -> dict[str, Any] | None:
    """What a synthetic dataset under ``root`` was written with (style, difficulty, size, seed), or None."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    keys = ("difficulty", "subjects", "clips_per_subject", "seed")
    style = manifest.get("style", {})
    return {
        "style": style.get("name"),
        "amplitude": style.get("difficulty", {}).get("amplitude"),
        **{k: manifest.get(k, "realistic" if k == "difficulty" else None) for k in keys},
    }


def source_fingerprint(table: AnnotationTable) -> str:
    """SHA-256 of the sources: sheet and overrides bytes, each frame's subject/clip/name, size, mtime."""
    digest = hashlib.sha256()
    for path in (table.sheet, table.overrides):
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest() if path is not None else b"-")
    for a in table:
        for frame in a.frames:
            stat = frame.stat()
            digest.update(f"{'/'.join(frame.parts[-3:])}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _reusable(out: Path, params: dict[str, Any], fingerprint: str) -> bool:
    """True if ``out`` is a valid cache of these sources and parameters; ``CacheError`` otherwise."""
    try:
        header = verify_cache(out)
    except CacheError as err:
        raise CacheError(
            f"{out}: exists but is not a valid cache ({err}); pass --force to overwrite it"
        ) from None
    if header["params"] == params and header["fingerprint"] == fingerprint:
        return True
    changed = [
        f"{k}={header['params'].get(k)!r} (now {v!r})"
        for k, v in params.items()
        if header["params"].get(k) != v
    ]
    if header["fingerprint"] != fingerprint:
        changed.append("the source files changed")
    raise CacheError(
        f"{out}: was built with other parameters or sources ({'; '.join(changed)}); "
        f"pass --force to overwrite it or choose another --out"
    )


def _decode(task: tuple[list[Path], int, bool, tuple[int, int, int, int] | None]) -> np.ndarray:
    paths, size, color, crop = task
    return load_frames(paths, size=size, color=color, crop=crop, draft=True)


def _write(
    tmp: Path,
    table: AnnotationTable,
    params: dict[str, Any],
    fingerprint: str,
    synthetic: dict[str, Any] | None,
    workers: int | None,
    progress: bool,
) -> None:
    size, color = params["size"], params["color"]
    crop = tuple(params["crop"]) if params["crop"] is not None else None
    counts = np.array([a.n_frames for a in table], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    shape = (int(offsets[-1]), size, size) + ((3,) if color else ())
    tasks = [(list(a.frames), size, color, crop) for a in table]
    frames_digest = Digest(np.dtype(np.uint8), shape)
    with (
        h5py.File(tmp, "w") as f,
        tqdm(
            total=int(offsets[-1]), unit="frame", desc=f"cache {params['dataset']}", disable=not progress
        ) as bar,
    ):
        ds = f.create_dataset("frames", shape=shape, dtype=np.uint8)
        for i, clip in enumerate(_decoded(tasks, workers)):
            ds[offsets[i] : offsets[i + 1]] = clip
            frames_digest.update(clip)
            bar.update(len(clip))
        checksums = {"frames": frames_digest.hexdigest()}
        columns = _table_columns(table)
        aus = np.array(AU_SETS[params["dataset"]], dtype=np.int64)
        labels = np.array([[au in a.aus for au in aus] for a in table], dtype=np.uint8).reshape(
            len(table), len(aus)
        )
        arrays = {
            "offsets": offsets,
            "aus": aus,
            "aus_all": np.array(table.au_vocabulary(), dtype=np.int64),
            "labels": labels,
            **{f"table/{k}": v for k, v in columns.items()},
        }
        for name, value in arrays.items():
            if value.dtype.kind == "U":
                f.create_dataset(name, data=value.astype(object), dtype=h5py.string_dtype("utf-8"))
            else:
                f.create_dataset(name, data=value)
            checksums[name] = checksum(value)
        header = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "dataset": params["dataset"],
            "params": json.dumps(params, sort_keys=True),
            "fingerprint": fingerprint,
            "checksums": json.dumps(checksums, sort_keys=True),
            "n_clips": len(table),
            "n_frames": int(offsets[-1]),
            "synthetic": json.dumps(synthetic, sort_keys=True),
        }
        f.attrs.update(header)
        f.attrs["header_checksum"] = header_checksum(header)
        f.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        f.attrs["skipped"] = json.dumps(table.skipped)


def die_with_parent(parent: int) -> None:
    """Pool initializer: the worker gets SIGTERM when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed ``aullm data cache`` leaves no decoding process behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the setting took effect
        os._exit(1)


def _decoded(tasks: list[tuple[list[Path], int, bool, Any]], workers: int | None) -> Any:
    """Decoded clips in order: in this process, or a process pool of ``workers``, one clip per task."""
    n_workers = min(len(tasks), workers or os.cpu_count() or 1)
    if n_workers <= 1:
        yield from map(_decode, tasks)
        return
    pool = ProcessPoolExecutor(max_workers=n_workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield from pool.map(_decode, tasks, chunksize=1)
    except BrokenProcessPool as err:
        raise CacheError(f"a decoding process died ({err}); retry with --workers 1") from None
    finally:  # on an error (a bad frame), drop the clips not started yet instead of decoding them all
        pool.shutdown(wait=True, cancel_futures=True)


def _table_columns(table: AnnotationTable) -> dict[str, np.ndarray]:
    return {
        "subject": np.array([a.subject for a in table], dtype=str),
        "clip": np.array([a.clip for a in table], dtype=str),
        "emotion": np.array([a.emotion for a in table], dtype=str),
        "aus": np.array(["+".join(map(str, a.aus)) for a in table], dtype=str),
        "onset": np.array([a.onset for a in table], dtype=np.int64),
        "apex": np.array([-1 if a.apex is None else a.apex for a in table], dtype=np.int64),
        "offset": np.array([a.offset for a in table], dtype=np.int64),
        "n_frames": np.array([a.n_frames for a in table], dtype=np.int64),
    }


def verify_cache(path: str | Path) -> dict[str, Any]:
    """Check structure and every checksum of a cache; return its header (params as a dict).

    Raises ``CacheError`` (one line, naming the file and what is wrong) on a missing, truncated,
    altered or inconsistent file.
    """
    header, _ = read_cache(Path(path), checksums=True)
    return header


def load_cache(path: str | Path, *, verify: bool = True) -> ClipSet:
    """Load a whole cache into memory as a ``ClipSet`` (checksums verified unless ``verify=False``).

    Example:
        >>> clips = load_cache("casme2_64.h5")  # doctest: +SKIP
        >>> clips.frames[0].shape, clips.labels.shape, clips.aus  # doctest: +SKIP
        ((42, 64, 64), (256, 8), (1, 2, 4, 7, 12, 14, 15, 17))
    """
    path = Path(path)
    header, data = read_cache(path, checksums=verify)
    offsets = data["offsets"]
    frames = np.split(data["frames"], offsets[1:-1])  # views into one array
    apex = pd.array(data["table/apex"], dtype="Int64")
    apex[data["table/apex"] < 0] = pd.NA
    meta = pd.DataFrame(
        {
            "subject": data["table/subject"],
            "clip": data["table/clip"],
            "onset": data["table/onset"],
            "apex": apex,
            "offset": data["table/offset"],
            "emotion": data["table/emotion"],
            "n_frames": data["table/n_frames"],
            "aus": [tuple(int(a) for a in s.split("+")) if s else () for s in data["table/aus"]],
        }
    )
    attrs = {
        **header["params"],
        "fingerprint": header["fingerprint"],
        "header_checksum": header["header_checksum"],
        "aus_all": tuple(int(a) for a in data["aus_all"]),
        "created": header.get("created"),
        "synthetic": json.loads(header.get("synthetic", "null")),
        "path": str(path),
    }
    return ClipSet(
        name=header["dataset"],
        frames=frames,
        meta=meta,
        aus=tuple(int(a) for a in data["aus"]),
        labels=data["labels"],
        attrs=attrs,
    )
