"""MLflow tracking of a sweep: the only module of the project that imports mlflow.

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
import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from aullm_core.train.metrics import Score, score_all
from aullm_core.train.result import FoldResult

__all__ = [
    "TAG_CONFIG",
    "TAG_FOLD",
    "TAG_LEVEL",
    "TAG_PROTOCOL",
    "TAG_SWEEP",
    "SweepTracker",
    "default_tracking_uri",
    "metric_prefix",
    "register_checkpoint",
]

log = logging.getLogger(__name__)

TAG_SWEEP = "aullm.sweep"
TAG_LEVEL = "aullm.level"  # 'sweep', 'config' or 'fold'
TAG_CONFIG = "aullm.config_fp"
TAG_PROTOCOL = "aullm.protocol"
TAG_FOLD = "aullm.fold_id"
TAG_PRUNED = "aullm.pruned"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"

#: Shown on sweep and configuration runs (MLflow's run description).
PROTOCOL_NOTE = (
    "Protocol variants: `paper` picks each AU's threshold on the pooled TEST predictions "
    "(test-tuned, leaky; only for comparison with published numbers); `fixed` uses threshold 0.5; "
    "`inner` uses thresholds chosen on held-out training subjects. `pooled` scores all folds' "
    "predictions together, `fold_mean` averages per-fold scores. A sweep's best LOSO score is "
    "selection-biased: the configuration was chosen and scored on the same folds (see "
    "`aullm report --nested`)."
)

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_PARAM_VALUE_MAX = 6000


def default_tracking_uri(workdir: Path) -> str:
    """SQLite file in the working folder: ``sqlite:///<workdir>/mlflow.db`` (absolute path)."""
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def metric_prefix(mode: str, aggregate: str | None = None) -> str:
    """Metric-name prefix of a protocol variant: 'inner/' on fold runs, 'loso/inner_pooled/' on configs."""
    return f"{mode}/" if aggregate is None else f"loso/{mode}_{aggregate}/"


def _score_metrics(score: Score, prefix: str) -> dict[str, float]:
    """Flat metric names of one Score, e.g. 'loso/inner_pooled/f1_pos_AU4' (names parsed by reports)."""
    out = {f"{prefix}mean_f1_pos": score.mean_f1_pos, f"{prefix}mean_f1_macro": score.mean_f1_macro}
    for au in score.aus:
        out[f"{prefix}f1_pos_AU{au}"] = score.f1_pos[au]
        out[f"{prefix}f1_macro_AU{au}"] = score.f1_macro[au]
        if au in score.thresholds:
            out[f"{prefix}threshold_AU{au}"] = score.thresholds[au]
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> dotted keys with string values (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            text = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, tuple)) else str(value)
            flat[name] = text[:_PARAM_VALUE_MAX]
    return flat


def _now_ms() -> int:
    return int(time.time() * 1000)


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tag value {value!r} must not contain a single quote")
    return f"'{value}'"


