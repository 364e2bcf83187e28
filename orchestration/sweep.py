"""Run a sweep: LOSO search with per-fold trials on Ray Tune, then cross-domain for the top-k.

``run_sweep(settings)`` starts (or connects to) Ray, checks that a fold's resource request fits
the cluster, builds a ``Tuner`` whose searcher is the ``FoldSearcher`` (Optuna) and whose
trainable runs one fold per trial, and, after the search, trains the best configurations
cross-domain when a second cache is given. Everything lands in the sweep's folder
(``orchestration.sweep_folder``, which also decides what a resume accepts).

Tracking happens in the driver process only, through a Tune callback (orchestration.sweep_driver):
once per fold result and once per configuration outcome, with a ledger (``tracked.json``) so that
a retried trial, a fold found in the store or a resumed sweep never logs a run twice. Resume is
``Tuner.restore(..., resume_unfinished=True, restart_errored=True)``: unfinished trials run
again and find their fold in the store if it was finished.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd

from aullm_core.data.splits import cross_domain_fold, loso_folds
from aullm_core.errors import ConfigError, one_line
from orchestration.config_state import COMPLETE, FAILED, PRUNED, study_rows
from orchestration.fold_store import FoldStore
from orchestration.fold_task import CROSS, LOSO, FoldTask, data_key
from orchestration.graceful_stop import GracefulStop
from orchestration.ray_cluster import start_ray, wait_for_nodes
from orchestration.reports.tables import leaderboard
from orchestration.resources import (
    check_fold_resources,
    cluster_view,
    fold_bundles,
    max_parallel_folds,
)
from orchestration.search_core import SearchPlan
from orchestration.searcher import FoldSearcher
from orchestration.settings import SweepSettings
from orchestration.space import SearchSpace
from orchestration.sweep_driver import (
    DRIVERS,
    Ledger,
    QuietProgress,
    SweepCallback,
    SweepDriver,
    Tracker,
)
from orchestration.sweep_folder import (
    RUNTIME_SETTINGS,
    DataRecord,
    SweepFolder,
    budget_spent,
    data_record,
    load_study,
    load_sweep_settings,
    resolve_settings,
    write_json,
)
from orchestration.sweep_summary import SweepSummary, make_summary
from orchestration.trainable import FoldJob, fold_trainable, load_clips, resolve

__all__ = ["SweepSummary", "Tracker", "load_sweep_settings", "run_sweep"]

logger = logging.getLogger(__name__)



def _quiet(settings: SweepSettings) -> list[Any]:
    return [] if settings.verbose else [QuietProgress()]


def _trial_dirname(trial: Any) -> str:
    config = trial.config.get("fold", trial.config)
    return f"c{config.get('number')}_{quote(str(config.get('fold_id')), safe='')}_{trial.trial_id}"


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
    if settings.objective.thresholds == "inner" or settings.fold_score.thresholds == "inner":
        space.check_inner_thresholds()


def _make_tracker(settings: SweepSettings) -> Tracker | None:
    uri = settings.resolved_tracking_uri
    if uri is None:
        return None
    return resolve(settings.tracker)(uri, settings.name)


def _leaderboard(study: Any, space: SearchSpace, store: FoldStore, settings: SweepSettings,
                 n_folds: int) -> pd.DataFrame:
    """``reports.tables.leaderboard`` over the study's configurations."""
    return leaderboard(store, objective=settings.objective, n_folds_total=n_folds, trials=study_rows(study, space))


def _cross_items(top: pd.DataFrame, store: FoldStore, names: tuple[str, str], key: str) -> list[dict[str, Any]]:
    configs = store.configs()
    return [
        FoldTask(number=int(number), fp=fp, experiment=configs[fp], protocol=CROSS, fold_id=direction,
                 fold_index=index, data_fp=key).to_tune()
        for number, fp in zip(top["number"], top["config_fp"])
        for index, direction in enumerate(_directions(names))
    ]


def _grid_trainable(config: dict, job: FoldJob) -> None:
    fold_trainable(config["fold"], job)


@dataclass
class _Sweep:
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

    @property
    def storage(self) -> str:
        return str((self.settings.sweep_dir / "ray").resolve())

    def run_config(self, name: str, searcher: FoldSearcher | None) -> Any:
        from ray.tune import FailureConfig, RunConfig

        return RunConfig(
            name=name,
            storage_path=self.storage,
            failure_config=FailureConfig(max_failures=self.settings.max_failures),
            callbacks=[SweepCallback(self.key, searcher), *_quiet(self.settings)],
            verbose=1 if self.settings.verbose else 0,
        )


