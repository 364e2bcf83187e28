"""Typed settings of one sweep: where its data and results live and how it is scheduled.

These are runtime settings (paths, workers, budget), kept apart from ``ExperimentConfig``, whose
fingerprint identifies the science. A sweep writes them to ``<workdir>/sweeps/<name>/sweep.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from orchestration.search.plan import SearchPlan

DeviceName = Literal["auto", "cpu", "cuda"]

#: Settings of sweeps started before the fold function, cache loader and tracker became typed callables
#: passed to ``run_sweep`` (``SweepHooks``), with the values that meant aullm's own code: such a sweep's
#: settings are read without them; one that named other code is refused (its folds came from that code).
_WIRING_DEFAULTS = {
    "fold_fn": "aullm_core.train.fold.train_fold",
    "cache_loader": "aullm_core.data.cache.load_cache",
    "tracker": "orchestration.tracking.MlflowTracker",
}


def sweep_path(workdir: str | Path, name: str) -> Path:
    """Where sweep ``name`` of a working folder lives: ``<workdir>/sweeps/<name>``."""
    return Path(workdir) / "sweeps" / name


class SweepSettings(SearchPlan):
    """Everything ``run_sweep`` needs besides the search space's content: the search's plan (sampler,
    pruner, objective, seed: ``SearchPlan``'s fields) and where and how the sweep runs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("sweep", description="Sweep name: folder <workdir>/sweeps/<name>/ and MLflow run name.")
    space: Path = Field(description="YAML search space (see search_spaces/).")
    cache: Path = Field(description="HDF5 clip cache of the dataset searched with LOSO.")
    cross_cache: Path | None = Field(
        None, description="Second dataset's cache: the top-k configurations are also trained cross-domain."
    )
    workdir: Path = Field(Path("aullm_runs"), description="Working folder holding sweeps/ and mlflow.db.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default sqlite:///<workdir>/mlflow.db); 'none' disables tracking."
    )
    address: str | None = Field(
        None, description="Ray cluster address ('auto' = the running cluster); None starts a local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: all of this machine).")
    wait_nodes: int | None = Field(
        None, ge=1, description="Wait (up to 10 minutes) until the Ray cluster at --address has this many nodes "
        "before the sweep starts (the Slurm script passes the job's node count)."
    )
    n_configs: int = Field(12, ge=1, description="Budget: configurations Optuna proposes.")
    concurrency: int | None = Field(
        None, ge=1, description="Fold trials running at once (default: what the cluster's CPUs/GPUs allow)."
    )
    max_concurrent_configs: int | None = Field(
        None, ge=1, description="Configurations in flight at once; free slots go to started ones first "
        "(default: 2, or when racing enough to fill the fold slots with first rungs).",
    )
    cpus_per_fold: float = Field(1.0, gt=0.0, description="CPUs reserved per fold trial (per worker).")
    gpus_per_fold: float = Field(0.0, ge=0.0, description="GPUs per fold trial (per worker); fractions allowed.")
    workers_per_fold: int = Field(
        1, ge=1, description="Ray Train workers per fold (>1: DeepSpeed over several GPUs via TorchTrainer)."
    )
    stop_pruned_folds: bool = Field(
        False,
        description="Also stop folds already running when their configuration is pruned (worth it for "
        "long folds; short ones are left to finish and keep their worker, and its loaded LLM, reusable).",
    )
    max_failures: int = Field(2, ge=0, description="Retries of a failed fold trial.")
    min_free_mb: float = Field(
        100.0, ge=0.0, description="MiB kept free on the sweep folder's disk: checked before Ray starts, and the sweep "
        "stops itself cleanly (resume once space is freed) before a full disk can tear its state.",
    )
    fold_timeout: float | None = Field(
        None, gt=0.0, description="Seconds a fold may run before its worker is killed and the fold retried like "
        "a failure (a hung worker); default: 5 x the longest fold finished so far in this run, at least 120 s.",
    )
    top_k_cross: int = Field(3, ge=0, description="Best configurations trained cross-domain (needs cross_cache).")
    resume: bool = Field(False, description="Continue the sweep of the same name where it stopped.")
    device: DeviceName = Field("auto", description="Training device in a trial: auto = cuda when GPUs are given.")
    check_resources: bool = Field(
        True, description="Fail fast when a fold's request exceeds the cluster (off for autoscaling clusters)."
    )
    verbose: bool = Field(False, description="Show Ray Tune's own status tables and worker logs.")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value):
            raise ValueError(f"name {value!r}: expected letters, digits, '_', '-' or '.' (a folder name)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _drop_wiring(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in _WIRING_DEFAULTS):
            return data
        other = {k: data[k] for k, default in _WIRING_DEFAULTS.items() if data.get(k, default) != default}
        if other:
            key, value = next(iter(other.items()))
            raise ValueError(f"{key}={value!r}: this sweep was started with code other than aullm's (an option that "
                             "no longer exists); it cannot be resumed, start a new sweep (another --name)")
        return {k: v for k, v in data.items() if k not in _WIRING_DEFAULTS}

    @model_validator(mode="after")
    def _wait_needs_a_cluster(self) -> SweepSettings:
        if self.wait_nodes is not None and self.address is None:
            raise ValueError(f"wait_nodes={self.wait_nodes}: needs address (a local Ray has one node)")
        return self

    @property
    def sweep_dir(self) -> Path:
        """``<workdir>/sweeps/<name>``: fold store, Optuna study, Ray Tune results, sweep.json."""
        return sweep_path(self.workdir, self.name)

    @property
    def resolved_tracking_uri(self) -> str | None:
        """The MLflow URI to use, or None when tracking is off."""
        if self.tracking_uri is None:
            return f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"
        if self.tracking_uri.lower() == "none":
            return None
        return self.tracking_uri

    @property
    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if self.gpus_per_fold > 0 else "cpu"
        return self.device
