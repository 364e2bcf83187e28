"""The race's bookkeeping over a searcher's configurations: which wait at a rung, which are promoted, and
how the race ends (``orchestration.search.racing`` holds the shape and the rule, ``FoldSearcher`` the
scheduling)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from orchestration.folds.store import FoldStore
from orchestration.search.plan import SearchCore
from orchestration.search.progress import ConfigState, Status
from orchestration.search.racing import PASSED, STOPPED
from orchestration.search.trials import StudyTrials

__all__ = ["RaceBook"]

logger = logging.getLogger(__name__)

#: Configurations that count at a rung: every one that reached it, whatever became of it since.
_RANKED = (Status.OPEN, Status.COMPLETE, Status.PRUNED)


class RaceBook:
    """Promotions and the race's end, read from the fold store and recorded on the Optuna trials."""

    def __init__(self, core: SearchCore, protocol: str) -> None:
        self.core = core
        self.protocol = protocol
        self._scores: dict[tuple[str, int], float] = {}  # (fingerprint, rung) -> objective on the rung's folds

    def may_hand_out(self, state: ConfigState) -> bool:
        """Whether ``state`` has a fold to hand out now (racing: not beyond the rung it runs or waits at)."""
        return state.has_folds_left and state.next < self.core.hand_out_limit(list(state.scores), state.passed)

    def waiting(self, state: ConfigState) -> bool:
        """A racing configuration with every fold of a rung in, not promoted past it: it holds no slot."""
        return (self.core.racing and state.status == Status.OPEN and not state.running and state.has_folds_left
                and not self.may_hand_out(state))

    def reached(self, state: ConfigState) -> int:
        return self.core.race.reached(self.core.steps(list(state.scores)))

    def rung_score(self, state: ConfigState, rung: int, store: FoldStore) -> float:
        """The objective on the rung's folds (NaN where it does not apply); kept once every fold is stored."""
        key = (state.fp, rung)
        if key in self._scores:
            return self._scores[key]
        results = [store.get(state.fp, self.protocol, f) for f in state.order[:rung]]
        if not all(results):
            return math.nan
        value = self._scores[key] = self.core.value_or_nan([r for r in results if r is not None])
        return value

    def promote(self, configs: Iterable[ConfigState], store: FoldStore, trials: StudyTrials) -> None:
        """Promote every waiting configuration in the top 1/eta of those that reached its rung."""
        race = self.core.race
        ranked = [s for s in configs if s.status in _RANKED]
        reached = {s.number: self.reached(s) for s in ranked}
        for rung in race.rungs[:-1]:
            waiting = [s for s in ranked if s.passed < rung <= reached[s.number] and self.waiting(s)]
            if not waiting:
                continue
            promoted = race.promoted({s.number: self.rung_score(s, rung, store) for s in ranked
                                      if reached[s.number] >= rung})
            for state in waiting:
                if state.number in promoted:
                    self._pass(state, rung, trials)

    def end(self, configs: Iterable[ConfigState], store: FoldStore, trials: StudyTrials) -> list[ConfigState]:
        """Nothing can run and no configuration is left to ask. If none has every fold, the best at the
        deepest rung is promoted (returns []: it has folds to run); else every waiting configuration
        is stopped where it waits (returned, PRUNED, to be told)."""
        configs = list(configs)
        waiting = [s for s in configs if not s.told and self.waiting(s)]
        if not waiting:
            return []
        if not any(s.status == Status.COMPLETE for s in configs):
            reached = {s.number: self.reached(s) for s in waiting}
            deepest = max(reached.values())
            best = self.core.race.best({s.number: self.rung_score(s, deepest, store) for s in waiting
                                        if reached[s.number] == deepest})
            self._pass(next(s for s in waiting if s.number == best), deepest, trials)
            return []
        for state in waiting:
            state.status = Status.PRUNED
            trials.set_user_attr(state.number, STOPPED, self.reached(state))
            logger.info("configuration %d stopped at its rung when the race ended", state.number)
        return waiting

    @staticmethod
    def _pass(state: ConfigState, rung: int, trials: StudyTrials) -> None:
        state.passed = rung
        trials.set_user_attr(state.number, PASSED, rung)
        logger.info("configuration %d promoted past rung %d", state.number, rung)
