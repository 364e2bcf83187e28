"""Stop fold trials that are still running when their configuration is pruned.

The searcher already stops *handing out* folds of a pruned configuration; with several folds
of one configuration running at once, the others would still train to the end. This scheduler
looks, at every step of Tune's loop (``choose_trial_to_run`` is called once per step), for
running trials whose configuration the ``FoldSearcher`` has pruned, and stops them. A stopped
trial reports nothing: the searcher counts its fold as not done and tells Optuna PRUNED once no
fold of the configuration is running.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from orchestration.searcher import FoldSearcher

__all__ = ["PrunedFoldStopper", "find_fold_searcher"]

logger = logging.getLogger(__name__)


def find_fold_searcher(search_alg: Any) -> FoldSearcher | None:
    """Unwrap Tune's SearchGenerator / ConcurrencyLimiter down to the FoldSearcher."""
    seen = 0
    while search_alg is not None and not isinstance(search_alg, FoldSearcher) and seen < 5:
        search_alg = getattr(search_alg, "searcher", None)
        seen += 1
    return search_alg if isinstance(search_alg, FoldSearcher) else None


class PrunedFoldStopper(FIFOScheduler):
    """FIFO scheduling plus: stop running folds of configurations the searcher pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[str] = []

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        searcher = find_fold_searcher(tune_controller.search_alg)
        if searcher is not None:
            pruned = searcher.pruned_numbers()
            if pruned:
                for trial in list(tune_controller.get_live_trials()):
                    if trial.status == Trial.RUNNING and searcher.trial_config_number(trial.trial_id) in pruned:
                        logger.info("stopping fold trial %s: its configuration was pruned", trial.trial_id)
                        self.stopped.append(trial.trial_id)
                        tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)
