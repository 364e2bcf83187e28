"""Evaluation protocols as lists of folds with stable ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aullm_core.data.records import SHARED_AUS, ClipSet

#: The evaluation protocols: leave one subject out, and cross-domain (train on one dataset, test on the other).
ProtocolName = Literal["loso", "cross"]
LOSO: ProtocolName = "loso"
CROSS: ProtocolName = "cross"


@dataclass(frozen=True)
class Fold:
    """One train/test split.

    For LOSO, ``train_idx`` and ``test_idx`` index the same ClipSet and ``fold_id`` is the test
    subject. For cross-domain, ``train_idx`` indexes the source set and ``test_idx`` the target set,
    and ``fold_id`` is '<source>-><target>'.
    """

    fold_id: str
    protocol: str  # a ProtocolName; the nested estimate's folds carry their own
    train_idx: np.ndarray
    test_idx: np.ndarray
    aus: tuple[int, ...]


def loso_folds(clips: ClipSet, aus: tuple[int, ...] | None = None) -> list[Fold]:
    """One fold per subject (sorted by subject id); same splits as sklearn's LeaveOneGroupOut."""
    subjects = clips.subjects
    folds = []
    for subject in sorted(set(subjects.tolist())):
        test = np.flatnonzero(subjects == subject)
        train = np.flatnonzero(subjects != subject)
        folds.append(Fold(str(subject), LOSO, train, test, tuple(aus or clips.aus)))
    return folds


def cross_domain_fold(source: ClipSet, target: ClipSet) -> Fold:
    """Train on all of ``source``, test on all of ``target``, over their shared AUs."""
    shared = tuple(a for a in SHARED_AUS if a in source.aus and a in target.aus)
    if not shared:
        raise ValueError(f"{source.name} and {target.name} share no AU")
    return Fold(
        f"{source.name}->{target.name}",
        CROSS,
        np.arange(len(source)),
        np.arange(len(target)),
        shared,
    )
