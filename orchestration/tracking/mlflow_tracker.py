"""MLflow tracking of a sweep: writing its runs. With ``tracking.index`` (finding and reading runs) and
``registry`` (model versions), the only modules of the project that import mlflow.

Runs form a three-level hierarchy in one experiment:
- a sweep run (tag ``aullm.sweep``) with the search space, settings, code version, leaderboard and plots;
- a configuration run per configuration fingerprint (child of the sweep run) with the aggregated
  LOSO results under every protocol variant and the cross-domain results;
- a fold run per (configuration, protocol, fold) (child of its configuration run) with per-AU F1,
  the loss curve, the predictions and the duration.

Everything is logged from the driver process through ``MlflowClient`` (runs created explicitly with
an ``mlflow.parentRunId`` tag), never from Ray workers, so a retried trial cannot log twice. Every
``log_*`` first looks the run up by its tags: a resumed sweep reuses its runs instead of adding new
ones. Runs are always ended (FINISHED, or FAILED/KILLED when logging or the sweep fails).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

from mlflow.entities import Metric, Param, RunStatus, RunTag

from aullm_core.config import dotted
from aullm_core.data.splits import LOSO
from aullm_core.train.objective import DEFAULT_OBJECTIVE, Objective
from aullm_core.train.result import FoldResult, predictions_frame
from orchestration.folds.task import FoldKey
from orchestration.results.tables import per_au_table
from orchestration.search.progress import OUTCOMES, Status
from orchestration.sweep.driver import config_tag
from orchestration.tracking.index import RunIndex, check_writable_sqlite
from orchestration.tracking.names import (
    PROTOCOL_NOTE,
    TABLE_COLUMNS,
    TAG_CONFIG,
    TAG_CROSS,
    TAG_FOLD,
    TAG_LEVEL,
    TAG_NOTE,
    TAG_PARENT,
    TAG_PROTOCOL,
    TAG_PRUNED,
    TAG_STATUS,
    TAG_SWEEP,
    best_note,
    code_version,
    config_run_name,
    landing_view,
    run_status,
)
from orchestration.tracking.run_metrics import (
    config_metrics,
    direction_key,
    fold_metrics,
    fold_table,
    labelled,
    variant_means,
)

__all__ = [
    "TAG_CONFIG",
    "TAG_FOLD",
    "TAG_LEVEL",
    "TAG_PROTOCOL",
    "TAG_SWEEP",
    "MlflowTracker",
    "default_tracking_uri",
]

log = logging.getLogger(__name__)

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_PARAM_VALUE_MAX = 6000
_DIGITS = 4  # metrics are logged rounded: the UI prints what it is given


def default_tracking_uri(workdir: Path) -> str:
    """SQLite file in the working folder: ``sqlite:///<workdir>/mlflow.db`` (absolute path)."""
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def _flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested dict -> dotted keys with string values (MLflow params), cut to MLflow's length."""
    return {k: str(v)[:_PARAM_VALUE_MAX] for k, v in dotted(params, lists_as_json=True).items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker(RunIndex):
    """Logs one sweep to MLflow as sweep -> configuration -> fold runs.

    Example:
        tracker = MlflowTracker(default_tracking_uri(workdir), "quick")
        tracker.start(space=space_dict, settings=settings_dict)
        tracker.log_fold(fp, params, result, duration_s=result.duration_s)
        tracker.log_config(fp, params, results, status=Status.COMPLETE, n_folds_total=26)
        tracker.finish(leaderboard, workdir / "sweeps" / "quick" / "report")

    Args:
        tracking_uri: any MLflow tracking URI; with ``sqlite:///...`` artifacts go to an
            ``mlartifacts`` folder beside the database file.
        sweep_name: the sweep's name; a sweep started again with the same name reuses its runs.
        experiment: MLflow experiment that holds the runs (created if missing).
    """

    def __init__(self, tracking_uri: str, sweep_name: str, experiment: str = "aullm") -> None:
        check_writable_sqlite(tracking_uri)
        super().__init__(tracking_uri, sweep_name, experiment)
        self.sweep_run_id: str | None = None
        self._config_runs: dict[str, str] = {}
        self._atexit_registered = False


    def _require_sweep(self) -> str:
        if self.sweep_run_id is None:
            self.sweep_run_id = self._find_sweep_run()
        if self.sweep_run_id is None:
            raise RuntimeError(f"sweep {self.sweep_name!r} has no MLflow run: call start() first")
        return self.sweep_run_id

    # -- logging helpers ------------------------------------------------------------------------

    def _log(self, run_id: str, *, metrics: Mapping[str, float] = {}, params: Mapping[str, str] = {},
             tags: Mapping[str, str] = {}, step: int = 0) -> None:
        stamp = _now_ms()
        metric_list = [Metric(k, round(float(v), _DIGITS), stamp, step) for k, v in metrics.items()]
        for i in range(0, len(metric_list), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metric_list[i : i + _MAX_METRICS_PER_BATCH])
        param_list = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(param_list), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=param_list[i : i + _MAX_PARAMS_PER_BATCH])
        tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(tag_list), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=tag_list[i : i + _MAX_PARAMS_PER_BATCH])

    def _log_new_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Params are immutable in MLflow: log only keys not yet there; warn on changed values."""
        existing = self.client.get_run(run_id).data.params
        changed = [k for k, v in params.items() if k in existing and existing[k] != v]
        if changed:
            log.warning("run %s keeps its first values of params %s", run_id, changed)
        self._log(run_id, params={k: v for k, v in params.items() if k not in existing})

    def _ended(self, run_id: str, body: Any) -> str:
        """Run ``body()``; end the run FINISHED, or FAILED (KILLED on Ctrl-C) if it raises."""
        try:
            body()
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return run_id

    # -- the contract -------------------------------------------------------------------------

    def start(self, *, space: dict, settings: dict) -> str:
        """Create the sweep run, or reopen the one with this sweep name (resume); returns its id."""
        run_id = self._find_sweep_run()
        if run_id is None:
            tags = {TAG_LEVEL: "sweep", TAG_SWEEP: self.sweep_name, TAG_NOTE: PROTOCOL_NOTE}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name).info.run_id
        else:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self._log(run_id, tags={"aullm.resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.sweep_run_id = run_id
        params = space.get("params") or []
        tag, view = landing_view(self.sweep_name, [str(k) for k in params], now_ms=_now_ms())
        self.client.set_experiment_tag(self.experiment_id, tag, view)
        self._log(run_id, tags=code_version())
        self._log_new_params(run_id, _flatten(settings))
        self.client.log_text(run_id, yaml.safe_dump(space, sort_keys=False, allow_unicode=True),
                             "search_space.yaml")
        self.client.log_text(run_id, json.dumps(settings, indent=2, default=str), "sweep_settings.json")
        if not self._atexit_registered:
            atexit.register(self._end_if_running)
            self._atexit_registered = True
        return run_id

    def _config_run(self, config_fp: str, params: Mapping[str, Any], number: int | None = None) -> str:
        """The configuration's child run, found by tag or created (params logged once)."""
        if config_fp in self._config_runs:
            return self._config_runs[config_fp]
        sweep_id = self._require_sweep()
        runs = self._search(level="config", sweep=self.sweep_name, config=config_fp)
        if runs:
            run_id = runs[0].info.run_id
        else:
            tags = {TAG_LEVEL: "config", TAG_SWEEP: self.sweep_name, TAG_CONFIG: config_fp,
                    TAG_PARENT: sweep_id, TAG_NOTE: PROTOCOL_NOTE}
            name = f"#{number} {config_fp[:8]}" if number is not None else f"config {config_fp[:8]}"
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
            self._log(run_id, params=_flatten(params))
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        self._config_runs[config_fp] = run_id
        return run_id

    def log_fold(self, config_fp: str, params: dict, result: FoldResult, *, duration_s: float,
                 objective: Objective | None = None) -> str:
        """Fold run under the configuration's run; a fold already logged is returned unchanged.

        Metrics: per-AU F1 (positive class and macro) and thresholds under each protocol variant
        that applies to a single fold, the loss per epoch as a history (step = epoch), the duration;
        the predictions as ``predictions.csv``. A run left unfinished by a crash is replaced.
        """
        parent = self._config_run(config_fp, params)
        found = self._search(level="fold", sweep=self.sweep_name, config=config_fp,
                             protocol=result.protocol, fold=result.fold_id)
        finished = [r for r in found if r.info.status == "FINISHED"]
        if finished:
            return finished[0].info.run_id
        for stale in found:  # left RUNNING (or FAILED) by a crash: ended, then replaced
            if stale.info.status == "RUNNING":
                self.client.set_terminated(stale.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            self.client.delete_run(stale.info.run_id)
        end = _now_ms()
        tags = {TAG_LEVEL: "fold", TAG_SWEEP: self.sweep_name, TAG_CONFIG: config_fp,
                TAG_PROTOCOL: result.protocol, TAG_FOLD: result.fold_id, TAG_PARENT: parent}
        run = self.client.create_run(
            self.experiment_id, start_time=end - int(duration_s * 1000), tags=tags,
            run_name=f"{result.fold_id} {config_fp[:6]}",
        )
        run_id = run.info.run_id

        def body() -> None:
            metrics = fold_metrics(objective or DEFAULT_OBJECTIVE, result)
            metrics.update({"n_test": float(len(result.clip_ids)), "duration_s": float(duration_s)})
            if result.best_epoch is not None:
                metrics["best_epoch"] = float(result.best_epoch)
            metrics.update(variant_means([result], aggregates=("pooled",)))  # one fold: pooled = fold mean
            metrics.update({f"extra/{k}": float(v) for k, v in result.extra.items()})
            params_flat = _flatten(params)
            params_flat.update({"fold_id": result.fold_id, "protocol": result.protocol,
                                "aus": json.dumps(list(result.aus))})
            self._log(run_id, metrics=metrics, params=params_flat)
            stamp = _now_ms()
            losses = [Metric("loss", float(v), stamp, epoch) for epoch, v in enumerate(result.epoch_losses)]
            for i in range(0, len(losses), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=losses[i : i + _MAX_METRICS_PER_BATCH])
            self.client.log_text(run_id, predictions_frame([result]).to_csv(index=False, float_format="%.6f"),
                                    "predictions.csv")

        return self._ended(run_id, body)

    def log_config(self, config_fp: str, params: dict, results: list[FoldResult], *, status: str,
                   n_folds_total: int, number: int | None = None, objective: Objective | None = None,
                   cross: list[FoldResult] | None = None) -> str:
        """Update the configuration run with its aggregated results; safe to call repeatedly.

        Aggregated LOSO metrics are logged at step = folds done, so the run's history shows the
        score as folds came in. Cross-domain results go under ``cross/<source>_to_<target>/``.
        """
        run_id = self._config_run(config_fp, params, number)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

        def body() -> None:
            loso = [r for r in results if r.protocol == LOSO] or list(results)
            done = len(loso)
            shown = run_status(status, done, n_folds_total)
            judged = objective or DEFAULT_OBJECTIVE
            metrics: dict[str, float] = {}
            value = None
            if loso:
                metrics.update(config_metrics(judged, loso))  # the objective and its interval first
                value = metrics["objective"]  # over the folds it has (a pruned one: fewer)
            metrics.update({"folds_done": float(done), "n_folds_total": float(n_folds_total)})
            if loso:
                metrics["duration_s"] = float(sum(r.duration_s for r in loso))
                metrics.update(variant_means(loso))
            tags = {TAG_PRUNED: str(shown == Status.PRUNED).lower(), TAG_STATUS: shown,
                    "aullm.folds_done": f"{done}/{n_folds_total}", "aullm.objective": str(judged),
                    "aullm.interval": "95% percentile bootstrap over subjects (2000 resamples of the LOSO folds)"}
            if number is not None:
                self.client.set_tag(run_id, "mlflow.runName", config_run_name(number, shown, value))
            for result in cross or []:
                metrics.update(variant_means([result], prefix=f"cross/{direction_key(result.fold_id)}/",
                                             aggregates=("pooled",)))
            if cross:
                tags[TAG_CROSS] = ",".join(r.fold_id for r in cross)
            self._log(run_id, metrics=metrics, tags=tags, step=done)
            if loso:
                self.client.log_text(run_id, fold_table(judged, loso).to_csv(index=False, float_format="%.4f"),
                                     "folds.csv")
                self.client.log_text(run_id, per_au_table(loso).rename(columns=labelled).to_csv(float_format="%.4f"),
                                     "scores.csv")

        return self._ended(run_id, body)

    def finish(self, leaderboard: pd.DataFrame, artifact_dir: Path) -> None:
        """Write and log the leaderboard (CSV, markdown) and plots, then end the sweep run FINISHED."""
        from orchestration.results import plots, tables

        run_id = self._require_sweep()
        artifact_dir = Path(artifact_dir)
        artifact_dir.mkdir(parents=True, exist_ok=True)

        def body() -> None:
            tables.write_table(leaderboard, artifact_dir / "leaderboard")
            self._rank_config_runs(leaderboard)
            configs = self.config_runs()
            folds = self.fold_runs()
            order = self._ranking(leaderboard, configs)
            numbers = (dict(zip(leaderboard["config_fp"].astype(str), leaderboard["number"]))
                       if "number" in leaderboard.columns else {})
            written = plots.sweep_plots(configs, folds, order, artifact_dir, numbers=numbers)
            extra = [p for p in sorted(artifact_dir.glob("*.png")) if p not in written]  # e.g. Optuna's plots
            for path in [artifact_dir / "leaderboard.csv", artifact_dir / "leaderboard.md", *written, *extra]:
                self.client.log_artifact(run_id, str(path))
            report = artifact_dir.parent / "report"  # aullm report's folder, when the sweep wrote it
            if (report / "report.md").is_file():
                self.client.log_artifacts(run_id, str(report), "report")
            shown = leaderboard[[c for c in TABLE_COLUMNS if c in leaderboard.columns]]
            self.client.log_table(run_id, data=shown.round(_DIGITS), artifact_file="leaderboard.json")
            cost = tables.fold_cost(leaderboard)
            self._log(run_id, metrics={"n_configs": float(len(configs)), "n_fold_runs": float(len(folds)),
                                       "folds_run": float(cost.run), "folds_unpruned": float(cost.unpruned),
                                       "fold_fraction": cost.fraction})
            complete = leaderboard[leaderboard["status"] == Status.COMPLETE] if "status" in leaderboard else leaderboard
            if len(complete):
                best = complete.iloc[0]
                best_run = self._config_run_id(str(best["config_fp"]))
                self._log(run_id, metrics={"best_objective": float(best["objective"])},
                          tags={"aullm.best_config_fp": str(best["config_fp"]),
                                **({"aullm.best_config_run": best_run} if best_run else {}),
                                TAG_NOTE: best_note(best, best_run) + "\n\n" + PROTOCOL_NOTE})

        self._ended(run_id, body)

    def _config_run_id(self, config_fp: str) -> str | None:
        """The configuration's run: the one this tracker created or reused, else looked up by its tags."""
        return self._config_runs.get(config_fp) or self._find_config_run(config_fp)

    def _rank_config_runs(self, leaderboard: pd.DataFrame) -> None:
        """Give every configuration run its final rank, objective and status (metrics, tag and name)."""
        for row in leaderboard.to_dict("records"):
            run_id = self._config_run_id(str(row["config_fp"]))
            if run_id is None:
                continue
            value = row.get("objective")
            value = float(value) if value is not None and math.isfinite(float(value)) else None
            status = run_status(str(row.get("status", Status.COMPLETE)), int(row["folds_done"]), int(row["n_folds_total"]))
            metrics = {"rank": float(row["rank"])} | ({"objective": value} if value is not None else {})
            self._log(run_id, metrics=metrics, tags={TAG_STATUS: status})
            number = row.get("number", math.nan)
            if not pd.isna(number):
                self.client.set_tag(run_id, "mlflow.runName",
                                    config_run_name(int(number), status, value, int(row["rank"]),
                                                    str(row.get("label") or "")))

    def logged(self) -> set[str]:
        """What this sweep has in MLflow already, as the driver's keys (see ``sweep.driver.Tracker``):
        finished fold runs, and configuration runs by the outcome and cross-domain results they hold."""
        keys: set[str] = set()
        for run in self._search(sweep=self.sweep_name):
            tags = run.data.tags
            if run.info.status != "FINISHED" or TAG_CONFIG not in tags:
                continue
            if tags.get(TAG_LEVEL) == "fold":
                keys.add(FoldKey(tags[TAG_CONFIG], str(tags.get(TAG_PROTOCOL)), str(tags.get(TAG_FOLD))).tag)
            elif tags.get(TAG_LEVEL) == "config":
                if tags.get(TAG_STATUS) in OUTCOMES:
                    keys.add(config_tag(tags[TAG_CONFIG], tags[TAG_STATUS]))
                if tags.get(TAG_CROSS):
                    keys.add(config_tag(tags[TAG_CONFIG], "cross"))
        return keys

    def close(self, status: str = "KILLED") -> None:
        """End the sweep run with ``status`` (FAILED or KILLED) if it is still running."""
        run_id = self.sweep_run_id or self._find_sweep_run()
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status)

    def _end_if_running(self) -> None:
        try:
            self.close("KILLED")
        except Exception:  # interpreter shutdown: the store may already be gone
            log.debug("could not end sweep run at exit", exc_info=True)
