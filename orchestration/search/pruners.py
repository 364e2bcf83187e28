"""The Optuna pruner of a sweep: Wilcoxon over paired folds (default), median, or none.

What each is fed is in ``orchestration.search.searcher``: Wilcoxon gets every finished fold's score at
step = the fold's index in the protocol's sorted fold list, so a configuration's folds pair with the
best configuration's same folds; median gets the running mean at step = folds done.
``pocock_p_threshold`` is the per-look p that keeps the overall false-prune rate at a chosen level
when the test is repeated after every fold.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner, WilcoxonPruner

from aullm_core.errors import ConfigError

__all__ = ["make_pruner", "pocock_p_threshold"]


def pocock_p_threshold(n_folds: int, *, alpha: float = 0.1, first_look: int = 2, draws: int = 100_000) -> float:
    """Nominal one-sided p per look that keeps the overall false-prune rate at ``alpha``.

    The pruner tests after every fold from ``first_look`` to ``n_folds`` (a group-sequential
    design with equal increments). Pocock's boundary is the constant c with
    P(max_k Z_k > c) = alpha under no difference, Z_k = S_k / sqrt(k) for a random walk S; c is
    found by simulation (seeded, so the threshold is reproducible) and returned as 1 - Phi(c).
    """
    if n_folds < first_look:
        return alpha
    rng = np.random.default_rng(12345)
    steps = rng.standard_normal((draws, n_folds), dtype=np.float32)
    walk = np.cumsum(steps, axis=1) / np.sqrt(np.arange(1, n_folds + 1, dtype=np.float32))
    peak = walk[:, first_look - 1 :].max(axis=1)
    c = float(np.quantile(peak, 1.0 - alpha))
    return 0.5 * math.erfc(c / math.sqrt(2.0))


def make_pruner(
    name: str,
    *,
    p_threshold: float | str = 0.1,
    startup_folds: int = 2,
    n_folds: int = 0,
    pocock_alpha: float = 0.1,
) -> BasePruner:
    """The Optuna pruner for a sweep (see the module docstring for what each one is fed)."""
    if name == "wilcoxon":
        if p_threshold == "pocock":
            p = pocock_p_threshold(n_folds, alpha=pocock_alpha, first_look=max(2, startup_folds))
        else:
            p = float(p_threshold)
        with warnings.catch_warnings():  # "experimental since 3.6": the pruner this design is built on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return WilcoxonPruner(p_threshold=p, n_startup_steps=startup_folds)
    if name == "median":
        return MedianPruner(n_startup_trials=2, n_warmup_steps=startup_folds)
    if name == "none":
        return NopPruner()
    raise ConfigError(f"pruner {name!r}: expected wilcoxon, median or none")