def _code_version() -> dict[str, str]:
    """Package version and, when the code sits in a git checkout, its commit."""
    tags: dict[str, str] = {}
    try:
        tags["aullm.version"] = metadata.version("aullm")
    except metadata.PackageNotFoundError:
        tags["aullm.version"] = "unknown"
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return tags
    commit = out.stdout.strip()
    if commit:
        tags["aullm.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["aullm.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags


def _predictions_csv(result: FoldResult) -> str:
    frame = pd.DataFrame({"clip_id": result.clip_ids, "subject": result.subjects})
    for k, au in enumerate(result.aus):
        frame[f"prob_AU{au}"] = result.probs[:, k]
    for k, au in enumerate(result.aus):
        frame[f"label_AU{au}"] = result.labels[:, k].astype(int)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6f")
    return buf.getvalue()


def _direction_key(fold_id: str) -> str:
    """'casme2->samm' -> 'casme2_to_samm' (MLflow metric names do not allow '>')."""
    return fold_id.replace("->", "_to_")


class SweepTracker:
    """Logs one sweep to MLflow as sweep -> configuration -> fold runs.

    Example:
        tracker = SweepTracker(default_tracking_uri(workdir), "quick")
        tracker.start(space=space_dict, settings=settings_dict)
        tracker.log_fold(fp, params, result, duration_s=result.duration_s)
        tracker.log_config(fp, params, results, pruned=False, n_folds_total=26)
        tracker.finish(leaderboard, workdir / "sweeps" / "quick" / "report")

    Args:
        tracking_uri: any MLflow tracking URI; with ``sqlite:///...`` artifacts go to an
            ``mlartifacts`` folder beside the database file.
        sweep_name: the sweep's name; a sweep started again with the same name reuses its runs.
        experiment: MLflow experiment that holds the runs (created if missing).
    """

    def __init__(self, tracking_uri: str, sweep_name: str, experiment: str = "aullm") -> None:
        if not sweep_name or "'" in sweep_name:
            raise ValueError(f"sweep_name={sweep_name!r}: expected a non-empty name without quotes")
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment)
        self.sweep_run_id: str | None = None
        self._config_runs: dict[str, str] = {}
        self._atexit_registered = False

    # -- lookup ---------------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _search(self, **tags: str) -> list[Any]:
        """Active runs of this experiment whose tags equal the given values (every page)."""
        names = {"level": TAG_LEVEL, "sweep": TAG_SWEEP, "config": TAG_CONFIG,
                 "protocol": TAG_PROTOCOL, "fold": TAG_FOLD}
        clauses = [f"tags.`{names[k]}` = {_quote(v)}" for k, v in tags.items()]
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=" and ".join(clauses),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _find_sweep_run(self) -> str | None:
        runs = self._search(level="sweep", sweep=self.sweep_name)
        return runs[0].info.run_id if runs else None

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
        metric_list = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
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
        self._log(run_id, tags=_code_version())
        self._log_new_params(run_id, _flatten(settings))
        self.client.log_text(run_id, yaml.safe_dump(space, sort_keys=False, allow_unicode=True),
                             "search_space.yaml")
        self.client.log_text(run_id, json.dumps(settings, indent=2, default=str), "sweep_settings.json")
        if not self._atexit_registered:
            atexit.register(self._end_if_running)
            self._atexit_registered = True
        return run_id

    def _config_run(self, config_fp: str, params: Mapping[str, Any]) -> str:
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
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=f"config-{config_fp[:8]}").info.run_id
            self._log(run_id, params=_flatten(params))
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        self._config_runs[config_fp] = run_id
        return run_id

    def log_fold(self, config_fp: str, params: dict, result: FoldResult, *, duration_s: float) -> str:
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
        for stale in found:
            self.client.delete_run(stale.info.run_id)
        end = _now_ms()
        tags = {TAG_LEVEL: "fold", TAG_SWEEP: self.sweep_name, TAG_CONFIG: config_fp,
                TAG_PROTOCOL: result.protocol, TAG_FOLD: result.fold_id, TAG_PARENT: parent}
        run = self.client.create_run(
            self.experiment_id, start_time=end - int(duration_s * 1000), tags=tags,
            run_name=f"{config_fp[:8]}-{result.protocol}-{result.fold_id}",
        )
        run_id = run.info.run_id

        def body() -> None:
            metrics: dict[str, float] = {"duration_s": float(duration_s), "n_test": float(len(result.clip_ids))}
            for score in score_all([result]):
                if score.aggregate == "pooled":  # one fold: pooled and fold-mean coincide
                    metrics.update(_score_metrics(score, metric_prefix(score.mode)))
            if result.best_epoch is not None:
                metrics["best_epoch"] = float(result.best_epoch)
            metrics.update({f"extra/{k}": float(v) for k, v in result.extra.items()})
            params_flat = _flatten(params)
            params_flat.update({"fold_id": result.fold_id, "protocol": result.protocol,
                                "aus": json.dumps(list(result.aus))})
            self._log(run_id, metrics=metrics, params=params_flat)
            stamp = _now_ms()
            losses = [Metric("loss", float(v), stamp, epoch) for epoch, v in enumerate(result.epoch_losses)]
            for i in range(0, len(losses), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=losses[i : i + _MAX_METRICS_PER_BATCH])
            self.client.log_text(run_id, _predictions_csv(result), "predictions.csv")

        return self._ended(run_id, body)

    def log_config(self, config_fp: str, params: dict, results: list[FoldResult], *, pruned: bool,
                   n_folds_total: int, cross: list[FoldResult] | None = None) -> str:
        """Update the configuration run with its aggregated results; safe to call repeatedly.

        Aggregated LOSO metrics are logged at step = folds done, so the run's history shows the
        score as folds came in. Cross-domain results go under ``cross/<source>_to_<target>/``.
        """
        run_id = self._config_run(config_fp, params)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

        def body() -> None:
            loso = [r for r in results if r.protocol == "loso"] or list(results)
            done = len(loso)
            metrics: dict[str, float] = {"folds_done": float(done), "n_folds_total": float(n_folds_total)}
            if loso:
                for score in score_all(loso):
                    metrics.update(_score_metrics(score, metric_prefix(score.mode, score.aggregate)))
                metrics["duration_s"] = float(sum(r.duration_s for r in loso))
            tags = {TAG_PRUNED: str(bool(pruned)).lower(), "aullm.folds_done": f"{done}/{n_folds_total}",
                    "aullm.paper_protocol": "test-tuned (leaky)"}
            for result in cross or []:
                key = _direction_key(result.fold_id)
                for score in score_all([result]):
                    if score.aggregate == "pooled":
                        metrics.update(_score_metrics(score, f"cross/{key}/{score.mode}/"))
            if cross:
                tags["aullm.cross_directions"] = ",".join(r.fold_id for r in cross)
            self._log(run_id, metrics=metrics, tags=tags, step=done)

        return self._ended(run_id, body)

    def finish(self, leaderboard: pd.DataFrame, artifact_dir: Path) -> None:
        """Write and log the leaderboard (CSV, markdown) and plots, then end the sweep run FINISHED."""
        from orchestration.reports import plots, tables

        run_id = self._require_sweep()
        artifact_dir = Path(artifact_dir)
        artifact_dir.mkdir(parents=True, exist_ok=True)

        def body() -> None:
            tables.write_table(leaderboard, artifact_dir / "leaderboard")
            configs = self.config_runs()
            folds = self.fold_runs()
            order = self._ranking(leaderboard, configs)
            written = plots.sweep_plots(configs, folds, order, artifact_dir)
            for path in [artifact_dir / "leaderboard.csv", artifact_dir / "leaderboard.md", *written]:
                self.client.log_artifact(run_id, str(path))
            self._log(run_id, metrics={"n_configs": float(len(configs)), "n_fold_runs": float(len(folds))})
            if order:
                self._log(run_id, tags={"aullm.best_config_fp": order[0]})

        self._ended(run_id, body)

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

    # -- reading back (reports) ---------------------------------------------------------------

    @staticmethod
    def _ranking(leaderboard: pd.DataFrame, configs: pd.DataFrame) -> list[str]:
        """Configuration fingerprints best first: the leaderboard's order when it names them."""
        if "config_fp" in leaderboard.columns:
            return [str(fp) for fp in leaderboard["config_fp"]]
        return list(configs.index)

    def config_runs(self) -> pd.DataFrame:
        """One row per configuration run: tags and latest metrics, indexed by config fingerprint."""
        rows = {}
        for run in self._search(level="config", sweep=self.sweep_name):
            fp = run.data.tags[TAG_CONFIG]
            rows[fp] = {"run_id": run.info.run_id, "pruned": run.data.tags.get(TAG_PRUNED) == "true",
                        **run.data.metrics}
        return pd.DataFrame.from_dict(rows, orient="index")

    def fold_runs(self) -> pd.DataFrame:
        """One row per fold run: config fingerprint, protocol, fold id, start/end (s), metrics."""
        rows = []
        for run in self._search(level="fold", sweep=self.sweep_name):
            tags = run.data.tags
            rows.append({"run_id": run.info.run_id, "config_fp": tags[TAG_CONFIG],
                         "protocol": tags[TAG_PROTOCOL], "fold_id": tags[TAG_FOLD],
                         "start": run.info.start_time / 1000.0,
                         "end": (run.info.end_time or run.info.start_time) / 1000.0, **run.data.metrics})
        return pd.DataFrame(rows)


