"""What a sweep did and found: ``SweepSummary`` (also ``summary.json``), made from its leaderboard."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from orchestration.results.tables import fold_cost
from orchestration.search.progress import Status
from orchestration.sweep.driver import SweepDriver
from orchestration.sweep.settings import SweepSettings

__all__ = ["SweepSummary", "make_summary"]


@dataclass
class SweepSummary:
    """What a sweep did and found (also written to ``summary.json``)."""

    name: str
    sweep_dir: str
    objective: str
    pruner: str
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
    loso_folds_run: int  # LOSO folds the configurations ran, in this run or before (stored)
    loso_folds_unpruned: int  # what an unpruned sweep of the same configurations runs
    wall_s: float
    resumed: bool
    finished: bool
    tracking_uri: str | None
    cross: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # the signal that stopped it (SIGTERM, SIGUSR1), if one did
    phases: dict[str, float] = field(default_factory=dict)  # seconds: ray_start, setup, loso, cross, finish
    best_interval: tuple[float, float] | None = None  # 95% bootstrap interval over subjects
    baselines: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> value, 95% CI
    leaderboard: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def fold_fraction(self) -> float:
        """LOSO folds run as a fraction of an unpruned sweep's (NaN without configurations)."""
        return self.loso_folds_run / self.loso_folds_unpruned if self.loso_folds_unpruned else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("leaderboard")
        data["fold_fraction"] = self.fold_fraction
        return data


def make_summary(
    settings: SweepSettings,
    leaderboard: pd.DataFrame,
    driver: SweepDriver,
    n_folds: int,
    started: float,
    resumed: bool,
    finished: bool,
    cross: dict[str, dict[str, float]],
    errors: list[str],
) -> SweepSummary:
    cost = fold_cost(leaderboard)
    states = leaderboard["status"].value_counts().to_dict() if not leaderboard.empty else {}
    complete = leaderboard[leaderboard["status"] == Status.COMPLETE] if not leaderboard.empty else leaderboard
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
        objective=str(settings.objective),
        pruner=settings.pruner,
        best_number=None if best is None else int(best["number"]),
        best_fp=None if best is None else str(best["config_fp"]),
        best_overrides=overrides,
        best_score=None if best is None else float(best["objective"]),
        best_interval=None if best is None else (float(best.get("objective_low", math.nan)),
                                                 float(best.get("objective_high", math.nan))),
        n_configs=len(leaderboard),
        n_complete=int(states.get(Status.COMPLETE, 0)),
        n_pruned=int(states.get(Status.PRUNED, 0)),
        n_failed=int(states.get(Status.FAILED, 0)),
        n_folds=n_folds,
        folds_trained=driver.folds_trained,
        loso_folds_trained=driver.loso_trained,
        folds_from_store=driver.folds_from_store,
        folds_stopped=driver.folds_stopped,
        loso_folds_run=cost.run,
        loso_folds_unpruned=cost.unpruned,
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
