"""The phases of a sweep run, each a Ray Tune ``Tuner``: the LOSO search, the repair of damaged
folds and the cross-domain training of the best configurations.

``SweepRun`` is what the phases share (settings, space, fold store, driver, Ray resources, the
stop request). A phase looks in the fold store before training (the trainable does), so a phase
run again after a crash or a stop trains only what is missing. ``failure`` turns a trial that
failed for good into one line naming its configuration and fold.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune.search import Searcher

from aullm_core.atomic import atomic_write_text
from aullm_core.errors import one_line
from orchestration.folds.store import FoldStore
from orchestration.folds.task import CROSS, LOSO, FoldTask
from orchestration.folds.trainable import FoldJob, fold_trainable
from orchestration.search.plan import SearchCore
from orchestration.search.progress import Status, saved_search_ended_early
from orchestration.search.searcher import FoldSearcher
from orchestration.search.space import SearchSpace
from orchestration.sweep.driver import QuietProgress, SweepCallback, SweepDriver
from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.settings import SweepSettings
from orchestration.sweep.stop import GracefulStop

__all__ = ["SweepRun", "cross_phase", "grid_phase", "loso_phase", "missing_folds"]

logger = logging.getLogger(__name__)


def _quiet(settings: SweepSettings) -> list[Any]:
    return [] if settings.verbose else [QuietProgress()]


def _trial_dirname(trial: Any) -> str:
    return FoldTask.model_validate(trial.config).trial_dirname(trial.trial_id)


def _cross_items(top: pd.DataFrame, store: FoldStore, names: tuple[str, str], key: str) -> list[dict[str, Any]]:
    configs = store.configs()
    return [
        FoldTask(number=int(number), fp=fp, experiment=configs[fp], protocol=CROSS, fold_id=direction,
                 fold_index=index, data_fp=key).to_tune()
        for number, fp in zip(top["number"], top["config_fp"])
        for index, direction in enumerate(_directions(names))
    ]


@dataclass
class SweepRun:
    """What the phases of one run share."""

    settings: SweepSettings
    space: SearchSpace
    store: FoldStore
    driver: SweepDriver
    key: str
    fold_ids: list[str]
    cross_names: tuple[str, str] | None
    concurrency: int
    job: FoldJob
    data_key: str
    trial_resources: dict[str, float]
    started: float
    stop: GracefulStop
    report: Callable[[SweepSettings], None] | None = None

    @property
    def storage(self) -> str:
        return str((self.settings.sweep_dir / "ray").resolve())

    def run_config(self, name: str, searcher: FoldSearcher | None) -> Any:
        """Tune's run: our callback, and of Tune's default loggers the CSV and JSON ones its results are read
        from; not TensorBoard's (it imports torch into the driver and writes an event file per trial, for
        numbers MLflow already holds)."""
        from ray.tune import FailureConfig, RunConfig
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        return RunConfig(
            name=name,
            storage_path=self.storage,
            failure_config=FailureConfig(max_failures=self.settings.max_failures),
            callbacks=[SweepCallback(self.key, searcher), CSVLoggerCallback(), JsonLoggerCallback(),
                       *_quiet(self.settings)],
            verbose=1 if self.settings.verbose else 0,
        )


def loso_phase(sweep: SweepRun) -> tuple[bool, list[str]]:
    """The LOSO search (new or restored Tuner); returns (resumed, (trial number, fold, error) of failed trials)."""
    from ray import tune
    from ray.tune import TuneConfig, Tuner

    from orchestration.search.scheduler import FoldScheduler, FoldTimeout

    settings = sweep.settings
    trainable = tune.with_resources(tune.with_parameters(fold_trainable, job=sweep.job), sweep.trial_resources)
    experiment = Path(sweep.storage) / LOSO
    resumed = settings.resume and Tuner.can_restore(experiment)
    tuner, problem = _restore(experiment, trainable, sweep) if resumed else (None, None)
    if problem is not None:  # rebuilt from what the project keeps: the fold store and the Optuna journal
        aside = SweepFolder(settings.sweep_dir).set_aside([experiment], label=f"ray-{LOSO}-")
        logger.warning("Ray Tune's saved state cannot be used (%s); the search is rebuilt from the fold store and "
                       "the Optuna journal (the saved state is kept in %s)", problem, aside)
        resumed = False
    if tuner is None:
        searcher = FoldSearcher(
            space=sweep.space,
            fold_ids=sweep.fold_ids,
            data_fp=sweep.data_key,
            store_root=sweep.job.store_root,
            study_path=SweepFolder(settings.sweep_dir).journal,
            study_name=settings.name,
            n_configs=settings.n_configs,
            max_concurrent_configs=SearchCore(settings.plan(), sweep.fold_ids).configs_in_flight(
                sweep.concurrency, settings.max_concurrent_configs),
            plan=settings.plan(),
        )
        if settings.resume:  # no usable Tune snapshot: the journal says what was asked and told
            searcher.adopt_study()
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=FoldScheduler(stop_pruned=settings.stop_pruned_folds,
                                        timeout=FoldTimeout(seconds=settings.fold_timeout)),
                num_samples=-1,
                max_concurrent_trials=sweep.concurrency,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=sweep.run_config(LOSO, searcher),
        )
    sweep.driver.phases["setup"] = time.time() - sweep.started - sweep.driver.phases.get("ray_start", 0.0)
    mark = time.time()
    grid = _fit(tuner, sweep.stop)
    sweep.driver.phases["loso"] = time.time() - mark
    sweep.driver.drain(sweep.driver.searcher)
    if sweep.stop.requested:  # trials ended by the stop (scancel signals the workers too) did not fail:
        return bool(resumed), []  # an errored trial runs again on resume and its error is kept then
    return bool(resumed), [_failure(r) for r in grid if _error_line(r)]


def _restore(experiment: Path, trainable: Any, sweep: SweepRun) -> tuple[Any, str | None]:
    """Tune's own snapshot restored (the searcher and the callback come back from it), or what is wrong with
    it: torn by a full disk or a crash mid-write, written by an earlier layout of this package (its
    pickles name modules that have moved), or a search Tune took as finished before its budget was spent."""
    from ray.tune import Tuner

    damage = tune_state_damage(experiment) or saved_search_ended_early(
        experiment, SweepFolder(sweep.settings.sweep_dir).journal, sweep.settings.name)
    if damage is not None:
        return None, damage
    try:
        return Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True), None
    except (ImportError, AttributeError, pickle.UnpicklingError, EOFError) as err:
        return None, f"saved by another version of aullm: {one_line(err, limit=160)}"


def tune_state_damage(experiment: Path) -> str | None:
    """What is wrong with a Tune experiment folder's saved state (empty or unreadable files, or no experiment
    state at all: a sweep stopped before Tune's first save leaves only its tuner.pkl), or None."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return "no experiment state was saved (stopped as it started)"
    for path in states:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return f"{path.name}: {one_line(err, limit=120)}"
    for pattern in ("search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl"):  # pickles, whatever the suffix
        for path in sorted(experiment.glob(pattern)):
            if path.stat().st_size == 0:
                return f"{path.name} is empty"
    return None


