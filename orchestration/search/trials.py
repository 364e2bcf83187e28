"""Optuna trials addressed by their number, through Optuna's public storage API.

Optuna keeps a study's storage (``Study._storage``) and a trial's storage id (``FrozenTrial._trial_id``)
private. Its public ``BaseStorage`` methods address a trial by that id, which the storage itself gives
for a (study name, trial number). ``StudyTrials`` holds the storage a study is opened on, so the
searcher, the race pruner and the nested estimate read, report to and annotate a trial by number
without either private attribute.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

__all__ = ["StudyTrials"]


class StudyTrials:
    """The trials of the study ``study_name`` on ``storage``."""

    def __init__(self, storage: BaseStorage, study_name: str) -> None:
        self.storage = storage
        self.study_name = study_name

    def open(self, *, sampler: BaseSampler, pruner: BasePruner) -> optuna.Study:
        """The study (created on first use, maximising)."""
        return optuna.create_study(storage=self.storage, study_name=self.study_name, direction="maximize",
                                   sampler=sampler, pruner=pruner, load_if_exists=True)

    def id_of(self, number: int) -> int:
        """The storage's id of trial ``number``."""
        study_id = self.storage.get_study_id_from_name(self.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def get(self, number: int) -> FrozenTrial:
        """Trial ``number`` as stored now (user attributes set through any handle included)."""
        return self.storage.get_trial(self.id_of(number))

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.id_of(number), key, value)

    def live(self, study: optuna.Study, number: int) -> optuna.Trial:
        """A handle on running trial ``number`` (to report to and ask the pruner)."""
        return optuna.Trial(study, self.id_of(number))
