"""The HDF5 clip cache's file format: its layout, checksums, and reading a file back checked.

Layout (schema 1):

    /frames           uint8 (total frames, S, S) grey or (total frames, S, S, 3) colour, contiguous:
                      all clips one after the other, so loading is one read
    /offsets          int64 (n_clips + 1): clip i is frames[offsets[i]:offsets[i + 1]]
    /table/<column>   subject, clip, emotion, aus ('+'-joined, every AU the sheet codes): UTF-8;
                      onset, apex (-1 where the sheet has none), offset, n_frames: int64
    /aus              int64: the dataset's paper AU vocabulary (``AU_SETS``), the label columns
    /aus_all          int64: every AU coded in the sheet
    /labels           uint8 (n_clips, len(aus))
    attributes        schema, schema_version, dataset, params (JSON: size, color, crop, draft,
                      resample, lenient, reader), fingerprint (SHA-256 of the sheet and overrides
                      bytes and of every frame's name, size and mtime), checksums (JSON: SHA-256
                      of each dataset), header_checksum (SHA-256 of the attributes above), ...

``aullm_core.data.cache`` writes and loads it; this module is what both sides must agree on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aullm_core.errors import CacheError, one_line

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Digest", "checksum", "header_checksum", "read_cache"]

SCHEMA = "aullm-clip-cache"
SCHEMA_VERSION = 1
STRING_COLUMNS = ("subject", "clip", "emotion", "aus")
INT_COLUMNS = ("onset", "apex", "offset", "n_frames")
DATASETS = (
    "frames",
    "offsets",
    "aus",
    "aus_all",
    "labels",
    *(f"table/{c}" for c in STRING_COLUMNS + INT_COLUMNS),
)
#: Header attributes that caches written before they existed lack (checksummed when present).
OPTIONAL_HEADER_ATTRS = ("synthetic",)
HEADER_ATTRS = (
    "schema",
    "schema_version",
    "dataset",
    "params",
    "fingerprint",
    "checksums",
    "n_clips",
    "n_frames",
)


class Digest:
    """SHA-256 of an array's dtype, shape and C-order bytes, fed in consecutive pieces."""

    def __init__(self, dtype: np.dtype, shape: Sequence[int]) -> None:
        self._hash = hashlib.sha256(f"{dtype.str}{tuple(int(s) for s in shape)}".encode())

    def update(self, piece: np.ndarray) -> None:
        self._hash.update(np.ascontiguousarray(piece).data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def checksum(value: np.ndarray) -> str:
    if value.dtype.kind in "UOS":  # strings: hash the UTF-8 text, NUL-separated
        text = "\0".join(v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel())
        return hashlib.sha256(f"str{value.shape}".encode() + text.encode()).hexdigest()
    digest = Digest(value.dtype, value.shape)
    digest.update(value)
    return digest.hexdigest()


def header_checksum(header: dict[str, Any]) -> str:
    keys = (*HEADER_ATTRS, *(k for k in OPTIONAL_HEADER_ATTRS if k in header))
    blob = json.dumps({k: _plain(header[k]) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open(path: Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: cache file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CacheError(
            f"{path}: not a readable HDF5 file, truncated or damaged ({one_line(err, limit=200)})"
        ) from None


def read_cache(path: Path, *, checksums: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and every dataset of the cache, checked; ``CacheError`` naming the file otherwise."""
    path = Path(path)
    with _open(path) as f:
        try:
            attrs = {k: _plain(f.attrs[k]) for k in f.attrs}
            if attrs.get("schema") != SCHEMA:
                raise CacheError(
                    f"{path}: not an aullm clip cache (schema attribute {attrs.get('schema')!r})"
                )
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise CacheError(
                    f"{path}: cache schema version {attrs.get('schema_version')!r}, "
                    f"expected {SCHEMA_VERSION}; rebuild it"
                )
            missing = [k for k in (*HEADER_ATTRS, "header_checksum") if k not in attrs]
            if missing:
                raise CacheError(f"{path}: attribute(s) {', '.join(missing)} missing")
            if header_checksum(attrs) != attrs["header_checksum"]:
                raise CacheError(f"{path}: header attributes were altered (header checksum mismatch)")
            absent = [name for name in DATASETS if name not in f]
            if absent:
                raise CacheError(f"{path}: dataset(s) {', '.join(absent)} missing")
            data = {}
            for name in DATASETS:
                ds = f[name]
                if h5py.check_string_dtype(ds.dtype) is not None:
                    data[name] = ds.asstr()[...].astype(str)
                else:
                    data[name] = np.empty(ds.shape, ds.dtype)
                    if data[name].size:
                        ds.read_direct(data[name])
        except CacheError:
            raise
        except Exception as err:  # h5py raises OSError, KeyError, RuntimeError on damaged files
            raise CacheError(
                f"{path}: cannot read the cache ({type(err).__name__}: {one_line(err, limit=200)})"
            ) from err
    header = {**attrs, "params": json.loads(attrs["params"]), "checksums": json.loads(attrs["checksums"])}
    _check_structure(path, header, data)
    if checksums:
        for name in DATASETS:
            if checksum(data[name]) != header["checksums"].get(name):
                raise CacheError(
                    f"{path}: dataset '{name}' does not match its checksum (file altered or damaged)"
                )
    return header, data


def _check_structure(path: Path, header: dict[str, Any], data: dict[str, np.ndarray]) -> None:
    n, total = int(header["n_clips"]), int(header["n_frames"])
    size, color = header["params"]["size"], header["params"]["color"]
    offsets = data["offsets"]
    expected_frames = (total, size, size) + ((3,) if color else ())
    problems = []
    if data["frames"].shape != expected_frames:
        problems.append(f"frames has shape {data['frames'].shape}, expected {expected_frames}")
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != total or np.any(np.diff(offsets) < 1):
        problems.append("offsets are not increasing from 0 to the frame count")
    for name in (f"table/{c}" for c in STRING_COLUMNS + INT_COLUMNS):
        if data[name].shape != (n,):
            problems.append(f"{name} has {data[name].shape[0] if data[name].ndim else 0} rows, expected {n}")
    if data["labels"].shape != (n, len(data["aus"])):
        problems.append(f"labels has shape {data['labels'].shape}, expected {(n, len(data['aus']))}")
    if not problems and np.any(np.diff(offsets) != data["table/n_frames"]):
        problems.append("offsets disagree with table/n_frames")
    if problems:
        raise CacheError(f"{path}: inconsistent cache: {problems[0]}")
