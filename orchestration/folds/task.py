"""One fold to train: the typed task the searcher hands to Ray Tune and the trainable runs.

Tune passes a trial's configuration as a plain dict, so a ``FoldTask`` travels as
``task.model_dump(mode="json")`` and is validated back on the worker (``FoldTask.model_validate``):
one definition of what a fold trial is, checked at both ends.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import CROSS, LOSO, ProtocolName

__all__ = ["CROSS", "LOSO", "FoldKey", "FoldTask", "ProtocolName", "data_key"]

_TRIAL_DIR = re.compile(r"c(\d+)_(.+)_[0-9a-f]+")


class FoldKey(NamedTuple):
    """Which fold of which configuration: the fold store's key, a fold run's identity in MLflow and a
    trial folder's name."""

    fp: str
    protocol: str
    fold_id: str

    @property
    def tag(self) -> str:
        """``fold:<config>:<protocol>:<fold>``: how the tracker names what it logged."""
        return f"fold:{self.fp}:{self.protocol}:{self.fold_id}"


def data_key(fingerprints: Sequence[str]) -> str:
    """16 hex digits naming the data a sweep reads (its caches' fingerprints, in order)."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    return hashlib.sha256("+".join(fingerprints).encode()).hexdigest()[:16]


class FoldTask(BaseModel):
    """(configuration, fold, data): everything that decides one fold's result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int = Field(ge=0, description="Optuna trial number of the configuration.")
    fp: str = Field(description="ExperimentConfig.fingerprint() of ``experiment``.")
    experiment: ExperimentConfig
    protocol: ProtocolName
    fold_id: str = Field(min_length=1, description="Test subject (LOSO) or '<source>-><target>' (cross).")
    fold_index: int = Field(ge=0, description="Position in the protocol's sorted fold list (the pruner's step).")
    data_fp: str = Field(min_length=1, description="Fingerprint of the data the sweep reads (data_key).")

    @model_validator(mode="after")
    def _fingerprint_matches(self) -> FoldTask:
        actual = self.experiment.fingerprint()
        if actual != self.fp:
            raise ValueError(
                f"configuration {self.number}: fingerprint {actual} differs from the sweep's {self.fp} "
                "(aullm_core.config changed since the sweep started?)"
            )
        return self

    @property
    def key(self) -> FoldKey:
        return FoldKey(self.fp, self.protocol, self.fold_id)

    def to_tune(self) -> dict[str, Any]:
        """The dict a Tune trial carries (its whole configuration, in every phase)."""
        return self.model_dump(mode="json")

    def trial_dirname(self, trial_id: str) -> str:
        """The trial's folder name: configuration number, fold, Tune's trial id."""
        return f"c{self.number}_{quote(self.fold_id, safe='')}_{trial_id}"

    @staticmethod
    def parse_trial_dirname(name: str) -> tuple[int, str] | None:
        """(configuration number, fold id) of a trial folder named by ``trial_dirname``."""
        match = _TRIAL_DIR.fullmatch(name)
        return None if match is None else (int(match.group(1)), unquote(match.group(2)))
