"""Driver-side bookkeeping of a sweep: tracker calls, a ledger against duplicates, progress.

Everything here runs in the driver process, never in Ray workers. ``SweepCallback`` is the Tune
callback: it sends each fold result (``log_fold``) and each configuration outcome drained from the
searcher (``log_config``) to the tracker through ``SweepDriver``, which keeps a ledger
(``tracked.json`` in the sweep folder) of what was sent, so a retried trial, a fold found in the
store or a resumed sweep never logs a run twice (the tracker is idempotent too).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from aullm_core.errors import ConfigError
from aullm_core.train.result import FoldResult
from orchestration.fold_store import FoldStore
from orchestration.fold_task import CROSS, LOSO
from orchestration.searcher import COMPLETE, FAILED, PRUNED, FoldSearcher
from orchestration.sweep_folder import write_json

__all__ = [
    "CROSS",
    "DRIVERS",
    "LOSO",
    "Ledger",
    "QuietProgress",
    "SweepCallback",
    "SweepDriver",
    "SweepTracking",
]

logger = logging.getLogger(__name__)



class SweepTracking(Protocol):
    """What the sweep calls on its tracker (orchestration.tracking.SweepTracker implements it)."""

    def start(self, *, space: dict, settings: dict) -> str: ...

    def log_fold(self, config_fp: str, params: dict, result: FoldResult, *, duration_s: float) -> str: ...

    def log_config(
        self,
        config_fp: str,
        params: dict,
        results: list[FoldResult],
        *,
        pruned: bool,
        n_folds_total: int,
        cross: list[FoldResult] | None = None,
    ) -> str: ...

    def finish(self, leaderboard: pd.DataFrame, artifact_dir: Path) -> None: ...


class Ledger:
    """Keys already sent to the tracker, persisted so a resumed sweep does not send them again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[str] = set()
        if not path.exists():
            return
        try:
            keys = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            keys, problem = None, f"{type(err).__name__}: {err}"
        else:
            problem = "expected a JSON list of strings"
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ConfigError(
                f"{path}: not a readable tracking ledger ({problem}); restore it, or delete it to let the "
                "tracker find the runs already logged by their tags"
            )
        self.keys = set(keys)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        self.keys.add(key)
        write_json(self.path, sorted(self.keys))


class SweepDriver:
    """Driver-side bookkeeping: tracking calls, counters, progress display."""

    def __init__(
        self,
        *,
        store: FoldStore,
        tracker: SweepTracking | None,
        ledger: Ledger,
        n_folds: int,
        n_configs: int,
        progress: bool,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.ledger = ledger
        self.n_folds = n_folds
        self.folds_trained = 0
        self.loso_trained = 0
        self.folds_from_store = 0
        self.folds_stopped = 0
        self.outcomes: dict[str, int] = {COMPLETE: 0, PRUNED: 0, FAILED: 0}
        self.best: float | None = None
        self.searcher: FoldSearcher | None = None
        self.phases: dict[str, float] = {}
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_configs, desc="configurations", unit="cfg", dynamic_ncols=True)

    def _postfix(self) -> None:
        if self.bar is not None:
            best = "-" if self.best is None else f"{self.best:.4f}"
            self.bar.set_postfix_str(
                f"folds trained {self.folds_trained}, from store {self.folds_from_store}, "
                f"pruned {self.outcomes[PRUNED]}, best {best}"
            )

    def fold_done(self, metrics: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        trained = bool(metrics.get("trained", 1))
        self.folds_trained += int(trained)
        if trained and metrics.get("protocol") == LOSO:
            self.loso_trained += 1
        self.folds_from_store += int(not trained)
        self.log_fold(str(metrics["fp"]), str(metrics["protocol"]), str(metrics["fold_id"]), config)
        self._postfix()

    def log_fold(self, fp: str, protocol: str, fold_id: str, config: Mapping[str, Any]) -> None:
        key = f"fold:{fp}:{protocol}:{fold_id}"
        if self.tracker is None or key in self.ledger:
            return
        result = self.store.get(fp, protocol, fold_id)
        if result is None:
            return
        self.tracker.log_fold(fp, dict(config), result, duration_s=float(result.duration_s))
        self.ledger.add(key)

    def config_done(self, fp: str, status: str, value: float | None, config: Mapping[str, Any]) -> None:
        if status not in self.outcomes:
            return
        self.outcomes[status] += 1
        if status == COMPLETE and value is not None and math.isfinite(value):
            self.best = value if self.best is None else max(self.best, value)
        if self.bar is not None:
            self.bar.update(1)
        self._postfix()
        self.log_config(fp, status, config)

    def log_config(self, fp: str, status: str, config: Mapping[str, Any], cross: list[FoldResult] | None = None) -> None:
        key = f"config:{fp}:{'cross' if cross is not None else status}"
        if self.tracker is None or key in self.ledger:
            return
        results = self.store.results(fp, LOSO)
        if not results and cross is None:
            return
        for result in results:  # a fold whose trial was stopped after storing it still gets its run
            self.log_fold(fp, LOSO, result.fold_id, config)
        self.tracker.log_config(
            fp, dict(config), results, pruned=status == PRUNED, n_folds_total=self.n_folds, cross=cross
        )
        self.ledger.add(key)

    def log_stored_folds(self) -> None:
        """Send every stored fold not yet tracked (e.g. stored by a fold stopped after a prune)."""
        configs = self.store.configs()
        for fp, protocol, fold_id in self.store.entries():
            self.log_fold(fp, protocol, fold_id, configs[fp])

    def drain(self, searcher: FoldSearcher | None) -> None:
        if searcher is not None:
            self.searcher = searcher
            for outcome in searcher.pop_outcomes():
                self.config_done(outcome.fp, outcome.status, outcome.value, outcome.config)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: Drivers of the sweeps running in this process, by sweep folder (callbacks are pickled by Tune
#: into the experiment folder, so they look their driver up instead of holding it).
DRIVERS: dict[str, SweepDriver] = {}


class SweepCallback(Callback):
    """Driver-side Tune callback: sends fold results and configuration outcomes to the tracker.

    Tune pickles callbacks into the experiment folder and unpickles them on ``Tuner.restore``,
    together with the searcher (one pickle, so ``self.searcher`` stays the searcher Tune uses).
    The driver (tracker, ledger, progress bar) is looked up by sweep folder, never pickled.
    """

    def __init__(self, key: str, searcher: FoldSearcher | None) -> None:
        self.key = key
        self.searcher = searcher

    def _driver(self) -> SweepDriver | None:
        return DRIVERS.get(self.key)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        driver = self._driver()
        if driver is not None:
            driver.drain(self.searcher)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        driver = self._driver()
        if driver is None:
            return
        metrics = trial.last_result or {}
        if "fold_score" in metrics and "fp" in metrics:
            config = trial.config.get("fold", trial.config)
            driver.fold_done(metrics, config["experiment"])
        else:
            driver.folds_stopped += 1
        driver.drain(self.searcher)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        driver = self._driver()
        if driver is not None:
            driver.drain(self.searcher)


class QuietProgress(TrialProgressCallback):
    """Tune's legacy per-trial printer, silenced: the sweep shows its own progress bar."""

    def _print(self, msg: str) -> None:
        logger.debug(msg)