def run_sweep(settings: SweepSettings, *, progress: bool = True) -> SweepSummary:
    """Run (or resume) a sweep to the end and return its summary."""
    started = time.time()
    if not settings.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, space, fresh = resolve_settings(settings)
    _check_space(settings, space)
    folder = SweepFolder(settings.sweep_dir)
    fold_ids, cross_names, record = _folds(settings)
    previous = folder
    if not fresh:
        folder.check_data(record)
        previous = SweepFolder(folder.saved_location())
    ledger = Ledger(folder.ledger)  # read (and refused if damaged) before anything is started

    with GracefulStop() as stop:  # before ray.init: a SIGTERM while Ray starts is a clean stop too
        mark = time.time()
        started_ray = start_ray(settings)
        stop.rearm()  # ray.init set SIGTERM to sys.exit
        try:
            if settings.wait_nodes and settings.address:
                wait_for_nodes(settings.wait_nodes, settings.address, stopped=lambda: stop.requested)
            ray_start = time.time() - mark
            sweep = _start(settings, space, folder, record, ledger, fold_ids, cross_names,
                           fresh=fresh, progress=progress, stop=stop, started=started)
            driver = sweep.driver
            driver.phases["ray_start"] = ray_start
            keys = {sweep.key, str(previous.path.resolve())}  # Tune's restored callbacks know the old folder
            if len(keys) > 1:
                logger.warning("resuming %s in %s (it was started in %s)", settings.name, folder.path, previous.path)
                driver.study_path = folder.journal.resolve()
                write_json(folder.settings_file, settings.model_dump(mode="json"))
            for key in keys:
                DRIVERS[key] = driver
            try:
                return _run(sweep)
            finally:
                driver.close()
                for key in keys:
                    DRIVERS.pop(key, None)
        finally:
            if started_ray:
                import ray

                ray.shutdown()


def _start(settings: SweepSettings, space: SearchSpace, folder: SweepFolder, record: DataRecord, ledger: Ledger,
           fold_ids: list[str], cross_names: tuple[str, str] | None, *, fresh: bool, progress: bool,
           stop: GracefulStop, started: float) -> _Sweep:
    """Check the cluster, create the folder (new sweep), open the tracker and the driver: what the phases share."""
    bundles = fold_bundles(settings.cpus_per_fold, settings.gpus_per_fold, settings.workers_per_fold)
    totals, nodes = cluster_view()
    if settings.check_resources:
        check_fold_resources(bundles, totals, nodes)
    if fresh:
        folder.create(settings, record)
    tracker = _make_tracker(settings)
    if tracker is not None:
        science = settings.model_dump(mode="json", exclude=RUNTIME_SETTINGS)
        tracker.start(space=space.to_dict(), settings=science)
    store = FoldStore(folder.store_root(record.data_key))
    driver = SweepDriver(store=store, tracker=tracker, ledger=ledger, n_folds=len(fold_ids),
                         n_configs=settings.n_configs, progress=progress, objective=settings.objective,
                         stop=stop)
    return _Sweep(
        settings=settings, space=space, store=store, driver=driver, key=str(folder.path.resolve()),
        fold_ids=fold_ids, cross_names=cross_names,
        concurrency=settings.concurrency or max_parallel_folds(bundles, totals),
        job=_job(settings, record.data_key), data_key=record.data_key,
        trial_resources={k.lower(): v for k, v in bundles[0].items()}, started=started, stop=stop,
    )


def _folds(settings: SweepSettings) -> tuple[list[str], tuple[str, str] | None, DataRecord]:
    """LOSO fold ids of the cache, the two dataset names when cross-domain applies, the data record."""
    clips = load_clips(str(settings.cache), settings.cache_loader)
    fold_ids = [f.fold_id for f in loso_folds(clips)]
    caches = {str(settings.cache): clips.fingerprint}
    if settings.cross_cache is None:
        return fold_ids, None, data_record(caches, data_key(list(caches.values())))
    other = load_clips(str(settings.cross_cache), settings.cache_loader)
    if other.name == clips.name:
        raise ConfigError(
            f"{settings.cross_cache}: holds {other.name!r} like --cache; cross-domain needs the other dataset"
        )
    try:
        cross_domain_fold(clips, other)
    except ValueError as err:
        raise ConfigError(f"{settings.cross_cache}: {err}") from None
    caches[str(settings.cross_cache)] = other.fingerprint
    return fold_ids, (clips.name, other.name), data_record(caches, data_key(list(caches.values())))


