"""Records shared by readers, the cache, protocols and training.

The contract between the data layer and everything above it:
- a ``Reader`` turns a distribution folder into an ``AnnotationTable`` (one ``Annotation`` per
  clip, with the frame files found for it);
- the HDF5 cache turns that into a ``ClipSet``: frames in memory plus labels over an AU vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aullm_core.errors import DataError

__all__ = [
    "AU_SETS",
    "DATASETS",
    "SHARED_AUS",
    "Annotation",
    "AnnotationTable",
    "ClipSet",
    "DataError",
]

DATASETS = ("casme2", "samm")

#: AU vocabularies used by the paper (method.md section 1).
AU_SETS: dict[str, tuple[int, ...]] = {
    "casme2": (1, 2, 4, 7, 12, 14, 15, 17),
    "samm": (2, 4, 7, 12),
}
#: AUs shared by both datasets: the cross-domain label space.
SHARED_AUS: tuple[int, ...] = (2, 4, 7, 12)


@dataclass(frozen=True)
class Annotation:
    """One clip of a coding sheet, checked against its frame folder."""

    subject: str  # 'sub01' (CASME II) or '006' (SAMM)
    clip: str  # the sheet's Filename, e.g. 'EP02_01f' or '006_1_2'
    onset: int
    apex: int | None  # None where the sheet has no apex ('/' or blank)
    offset: int
    aus: tuple[int, ...]  # sorted, unique
    emotion: str
    n_frames: int  # frame files found in the clip folder
    frames: tuple[Path, ...] = field(default=(), compare=False, repr=False)  # sorted by frame number


class AnnotationTable(list[Annotation]):
    """A list of annotations with a DataFrame view (frames left out).

    ``skipped`` lists, one line each, the clips a lenient read left out and why; ``sheet`` and
    ``overrides`` are the files the table was read from (for the cache's source fingerprint).
    """

    def __init__(
        self,
        items: Iterable[Annotation] = (),
        *,
        skipped: Iterable[str] = (),
        sheet: Path | None = None,
        overrides: Path | None = None,
    ) -> None:
        super().__init__(items)
        self.skipped: list[str] = list(skipped)
        self.sheet = sheet
        self.overrides = overrides

    @property
    def subjects(self) -> list[str]:
        """Distinct subject ids, sorted."""
        return sorted({a.subject for a in self})

    def au_vocabulary(self) -> tuple[int, ...]:
        """Every AU coded in at least one clip, sorted."""
        return tuple(sorted({au for a in self for au in a.aus}))

    def positives(self) -> dict[int, int]:
        """Number of clips coded with each AU of ``au_vocabulary()``."""
        return {au: sum(au in a.aus for a in self) for au in self.au_vocabulary()}

    def records(self) -> list[dict[str, object]]:
        """One plain dict per clip: subject, clip, onset, apex, offset, aus, emotion, n_frames (no frames)."""
        return [
            {
                "subject": a.subject,
                "clip": a.clip,
                "onset": a.onset,
                "apex": a.apex,
                "offset": a.offset,
                "aus": list(a.aus),
                "emotion": a.emotion,
                "n_frames": a.n_frames,
            }
            for a in self
        ]

    def to_frame(self) -> pd.DataFrame:
        rows = self.records()
        frame = pd.DataFrame(
            rows, columns=["subject", "clip", "onset", "apex", "offset", "aus", "emotion", "n_frames"]
        )
        frame["apex"] = frame["apex"].astype("Int64")  # missing apex stays missing, not a float NaN
        return frame


@dataclass
class ClipSet:
    """A dataset loaded from the HDF5 cache, all in memory.

    ``frames[i]`` is a uint8 array (T, H, W) for grey or (T, H, W, 3) for colour, T = onset..offset.
    ``labels`` is (n_clips, len(aus)) uint8, column k for AU ``aus[k]``.
    """

    name: str  # 'casme2' or 'samm'
    frames: list[np.ndarray]
    meta: pd.DataFrame  # columns: subject, clip, onset, apex, offset, emotion, n_frames
    aus: tuple[int, ...]
    labels: np.ndarray
    attrs: dict[str, object] = field(default_factory=dict)  # preprocessing parameters, fingerprint

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def subjects(self) -> np.ndarray:
        return self.meta["subject"].to_numpy()

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex digits naming this data: the cache's header checksum (it covers the SHA-256 of every
        dataset in the file), or for a set not read from a cache a digest of its content (computed once:
        a worker checks it before every fold, and a loaded set is not modified)."""
        checksum = self.attrs.get("header_checksum")
        if isinstance(checksum, str) and checksum:
            return checksum[:16]
        return self.content_fingerprint

    @functools.cached_property
    def content_fingerprint(self) -> str:
        """16 hex digits of the clips' content alone (labels, metadata, frames): equal for two caches of
        the same data written at different times, whose header checksums differ (they cover the
        sources' modification times)."""
        digest = hashlib.sha256(f"{self.name}{self.aus}".encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        digest.update(self.meta.to_csv(index=False).encode())
        for frames in self.frames:
            digest.update(f"{frames.shape}".encode())
            digest.update(np.ascontiguousarray(frames).tobytes())
        return digest.hexdigest()[:16]

    def label_matrix(self, aus: tuple[int, ...]) -> np.ndarray:
        """Labels restricted/reordered to ``aus`` (an AU absent from this set raises KeyError)."""
        cols = [self.aus.index(a) if a in self.aus else None for a in aus]
        missing = [a for a, c in zip(aus, cols) if c is None]
        if missing:
            raise KeyError(f"AUs {missing} are not in the {self.name} vocabulary {self.aus}")
        return self.labels[:, cols]
