"""Every fold of one configuration trained here, one after the other (``aullm train``), through the fold store.

The same store as a sweep's (``orchestration.folds.store``), keyed by configuration, protocol, fold and
data (``<out>/folds/<data key>/``): a rerun or an interrupted run finds the folds already trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from aullm_core.config import ExperimentConfig
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import Fold
from aullm_core.train.result import FoldResult
from orchestration.folds.store import FoldStore
from orchestration.folds.task import data_key
from orchestration.folds.trainable import FoldFn, train_fold

__all__ = ["local_store", "train_folds"]


def local_store(out: Path, source: ClipSet, target: ClipSet | None = None) -> FoldStore:
    """The fold store of a local run on ``source`` (and ``target`` for cross-domain) under ``out``."""
    fingerprints = [source.fingerprint] + ([target.fingerprint] if target is not None else [])
    return FoldStore(Path(out) / "folds" / data_key(fingerprints))


def train_folds(
    source: ClipSet,
    test_set: ClipSet,
    folds: Sequence[Fold],
    config: ExperimentConfig,
    store: FoldStore,
    *,
    device: str = "cpu",
    progress: bool = True,
    fold_fn: FoldFn = train_fold,
) -> tuple[list[FoldResult], int]:
    """Results of every fold (stored ones reused, new ones trained and stored) and how many were reused."""
    fp, record = config.fingerprint(), config.model_dump(mode="json")
    results: list[FoldResult] = []
    reused = 0
    bar = tqdm(folds, desc=f"{folds[0].protocol if folds else ''} folds", unit="fold", disable=not progress)
    for fold in bar:
        bar.set_postfix(fold=fold.fold_id)
        result, trained = store.get_or_train(
            fp, fold.protocol, fold.fold_id,
            lambda fold=fold: fold_fn(source, test_set, fold, config, device=device, progress=progress), record)
        reused += not trained
        results.append(result)
    bar.close()
    return results, reused
