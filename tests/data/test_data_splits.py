"""Protocols: LOSO folds against sklearn's LeaveOneGroupOut, the cross-domain fold's AU subset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import LeaveOneGroupOut

from aullm_core.data import AU_SETS, SHARED_AUS, ClipSet, cross_domain_fold, loso_folds


def _clipset(name: str, subjects: list[str], aus: tuple[int, ...] | None = None) -> ClipSet:
    aus = aus or AU_SETS[name]
    rng = np.random.default_rng(len(subjects))
    n = len(subjects)
    return ClipSet(
        name=name,
        frames=[np.zeros((3, 4, 4), np.uint8) for _ in range(n)],
        meta=pd.DataFrame({"subject": subjects, "clip": [f"c{i}" for i in range(n)]}),
        aus=aus,
        labels=rng.integers(0, 2, size=(n, len(aus))).astype(np.uint8),
    )


def test_loso_matches_leave_one_group_out() -> None:
    rng = np.random.default_rng(0)
    subjects = [f"sub{k:02d}" for k in rng.integers(1, 27, size=120)]  # unsorted, uneven clips per subject
    clips = _clipset("casme2", subjects)
    folds = loso_folds(clips)
    reference = list(LeaveOneGroupOut().split(np.zeros(len(subjects)), groups=np.array(subjects)))
    assert len(folds) == len(set(subjects)) == len(reference)
    for fold, (train, test) in zip(folds, reference, strict=True):
        np.testing.assert_array_equal(fold.train_idx, train)
        np.testing.assert_array_equal(fold.test_idx, test)
        assert {subjects[i] for i in fold.test_idx} == {fold.fold_id}
        assert fold.fold_id not in {subjects[i] for i in fold.train_idx}
        assert fold.protocol == "loso" and fold.aus == AU_SETS["casme2"]
    assert [f.fold_id for f in folds] == sorted(set(subjects))


def test_loso_fold_ids_are_stable_and_aus_selectable() -> None:
    clips = _clipset("samm", ["011", "006", "007", "006", "011", "011"])
    ids = [f.fold_id for f in loso_folds(clips)]
    assert ids == ["006", "007", "011"]
    shuffled = _clipset("samm", ["006", "011", "011", "007", "011", "006"])
    assert [f.fold_id for f in loso_folds(shuffled)] == ids
    assert loso_folds(clips, aus=(4, 7))[0].aus == (4, 7)


def test_cross_domain_fold_uses_shared_aus() -> None:
    casme2 = _clipset("casme2", ["sub01", "sub02", "sub03"])
    samm = _clipset("samm", ["006", "007"])
    fold = cross_domain_fold(casme2, samm)
    assert fold.aus == SHARED_AUS == (2, 4, 7, 12)
    assert fold.fold_id == "casme2->samm" and fold.protocol == "cross"
    np.testing.assert_array_equal(fold.train_idx, np.arange(3))
    np.testing.assert_array_equal(fold.test_idx, np.arange(2))
    back = cross_domain_fold(samm, casme2)
    assert back.fold_id == "samm->casme2" and back.aus == (2, 4, 7, 12)
    # the fold's AUs select matching label columns in both sets
    assert casme2.label_matrix(fold.aus).shape == (3, 4)
    np.testing.assert_array_equal(samm.label_matrix(fold.aus), samm.labels)
    np.testing.assert_array_equal(casme2.label_matrix(fold.aus)[:, 0], casme2.labels[:, 1])  # AU2 is column 1


def test_cross_domain_needs_a_shared_au() -> None:
    with pytest.raises(ValueError, match="share no AU"):
        cross_domain_fold(_clipset("casme2", ["sub01"], aus=(1, 14)), _clipset("samm", ["006"]))
