"""Racing over folds: rungs, ASHA's promotion on paired folds, waiting without a slot, the race's end, resume."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from searcher_helpers import Runner, make_searcher

from aullm_core.train.objective import DEFAULT_OBJECTIVE
from orchestration.folds.store import FoldStore
from orchestration.search.racing import PASSED, STOPPED, FoldRace, race_rungs

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


def test_promotion_takes_the_top_floor_n_over_eta_of_a_rung():
    race = FoldRace(order=(0, 1, 2), min_folds=1, eta=3.0)
    assert race.promoted({0: 0.5}) == set()  # alone at the rung: waits for competitors
    assert race.promoted({0: 0.5, 1: 0.3}) == set()
    assert race.promoted({0: 0.5, 1: 0.3, 2: 0.9}) == {2}
    assert race.promoted({0: 0.5, 1: 0.5, 2: 0.1}) == {0}  # a tie goes to the earlier configuration
    assert race.promoted({0: math.nan, 1: 0.1, 2: 0.2, 3: 0.0, 4: 0.3, 5: 0.4}) == {5, 4}  # NaN ranks last
    half = FoldRace(order=(0, 1), min_folds=1, eta=2.0)
    assert half.promoted({n: v for n, v in enumerate([0.1, 0.6, 0.3, 0.5, 0.2, 0.4])}) == {1, 3, 5}
    assert race.goes_on_alone(0, {0: 0.5})  # one after another: the best so far goes on
    assert not race.goes_on_alone(1, {0: 0.5, 1: 0.3})
    assert race.goes_on_alone(1, {0: 0.5, 1: 0.7})


def test_a_configuration_waits_at_a_rung_until_promoted():
    race = FoldRace(order=(2, 0, 1), min_folds=2, eta=2.0)  # rungs (2, 3)
    assert race.hand_out_limit(set(), passed=0) == 2
    assert race.hand_out_limit({2}, passed=0) == 2
    assert race.hand_out_limit({2, 0}, passed=0) == 2  # the rung is in: it waits
    assert race.hand_out_limit({2, 0}, passed=2) == 3  # promoted: the next rung
    assert race.reached({2, 0}) == 2 and race.reached({0, 1}) == 0  # folds 2 and 0 pair, not 0 and 1


def _rung_score(searcher, number: int, rung: int) -> float:
    """The objective on a configuration's first ``rung`` folds of the shared order, read from the store."""
    store = FoldStore(searcher.store_root)
    state = searcher.configs[number]
    return DEFAULT_OBJECTIVE.of_results([store.get(state.fp, "loso", f) for f in state.order[:rung]])