def _fit(tuner: Any, stop: GracefulStop) -> list[Any]:
    """``tuner.fit()`` unless a stop was asked for; SIGUSR1 is the sweep's again afterwards."""
    if stop.requested:
        return []
    try:
        return list(tuner.fit())
    finally:
        stop.rearm()


_TUNE_PREFIX = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)\s*$")


def _failure(result: Any) -> tuple[int | None, str | None, str]:
    """(trial number, fold id, one line) of a fold trial that failed for good. The number and fold come
    from the trial's folder name when Ray kept no result (a worker killed before reporting)."""
    config = result.config or {}
    number, fold_id = config.get("number"), config.get("fold_id")
    parsed = FoldTask.parse_trial_dirname(Path(str(result.path)).name) if result.path else None
    if parsed is not None and number is None:
        number, fold_id = parsed
    if result.error is None:  # a ConfigError the trial reported instead of raising (not retried)
        return number, fold_id, _error_line(result)
    line = one_line(result.error)  # the worker's own exception when Ray kept it (RayTaskError.cause)
    text = "\n".join(part for part in str(result.error).splitlines() if not _TUNE_PREFIX.match(part))
    if _TUNE_PREFIX.match(line) and text.strip():  # Tune's "Failure # 1 (occurred at ...)" heading first
        line = one_line(RuntimeError(text))
    if "running low on memory" in text:
        line += " (Ray's memory monitor: run fewer folds at once, --concurrency or --max-configs, or retry with --max-failures)"
    return number, fold_id, line


