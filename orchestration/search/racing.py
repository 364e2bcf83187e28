"""Racing configurations over folds: asynchronous successive halving (ASHA) with folds as the budget.

Every configuration of a racing sweep runs its folds in one shared order (``FoldRace.order``), so
after r folds any two configurations have been scored on the same r subjects and compare paired.
The order is cut into rungs of geometrically growing size (``rungs``: ``min_folds``, then x ``eta``
until every fold). A configuration that has every fold of a rung waits there until it is
**promoted**: when it ranks in the top ``floor(n / eta)`` of the n configurations that have reached
that rung so far (ASHA's rule, Li et al. 2020, with folds, not epochs, as the resource). Its rung
score is the sweep's own objective computed on the rung's folds (pooled over their clips, at the
inner thresholds by default), so the race ranks configurations by the number the sweep returns,
not by a per-fold proxy: on 6-clip subjects a mean of fold F1s can rank a configuration third that
the pooled objective ranks first.

Two properties a sweep needs from this:
- **No barrier.** A configuration waiting at a rung holds no fold slot: while it waits, free slots go
  to promoted configurations and then to new ones; a waiting configuration is promoted as soon as
  enough configurations have reached its rung below it. When the budget of configurations is spent and
  nothing can run, the race ends: if no configuration has every fold yet, the best at the deepest rung
  is promoted (a sweep always returns a fully cross-validated configuration); the rest stop where they
  wait (PRUNED in Optuna with ``race_stopped_at``).
- **Resume-safe.** Rung scores are computed from the fold store and promotions are recorded on the
  Optuna trials (``race_passed``: the deepest rung passed), so a driver killed and resumed promotes
  from the same numbers and never takes a promotion back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PASSED", "STOPPED", "FoldRace", "race_rungs"]

#: Optuna user attributes recording a racing configuration's fate: the deepest rung it was promoted
#: past, and the rung it stopped at.
PASSED, STOPPED = "race_passed", "race_stopped_at"


def race_rungs(n_folds: int, min_folds: int, eta: float) -> tuple[int, ...]:
    """Fold counts after which a configuration is judged: min_folds, x eta, ..., and n_folds last.

    >>> race_rungs(26, 3, 3)
    (3, 9, 26)
    >>> race_rungs(8, 2, 2)
    (2, 4, 8)
    """
    if n_folds <= 0:
        return ()
    rungs: list[int] = []
    r = float(max(1, min_folds))
    while round(r) < n_folds:
        if not rungs or round(r) > rungs[-1]:
            rungs.append(round(r))
        r *= eta
    return (*rungs, n_folds)


@dataclass(frozen=True)
class FoldRace:
    """The race's shape over one protocol: the shared fold order (fold indices), the rungs and the rule."""

    order: tuple[int, ...]  # fold indices (positions in the sorted fold list) in the order every configuration runs them
    min_folds: int = 3
    eta: float = 3.0

    @property
    def rungs(self) -> tuple[int, ...]:
        return race_rungs(len(self.order), self.min_folds, self.eta)

    def reached(self, steps: set[int]) -> int:
        """The deepest rung whose folds are all in ``steps`` (0: none)."""
        deepest = 0
        for r in self.rungs:
            if not set(self.order[:r]) <= steps:
                break
            deepest = r
        return deepest

    def hand_out_limit(self, steps: set[int], passed: int) -> int:
        """How many folds of the order may be handed out to a configuration that has reported ``steps``
        and was promoted past rung ``passed``: up to the end of the rung it is running, or of the rung
        it waits at until promoted."""
        for r in self.rungs:
            if not set(self.order[:r]) <= steps or r > passed:
                return r
        return len(self.order)

    def promoted(self, scores: Mapping[int, float]) -> set[int]:
        """Configurations (by number) in the top ``floor(n / eta)`` of the n rung scores at one rung; ties
        go to the earlier configuration, an undefined score (NaN) ranks last."""
        return set(_ranked(scores)[: math.floor(len(scores) / self.eta + 1e-9)])

    def best(self, scores: Mapping[int, float]) -> int:
        """The configuration ranked first (ties to the earlier one, NaN last)."""
        return _ranked(scores)[0]

    def goes_on_alone(self, number: int, scores: Mapping[int, float]) -> bool:
        """The race run one configuration after another, none waiting (the nested estimate's inner
        searches): ``number`` goes on when it ranks in the top ``max(1, floor(n / eta))`` of ``scores``."""
        return number in _ranked(scores)[: max(1, math.floor(len(scores) / self.eta + 1e-9))]


def _ranked(scores: Mapping[int, float]) -> list[int]:
    """Configuration numbers best first; ties to the earlier configuration, NaN last."""
    return sorted(scores, key=lambda n: (-scores[n] if math.isfinite(scores[n]) else math.inf, n))