def _naive_asha(n_configs: int, rungs: tuple[int, ...], eta: float, score) -> dict[int, int]:
    """Folds each configuration runs in a serial ASHA (one slot): promote every waiting configuration in
    the top floor(n/eta) at its rung, else run the oldest promoted one, else start a new one; when none
    is left, promote the best at the deepest rung unless one has every fold (independent reference)."""
    reached: dict[int, int] = {}
    passed: dict[int, int] = {}
    new = list(range(n_configs))
    while True:
        for rung in rungs[:-1]:
            at = {c: score(c, rung) for c in reached if reached[c] >= rung}
            top = sorted(at, key=lambda c: (-at[c], c))[: int(len(at) // eta)]
            for c in top:
                if reached[c] == rung:
                    passed[c] = max(passed[c], rung)
        ready = [c for c in sorted(reached) if reached[c] < rungs[-1] and passed[c] >= reached[c]]
        if ready:
            c = ready[0]
            reached[c] = next(r for r in rungs if r > reached[c])
        elif new:
            c = new.pop(0)
            reached[c], passed[c] = rungs[0], 0
        elif all(r < rungs[-1] for r in reached.values()):
            deepest = max(reached.values())
            c = max((c for c in reached if reached[c] == deepest), key=lambda c: (score(c, deepest), -c))
            passed[c] = deepest
        else:
            return reached


def test_sequential_race_spends_what_a_naive_asha_spends(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=6, pruner="race", race_min_folds=2, race_eta=2.0,
                             max_concurrent_configs=1)  # rungs (2, 4, 8, 12)
    for lr in [LRS[2], LRS[0], LRS[5], LRS[3], LRS[1], LRS[4]]:
        searcher.study.enqueue_trial({"train.lr": lr, "model.dropout": 0.2})
    runner = Runner(searcher, clips)
    runner.run()
    fold_ids, order = searcher.fold_ids, searcher.core.race.order
    handed = {n: [f for m, f in runner.handed if m == n] for n in range(6)}
    for folds in handed.values():  # one shared order: every configuration's folds are a prefix of it
        assert folds == [fold_ids[i] for i in order[: len(folds)]]
    expected = _naive_asha(6, searcher.core.race.rungs, 2.0, lambda c, r: _rung_score(searcher, c, r))
    assert {n: len(handed[n]) for n in range(6)} == expected
    assert sum(expected.values()) < 6 * len(fold_ids)  # something was stopped
    trials = searcher.study.trials
    for n, spent in expected.items():
        assert trials[n].state == (TrialState.COMPLETE if spent == len(fold_ids) else TrialState.PRUNED)
        if spent < len(fold_ids):
            assert trials[n].user_attrs[STOPPED] == spent


def test_a_waiting_configuration_frees_its_slot_and_the_best_at_the_rung_is_promoted(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=5, pruner="race", max_concurrent_configs=3)  # rungs 3, 9, 12
    runner = Runner(searcher, clips)
    running = [runner.suggest() for _ in range(9)]
    assert [c["number"] for _, c in running] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # rung 1 (3 folds) each, no barrier
    assert runner.suggest()[1] is None  # three configurations in flight, each at the end of its rung
    for trial_id, config in running[:3]:
        runner.complete(trial_id, config)
    _, config = runner.suggest()  # configuration 0 waits (alone at its rung): its slot starts a new one
    assert config["number"] == 3
    for trial_id, config in running[3:]:
        runner.complete(trial_id, config)
    best = max(range(3), key=lambda n: (_rung_score(searcher, n, 3), -n))
    _, after = runner.suggest()  # three at the rung: the top third (one) is promoted and runs on
    assert after["number"] == best
    assert after["fold_id"] == searcher.fold_ids[searcher.core.race.order[3]]
    assert searcher.study.trials[best].user_attrs[PASSED] == 3


def test_a_race_resumed_from_a_snapshot_makes_the_same_decisions(tmp_path, clips):
    def run(folder, interrupt_after):
        searcher = make_searcher(folder, clips, n_configs=6, pruner="race", max_concurrent_configs=1, seed=3)
        runner = Runner(searcher, clips)
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
            runner = Runner(searcher, clips)
            runner.handed = handed
            runner.count = 10_000
            runner.run()
        return {t.number: (t.state, t.user_attrs.get("folds_done")) for t in searcher.study.trials}, runner.handed

    whole, handed_whole = run(tmp_path / "a", 500)
    resumed, handed_resumed = run(tmp_path / "b", 11)
    assert resumed == whole
    assert sorted(handed_resumed) == sorted(handed_whole)  # no fold handed out twice, none skipped
    assert any(state == TrialState.PRUNED for state, _ in whole.values())


def test_when_no_configuration_can_be_promoted_the_race_ends_with_the_best_cross_validated(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=2, pruner="race", max_concurrent_configs=1)  # rungs 3, 9, 12
    runner = Runner(searcher, clips)
    runner.run()  # two at the first rung: floor(2 / 3) = 0 promoted, so the end of the budget decides
    best = max(range(2), key=lambda n: (_rung_score(searcher, n, 3), -n))
    handed = {n: [f for m, f in runner.handed if m == n] for n in range(2)}
    assert len(handed[best]) == len(searcher.fold_ids) and len(handed[1 - best]) == 3
    trials = searcher.study.trials
    assert trials[best].state == TrialState.COMPLETE and trials[best].user_attrs[PASSED] == 9
    assert trials[1 - best].state == TrialState.PRUNED and trials[1 - best].user_attrs[STOPPED] == 3