def _error_line(result: Any) -> str:
    """A fold trial's error in one line: the exception Tune kept, else the ConfigError the trial reported
    (``config_error``), else ''."""
    if result.error is not None:
        return one_line(result.error)
    return str((result.metrics or {}).get("config_error") or "")


def _directions(names: tuple[str, str]) -> tuple[str, str]:
    return f"{names[0]}->{names[1]}", f"{names[1]}->{names[0]}"


class TaskQueue(Searcher):
    """Hands out the given fold tasks, one per trial and in order: a repair or cross-domain phase's trials
    carry a ``FoldTask`` as the search's do."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        super().__init__(metric="fold_score", mode="max")
        self.tasks = tasks
        self.handed = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.handed >= len(self.tasks):
            return Searcher.FINISHED
        self.handed += 1
        return self.tasks[self.handed - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: every task runs once (a failure is Tune's to retry)."""

    def save(self, checkpoint_path: str) -> None:
        atomic_write_text(Path(checkpoint_path), json.dumps({"tasks": self.tasks, "handed": self.handed}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.tasks, self.handed = state["tasks"], int(state["handed"])


def grid_phase(sweep: SweepRun, items: list[dict[str, Any]], name: str) -> list[str]:
    """Train the given fold tasks as a grid of Tune trials (each looks in the fold store first); the errors."""
    from ray import tune
    from ray.tune import TuneConfig, Tuner

    tuner = Tuner(  # each trial's configuration is one task, as in the LOSO search
        tune.with_resources(tune.with_parameters(fold_trainable, job=sweep.job), sweep.trial_resources),
        tune_config=TuneConfig(
            search_alg=TaskQueue(items), num_samples=len(items),
            max_concurrent_trials=sweep.concurrency, reuse_actors=True, trial_dirname_creator=_trial_dirname,
        ),
        run_config=sweep.run_config(name, None),
    )
    mark = time.time()
    grid = _fit(tuner, sweep.stop)
    sweep.driver.phases[name] = sweep.driver.phases.get(name, 0.0) + time.time() - mark
    return [line for r in grid if (line := _error_line(r))]


def missing_folds(study: Any, sweep: SweepRun) -> list[dict[str, Any]]:
    """Fold tasks of configurations Optuna holds as Status.COMPLETE whose LOSO folds are not (whole) in the store."""
    import optuna

    items, seen = [], set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        fp = trial.user_attrs.get("config_fp")
        if fp is None or fp in seen:
            continue
        seen.add(fp)
        missing = [fid for fid in sweep.fold_ids if not sweep.store.has(fp, LOSO, fid)]
        if not missing:
            continue
        config = sweep.space.build(sweep.space.decode(trial.params))
        logger.warning("configuration %d: folds %s are missing or damaged in the fold store %s; retraining them",
                       trial.number, ", ".join(missing), sweep.store.root / fp)
        items += [FoldTask(number=trial.number, fp=fp, experiment=config, protocol=LOSO, fold_id=fid,
                           fold_index=sorted(sweep.fold_ids).index(fid), data_fp=sweep.data_key).to_tune()
                  for fid in missing]
    return items


def cross_phase(sweep: SweepRun, top: pd.DataFrame) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Train the top configurations in both cross-domain directions (Tune trials, fold store first)."""
    assert sweep.cross_names is not None
    items = _cross_items(top, sweep.store, sweep.cross_names, sweep.data_key)
    if not items:
        return {}, []
    errors = grid_phase(sweep, items, CROSS)
    objective = sweep.settings.objective.model_copy(update={"aggregate": "pooled"})
    configs = sweep.store.configs()
    cross: dict[str, dict[str, float]] = {}
    for fp in top["config_fp"]:
        results = sweep.store.results(fp, CROSS)
        if results:
            sweep.driver.log_config(fp, Status.COMPLETE, configs[fp], cross=results)
            cross[fp] = {r.fold_id: objective.of_results([r]) for r in results}
    return cross, errors
