"""What one fold trial reports back: the typed other half of ``FoldTask``'s round trip.

Ray Tune carries a trial's report as a plain dict and adds its own keys (``done``,
``training_iteration``, ...), so a ``FoldOutcome`` travels as ``outcome.to_tune()`` and is validated
back on the driver (``FoldOutcome.from_tune``) by the searcher and the sweep's callback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestration.folds.task import FoldKey, FoldTask, ProtocolName

__all__ = ["FoldOutcome"]


class FoldOutcome(BaseModel):
    """One fold's result as the driver sees it (the predictions stay in the fold store)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(ge=0, description="Optuna trial number of the configuration.")
    fp: str = Field(min_length=1, description="Fingerprint of the configuration.")
    protocol: ProtocolName
    fold_id: str = Field(min_length=1)
    fold_index: int = Field(ge=0)
    fold_score: float = Field(description="The fold's score for the pruner (NaN when undefined).")
    trained: bool = Field(description="Trained by this trial (False: found in the fold store).")
    fold_duration_s: float = Field(0.0, ge=0.0, description="Training time of the stored fold.")
    trial_s: float = Field(0.0, ge=0.0, description="Wall time of this trial.")
    pid: int = Field(0, ge=0, description="Worker process.")
    config_error: str | None = Field(
        None, description="A ConfigError the fold met (one line): it cannot succeed on a retry, so it is "
        "reported instead of raised and its configuration fails at once.")

    @classmethod
    def refused(cls, task: FoldTask, error: str) -> FoldOutcome:
        """The outcome of a fold whose configuration cannot run (nothing trained or stored)."""
        return cls(number=task.number, fp=task.fp, protocol=task.protocol, fold_id=task.fold_id,
                   fold_index=task.fold_index, fold_score=math.nan, trained=False, config_error=error)

    @property
    def key(self) -> FoldKey:
        return FoldKey(self.fp, self.protocol, self.fold_id)

    @property
    def score(self) -> float | None:
        """``fold_score``, None when undefined."""
        return self.fold_score if math.isfinite(self.fold_score) else None

    def to_tune(self) -> dict[str, Any]:
        """The dict a trial reports."""
        return self.model_dump(mode="python")

    @classmethod
    def from_tune(cls, result: Mapping[str, Any] | None) -> FoldOutcome | None:
        """The outcome in a trial's last report, or None when the trial reported none (stopped or killed
        before its end); the keys Tune adds are left out."""
        if not result or "fold_score" not in result:
            return None
        return cls.model_validate({k: result[k] for k in cls.model_fields if k in result})
