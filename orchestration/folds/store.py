"""Finished folds, recorded once: a retried trial or a resumed sweep finds them and skips training.

Layout under ``root`` (a sweep's ``folds/`` folder)::

    <config_fp>/config.json                          the configuration (ExperimentConfig as JSON)
    <config_fp>/<protocol>/<fold>.<sha>.npz           probs, labels, inner_thresholds (no pickle)
    <config_fp>/<protocol>/<fold>.json                everything else + the npz's name and SHA-256

``<fold>`` is the fold id percent-encoded (``casme2->samm`` -> ``casme2-%3Esamm``). The npz is
named by its content hash and written first (temporary file + rename); the JSON record is written
last and linked into place only if none exists, so two writers of the same fold (a retried trial
racing its predecessor) leave exactly one whole record: ``put`` is idempotent, the first record
wins. A record whose npz is missing or does not match its hash, or whose JSON does not match its own
checksum (``record_sha256``, format 2), reads as missing, with a warning naming the file and the
configuration, and is rewritten by the next training of that fold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from aullm_core.atomic import atomic_write_bytes, sibling_temp, write_synced
from aullm_core.train.result import FoldResult

__all__ = ["FoldStore"]

logger = logging.getLogger(__name__)

_FORMAT = 2  # 2: the record carries the SHA-256 of its own content (record_sha256); 1 records are read as before


def _record_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a record's content without its own checksum field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _publish(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``path`` whole; unless ``replace``, only when it does not exist yet (first writer wins)."""
    if replace:
        atomic_write_bytes(path, data)
        return True
    tmp = sibling_temp(path)
    try:
        write_synced(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: last writer wins, still whole
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _npz_bytes(result: FoldResult) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "probs": np.asarray(result.probs, dtype=np.float32),
        "labels": np.asarray(result.labels),
    }
    if result.inner_thresholds is not None:
        arrays["inner_thresholds"] = np.asarray(result.inner_thresholds, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _safe(part: str) -> str:
    """A key part as one file name (percent-encoded; '.' and '..' encoded too)."""
    if not part:
        raise ValueError("fold store: empty key part (config fingerprint, protocol and fold id are required)")
    encoded = quote(part, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


#: Records read by this process: JSON path -> (its identity, arrays path, their identity, result), newest last.
_READ: OrderedDict[Path, tuple[tuple[int, int, int], Path, tuple[int, int, int], FoldResult]] = OrderedDict()
_READ_CACHE = 20000


def _identity(path: Path) -> tuple[int, int, int]:
    """(size, modification time, inode): a record replaced or edited has another."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class FoldStore:
    """Fold results keyed by (configuration fingerprint, protocol, fold id)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, config_fp: str, protocol: str, fold_id: str) -> tuple[Path, Path]:
        """(npz path before the content hash is added, JSON record path)."""
        folder = self.root / _safe(config_fp) / _safe(protocol)
        stem = _safe(fold_id)
        return folder / f"{stem}.npz", folder / f"{stem}.json"

    def put(
        self, config_fp: str, protocol: str, fold_id: str, result: FoldResult, config: dict[str, Any]
    ) -> bool:
        """Record a fold; returns False (and writes nothing) when it is already stored."""
        if result.fold_id != fold_id or result.protocol != protocol:
            raise ValueError(
                f"fold store: result is ({result.protocol}, {result.fold_id}), "
                f"expected ({protocol}, {fold_id})"
            )
        if self.get(config_fp, protocol, fold_id) is not None:
            return False
        config_path = self.root / _safe(config_fp) / "config.json"
        if not config_path.exists():
            atomic_write_bytes(config_path, json.dumps(config, sort_keys=True, indent=1).encode())
        npz_path, json_path = self._paths(config_fp, protocol, fold_id)
        blob = _npz_bytes(result)
        digest = hashlib.sha256(blob).hexdigest()
        meta = {
            "format": _FORMAT,
            "config_fp": config_fp,
            "fold_id": result.fold_id,
            "protocol": result.protocol,
            "aus": [int(a) for a in result.aus],
            "clip_ids": [str(c) for c in result.clip_ids],
            "subjects": [str(s) for s in result.subjects],
            "epoch_losses": [float(x) for x in result.epoch_losses],
            "best_epoch": None if result.best_epoch is None else int(result.best_epoch),
            "duration_s": float(result.duration_s),
            "extra": {str(k): float(v) for k, v in result.extra.items()},
            "npz_sha256": digest,
        }
        npz_path = npz_path.with_name(f"{json_path.stem}.{digest[:16]}.npz")
        meta["npz"] = npz_path.name
        meta["record_sha256"] = _record_digest(meta)
        atomic_write_bytes(npz_path, blob)
        return _publish(json_path, json.dumps(meta, indent=1).encode(), replace=json_path.exists())

    def get_or_train(self, config_fp: str, protocol: str, fold_id: str, train: Callable[[], FoldResult],
                     config: dict[str, Any]) -> tuple[FoldResult, bool]:
        """The stored result, or ``train()``'s, stored; and whether it was trained here. When another
        process stored the fold meanwhile, its result is the one returned (the first stored wins)."""
        stored = self.get(config_fp, protocol, fold_id)
        if stored is not None:
            return stored, False
        result = train()
        if not self.put(config_fp, protocol, fold_id, result, config):
            result = self.get(config_fp, protocol, fold_id) or result
        return result, True

    def get(self, config_fp: str, protocol: str, fold_id: str) -> FoldResult | None:
        """The stored result, or None when absent or incomplete (a torn or altered record).

        A record is read and checked once per process: later reads of an unchanged record (same size,
        modification time and inode of its JSON and its arrays) return what was read then."""
        _, json_path = self._paths(config_fp, protocol, fold_id)
        try:
            json_stat = _identity(json_path)
            cached = _READ.get(json_path)
            if cached is not None and cached[0] == json_stat and cached[2] == _identity(cached[1]):
                _READ.move_to_end(json_path)
                return dataclasses.replace(cached[3])
            meta = json.loads(json_path.read_text())
            npz_path = json_path.with_name(meta["npz"])
            blob = npz_path.read_bytes()
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            return None
        result = self._check_and_parse(json_path, npz_path, meta, blob, config_fp, fold_id)
        if result is not None:
            _READ[json_path] = (json_stat, npz_path, _identity(npz_path), result)
            while len(_READ) > _READ_CACHE:
                _READ.popitem(last=False)
            return dataclasses.replace(result)
        return None

    @staticmethod
    def _check_and_parse(json_path: Path, npz_path: Path, meta: dict[str, Any], blob: bytes, config_fp: str,
                         fold_id: str) -> FoldResult | None:
        """The record's result once its arrays match their checksum and the record its own; else None, with a warning."""
        if hashlib.sha256(blob).hexdigest() != meta.get("npz_sha256"):
            logger.warning("fold store: %s does not match its record; treating the fold as not done", npz_path)
            return None
        if meta.get("format", 1) >= 2 and meta.get("record_sha256") != _record_digest(meta):
            logger.warning("fold store: %s (configuration %s, fold %s) was altered after it was written (its "
                           "checksum differs); treating the fold as not done: a resume trains it again",
                           json_path, config_fp, fold_id)
            return None
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            probs = arrays["probs"]
            labels = arrays["labels"]
            inner = arrays.get("inner_thresholds")
        return FoldResult(
            fold_id=meta["fold_id"],
            protocol=meta["protocol"],
            aus=tuple(meta["aus"]),
            clip_ids=list(meta["clip_ids"]),
            subjects=list(meta["subjects"]),
            probs=probs,
            labels=labels,
            epoch_losses=list(meta["epoch_losses"]),
            inner_thresholds=inner,
            best_epoch=meta["best_epoch"],
            duration_s=meta["duration_s"],
            extra=dict(meta["extra"]),
        )

    def has(self, config_fp: str, protocol: str, fold_id: str) -> bool:
        return self.get(config_fp, protocol, fold_id) is not None

    def configs(self) -> dict[str, dict]:
        """Configuration fingerprint -> configuration dict, for every configuration with a record. A
        ``config.json`` whose content does not have the fingerprint it is filed under (edited after it was
        written) is left out with a warning naming it: no view shows a configuration its folds did not train."""
        from aullm_core.config import ExperimentConfig

        out: dict[str, dict] = {}
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*/config.json")):
            fp = unquote(path.parent.name)
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                logger.warning("fold store: %s is not valid JSON; skipped", path)
                continue
            try:
                config = ExperimentConfig.model_validate(data)
                whole = config.model_dump(mode="json") == data
            except ValueError:
                whole = False
            actual = config.fingerprint() if whole else fp  # a partial stand-in (tests): nothing to check against
            if actual != fp:
                logger.warning("fold store: %s holds configuration %s, not %s (edited?); skipped", path, actual, fp)
                continue
            out[fp] = data
        return out

    def fold_ids(self, config_fp: str, protocol: str) -> list[str]:
        """Ids of the folds stored whole for this configuration and protocol, sorted."""
        folder = self.root / _safe(config_fp) / _safe(protocol)
        if not folder.is_dir():
            return []
        ids = (unquote(p.stem) for p in folder.glob("*.json") if not p.name.startswith("."))
        return sorted(i for i in ids if self.has(config_fp, protocol, i))

    def results(self, config_fp: str, protocol: str) -> list[FoldResult]:
        """Every stored fold of this configuration and protocol, sorted by fold id."""
        results = [self.get(config_fp, protocol, fold_id) for fold_id in self.fold_ids(config_fp, protocol)]
        return [r for r in results if r is not None]

    def entries(self) -> list[tuple[str, str, str]]:
        """(config_fp, protocol, fold_id) of every stored fold."""
        out = []
        for fp in self.configs():
            folder = self.root / _safe(fp)
            for proto_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                protocol = unquote(proto_dir.name)
                out.extend((fp, protocol, fold_id) for fold_id in self.fold_ids(fp, protocol))
        return out
