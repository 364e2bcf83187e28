"""Run a sweep: LOSO search with per-fold trials on Ray Tune, then cross-domain for the top-k.

``run_sweep(settings)`` starts (or connects to) Ray, checks that a fold's resource request fits
the cluster, builds a ``Tuner`` whose searcher is the ``FoldSearcher`` (Optuna) and whose
trainable runs one fold per trial, and, after the search, trains the best configurations
cross-domain when a second cache is given. Everything lands in the sweep's folder
(``orchestration.sweep.folder``, which also decides what a resume accepts).

Tracking happens in the driver process only, through a Tune callback (orchestration.sweep.driver):
once per fold result and once per configuration outcome; what MLflow holds already is not logged
again, so a retried trial, a fold found in the store or a resumed sweep never logs a run twice. Resume is
``Tuner.restore(..., resume_unfinished=True, restart_errored=True)``: unfinished trials run
again and find their fold in the store if it was finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from aullm_core.data.records import ClipSet
from aullm_core.data.splits import LOSO, cross_domain_fold, loso_folds
from aullm_core.errors import ConfigError, one_line
from aullm_core.model.config import FRAME_SIZE, mid_side
from aullm_core.model.llm_source import LLMInfo, check_llm
from aullm_core.train.baselines import baseline_scores
from orchestration.folds.store import FoldStore
from orchestration.folds.task import data_key
from orchestration.folds.trainable import FoldCode, FoldJob, load_clips
from orchestration.results.plots import optimization_history, study_plots
from orchestration.results.tables import leaderboard
from orchestration.search.progress import Status, study_rows
from orchestration.search.space import SearchSpace
from orchestration.sweep.disk_reserve import DiskReserve
from orchestration.sweep.driver import (
    DRIVERS,
    SweepDriver,
    Tracker,
)
from orchestration.sweep.folder import (
    RUNTIME_SETTINGS,
    DataRecord,
    SweepFolder,
    budget_spent,
    data_record,
    load_sweep_settings,
    open_study,
    resolve_settings,
    write_json,
)
from orchestration.sweep.lock import SweepLock
from orchestration.sweep.phases import SweepRun, cross_phase, grid_phase, loso_phase, missing_folds
from orchestration.sweep.ray_cluster import start_ray, wait_for_nodes
from orchestration.sweep.resources import (
    check_fold_resources,
    cluster_view,
    fold_bundles,
    max_parallel_folds,
)
from orchestration.sweep.settings import SweepSettings
from orchestration.sweep.stop import GracefulStop
from orchestration.sweep.summary import SweepSummary, make_summary

__all__ = ["SweepHooks", "SweepSummary", "Tracker", "TrackerFactory", "load_sweep_settings", "run_sweep"]

#: how long a finished sweep waits for a tracking server that is down before it leaves the rest to --resume
_TRACKING_WAIT_S = 120.0

logger = logging.getLogger(__name__)



def _check_space(settings: SweepSettings, space: SearchSpace) -> dict[str, LLMInfo]:
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
    return check_space_llms(space, device=settings.resolved_device, local=settings.address is None)


def check_space_llms(space: SearchSpace, *, device: str, local: bool) -> dict[str, LLMInfo]:
    """``check_llm`` for every checkpoint the space can propose (with each LoRA target list it searches),
    on the driver, before Ray starts; the memory check only for a local cluster (this machine's memory).
    Returns what was found per checkpoint folder ('tiny' left out)."""
    targets = next((p.candidates() for p in space.params if p.key == "model.lora.targets"), [None])
    base = space.build({}, resolve=False)
    found: dict[str, LLMInfo] = {}
    for llm in space.llm_choices():
        for target in targets:
            model = base.model.model_copy(update={"llm": llm, **({"lora": base.model.lora.model_copy(
                update={"targets": tuple(target)})} if target is not None else {})})
            info = check_llm(model, device=device, memory=None if local else 1 << 62)
            if info is not None:
                found.setdefault(llm, info)
    return found


def _llm_params(llms: dict[str, LLMInfo]) -> dict[str, str]:
    """What was found of each checkpoint, as MLflow params of the sweep run (``llm.<k>.<field>``)."""
    return {f"llm.{k}.{key}": str(value) for k, info in enumerate(llms.values()) for key, value in info.to_dict().items()}


#: Opens the tracker of a sweep: (tracking URI, sweep name) -> Tracker (``MlflowTracker`` is one).
TrackerFactory = Callable[[str, str], Tracker]


@dataclass(frozen=True)
class SweepHooks:
    """The code a sweep calls beyond its own: what trains a fold and reads a cache (``FoldCode``: aullm_core's
    by default), what tracks it (None: nothing is tracked) and what writes its report into the sweep folder
    once it has finished, before the tracker logs the folder's files."""

    code: FoldCode = field(default_factory=FoldCode)
    tracker: TrackerFactory | None = None
    report: Callable[[SweepSettings], None] | None = None


def _make_tracker(settings: SweepSettings, hooks: SweepHooks) -> Tracker | None:
    uri = settings.resolved_tracking_uri
    if uri is None or hooks.tracker is None:
        return None
    return hooks.tracker(uri, settings.name)


def _leaderboard(study: Any, space: SearchSpace, store: FoldStore, settings: SweepSettings,
                 n_folds: int) -> pd.DataFrame:
    """``reports.tables.leaderboard`` over the study's configurations."""
    return leaderboard(store, objective=settings.objective, n_folds_total=n_folds, trials=study_rows(study, space))


def run_sweep(settings: SweepSettings, hooks: SweepHooks = SweepHooks(), *, progress: bool = True) -> SweepSummary:
    """Run (or resume) a sweep to the end and return its summary."""
    started = time.time()
    if not settings.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, space, fresh = resolve_settings(settings)
    llms = _check_space(settings, space)
    folder = SweepFolder(settings.sweep_dir)
    existing = next(p for p in (folder.path, *folder.path.parents) if p.exists())
    if (problem := DiskReserve(existing, int(settings.min_free_mb * 2**20)).problem()) is not None:
        raise ConfigError(problem)  # before Ray starts: nothing to tear yet
    with SweepLock(folder.path):  # one driver per sweep: a second one is refused naming the first
        return _run_locked(settings, hooks, space, folder, fresh, llms, progress=progress, started=started)


def _run_locked(settings: SweepSettings, hooks: SweepHooks, space: SearchSpace, folder: SweepFolder, fresh: bool,
                llms: dict[str, LLMInfo], *, progress: bool, started: float) -> SweepSummary:
    fold_ids, cross_names, record = _folds(settings, hooks.code)
    record = record.model_copy(update={"llm_ids": {llm: info.identity for llm, info in llms.items()}})
    previous = folder
    if not fresh:
        folder.check_data(record)
        if record.llm_ids and not folder.data().llm_ids:
            raise ConfigError(
                f"{folder.data_file}: this sweep was made before checkpoints were identified by content (its folds "
                f"are keyed by the checkpoint's path); they are not migrated: start a new sweep (another --name)"
            )
        changed = folder.changed_llms(record)
        if changed:
            aside = folder.restart_search(record)
            logger.warning("the checkpoint %s changed since the sweep started (content %s, now %s): its "
                           "configurations are searched and trained anew (the earlier search is kept in %s)",
                           *next((k, *v) for k, v in changed.items()), aside)
        previous = SweepFolder(folder.saved_location())

    with GracefulStop() as stop:  # before ray.init: a SIGTERM while Ray starts is a clean stop too
        mark = time.time()
        started_ray = start_ray(settings)
        stop.rearm()  # ray.init set SIGTERM to sys.exit
        try:
            if settings.wait_nodes and settings.address:
                wait_for_nodes(settings.wait_nodes, settings.address, stopped=lambda: stop.requested)
            ray_start = time.time() - mark
            sweep = _start(settings, hooks, space, folder, record, fold_ids, cross_names,
                           fresh=fresh, progress=progress, stop=stop, started=started, llm_params=_llm_params(llms))
            driver = sweep.driver
            driver.disk = DiskReserve(folder.path, int(settings.min_free_mb * 2**20))
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


def _start(settings: SweepSettings, hooks: SweepHooks, space: SearchSpace, folder: SweepFolder, record: DataRecord,
           fold_ids: list[str], cross_names: tuple[str, str] | None, *, fresh: bool, progress: bool,
           stop: GracefulStop, started: float, llm_params: dict[str, str] | None = None) -> SweepRun:
    """Check the cluster, create the folder (new sweep), open the tracker and the driver: what the phases share."""
    bundles = fold_bundles(settings.cpus_per_fold, settings.gpus_per_fold, settings.workers_per_fold)
    totals, nodes = cluster_view()
    if settings.check_resources:
        check_fold_resources(bundles, totals, nodes)
    if fresh:
        folder.create(settings, record, space)
    tracker = _make_tracker(settings, hooks)
    if tracker is not None:
        science = settings.model_dump(mode="json", exclude=RUNTIME_SETTINGS)
        tracker.start(space=space.to_dict(), settings={**science, **(llm_params or {})})
    store = FoldStore(folder.store_root(record.data_key))
    driver = SweepDriver(store=store, tracker=tracker, n_folds=len(fold_ids),
                         n_configs=settings.n_configs, progress=progress, objective=settings.objective,
                         stop=stop)
    return SweepRun(
        settings=settings, space=space, store=store, driver=driver, key=str(folder.path.resolve()),
        fold_ids=fold_ids, cross_names=cross_names,
        concurrency=settings.concurrency or max_parallel_folds(bundles, totals),
        job=_job(settings, record.data_key, hooks.code), data_key=record.data_key,
        trial_resources={k.lower(): v for k, v in bundles[0].items()}, started=started, stop=stop,
        report=hooks.report,
    )


def _check_frames(path: object, clips: ClipSet) -> None:
    """A cache whose frames the 3D-CNN cannot take is refused before Ray starts, in one line."""
    side = int(clips.frames[0].shape[1]) if len(clips) else FRAME_SIZE
    try:
        mid_side(side)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None


def _folds(settings: SweepSettings, code: FoldCode) -> tuple[list[str], tuple[str, str] | None, DataRecord]:
    """LOSO fold ids of the cache, the two dataset names when cross-domain applies, the data record."""
    clips = load_clips(str(settings.cache), code.cache_loader)
    _check_frames(settings.cache, clips)
    fold_ids = [f.fold_id for f in loso_folds(clips)]
    caches = {str(settings.cache): clips.fingerprint}
    if settings.cross_cache is None:
        return fold_ids, None, data_record(caches, data_key(list(caches.values())))
    other = load_clips(str(settings.cross_cache), code.cache_loader)
    _check_frames(settings.cross_cache, other)
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


def _job(settings: SweepSettings, key: str, code: FoldCode) -> FoldJob:
    folder = SweepFolder(settings.sweep_dir)
    return FoldJob(
        store_root=str(folder.store_root(key).resolve()),
        cache=str(settings.cache),
        cross_cache=None if settings.cross_cache is None else str(settings.cross_cache),
        code=code,
        fold_score=settings.fold_score,
        device=settings.resolved_device,
        cpus_per_fold=settings.cpus_per_fold,
        gpus_per_fold=settings.gpus_per_fold,
        workers_per_fold=settings.workers_per_fold,
        train_storage=str((folder.ray / "train").resolve()),
    )


def _report(sweep: SweepRun) -> None:
    """The report's tables, plots and report.md into the sweep folder's report/, which the tracker logs on
    the sweep run; a report that cannot be made is a warning, not a failed sweep."""
    if sweep.report is None:
        return
    try:
        sweep.report(sweep.settings)
    except Exception as err:  # noqa: BLE001 (the sweep's results are complete without its report)
        logger.warning("could not write the sweep's report (aullm report --sweep %s makes it): %s",
                       sweep.settings.name, one_line(err))


def _run(sweep: SweepRun) -> SweepSummary:
    settings, driver, folder = sweep.settings, sweep.driver, sweep.settings.sweep_dir
    resumed, failures = loso_phase(sweep)
    study = open_study(SweepFolder(folder), settings.name)
    errors = SweepFolder(folder).record_failures(  # this run's and earlier runs' (kept in failures.json)
        [f"configuration {number}, fold {fold_id}: {line}" for number, fold_id, line in failures])
    stopped = sweep.stop  # SIGTERM / SIGUSR1: no phase starts after it (the next run resumes)
    finished = budget_spent(study, settings.n_configs) and not stopped.requested
    repairs = [] if stopped.requested else missing_folds(study, sweep)
    if repairs:  # a fold file truncated or removed after its configuration was told: retrain it
        errors += grid_phase(sweep, repairs, "repair")

    # Anything finished but not yet tracked (e.g. told just before a previous run was killed).
    board = _leaderboard(study, sweep.space, sweep.store, settings, len(sweep.fold_ids))
    configs = sweep.store.configs()
    for row in board.itertuples():
        if row.status in (Status.COMPLETE, Status.PRUNED, Status.FAILED) and row.config_fp in configs:
            driver.log_config(row.config_fp, row.status, configs[row.config_fp], number=int(row.number))

    cross: dict[str, dict[str, float]] = {}
    if finished and sweep.cross_names is not None and settings.top_k_cross > 0 and not board.empty:
        top = board[board["status"] == Status.COMPLETE].head(settings.top_k_cross)
        cross, cross_errors = cross_phase(sweep, top)
        errors += cross_errors
        finished = not stopped.requested
        board = _leaderboard(study, sweep.space, sweep.store, settings, len(sweep.fold_ids))
    leaderboard = board

    mark = time.time()
    driver.log_stored_folds()
    summary = make_summary(settings, leaderboard, driver, len(sweep.fold_ids), sweep.started, resumed, finished,
                       cross, errors)
    if summary.best_fp is not None:  # the label-free floor, scored on the same clips as the objective
        floors = baseline_scores(settings.objective, sweep.store.results(summary.best_fp, LOSO))
        summary.baselines = {name: (i.value, i.low, i.high) for name, i in floors.items()}
    folder.joinpath("artifacts").mkdir(exist_ok=True)
    leaderboard.to_csv(folder / "leaderboard.csv", index=False)
    write_json(folder / "summary.json", summary.to_dict())
    tracked = driver.flush(timeout=_TRACKING_WAIT_S)
    if not tracked:
        logger.warning("MLflow at %s did not come back within %.0f s: %d records were not logged; "
                       "`aullm sweep --resume --name %s` sends them", settings.resolved_tracking_uri, _TRACKING_WAIT_S,
                       driver.sending.unsent if driver.sending else 0, settings.name)
    if finished and driver.tracker is not None and tracked:
        study_plots(study, folder / "artifacts", str(settings.objective))
        optimization_history(leaderboard, folder / "artifacts" / "optimization_history.png",
                             objective=str(settings.objective))
        _report(sweep)
        driver.tracker.finish(leaderboard, folder / "artifacts")
    driver.phases["finish"] = time.time() - mark
    summary.wall_s = time.time() - sweep.started
    summary.stopped_by = stopped.reason or stopped.signal_name
    summary.phases = {k: round(v, 3) for k, v in driver.phases.items()}
    write_json(folder / "summary.json", summary.to_dict())
    return summary
