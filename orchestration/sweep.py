"""Run a sweep: LOSO search with per-fold trials on Ray Tune, then cross-domain for the top-k.

``run_sweep(settings)`` starts (or connects to) Ray, checks that a fold's resource request fits
the cluster, builds a ``Tuner`` whose searcher is the ``FoldSearcher`` (Optuna) and whose
trainable runs one fold per trial, and, after the search, trains the best configurations
cross-domain when a second cache is given. Everything lands in ``<workdir>/sweeps/<name>/``:

    sweep.json        the settings (a resume reads them back)
    space.yaml        the search space as it was when the sweep started
    folds/            the fold store (orchestration.fold_store.FoldStore)
    optuna.journal    the Optuna study
    ray/              Ray Tune's experiment folders ('loso' and 'cross')
    tracked.json      which folds/configurations were already sent to the tracker
    leaderboard.csv, summary.json, artifacts/   written at the end

Tracking happens here, in the driver process only, through a Tune callback: once per fold
result and once per configuration outcome, with a ledger (``tracked.json``) so that a retried
trial, a fold found in the store or a resumed sweep never logs a run twice. Resume is
``Tuner.restore(..., resume_unfinished=True, restart_errored=True)``: unfinished trials run
again and find their fold in the store if it was finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import pandas as pd
from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from aullm_core.data.splits import cross_domain_fold, loso_folds
from aullm_core.errors import ConfigError
from aullm_core.train.result import FoldResult
from orchestration.fold_store import FoldStore
from orchestration.resources import (
    check_fold_resources,
    cluster_view,
    fold_bundles,
    max_parallel_folds,
)
from orchestration.searcher import COMPLETE, FAILED, PRUNED, FoldSearcher, objective_value
from orchestration.settings import SweepSettings
from orchestration.space import SearchSpace, load_space
from orchestration.trainable import FoldJob, fold_trainable, load_clips, resolve

__all__ = ["SweepSummary", "SweepTracking", "load_sweep_settings", "run_sweep"]

logger = logging.getLogger(__name__)

#: Settings a resumed sweep may change (how it runs, not what it computes); not logged as params.
_RUNTIME_SETTINGS = frozenset({"address", "num_cpus", "concurrency", "verbose", "check_resources", "resume"})

LOSO_EXPERIMENT = "loso"
CROSS_EXPERIMENT = "cross"


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


@dataclass
class SweepSummary:
    """What a sweep did and found (also written to ``summary.json``)."""

    name: str
    sweep_dir: str
    objective: str
    best_number: int | None
    best_fp: str | None
    best_overrides: dict[str, Any]
    best_score: float | None
    n_configs: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_folds: int
    folds_trained: int  # this run, LOSO and cross-domain
    loso_folds_trained: int  # this run, LOSO only
    folds_from_store: int
    folds_stopped: int
    wall_s: float
    resumed: bool
    finished: bool
    tracking_uri: str | None
    cross: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: ray_start, setup, loso, cross, finish
    leaderboard: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("leaderboard")
        return data


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


class _Ledger:
    """Keys already sent to the tracker, persisted so a resumed sweep does not send them again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[str] = set(json.loads(path.read_text())) if path.exists() else set()

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        self.keys.add(key)
        _write_json(self.path, sorted(self.keys))


