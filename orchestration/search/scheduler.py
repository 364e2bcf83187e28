"""The sweep's Tune scheduler: FIFO, plus two ways a running fold trial is ended early.

- **Pruned configurations** (``stop_pruned``): the searcher already stops *handing out* folds of a
  pruned configuration; with several folds of one configuration running at once, the others would
  still train to the end. A stopped trial reports nothing: the searcher counts its fold as not done
  and tells Optuna PRUNED once no fold of the configuration is running.
- **Hung folds** (``FoldTimeout``): a fold running longer than its limit (a worker stopped, a
  deadlock) has its worker killed (``ray.kill``, which ends even a SIGSTOPped process), so Tune sees a
  failed trial and retries it like any failure (``--max-failures``); one warning line says so.

Both are checked at every step of Tune's loop (``choose_trial_to_run`` is called once per step).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from orchestration.search.searcher import FoldSearcher

__all__ = ["FoldScheduler", "FoldTimeout", "find_fold_searcher"]

logger = logging.getLogger(__name__)


def find_fold_searcher(search_alg: Any) -> FoldSearcher | None:
    """Unwrap Tune's SearchGenerator / ConcurrencyLimiter down to the FoldSearcher."""
    seen = 0
    while search_alg is not None and not isinstance(search_alg, FoldSearcher) and seen < 5:
        search_alg = getattr(search_alg, "searcher", None)
        seen += 1
    return search_alg if isinstance(search_alg, FoldSearcher) else None


@dataclass
class FoldTimeout:
    """How long a fold may run: ``seconds`` when given, else ``factor`` x the longest fold finished so far
    in this run (at least ``floor``); no limit before a fold has finished."""

    seconds: float | None = None
    factor: float = 5.0
    floor: float = 120.0
    longest: float = field(default=0.0)

    def finished(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    @property
    def limit(self) -> float | None:
        if self.seconds is not None:
            return self.seconds
        return max(self.floor, self.factor * self.longest) if self.longest > 0 else None


class FoldScheduler(FIFOScheduler):
    """FIFO scheduling plus: stop folds of pruned configurations (optional) and kill hung folds."""

    def __init__(self, *, stop_pruned: bool = False, timeout: FoldTimeout | None = None) -> None:
        super().__init__()
        self.stop_pruned = stop_pruned
        self.timeout = timeout or FoldTimeout()
        self.stopped: list[str] = []
        self.killed: list[str] = []
        self._started: dict[str, float] = {}

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        started = self._started.pop(trial.trial_id, None)
        if result and int(result.get("trained", 0)) and started is not None:
            self.timeout.finished(time.monotonic() - started)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._started.pop(trial.trial_id, None)
        super().on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        running = [t for t in tune_controller.get_live_trials() if t.status == Trial.RUNNING]
        now = time.monotonic()
        for trial in running:
            self._started.setdefault(trial.trial_id, now)
        if self.stop_pruned:
            self._stop_pruned(tune_controller, running)
        limit = self.timeout.limit
        if limit is not None:
            for trial in running:
                since = self._started.get(trial.trial_id)  # gone when the prune above stopped it
                if since is not None and now - since > limit and trial.trial_id not in self.killed:
                    self._kill(trial, limit)
        return super().choose_trial_to_run(tune_controller)

    def _stop_pruned(self, tune_controller: Any, running: list[Trial]) -> None:
        searcher = find_fold_searcher(tune_controller.search_alg)
        pruned = searcher.pruned_numbers() if searcher is not None else set()
        for trial in running:
            if pruned and searcher.trial_config_number(trial.trial_id) in pruned:
                logger.info("stopping fold trial %s: its configuration was pruned", trial.trial_id)
                self.stopped.append(trial.trial_id)
                tune_controller.stop_trial(trial)

    def _kill(self, trial: Trial, limit: float) -> None:
        import ray

        actor = trial.temporary_state.ray_actor
        if actor is None:
            return
        fold = trial.config.get("fold", trial.config)
        logger.warning("fold %s of configuration %s ran past its time limit (%.0f s): its worker is killed and "
                       "the fold retried like any failure (--fold-timeout)", fold.get("fold_id"), fold.get("number"),
                       limit)
        self.killed.append(trial.trial_id)
        ray.kill(actor, no_restart=True)
