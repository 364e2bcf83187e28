"""Driver-side bookkeeping of a sweep: tracker calls, counters, progress.

Everything here runs in the driver process, never in Ray workers. ``SweepCallback`` is the Tune
callback: it sends each fold result (``log_fold``) and each configuration outcome drained from the
searcher (``log_config``) to the tracker through ``SweepDriver``. What was logged already is the
tracker's to say (``Tracker.logged``: MLflow's runs and their tags), asked once when the driver
starts and kept up to date as it logs, so a retried trial, a fold found in the store or a resumed
sweep never logs a run twice. There is no other record of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from orchestration.folds.outcome import FoldOutcome
from orchestration.folds.store import FoldStore
from orchestration.folds.task import LOSO, FoldKey, FoldTask
from orchestration.search.progress import Status
from orchestration.search.searcher import FoldSearcher
from orchestration.sweep.disk_reserve import DiskReserve
from orchestration.sweep.stop import GracefulStop
from orchestration.sweep.tracking_queue import TrackingQueue

__all__ = [
    "DRIVERS",
    "QuietProgress",
    "SweepCallback",
    "SweepDriver",
    "Tracker",
    "config_tag",
]

logger = logging.getLogger(__name__)



def config_tag(config_fp: str, logged: str) -> str:
    """What the driver and the tracker call a configuration run's logged state (``Tracker.logged``): an
    outcome (complete, pruned, failed) or 'cross'; a fold run's is ``FoldKey.tag``."""
    return f"config:{config_fp}:{logged}"


class Tracker(Protocol):
    """What the sweep calls on its tracker (orchestration.tracking.mlflow_tracker.MlflowTracker implements it)."""

    def start(self, *, space: dict, settings: dict) -> str: ...

    def log_fold(self, config_fp: str, params: dict, result: FoldResult, *, duration_s: float,
                 objective: Objective | None = None) -> str: ...

    def log_config(
        self,
        config_fp: str,
        params: dict,
        results: list[FoldResult],
        *,
        status: str,
        n_folds_total: int,
        number: int | None = None,
        objective: Objective | None = None,
        cross: list[FoldResult] | None = None,
    ) -> str: ...

    def finish(self, leaderboard: pd.DataFrame, artifact_dir: Path) -> None: ...

    def logged(self) -> set[str]:
        """What this sweep has logged: ``fold:<config>:<protocol>:<fold>``, ``config:<config>:<status>``
        (an outcome: complete, pruned, failed) and ``config:<config>:cross``."""
        ...


