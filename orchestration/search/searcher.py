"""A Ray Tune Searcher that drives an Optuna study one fold at a time.

A Tune trial is one (configuration, fold). The searcher asks Optuna for a configuration
(``study.ask()`` + the search space), hands out that configuration's folds as trials in an order
shuffled per configuration (seeded), reports each finished fold to Optuna and asks the pruner,
stops handing out folds of a pruned configuration, and finally tells Optuna the outcome
(``study.tell``). Ray Tune's stock ``OptunaSearch`` cannot do this: it fixes a no-op pruner and
reports training iterations rather than fold ids.

What Optuna is told after each fold and at the end is ``orchestration.search.plan``'s business.

Scheduling: at most ``max_concurrent_configs`` configurations in flight; a free slot first gets
the next fold of the oldest configuration in flight, and a new configuration is asked for only
when none has folds left to hand out. When racing (``orchestration.search.racing``), a configuration
waiting at a rung is not in flight: it holds no slot until promoted, and the race's end stops it. ``suggest`` returns None when nothing can start now and
``Searcher.FINISHED`` once the budget of configurations is spent and every one is told.

State is saved as JSON (``save``/``restore``) so ``Tuner.restore`` resumes the sweep; the Optuna
study lives in a journal file beside it, and on restore the searcher reconciles the two (a
configuration told or asked after the last Tune snapshot is picked up, not asked again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from aullm_core.atomic import atomic_write_text
from aullm_core.data.splits import LOSO
from aullm_core.errors import ConfigError
from orchestration.folds.outcome import FoldOutcome
from orchestration.folds.store import FoldStore
from orchestration.folds.task import FoldTask
from orchestration.search.journal import open_journal
from orchestration.search.plan import SearchCore, SearchPlan
from orchestration.search.progress import (
    LABEL_ATTR,
    ConfigOutcome,
    ConfigState,
    Status,
    asked_count,
    sync_with_study,
)
from orchestration.search.race_book import RaceBook
from orchestration.search.space import SearchSpace
from orchestration.search.trials import StudyTrials

__all__ = ["FoldSearcher"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
class FoldSearcher(Searcher):
    """One Tune trial per (configuration, fold), configurations from an Optuna study."""

    def __init__(
        self,
        *,
        space: SearchSpace,
        fold_ids: Sequence[str],
        data_fp: str,
        store_root: str | Path,
        study_path: str | Path | None,
        study_name: str,
        n_configs: int,
        max_concurrent_configs: int = 2,
        plan: SearchPlan | None = None,
        protocol: str = LOSO,
        metric: str = "fold_score",
    ) -> None:
        super().__init__(metric=metric, mode="max")
        if not fold_ids:
            raise ConfigError("the protocol has no folds: the cache holds no subjects")
        self.space = space
        self.core = SearchCore(plan or SearchPlan(), fold_ids, concurrent_configs=max_concurrent_configs)
        self.fold_ids = self.core.fold_ids
        self.store_root = str(store_root)
        self.study_path = None if study_path is None else str(study_path)
        self.study_name = study_name
        self.n_configs = n_configs
        self.max_concurrent_configs = max_concurrent_configs
        self.max_concurrent_folds: int | None = None
        self.protocol = protocol
        self.data_fp = data_fp
        self.configs: dict[int, ConfigState] = {}
        self.trials: dict[str, tuple[int, str]] = {}  # Tune trial id -> (config number, fold id)
        self.n_asked = 0
        self._study: optuna.Study | None = None
        self._trials: StudyTrials | None = None
        self._outcomes: list[ConfigOutcome] = []
        self._needs_sync = False
        self.race = RaceBook(self.core, protocol)
        self.on_outcome: Callable[[ConfigOutcome], None] | None = None

    # ----------------------------------------------------------------- Optuna
    @property
    def study(self) -> optuna.Study:
        """The Optuna study (journal file in the sweep folder; in memory without one), opened on first use."""
        if self._study is None:
            if self.study_path is None:
                storage: optuna.storages.BaseStorage = optuna.storages.InMemoryStorage()
            else:
                Path(self.study_path).parent.mkdir(parents=True, exist_ok=True)
                storage = open_journal(self.study_path)
            self._trials = StudyTrials(storage, self.study_name)
            self._study = self._trials.open(sampler=self.core.sampler_for(0), pruner=self.core.pruner())
            self._study.set_user_attr("objective", str(self.core.plan.objective))
            self._study.set_user_attr("pruner", self.core.plan.pruner)
            self._study.set_user_attr("fold_ids", self.fold_ids)
            self._study.set_user_attr("steps", {str(i): fid for i, fid in enumerate(self.fold_ids)})
            with warnings.catch_warnings():  # "experimental": names the objective in optuna-dashboard
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study.set_metric_names([str(self.core.plan.objective)])
        if self._needs_sync:
            self._needs_sync = False
            self._sync_with_study(self._study)
        return self._study

    def _ask(self) -> ConfigState | None:
        """Ask Optuna for a configuration not seen before; None when the budget is spent."""
        study = self.study
        if self.n_asked == 0 and not study.trials:
            for label, params in self.space.starts():
                study.enqueue_trial(params, user_attrs={LABEL_ATTR: label})
        while self.n_asked < self.n_configs:
            study.sampler = self.core.sampler_for(len(study.trials))
            trial = study.ask()
            self.n_asked += 1
            try:
                overrides = self.space.sample(trial)
                config = self.space.build(overrides)
            except ConfigError as err:
                logger.warning("configuration %d is not valid, told FAIL: %s", trial.number, err)
                study.tell(trial, state=TrialState.FAIL)
                continue
            state = ConfigState(
                number=trial.number,
                fp=config.fingerprint(),
                overrides=overrides,
                config=config.model_dump(mode="json"),
                order=self.core.fold_order(trial.number),
                label=str(trial.user_attrs.get(LABEL_ATTR, "")),
            )
            trial.set_user_attr("config_fp", state.fp)
            self.configs[state.number] = state
            original = self._original_of(state)
            if original is None:
                return state
            state.status, state.duplicate_of = Status.DUPLICATE, original.number
            logger.info("configuration %d repeats %d (same fingerprint)", state.number, original.number)
            if original.told:
                self._tell_duplicate(state, original)
        return None

    def _original_of(self, state: ConfigState) -> ConfigState | None:
        for other in self.configs.values():
            if other.fp == state.fp and other.number != state.number and other.status != Status.DUPLICATE:
                return other
        return None

    def _tell_duplicate(self, state: ConfigState, original: ConfigState) -> None:
        mapping = {Status.COMPLETE: TrialState.COMPLETE, Status.PRUNED: TrialState.PRUNED, Status.FAILED: TrialState.FAIL}
        value = original.value if original.status == Status.COMPLETE else None
        self.study.tell(state.number, value, state=mapping[original.status], skip_if_finished=True)
        state.told, state.value, state.finished_at = True, value, time.time()

    def _maybe_tell(self, state: ConfigState) -> None:
        if state.told or state.running or state.status == Status.DUPLICATE:
            return
        if state.status == Status.OPEN and len(state.scores) < len(self.fold_ids):
            return
        if state.status == Status.PRUNED and len(state.scores) == len(self.fold_ids):
            state.status = Status.OPEN  # pruned on its last fold (or its last running fold came in): nothing saved
        study = self.study
        if state.status == Status.OPEN:
            store = FoldStore(self.store_root)
            results = [store.get(state.fp, self.protocol, fid) for fid in self.fold_ids]
            missing = [fid for fid, r in zip(self.fold_ids, results) if r is None]
            if missing:
                state.status = Status.FAILED
                state.error = (
                    f"folds {missing[:3]} reported done but not in the fold store {self.store_root} "
                    "(on a cluster, the sweep folder must be on storage shared by every node)"
                )
                logger.error("configuration %d: %s", state.number, state.error)
            else:
                try:
                    state.value = self.core.value([r for r in results if r is not None])
                except ValueError as err:
                    state.status, state.error = Status.FAILED, f"objective {self.core.plan.objective}: {err}"
                    logger.error("configuration %d: %s", state.number, state.error)
                else:
                    state.status = Status.COMPLETE if math.isfinite(state.value) else Status.FAILED
        partial = state.partial_mean
        if partial is not None:
            self._trials.set_user_attr(state.number, "partial_mean", partial)
        if state.status == Status.PRUNED:  # the objective over the folds it ran: the one number every view shows
            done = [r for r in (FoldStore(self.store_root).get(state.fp, self.protocol, f) for f in state.scores) if r]
            with contextlib.suppress(ValueError):
                self._trials.set_user_attr(state.number, "partial_objective", self.core.value(done))
        self._trials.set_user_attr(state.number, "fold_order", [f"{self.core.fold_index[f]}:{f}" for f in state.scores])
        self._trials.set_user_attr(state.number, "folds_done", len(state.scores))
        if state.status == Status.COMPLETE:
            study.tell(state.number, state.value, skip_if_finished=True)
        elif state.status == Status.PRUNED:
            study.tell(state.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(state.number, state=TrialState.FAIL, skip_if_finished=True)
        state.told, state.finished_at = True, time.time()
        self._emit(state)
        for other in self.configs.values():
            if other.status == Status.DUPLICATE and other.duplicate_of == state.number and not other.told:
                self._tell_duplicate(other, state)

    def _emit(self, state: ConfigState) -> None:
        outcome = ConfigOutcome(
            number=state.number,
            fp=state.fp,
            overrides=dict(state.overrides),
            config=state.config,
            status=state.status,
            value=state.value,
            folds_done=sorted(state.scores),
            n_folds_total=len(self.fold_ids),
        )
        self._outcomes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def pop_outcomes(self) -> list[ConfigOutcome]:
        """Configurations told to Optuna since the last call."""
        out, self._outcomes = self._outcomes, []
        return out

    # ------------------------------------------------------------ Tune API
    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's ``max_concurrent_trials``: handled here (a ConcurrencyLimiter forgets restored trials)."""
        self.max_concurrent_folds = max_concurrent
        return True

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def _in_flight(self) -> list[ConfigState]:
        return [s for s in self.configs.values() if not s.told and s.status != Status.DUPLICATE]

    def _may_hand_out(self, state: ConfigState) -> bool:
        """Whether ``state`` has a fold to hand out now (a racing configuration waits at a rung until promoted)."""
        return self.race.may_hand_out(state)

    def _end_race(self) -> bool:
        """The race's end (``RaceBook.end``): True when a configuration was promoted to finish the race."""
        stopped = self.race.end(self.configs.values(), FoldStore(self.store_root), self._trials)
        for state in stopped:
            self._maybe_tell(state)
        return not stopped and any(self.race.may_hand_out(s) for s in self._in_flight())

    @property
    def is_done(self) -> bool:
        """Budget spent and every configuration told."""
        return self.n_asked >= self.n_configs and all(s.told for s in self.configs.values())

    def suggest(self, trial_id: str) -> dict | str | None:
        self.study  # noqa: B018 - opens the study and reconciles a restored state first
        if self.is_done:
            return Searcher.FINISHED
        if self.max_concurrent_folds is not None and len(self.trials) >= self.max_concurrent_folds:
            return None
        if self.core.racing:
            self.race.promote(self.configs.values(), FoldStore(self.store_root), self._trials)
        state = next((s for s in sorted(self._in_flight(), key=lambda s: s.number) if self._may_hand_out(s)), None)
        if state is None:
            if len([s for s in self._in_flight() if not self.race.waiting(s)]) >= self.max_concurrent_configs:
                return None
            state = self._ask()
            if state is None:
                if self.core.racing and not self.trials and self._end_race():
                    return self.suggest(trial_id)  # the best at the deepest rung was promoted
                return Searcher.FINISHED if self.is_done else None
        fold_id = state.order[state.next]
        state.next += 1
        state.running[trial_id] = fold_id
        self.trials[trial_id] = (state.number, fold_id)
        return FoldTask(
            number=state.number,
            fp=state.fp,
            experiment=state.config,
            protocol=self.protocol,
            fold_id=fold_id,
            fold_index=self.core.fold_index[fold_id],
            data_fp=self.data_fp,
        ).to_tune()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Folds report once, at the end: everything happens in ``on_trial_complete``."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        outcome = None if error else FoldOutcome.from_tune(result)
        entry = self.trials.pop(trial_id, None)
        if entry is None and outcome is not None:
            entry = (outcome.number, outcome.fold_id)
        if entry is None:
            logger.warning("trial %s completed but was not handed out by this searcher; ignored", trial_id)
            return
        number, fold_id = entry
        state = self.configs.get(number)
        if state is None:
            logger.warning("trial %s belongs to unknown configuration %d; ignored", trial_id, number)
            return
        state.running.pop(trial_id, None)
        refused = None if outcome is None else outcome.config_error  # not retried: it cannot succeed
        if error or refused:
            if state.status == Status.OPEN:
                state.status = Status.FAILED
                state.error = (f"fold {fold_id}: {refused}" if refused
                               else f"fold {fold_id} failed after its retries (trial {trial_id})")
            logger.error("configuration %d: fold %s failed for good", number, fold_id)
        elif outcome is None:
            logger.info("configuration %d: fold %s stopped before reporting", number, fold_id)
        elif fold_id in state.scores:
            logger.warning("configuration %d: fold %s completed twice; second result ignored", number, fold_id)
        else:
            state.scores[fold_id] = outcome.score
            if not state.told and self.core.report(self.study, self._trials, state.number, fold_id, list(state.scores.values())) and state.status == Status.OPEN:
                state.status = Status.PRUNED
                logger.info(
                    "configuration %d pruned after %d/%d folds (partial mean %.4f)",
                    number, len(state.scores), len(self.fold_ids), state.partial_mean or math.nan,
                )
        self._maybe_tell(state)

    def pruned_numbers(self) -> set[int]:
        """Configurations pruned (told or waiting for running folds): their folds should stop."""
        return {s.number for s in self.configs.values() if s.status == Status.PRUNED}

    def trial_config_number(self, trial_id: str) -> int | None:
        entry = self.trials.get(trial_id)
        return None if entry is None else entry[0]

    # --------------------------------------------------------- save/restore
    def get_state(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "n_asked": self.n_asked,
            "n_configs": self.n_configs,
            "fold_ids": self.fold_ids,
            "configs": [asdict(s) for s in self.configs.values()],
            "trials": {k: list(v) for k, v in self.trials.items()},
        }

    def set_state(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(f"searcher state version {state.get('version')!r}: expected {_STATE_VERSION}")
        if state["fold_ids"] != self.fold_ids:
            raise ConfigError("the cache's folds differ from the sweep being resumed: resume with the same cache")
        self.n_asked = int(state["n_asked"])
        self.configs = {int(c["number"]): ConfigState(**{k: v for k, v in c.items() if k != "optuna_id"})
                        for c in state["configs"]}  # optuna_id: kept by snapshots of earlier versions
        self.trials = {k: (int(v[0]), str(v[1])) for k, v in state["trials"].items()}
        self._study = None
        self._needs_sync = True

    def save(self, checkpoint_path: str) -> None:
        atomic_write_text(Path(checkpoint_path).absolute(), json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.set_state(json.loads(handle.read()))

    def _sync_with_study(self, study: optuna.Study) -> None:
        """Reconcile a restored state with the journal, which may be ahead of Tune's snapshot. The budget
        spent is what the journal holds as asked: a start preset still waiting there was not asked, and a
        snapshot's count can be behind the journal, never ahead of it."""
        for state in sync_with_study(self.configs, study, self._trials, self.space, self.core.fold_order):
            self._emit(state)
        asked = asked_count(study)
        self.n_asked = asked if self.study_path is not None else max(self.n_asked, asked)

    def adopt_study(self) -> None:
        """Start from the Optuna journal (a resume without a usable Tune snapshot): configurations asked
        and not told are continued, told ones count against the budget, nothing is asked twice."""
        self._study, self._needs_sync = None, True

    def relocate(self, *, store_root: str | Path, study_path: str | Path) -> None:
        """Point a searcher restored by Tune at the sweep folder where it is now (it may have been moved
        or copied since the snapshot, which holds absolute paths)."""
        store_root, study_path = str(Path(store_root).resolve()), str(Path(study_path).resolve())
        if (store_root, study_path) == (self.store_root, self.study_path):
            return
        logger.info("sweep folder moved: searcher now reads %s and %s", study_path, store_root)
        self.store_root, self.study_path = store_root, study_path
        self._study, self._needs_sync = None, True

    def __getstate__(self) -> dict:
        data = self.__dict__.copy()
        data["_study"] = None
        data["_outcomes"] = []
        data["on_outcome"] = None
        return data