def _job(settings: SweepSettings, key: str) -> FoldJob:
    folder = SweepFolder(settings.sweep_dir)
    return FoldJob(
        store_root=str(folder.store_root(key).resolve()),
        cache=str(settings.cache),
        cross_cache=None if settings.cross_cache is None else str(settings.cross_cache),
        fold_fn=settings.fold_fn,
        cache_loader=settings.cache_loader,
        fold_score=settings.fold_score,
        device=settings.resolved_device,
        cpus_per_fold=settings.cpus_per_fold,
        gpus_per_fold=settings.gpus_per_fold,
        workers_per_fold=settings.workers_per_fold,
        train_storage=str((folder.ray / "train").resolve()),
    )


def _run(sweep: _Sweep) -> SweepSummary:
    settings, driver, folder = sweep.settings, sweep.driver, sweep.settings.sweep_dir
    resumed, failures = _loso_phase(sweep)
    study = load_study(SweepFolder(folder), settings.name)
    errors = SweepFolder(folder).record_failures(  # this run's and earlier runs' (kept in failures.json)
        [f"configuration {number}, fold {fold_id}: {line}" for number, fold_id, line in failures])
    stopped = sweep.stop  # SIGTERM / SIGUSR1: no phase starts after it (the next run resumes)
    finished = budget_spent(study, settings.n_configs) and not stopped.requested
    repairs = [] if stopped.requested else _missing_folds(study, sweep)
    if repairs:  # a fold file truncated or removed after its configuration was told: retrain it
        errors += _grid_phase(sweep, repairs, "repair")

    # Anything finished but not yet tracked (e.g. told just before a previous run was killed).
    board = _leaderboard(study, sweep.space, sweep.store, settings, len(sweep.fold_ids))
    configs = sweep.store.configs()
    for row in board.itertuples():
        if row.status in (COMPLETE, PRUNED, FAILED) and row.config_fp in configs:
            driver.log_config(row.config_fp, row.status, configs[row.config_fp], number=int(row.number))

    cross: dict[str, dict[str, float]] = {}
    if finished and sweep.cross_names is not None and settings.top_k_cross > 0 and not board.empty:
        top = board[board["status"] == COMPLETE].head(settings.top_k_cross)
        cross, cross_errors = _cross_phase(sweep, top)
        errors += cross_errors
        finished = not stopped.requested
        board = _leaderboard(study, sweep.space, sweep.store, settings, len(sweep.fold_ids))
    leaderboard = board

    mark = time.time()
    driver.log_stored_folds()
    summary = make_summary(settings, leaderboard, driver, len(sweep.fold_ids), sweep.started, resumed, finished,
                       cross, errors)
    folder.joinpath("artifacts").mkdir(exist_ok=True)
    leaderboard.to_csv(folder / "leaderboard.csv", index=False)
    write_json(folder / "summary.json", summary.to_dict())
    if finished and driver.tracker is not None:
        from orchestration.reports.plots import study_plots

        study_plots(study, folder / "artifacts", str(settings.objective))
        driver.tracker.finish(leaderboard, folder / "artifacts")
    driver.phases["finish"] = time.time() - mark
    summary.wall_s = time.time() - sweep.started
    summary.stopped_by = stopped.signal_name
    summary.phases = {k: round(v, 3) for k, v in driver.phases.items()}
    write_json(folder / "summary.json", summary.to_dict())
    return summary


def _loso_phase(sweep: _Sweep) -> tuple[bool, list[str]]:
    """The LOSO search (new or restored Tuner); returns (resumed, (trial number, fold, error) of failed trials)."""
    from ray import tune
    from ray.tune import TuneConfig, Tuner
    from ray.tune.schedulers import FIFOScheduler

    from orchestration.fold_stopper import PrunedFoldStopper

    settings = sweep.settings
    trainable = tune.with_resources(tune.with_parameters(fold_trainable, job=sweep.job), sweep.trial_resources)
    experiment = Path(sweep.storage) / LOSO
    resumed = settings.resume and Tuner.can_restore(experiment)
    if resumed:
        # the searcher and the callback come back from Tune's own snapshot (searcher state as JSON)
        tuner = Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True)
    else:
        searcher = FoldSearcher(
            space=sweep.space,
            fold_ids=sweep.fold_ids,
            data_fp=sweep.data_key,
            store_root=sweep.job.store_root,
            study_path=SweepFolder(settings.sweep_dir).journal,
            study_name=settings.name,
            n_configs=settings.n_configs,
            max_concurrent_configs=settings.max_concurrent_configs,
            plan=SearchPlan.of(settings),
        )
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=PrunedFoldStopper() if settings.stop_pruned_folds else FIFOScheduler(),
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
    return bool(resumed), [_failure(r) for r in grid if r.error is not None]