class SweepDriver:
    """Driver-side bookkeeping: tracking calls, counters, progress display."""

    def __init__(
        self,
        *,
        store: FoldStore,
        tracker: Tracker | None,
        n_folds: int,
        n_configs: int,
        progress: bool,
        objective: Objective | None = None,
        stop: GracefulStop | None = None,
    ) -> None:
        self.store = store
        self.stop = stop  # SIGTERM / SIGUSR1 handling of the sweep this driver serves
        self.tracker = tracker
        self.logged: set[str] = set() if tracker is None else tracker.logged()  # kept up to date below
        self.n_folds = n_folds
        self.objective = objective
        self.numbers: dict[str, int] = {}  # config fingerprint -> Optuna trial number
        self.folds_trained = 0
        self.loso_trained = 0
        self.folds_from_store = 0
        self.folds_stopped = 0
        self.outcomes: dict[str, int] = {Status.COMPLETE: 0, Status.PRUNED: 0, Status.FAILED: 0}
        self.best: float | None = None
        self.best_number: int | None = None
        self.searcher: FoldSearcher | None = None
        self.phases: dict[str, float] = {}
        self.study_path: Path | None = None  # the Optuna journal where the sweep folder is now
        self.disk: DiskReserve | None = None
        self.sending: TrackingQueue | None = None
        self._disk_checked = 0.0
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            # LOSO folds of the whole budget (the total drops as configurations are pruned), so the
            # rate and the ETA come from fold durations
            self.bar = tqdm(total=n_configs * n_folds, desc="LOSO folds", unit="fold", dynamic_ncols=True)

    def _postfix(self) -> None:
        if self.bar is None:
            return
        running = 0 if self.searcher is None else sum(1 for s in self.searcher.configs.values() if not s.told)
        done = sum(self.outcomes.values())
        best = "-"
        if self.best is not None:
            which = f" (#{self.best_number})" if self.best_number is not None else ""
            best = f"{self.objective or 'objective'} {self.best:.3f}{which}"
        self.bar.set_postfix_str(
            f"configurations {done} done ({self.outcomes[Status.PRUNED]} pruned), {running} running; best {best}"
        )

    def fold_done(self, outcome: FoldOutcome, config: Mapping[str, Any]) -> None:
        self.folds_trained += int(outcome.trained)
        if outcome.trained and outcome.protocol == LOSO:
            self.loso_trained += 1
        self.folds_from_store += int(not outcome.trained)
        if self.bar is not None and outcome.protocol == LOSO:
            self.bar.update(1)
        self.log_fold(outcome.fp, outcome.protocol, outcome.fold_id, config)
        self._postfix()

    def log_fold(self, fp: str, protocol: str, fold_id: str, config: Mapping[str, Any]) -> None:
        key = FoldKey(fp, protocol, fold_id).tag
        if self.tracker is None or key in self.logged:
            return
        result = self.store.get(fp, protocol, fold_id)
        if result is None:
            return
        self._send(self.tracker.log_fold, fp, dict(config), result, duration_s=float(result.duration_s),
                   objective=self.objective)
        self.logged.add(key)

    def config_done(self, fp: str, status: str, value: float | None, config: Mapping[str, Any],
                    number: int | None = None) -> None:
        if number is not None:
            self.numbers[fp] = number
        if status not in self.outcomes:
            return
        self.outcomes[status] += 1
        if status == Status.COMPLETE and value is not None and math.isfinite(value) and (self.best is None or value > self.best):
            self.best, self.best_number = value, number
        if self.bar is not None and status != Status.COMPLETE:  # its folds that will never run leave the total
            self.bar.total = max(self.bar.n, self.bar.total - (self.n_folds - len(self.store.fold_ids(fp, LOSO))))
            self.bar.refresh()
        self._postfix()
        self.log_config(fp, status, config)

    def log_config(self, fp: str, status: str, config: Mapping[str, Any], cross: list[FoldResult] | None = None,
                   number: int | None = None) -> None:
        if number is not None:
            self.numbers[fp] = number
        key = config_tag(fp, "cross" if cross is not None else status)
        if self.tracker is None or key in self.logged:
            return
        results = self.store.results(fp, LOSO)
        if not results and cross is None:
            return
        for result in results:  # a fold whose trial was stopped after storing it still gets its run
            self.log_fold(fp, LOSO, result.fold_id, config)
        self._send(self.tracker.log_config, fp, dict(config), results, status=status, n_folds_total=self.n_folds,
                   number=self.numbers.get(fp), objective=self.objective, cross=cross)
        self.logged.add(key)

    def log_stored_folds(self) -> None:
        """Send every stored fold not yet tracked (e.g. stored by a fold stopped after a prune)."""
        configs = self.store.configs()
        for fp, protocol, fold_id in self.store.entries():
            self.log_fold(fp, protocol, fold_id, configs[fp])

    def drain(self, searcher: FoldSearcher | None) -> None:
        if searcher is not None:
            if self.study_path is not None:  # a searcher restored from a folder that has moved since
                searcher.relocate(store_root=self.store.root, study_path=self.study_path)
            self.searcher = searcher
            for outcome in searcher.pop_outcomes():
                self.config_done(outcome.fp, outcome.status, outcome.value, outcome.config, outcome.number)

    def _send(self, write: Any, *args: Any, **kwargs: Any) -> None:
        """A tracker write, off Tune's loop (``TrackingQueue``) so a tracking server that is down never
        holds up training."""
        if self.sending is None:
            self.sending = TrackingQueue(getattr(self.tracker, "tracking_uri", "the tracking store"))
        self.sending.submit(write, *args, **kwargs)

    def flush(self, timeout: float) -> bool:
        """Send what is queued (at most ``timeout`` s); False when MLflow stayed down (``--resume`` sends it)."""
        return True if self.sending is None else self.sending.drain(timeout)

    def check_disk(self) -> None:
        """Stop the sweep cleanly while the sweep folder's disk still has ``min_free`` bytes: a disk that
        fills up mid-write tears Ray Tune's state and the fold records (at most every 2 s)."""
        now = time.monotonic()
        if self.disk is None or self.stop is None or now - self._disk_checked < 2.0:
            return
        self._disk_checked = now
        problem = self.disk.problem()
        if problem is not None:
            self.stop.request(problem)

    def close(self) -> None:
        if self.sending is not None:
            self.sending.close()
        if self.bar is not None:
            self.bar.close()


#: Drivers of the sweeps running in this process, by sweep folder (callbacks are pickled by Tune
#: into the experiment folder, so they look their driver up instead of holding it).
DRIVERS: dict[str, SweepDriver] = {}


class SweepCallback(Callback):
    """Driver-side Tune callback: sends fold results and configuration outcomes to the tracker.

    Tune pickles callbacks into the experiment folder and unpickles them on ``Tuner.restore``,
    together with the searcher (one pickle, so ``self.searcher`` stays the searcher Tune uses).
    The driver (tracker, progress bar) is looked up by sweep folder, never pickled.
    """

    def __init__(self, key: str, searcher: FoldSearcher | None) -> None:
        self.key = key
        self.searcher = searcher

    def _driver(self) -> SweepDriver | None:
        return DRIVERS.get(self.key)

    def setup(self, **info: Any) -> None:
        driver = self._driver()
        if driver is not None and driver.stop is not None:  # Tune has just set its SIGUSR1 handler
            driver.stop.follow_tune()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        driver = self._driver()
        if driver is not None:
            driver.drain(self.searcher)
            driver.check_disk()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        driver = self._driver()
        if driver is None:
            return
        outcome = FoldOutcome.from_tune(trial.last_result)
        if outcome is None:
            driver.folds_stopped += 1
        elif outcome.config_error is None:  # a refused fold trained and stored nothing: its configuration fails
            driver.fold_done(outcome, FoldTask.model_validate(trial.config).experiment.model_dump(mode="json"))
        driver.drain(self.searcher)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        driver = self._driver()
        if driver is not None:
            driver.drain(self.searcher)


class QuietProgress(TrialProgressCallback):
    """Tune's legacy per-trial printer, silenced: the sweep shows its own progress bar."""

    def _print(self, msg: str) -> None:
        logger.debug(msg)
