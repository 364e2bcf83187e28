"""What a configuration is judged by: one parsed ``Objective`` and the per-fold ``FoldScore`` pruning reads.

The text forms are the only grammar for scores in the project:

- ``Objective``: ``<f1_pos|f1_macro>:<inner|fixed|paper>:<pooled|fold_mean>``, e.g. the default
  ``f1_pos:inner:pooled`` = positive-class F1 averaged over AUs, each fold binarised at the thresholds
  its inner validation chose, all folds' clips pooled before scoring (method.md section 4).
- ``FoldScore``: ``<f1_pos|f1_macro>:<inner|fixed>``, one fold's mean over AUs at its inner thresholds
  or at 0.5 (what the pruner compares fold by fold).

Everything that turns fold results into a configuration's number (the searcher, the sweep, the
reports, the tracker, ``aullm train``) goes through ``Objective.of_results`` / ``of_scores``, so they
cannot disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from aullm_core.train.metrics import Aggregate, Score, ThresholdMode, f1_macro, f1_pos, score_results
from aullm_core.train.result import FoldResult

__all__ = ["Aggregate", "FoldScore", "MetricName", "Objective", "ThresholdMode"]

MetricName = Literal["f1_pos", "f1_macro"]

_OBJECTIVE = re.compile(r"(f1_pos|f1_macro):(inner|fixed|paper):(pooled|fold_mean)")
_FOLD_SCORE = re.compile(r"(f1_pos|f1_macro):(inner|fixed)")
_FNS = {"f1_pos": f1_pos, "f1_macro": f1_macro}


class _TextForm(BaseModel):
    """A frozen value that validates from and serialises to its one-line text form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: ClassVar[re.Pattern[str]]
    fields: ClassVar[tuple[str, ...]]
    expected: ClassVar[str]
    kind: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            match = cls.pattern.fullmatch(value.strip())
            if match is None:
                raise ValueError(f"{cls.kind} {value!r}: expected {cls.expected}")
            return dict(zip(cls.fields, match.groups()))
        return value

    @model_serializer
    def _to_text(self) -> str:
        return str(self)

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``value`` itself if already parsed, else ``parse(value)``."""
        return value if isinstance(value, cls) else cls.parse(value)

    @classmethod
    def parse(cls, text: str) -> Any:
        """The value of ``text``; a one-line ValueError naming the expected form otherwise."""
        match = cls.pattern.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{cls.kind} {text!r}: expected {cls.expected}")
        return cls.model_validate(text)


class FoldScore(_TextForm):
    """One fold's mean F1 over AUs at its inner thresholds or at 0.5."""

    pattern = _FOLD_SCORE
    fields = ("metric", "thresholds")
    expected = "<f1_pos|f1_macro>:<inner|fixed>"
    kind = "fold score"

    metric: MetricName = "f1_pos"
    thresholds: Literal["inner", "fixed"] = "fixed"

    def __str__(self) -> str:
        return f"{self.metric}:{self.thresholds}"

    def of(self, result: FoldResult) -> float:
        """The score of one fold; ValueError when inner thresholds are asked for and absent."""
        if self.thresholds == "inner":
            if result.inner_thresholds is None:
                raise ValueError(f"fold {result.fold_id} has no inner thresholds for the fold score {self}")
            thr = np.asarray(result.inner_thresholds, dtype=np.float64)
        else:
            thr = np.full(len(result.aus), 0.5)
        pred = result.probs >= thr[None, :]
        fn = _FNS[self.metric]
        return float(np.mean([fn(result.labels[:, k], pred[:, k]) for k in range(len(result.aus))]))


class Objective(_TextForm):
    """The configuration score told to Optuna, ranked in every leaderboard and logged to MLflow."""

    pattern = _OBJECTIVE
    fields = ("metric", "thresholds", "aggregate")
    expected = "<f1_pos|f1_macro>:<inner|fixed|paper>:<pooled|fold_mean>"
    kind = "objective"

    metric: MetricName = "f1_pos"
    thresholds: ThresholdMode = "inner"
    aggregate: Aggregate = "pooled"

    def __str__(self) -> str:
        return f"{self.metric}:{self.thresholds}:{self.aggregate}"

    @property
    def variant(self) -> tuple[str, str]:
        """(threshold mode, aggregate): the key of ``metrics.score_all``'s scores."""
        return self.thresholds, self.aggregate

    @property
    def fold_score(self) -> FoldScore:
        """The per-fold score that judges the same thing: inner thresholds if the objective's, else 0.5."""
        return FoldScore(metric=self.metric, thresholds="inner" if self.thresholds == "inner" else "fixed")

    @property
    def leaky(self) -> bool:
        """True for 'paper' thresholds, tuned on the pooled test predictions."""
        return self.thresholds == "paper"

    def of_score(self, score: Score) -> float:
        return float(score.mean_f1_pos if self.metric == "f1_pos" else score.mean_f1_macro)

    def of_scores(self, scores: Mapping[tuple[str, str], Score]) -> float:
        """The objective from variant scores keyed (mode, aggregate); NaN when that variant is absent."""
        score = scores.get(self.variant)
        return math.nan if score is None else self.of_score(score)

    def of_results(self, results: Sequence[FoldResult]) -> float:
        """The objective of a configuration's fold results (ValueError if the variant does not apply)."""
        return self.of_score(score_results(list(results), mode=self.thresholds, aggregate=self.aggregate))


DEFAULT_OBJECTIVE = Objective()