def _fit(tuner: Any, stop: GracefulStop) -> list[Any]:
    """``tuner.fit()`` unless a stop was asked for; SIGUSR1 is the sweep's again afterwards."""
    if stop.requested:
        return []
    try:
        return list(tuner.fit())
    finally:
        stop.rearm()


_TRIAL_DIR = re.compile(r"c(\d+)_(.+)_[0-9a-f]+")  # _trial_dirname's pattern
_TUNE_PREFIX = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)\s*$")


def _failure(result: Any) -> tuple[int | None, str | None, str]:
    """(trial number, fold id, one line) of a fold trial that failed for good. The number and fold come
    from the trial's folder name when Ray kept no result (a worker killed before reporting)."""
    config = (result.config or {}).get("fold", result.config or {})
    number, fold_id = config.get("number"), config.get("fold_id")
    match = _TRIAL_DIR.fullmatch(Path(str(result.path)).name) if result.path else None
    if match and number is None:
        number, fold_id = int(match.group(1)), unquote(match.group(2))
    line = one_line(result.error)  # the worker's own exception when Ray kept it (RayTaskError.cause)
    text = "\n".join(part for part in str(result.error).splitlines() if not _TUNE_PREFIX.match(part))
    if _TUNE_PREFIX.match(line) and text.strip():  # Tune's "Failure # 1 (occurred at ...)" heading first
        line = one_line(RuntimeError(text))
    if "running low on memory" in text:
        line += " (Ray's memory monitor: run fewer folds at once, --concurrency or --max-configs, or retry with --max-failures)"
    return number, fold_id, line


def _directions(names: tuple[str, str]) -> tuple[str, str]:
    return f"{names[0]}->{names[1]}", f"{names[1]}->{names[0]}"


def _grid_phase(sweep: _Sweep, items: list[dict[str, Any]], name: str) -> list[str]:
    """Train the given fold tasks as a grid of Tune trials (each looks in the fold store first); the errors."""
    from ray import tune
    from ray.tune import TuneConfig, Tuner

    tuner = Tuner(
        tune.with_resources(tune.with_parameters(_grid_trainable, job=sweep.job), sweep.trial_resources),
        param_space={"fold": tune.grid_search(items)},
        tune_config=TuneConfig(
            max_concurrent_trials=sweep.concurrency, reuse_actors=True, trial_dirname_creator=_trial_dirname
        ),
        run_config=sweep.run_config(name, None),
    )
    mark = time.time()
    grid = _fit(tuner, sweep.stop)
    sweep.driver.phases[name] = sweep.driver.phases.get(name, 0.0) + time.time() - mark
    return [one_line(r.error) for r in grid if r.error is not None]


def _missing_folds(study: Any, sweep: _Sweep) -> list[dict[str, Any]]:
    """Fold tasks of configurations Optuna holds as COMPLETE whose LOSO folds are not (whole) in the store."""
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


def _cross_phase(sweep: _Sweep, top: pd.DataFrame) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Train the top configurations in both cross-domain directions (Tune trials, fold store first)."""
    assert sweep.cross_names is not None
    items = _cross_items(top, sweep.store, sweep.cross_names, sweep.data_key)
    if not items:
        return {}, []
    errors = _grid_phase(sweep, items, CROSS)
    objective = sweep.settings.objective.model_copy(update={"aggregate": "pooled"})
    configs = sweep.store.configs()
    cross: dict[str, dict[str, float]] = {}
    for fp in top["config_fp"]:
        results = sweep.store.results(fp, CROSS)
        if results:
            sweep.driver.log_config(fp, COMPLETE, configs[fp], cross=results)
            cross[fp] = {r.fold_id: objective.of_results([r]) for r in results}
    return cross, errors