def _walk(root: Path) -> Iterator[Path]:
    yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def register_checkpoint(tracking_uri: str, checkpoint_dir: Path, *, model_name: str,
                        sweep_name: str | None = None, tags: Mapping[str, str] | None = None,
                        metrics: Mapping[str, float] | None = None, experiment: str = "aullm") -> tuple[str, int]:
    """Log a checkpoint folder as a run's artifacts and register it as a new model version.

    The folder is registered as-is (safetensors + manifest + model card): no pickled flavour.
    Returns (run id, model version).
    """
    tracker = SweepTracker(tracking_uri, sweep_name or "export", experiment)
    client = tracker.client
    run_tags = {TAG_LEVEL: "export", "aullm.model_name": model_name, **(tags or {})}
    if sweep_name:
        run_tags[TAG_SWEEP] = sweep_name
        sweep_run = tracker._find_sweep_run()
        if sweep_run:
            run_tags[TAG_PARENT] = sweep_run
    run_id = client.create_run(tracker.experiment_id, tags=run_tags, run_name=f"export-{model_name}").info.run_id
    version: list[int] = []

    def body() -> None:
        tracker._log(run_id, metrics=dict(metrics or {}))
        for path in _walk(Path(checkpoint_dir)):
            sub = path.parent.relative_to(checkpoint_dir)
            artifact_path = "checkpoint" if str(sub) == "." else f"checkpoint/{sub.as_posix()}"
            client.log_artifact(run_id, str(path), artifact_path)
        try:
            client.create_registered_model(model_name)
        except MlflowException as err:
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/checkpoint"
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=dict(tags or {}))
        version.append(int(mv.version))

    tracker._ended(run_id, body)
    return run_id, version[0]

