"""Racing over folds: rungs, the ASHA rule on paired folds, the searcher's hand-out limit, resume."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from searcher_helpers import Runner, make_searcher

from orchestration.search.racing import FoldRace, FoldRacePruner, race_rungs
from orchestration.search.trials import StudyTrials

LRS = [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from sweep_helpers import load_tiny_cache, write_tiny_cache

    path = write_tiny_cache(tmp_path_factory.mktemp("cache") / "tiny.npz", subjects=12, clips_per_subject=3)
    return load_tiny_cache(path)


@pytest.mark.parametrize(("n", "first", "eta", "expected"), [
    (26, 3, 3, (3, 9, 26)),
    (26, 2, 2, (2, 4, 8, 16, 26)),
    (8, 3, 3, (3, 8)),
    (3, 3, 3, (3,)),
    (2, 3, 3, (2,)),
    (12, 1, 1.5, (1, 2, 3, 5, 8, 11, 12)),
])
def test_rungs_grow_geometrically_and_end_at_every_fold(n, first, eta, expected):
    assert race_rungs(n, first, eta) == expected


def _race_study(order, **kwargs):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = StudyTrials(optuna.storages.InMemoryStorage(), "race")
    pruner = FoldRacePruner(FoldRace(order=tuple(order), **kwargs), trials)
    return trials.open(sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner), pruner


def _report(study, trial, steps_values):
    pruned = False
    for step, value in steps_values:
        trial.report(value, step)
        pruned = trial.should_prune()
    return pruned


def test_a_configuration_is_judged_once_per_rung_against_those_that_reached_it():
    order = [4, 0, 3, 1, 2, 5]  # rungs (2, 4, 6) with min_folds 2, eta 2
    study, _ = _race_study(order, min_folds=2, eta=2.0)
    first = study.ask()
    assert not _report(study, first, [(4, 0.5), (0, 0.5)])  # alone at the rung: goes on
    assert study.trials[0].user_attrs[FoldRacePruner.PASSED] == 2
    worse = study.ask()
    assert not _report(study, worse, [(0, 0.3)])  # one fold: no rung yet
    assert _report(study, worse, [(4, 0.3)])  # rung 2: 0.3 below the top half of {0.5, 0.3}
    assert study.trials[1].user_attrs[FoldRacePruner.STOPPED] == 2
    study.tell(worse, state=TrialState.PRUNED)
    better = study.ask()
    assert not _report(study, better, [(4, 0.9), (0, 0.9)])
    # the first configuration's rung-2 decision is not taken again now that a better one (0.9) and a worse
    # one (0.3) are there: judged again, 0.5 would be below the top half of {0.9, 0.5, 0.3, 0.45}
    fourth = study.ask()
    assert _report(study, fourth, [(4, 0.45), (0, 0.45)])
    assert not first.should_prune()
    # rung 4 for the first configuration: alone there, goes on; folds off the order's prefix are not a rung
    assert not _report(study, first, [(3, 0.5), (1, 0.5)])
    assert study.trials[0].user_attrs[FoldRacePruner.PASSED] == 4


def test_rung_scores_pair_folds_by_the_shared_order():
    race = FoldRace(order=(2, 0, 1), min_folds=2, eta=2.0)
    assert race.rung_score({2: 0.4, 0: 0.6, 1: 0.0}, 2) == pytest.approx(0.5)  # folds 2 and 0, not 0 and 1
    assert race.rung_score({0: 0.6, 1: 0.1}, 2) is None  # fold 2 missing
    assert race.rung_score({2: float("nan"), 0: 0.6}, 2) == pytest.approx(0.6)  # undefined folds skipped
    assert race.hand_out_limit(set()) == 2
    assert race.hand_out_limit({2}) == 2
    assert race.hand_out_limit({2, 0}) == 3


def _quality(config: dict) -> float:
    """A per-configuration score level with a per-fold wobble, so rung means differ between configurations."""
    return 0.9 - 0.25 * abs(math.log10(config["experiment"]["train"]["lr"] / 4e-4))


def _naive_asha(scores: list[list[float]], rungs: tuple[int, ...], eta: float) -> list[int]:
    """Folds each configuration runs when configurations run one after another (independent reference)."""
    at_rung: dict[int, list[float]] = {r: [] for r in rungs}
    spent = []
    for own in scores:
        n = len(own)
        for r in rungs[:-1]:
            mean = float(np.mean(own[:r]))
            recorded = at_rung[r] + [mean]
            at_rung[r].append(mean)
            if mean < np.percentile(recorded, 100 * (1 - 1 / eta)) - 1e-12:
                n = r
                break
        spent.append(n)
    return spent


def test_sequential_race_spends_what_a_naive_asha_spends(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=6, pruner="race", race_min_folds=2, race_eta=2.0,
                         max_concurrent_configs=1)  # rungs (2, 4, 8, 12)
    for lr in [LRS[2], LRS[0], LRS[5], LRS[3], LRS[1], LRS[4]]:
        searcher.study.enqueue_trial({"train.lr": lr, "model.dropout": 0.2})
    order = searcher.core.race.order
    wobble = {fold_index: 0.02 * ((fold_index * 7) % 5) for fold_index in order}

    def score(config):
        return _quality(config) + wobble[config["fold_index"]]

    runner = Runner(searcher, clips, score=score)
    runner.run()
    fold_ids = searcher.fold_ids
    handed = {n: [f for m, f in runner.handed if m == n] for n in range(6)}
    for folds in handed.values():  # one shared order: every configuration's folds are a prefix of it
        assert folds == [fold_ids[i] for i in order[: len(folds)]]
    lrs = [searcher.configs[n].overrides["train.lr"] for n in range(6)]
    expected = _naive_asha([[_quality({"experiment": {"train": {"lr": lr}}}) + wobble[i] for i in order] for lr in lrs],
                           searcher.core.race.rungs, 2.0)
    assert [len(handed[n]) for n in range(6)] == expected
    assert sum(expected) < 6 * len(fold_ids)  # something was stopped
    states = [t.state for t in searcher.study.trials]
    for n, spent in enumerate(expected):
        assert states[n] == (TrialState.COMPLETE if spent == len(fold_ids) else TrialState.PRUNED)


def test_no_fold_beyond_an_undecided_rung_is_handed_out_and_free_slots_start_new_configurations(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=4, pruner="race", max_concurrent_configs=3)
    runner = Runner(searcher, clips, score=_quality)
    running = [runner.suggest() for _ in range(9)]
    assert [c["number"] for _, c in running] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # rung 1 (3 folds) each, no barrier
    assert runner.suggest()[1] is None  # three configurations wait at their first rung
    for trial_id, config in running[:3]:
        runner.complete(trial_id, config)
    after = runner.suggest()[1]
    assert after["number"] == 0  # configuration 0 passed its rung (first there): its next fold
    assert after["fold_id"] == searcher.fold_ids[searcher.core.race.order[3]]


def test_a_race_resumed_from_a_snapshot_makes_the_same_decisions(tmp_path, clips):
    def run(folder, interrupt_after):
        searcher = make_searcher(folder, clips, n_configs=6, pruner="race", max_concurrent_configs=1, seed=3)
        runner = Runner(searcher, clips, score=_quality)
        for _ in range(interrupt_after):
            trial_id, config = runner.suggest()
            if config == Searcher.FINISHED:
                break
            runner.complete(trial_id, config)
        if interrupt_after < 500:
            state = searcher.get_state()
            searcher = make_searcher(folder, clips, n_configs=6, pruner="race", max_concurrent_configs=1, seed=3)
            searcher.set_state(state)  # a new driver: state from the snapshot, study from the journal
            handed = runner.handed
            runner = Runner(searcher, clips, score=_quality)
            runner.handed = handed
            runner.count = 10_000
            runner.run()
        return {t.number: (t.state, t.user_attrs.get("folds_done")) for t in searcher.study.trials}, runner.handed

    whole, handed_whole = run(tmp_path / "a", 500)
    resumed, handed_resumed = run(tmp_path / "b", 11)
    assert resumed == whole
    assert sorted(handed_resumed) == sorted(handed_whole)  # no fold handed out twice, none skipped
    assert any(state == TrialState.PRUNED for state, _ in whole.values())
