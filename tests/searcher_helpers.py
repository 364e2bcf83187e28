"""A ``FoldSearcher`` driven without Ray: ``Runner`` plays Ray Tune (asks for trials, runs each with the
real trainable's ``run_fold`` and the tests' fold code, reports its ``FoldOutcome``)."""

from __future__ import annotations

import optuna
from ray.tune.search import Searcher
from sweep_helpers import cheap_code

from aullm_core.data.splits import loso_folds
from orchestration.folds.trainable import FoldJob, run_fold
from orchestration.search.plan import SearchPlan
from orchestration.search.searcher import FoldSearcher
from orchestration.search.space import space_from_dict

SPACE = {
    "base": "quick",
    "fixed": {"train.epochs": 2},
    "params": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.1, "high": 0.5},
    },
}
GOOD = {"train.lr": 1e-3, "model.dropout": 0.1}
BAD = {"train.lr": 1e-4, "model.dropout": 0.5}


def make_searcher(tmp_path, clips, **kwargs) -> FoldSearcher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = {
        "space": space_from_dict(SPACE),
        "fold_ids": [f.fold_id for f in loso_folds(clips)],
        "store_root": tmp_path / "folds",
        "data_fp": clips.fingerprint,
        "study_path": tmp_path / "optuna.journal",
        "study_name": "t",
        "n_configs": 3,
        "max_concurrent_configs": 1,
    }
    plan = {"pruner": "none", "seed": 7}
    for key in ("pruner", "p_threshold", "pocock_alpha", "prune_startup_folds", "race_min_folds", "race_eta",
                "objective", "sampler", "startup_configs", "seed"):
        if key in kwargs:
            plan[key] = kwargs.pop(key)
    options.update(kwargs)
    return FoldSearcher(**options, plan=SearchPlan(**plan))


class Runner:
    """Plays Ray Tune: asks for trials, 'trains' them with quick_fold, reports completions."""

    def __init__(self, searcher: FoldSearcher, clips, score=None):
        self.searcher, self.clips, self.score = searcher, clips, score
        self.folds = {f.fold_id: f for f in loso_folds(clips)}
        self.count = 0
        self.handed: list[tuple[int, str]] = []

    def suggest(self):
        self.count += 1
        trial_id = f"t{self.count:04d}"
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.handed.append((config["number"], config["fold_id"]))
        return trial_id, config

    def complete(self, trial_id, config, error=False):
        """The trial's outcome as the real trainable reports it (``run_fold`` with the tests' fold code
        writes the store), its score replaced by ``score`` when given."""
        if error:
            self.searcher.on_trial_complete(trial_id, None, error=True)
            return
        job = FoldJob(store_root=str(self.searcher.store_root), cache=str(self.clips.attrs["path"]), code=cheap_code())
        outcome = run_fold(config, job)
        if self.score:
            outcome = outcome.model_copy(update={"fold_score": self.score(config)})
        self.searcher.on_trial_complete(trial_id, outcome.to_tune())

    def run(self, limit: int = 500) -> None:
        """One trial at a time until FINISHED."""
        for _ in range(limit):
            trial_id, config = self.suggest()
            if config == Searcher.FINISHED:
                return
            assert config is not None, "nothing running, yet nothing to start"
            self.complete(trial_id, config)
        raise AssertionError("sweep did not finish")
