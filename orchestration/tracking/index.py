"""Finding a sweep's MLflow runs by their tags, and reading them back (reports, plots, resume)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from aullm_core.atomic import sibling_temp
from aullm_core.errors import ConfigError
from orchestration.tracking.names import (
    EXPERIMENT_KIND,
    TAG_CONFIG,
    TAG_EXPERIMENT_KIND,
    TAG_FOLD,
    TAG_LEVEL,
    TAG_PROTOCOL,
    TAG_PRUNED,
    TAG_SWEEP,
    VIEW_TAG_PREFIX,
)

__all__ = ["RunIndex", "check_writable_sqlite", "find_experiment", "sweep_views"]


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tag value {value!r} must not contain a single quote")
    return f"'{value}'"


@contextlib.contextmanager
def _schema_lock(tracking_uri: str) -> Iterator[None]:
    """Hold ``<db>.lock`` while MLflow opens a SQLite store: the first opening creates the schema, and two
    processes creating it at once fail (alembic's ``CommandError`` or "database is locked")."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        yield


def find_experiment(tracking_uri: str, name: str = "aullm") -> str | None:
    """The id of the experiment ``name`` in the store, or None (absent, or the store unreachable); reads only."""
    try:
        found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    except (MlflowException, OSError):
        return None
    return None if found is None else found.experiment_id


def check_writable_sqlite(tracking_uri: str) -> None:
    """A SQLite tracking store this process cannot write (a read-only folder or file system, an immutable
    file) is refused in one line naming the file, before any run is created."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        probe = sibling_temp(path)  # SQLite writes its journal beside the database
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{path}: the MLflow database cannot be written ({err.strerror}); use a writable "
                          "--workdir or --tracking-uri") from None


def sweep_views(tracking_uri: str, experiment_id: str) -> list[tuple[str, str]]:
    """The sweeps' shared views of the runs table in this experiment as (key, name), most recent first."""
    try:
        tags = MlflowClient(tracking_uri=tracking_uri).get_experiment(experiment_id).tags
    except (MlflowException, OSError):
        return []
    views = []
    for tag, value in tags.items():
        if not tag.startswith(VIEW_TAG_PREFIX):
            continue
        try:
            envelope = json.loads(value)
        except ValueError:
            continue
        views.append((int(envelope.get("updatedAt", 0)), tag.removeprefix(VIEW_TAG_PREFIX), str(envelope.get("name", ""))))
    return [(key, name) for _, key, name in sorted(views, reverse=True)]


class RunIndex:
    """One sweep's runs in one MLflow experiment (created, tagged for the training view, if missing)."""

    def __init__(self, tracking_uri: str, sweep_name: str, experiment: str = "aullm") -> None:
        if not sweep_name or "'" in sweep_name:
            raise ValueError(f"sweep_name={sweep_name!r}: expected a non-empty name without quotes")
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        with _schema_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment)

    # -- lookup ---------------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if found.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return found.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
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

    def _find_config_run(self, config_fp: str) -> str | None:
        runs = self._search(level="config", sweep=self.sweep_name, config=config_fp)
        return runs[0].info.run_id if runs else None

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