class _Driver:
    """Driver-side bookkeeping: tracking calls, counters, progress display."""

    def __init__(
        self,
        *,
        store: FoldStore,
        tracker: SweepTracking | None,
        ledger: _Ledger,
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
        if trained and metrics.get("protocol") == LOSO_EXPERIMENT:
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
        results = self.store.results(fp, LOSO_EXPERIMENT)
        if not results and cross is None:
            return
        for result in results:  # a fold whose trial was stopped after storing it still gets its run
            self.log_fold(fp, LOSO_EXPERIMENT, result.fold_id, config)
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
_DRIVERS: dict[str, _Driver] = {}


class SweepCallback(Callback):
    """Driver-side Tune callback: sends fold results and configuration outcomes to the tracker.

    Tune pickles callbacks into the experiment folder and unpickles them on ``Tuner.restore``,
    together with the searcher (one pickle, so ``self.searcher`` stays the searcher Tune uses).
    The driver (tracker, ledger, progress bar) is looked up by sweep folder, never pickled.
    """

    def __init__(self, key: str, searcher: FoldSearcher | None) -> None:
        self.key = key
        self.searcher = searcher

    def _driver(self) -> _Driver | None:
        return _DRIVERS.get(self.key)

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


class _QuietProgress(TrialProgressCallback):
    """Tune's legacy per-trial printer, silenced: the sweep shows its own progress bar."""

    def _print(self, msg: str) -> None:
        logger.debug(msg)


def _quiet(settings: SweepSettings) -> list[Any]:
    return [] if settings.verbose else [_QuietProgress()]


def _trial_dirname(trial: Any) -> str:
    config = trial.config.get("fold", trial.config)
    return f"c{config.get('number')}_{quote(str(config.get('fold_id')), safe='')}_{trial.trial_id}"


def load_sweep_settings(workdir: str | Path, name: str) -> SweepSettings:
    """The settings a sweep was started with (``<workdir>/sweeps/<name>/sweep.json``)."""
    path = Path(workdir) / "sweeps" / name / "sweep.json"
    if not path.exists():
        raise ConfigError(f"{path}: no sweep named {name!r} under {workdir} to resume")
    return SweepSettings.model_validate_json(path.read_text())


def _resolve(settings: SweepSettings) -> tuple[SweepSettings, SearchSpace, bool]:
    """The settings and space to use (saved ones on resume) and whether the sweep is new; writes nothing."""
    folder = settings.sweep_dir
    saved = folder / "sweep.json"
    if settings.resume:
        if not saved.exists():
            raise ConfigError(f"{saved}: no sweep named {settings.name!r} to resume (drop --resume to start it)")
        stored = SweepSettings.model_validate_json(saved.read_text())
        runtime = set(_RUNTIME_SETTINGS)
        changed = [
            k for k in SweepSettings.model_fields
            if k not in runtime | {"space", "workdir"} and getattr(stored, k) != getattr(settings, k)
        ]
        if changed:
            logger.warning("resuming %s with its saved settings; ignoring changed %s", settings.name, changed)
        settings = stored.model_copy(update={k: getattr(settings, k) for k in runtime})
        return settings, load_space(folder / "space.yaml"), False
    if saved.exists():
        raise ConfigError(
            f"{folder}: a sweep named {settings.name!r} exists: add --resume to continue it or choose another --name"
        )
    space = load_space(settings.space)
    for path in (settings.cache, settings.cross_cache):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{path}: cache file not found (build one with `aullm data cache`)")
    absolute = settings.model_copy(
        update={
            "cache": Path(settings.cache).resolve(),
            "cross_cache": None if settings.cross_cache is None else Path(settings.cross_cache).resolve(),
            "space": Path(settings.space).resolve(),
            "workdir": Path(settings.workdir).resolve(),
            "fold_metric": settings.resolved_fold_metric,
        }
    )
    return absolute, space, True


def _create_folder(settings: SweepSettings) -> None:
    """Write the new sweep's folder: a copy of the space, then sweep.json (what --resume reads)."""
    folder = settings.sweep_dir
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(settings.space, folder / "space.yaml")
    _write_json(folder / "sweep.json", settings.model_dump(mode="json"))


def _check_space(settings: SweepSettings, space: SearchSpace) -> None:
    """What the settings need from every configuration of the space, checked before Ray starts."""
    if settings.workers_per_fold > 1:
        engines = next((p.candidates() for p in space.params if p.key == "train.engine"), None)
        if engines is None:
            engines = [space.base_config.train.engine]
        if any(engine != "deepspeed" for engine in engines):
            raise ConfigError(
                f"{space.source}: workers_per_fold={settings.workers_per_fold} needs train.engine: deepspeed "
                "in every configuration (set it under fixed)"
            )
    _, mode, _ = settings.objective_parts
    fold_metric = settings.resolved_fold_metric
    if mode == "inner" or fold_metric.endswith("_inner"):
        space.check_inner_thresholds()
    name, _, mode = fold_metric.rpartition("_")
    if name not in ("f1_pos", "f1_macro") or mode not in ("fixed", "inner"):
        raise ConfigError(
            f"fold_metric {settings.fold_metric!r}: expected f1_pos_fixed, f1_pos_inner, f1_macro_fixed or f1_macro_inner"
        )


def _start_ray(settings: SweepSettings) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down."""
    import ray

    if not settings.verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # failures are summarised at the end
    if ray.is_initialized():
        return False
    if settings.address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=settings.verbose,
            logging_level=logging.INFO if settings.verbose else logging.WARNING,
        )
    else:
        ray.init(address=settings.address, log_to_driver=settings.verbose)
    return True


def _make_tracker(settings: SweepSettings) -> SweepTracking | None:
    uri = settings.resolved_tracking_uri
    if uri is None:
        return None
    return resolve(settings.tracker)(uri, settings.name)


def _load_study(path: Path, name: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def _budget_spent(study: Any, n_configs: int) -> bool:
    """Every configuration of the budget asked and told (the study is the record)."""
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return len(states) >= n_configs and optuna.trial.TrialState.RUNNING not in states


def _leaderboard(searcher_study: Any, space: SearchSpace, store: FoldStore, objective: str, n_folds: int) -> pd.DataFrame:
    """One row per distinct configuration, best first, from the Optuna study and the fold store."""
    import optuna

    rows: dict[str, dict[str, Any]] = {}
    names = {
        optuna.trial.TrialState.COMPLETE: COMPLETE,
        optuna.trial.TrialState.PRUNED: PRUNED,
        optuna.trial.TrialState.FAIL: FAILED,
        optuna.trial.TrialState.RUNNING: "running",
    }
    for trial in searcher_study.get_trials(deepcopy=False):
        fp = trial.user_attrs.get("config_fp")
        if fp is None or fp in rows:
            continue
        overrides = space.decode(trial.params)
        done = store.fold_ids(fp, LOSO_EXPERIMENT)
        rows[fp] = {
            "number": trial.number,
            "config_fp": fp,
            "state": names.get(trial.state, trial.state.name.lower()),
            "objective": trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
            "partial_mean": trial.user_attrs.get("partial_mean"),
            "folds_done": int(trial.user_attrs.get("folds_done", len(done))),
            "n_folds_total": n_folds,
            **{f"param.{k}": v for k, v in overrides.items()},
        }
    frame = pd.DataFrame(list(rows.values()))
    if frame.empty:
        return frame
    frame["objective_name"] = objective
    return frame.sort_values(["objective", "number"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _cross_items(top: pd.DataFrame, store: FoldStore, names: tuple[str, str]) -> list[dict[str, Any]]:
    configs = store.configs()
    items = []
    for number, fp in zip(top["number"], top["config_fp"]):
        for index, direction in enumerate((f"{names[0]}->{names[1]}", f"{names[1]}->{names[0]}")):
            items.append(
                {
                    "number": int(number),
                    "fp": fp,
                    "protocol": CROSS_EXPERIMENT,
                    "fold_id": direction,
                    "fold_index": index,
                    "experiment": configs[fp],
                }
            )
    return items


def _cross_trainable(config: dict, job: FoldJob) -> None:
    fold_trainable(config["fold"], job)


def run_sweep(settings: SweepSettings, *, progress: bool = True) -> SweepSummary:
    """Run (or resume) a sweep to the end and return its summary."""
    from ray import tune

    started = time.time()
    if not settings.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, space, fresh = _resolve(settings)
    _check_space(settings, space)
    folder = settings.sweep_dir
    store = FoldStore(folder / "folds")

    clips = load_clips(str(settings.cache), settings.cache_loader)
    fold_ids = [f.fold_id for f in loso_folds(clips)]
    cross_names: tuple[str, str] | None = None
    if settings.cross_cache is not None:
        other = load_clips(str(settings.cross_cache), settings.cache_loader)
        if other.name == clips.name:
            raise ConfigError(f"{settings.cross_cache}: holds {other.name!r} like --cache; cross-domain needs the other dataset")
        try:
            cross_domain_fold(clips, other)
        except ValueError as err:
            raise ConfigError(f"{settings.cross_cache}: {err}") from None
        cross_names = (clips.name, other.name)

    mark = time.time()
    started_ray = _start_ray(settings)
    ray_start = time.time() - mark
    try:
        bundles = fold_bundles(settings.cpus_per_fold, settings.gpus_per_fold, settings.workers_per_fold)
        totals, nodes = cluster_view()
        if settings.check_resources:
            check_fold_resources(bundles, totals, nodes)
        if fresh:
            _create_folder(settings)
        concurrency = settings.concurrency or max_parallel_folds(bundles, totals)
        tracker = _make_tracker(settings)
        if tracker is not None:
            science = settings.model_dump(mode="json", exclude=_RUNTIME_SETTINGS)
            tracker.start(space=space.to_dict(), settings=science)
        driver = _Driver(
            store=store,
            tracker=tracker,
            ledger=_Ledger(folder / "tracked.json"),
            n_folds=len(fold_ids),
            n_configs=settings.n_configs,
            progress=progress,
        )
        driver.phases["ray_start"] = ray_start
        key = str(folder.resolve())
        _DRIVERS[key] = driver
        try:
            return _run(settings, space, store, driver, key, fold_ids, cross_names, concurrency, bundles, started, tune)
        finally:
            driver.close()
            _DRIVERS.pop(key, None)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _run(
    settings: SweepSettings,
    space: SearchSpace,
    store: FoldStore,
    driver: _Driver,
    key: str,
    fold_ids: list[str],
    cross_names: tuple[str, str] | None,
    concurrency: int,
    bundles: list[dict[str, float]],
    started: float,
    tune: Any,
) -> SweepSummary:
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import FIFOScheduler

    from orchestration.pruning import PrunedFoldStopper

    folder = settings.sweep_dir
    job = FoldJob(
        store_root=str((folder / "folds").resolve()),
        cache=str(settings.cache),
        cross_cache=None if settings.cross_cache is None else str(settings.cross_cache),
        fold_fn=settings.fold_fn,
        cache_loader=settings.cache_loader,
        fold_metric=settings.resolved_fold_metric,
        device=settings.resolved_device,
        cpus_per_fold=settings.cpus_per_fold,
        gpus_per_fold=settings.gpus_per_fold,
        workers_per_fold=settings.workers_per_fold,
        train_storage=str((folder / "ray" / "train").resolve()),
    )
    trial_resources = {k.lower(): v for k, v in bundles[0].items()}
    trainable = tune.with_resources(tune.with_parameters(fold_trainable, job=job), trial_resources)
    searcher = FoldSearcher(
        space=space,
        fold_ids=fold_ids,
        store_root=job.store_root,
        study_path=folder / "optuna.journal",
        study_name=settings.name,
        n_configs=settings.n_configs,
        max_concurrent_configs=settings.max_concurrent_configs,
        pruner=settings.pruner,
        p_threshold=settings.p_threshold,
        pocock_alpha=settings.pocock_alpha,
        prune_startup_folds=settings.prune_startup_folds,
        objective=settings.objective,
        sampler=settings.sampler,
        startup_configs=settings.startup_configs,
        seed=settings.seed,
    )
    storage = str((folder / "ray").resolve())
    failure = FailureConfig(max_failures=settings.max_failures)
    experiment = Path(storage) / LOSO_EXPERIMENT
    resumed = settings.resume and Tuner.can_restore(experiment)
    if resumed:
        tuner = Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=PrunedFoldStopper() if settings.stop_pruned_folds else FIFOScheduler(),
                num_samples=-1,
                max_concurrent_trials=concurrency,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=RunConfig(
                name=LOSO_EXPERIMENT,
                storage_path=storage,
                failure_config=failure,
                callbacks=[SweepCallback(key, searcher), *_quiet(settings)],
                verbose=1 if settings.verbose else 0,
            ),
        )
    driver.phases["setup"] = time.time() - started - driver.phases.get("ray_start", 0.0)
    mark = time.time()
    grid = tuner.fit()
    driver.phases["loso"] = time.time() - mark
    errors = [f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}" for e in grid.errors]
    driver.drain(driver.searcher)
    study = _load_study(folder / "optuna.journal", settings.name)
    finished = _budget_spent(study, settings.n_configs)

    # Anything finished but not yet tracked (e.g. told just before a previous run was killed).
    leaderboard = _leaderboard(study, space, store, settings.objective, len(fold_ids))
    configs = store.configs()
    for row in leaderboard.itertuples():
        if row.state in (COMPLETE, PRUNED, FAILED) and row.config_fp in configs:
            driver.log_config(row.config_fp, row.state, configs[row.config_fp])

    cross: dict[str, dict[str, float]] = {}
    if finished and cross_names is not None and settings.top_k_cross > 0 and not leaderboard.empty:
        top = leaderboard[leaderboard["state"] == COMPLETE].head(settings.top_k_cross)
        items = _cross_items(top, store, cross_names)
        if items:
            cross_tuner = Tuner(
                tune.with_resources(tune.with_parameters(_cross_trainable, job=job), {k.lower(): v for k, v in bundles[0].items()}),
                param_space={"fold": tune.grid_search(items)},
                tune_config=TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, trial_dirname_creator=_trial_dirname),
                run_config=RunConfig(
                    name=CROSS_EXPERIMENT,
                    storage_path=storage,
                    failure_config=failure,
                    callbacks=[SweepCallback(key, None), *_quiet(settings)],
                    verbose=1 if settings.verbose else 0,
                ),
            )
            mark = time.time()
            cross_grid = cross_tuner.fit()
            driver.phases["cross"] = time.time() - mark
            errors += [f"{type(e).__name__}: cross-domain fold failed" for e in cross_grid.errors]
            metric, mode, _ = settings.objective_parts
            for fp in top["config_fp"]:
                results = store.results(fp, CROSS_EXPERIMENT)
                if not results:
                    continue
                driver.log_config(fp, COMPLETE, configs[fp], cross=results)
                cross[fp] = {r.fold_id: objective_value([r], f"{metric}:{mode}:pooled") for r in results}
            for direction in (f"{cross_names[0]}->{cross_names[1]}", f"{cross_names[1]}->{cross_names[0]}"):
                column = f"cross.{direction}"
                leaderboard[column] = [cross.get(fp, {}).get(direction) for fp in leaderboard["config_fp"]]

    mark = time.time()
    driver.log_stored_folds()
    summary = _summary(settings, leaderboard, driver, len(fold_ids), started, resumed, finished, cross, errors)
    folder.joinpath("artifacts").mkdir(exist_ok=True)
    leaderboard.to_csv(folder / "leaderboard.csv", index=False)
    _write_json(folder / "summary.json", summary.to_dict())
    if finished and driver.tracker is not None:
        driver.tracker.finish(leaderboard, folder / "artifacts")
    driver.phases["finish"] = time.time() - mark
    summary.wall_s = time.time() - started
    summary.phases = {k: round(v, 3) for k, v in driver.phases.items()}
    _write_json(folder / "summary.json", summary.to_dict())
    return summary


def _summary(
    settings: SweepSettings,
    leaderboard: pd.DataFrame,
    driver: _Driver,
    n_folds: int,
    started: float,
    resumed: bool,
    finished: bool,
    cross: dict[str, dict[str, float]],
    errors: list[str],
) -> SweepSummary:
    states = leaderboard["state"].value_counts().to_dict() if not leaderboard.empty else {}
    complete = leaderboard[leaderboard["state"] == COMPLETE] if not leaderboard.empty else leaderboard
    best = complete.iloc[0] if not complete.empty else None
    overrides = {}
    if best is not None:
        overrides = {
            k.removeprefix("param."): v.item() if hasattr(v, "item") else v
            for k, v in best.items()
            if k.startswith("param.") and not _isnan(v)
        }
    return SweepSummary(
        name=settings.name,
        sweep_dir=str(settings.sweep_dir),
        objective=settings.objective,
        best_number=None if best is None else int(best["number"]),
        best_fp=None if best is None else str(best["config_fp"]),
        best_overrides=overrides,
        best_score=None if best is None else float(best["objective"]),
        n_configs=len(leaderboard),
        n_complete=int(states.get(COMPLETE, 0)),
        n_pruned=int(states.get(PRUNED, 0)),
        n_failed=int(states.get(FAILED, 0)),
        n_folds=n_folds,
        folds_trained=driver.folds_trained,
        loso_folds_trained=driver.loso_trained,
        folds_from_store=driver.folds_from_store,
        folds_stopped=driver.folds_stopped,
        wall_s=time.time() - started,
        resumed=resumed,
        finished=finished,
        tracking_uri=settings.resolved_tracking_uri,
        cross=cross,
        errors=errors,
        leaderboard=leaderboard,
    )


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)

