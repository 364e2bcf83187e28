"""FoldSearcher driven directly (no Ray): hand-out order, pruning, concurrency, save/restore."""

from __future__ import annotations

import math
import socket

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from scipy import stats
from searcher_helpers import BAD, GOOD, SPACE, Runner, make_searcher
from sweep_helpers import load_tiny_cache, write_tiny_cache

from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import loso_folds
from aullm_core.train.metrics import score_results
from aullm_core.train.objective import FoldScore
from orchestration.folds.store import FoldStore
from orchestration.search.progress import saved_search_ended_early
from orchestration.search.pruners import make_pruner, pocock_p_threshold
from orchestration.search.searcher import FoldSearcher
from orchestration.search.space import space_from_dict
from orchestration.search.trials import StudyTrials


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    path = write_tiny_cache(tmp_path_factory.mktemp("cache") / "tiny.npz", subjects=8, clips_per_subject=5)
    return load_tiny_cache(path)


@pytest.fixture(autouse=True)
def _quick_sleep(monkeypatch):
    monkeypatch.setenv("AULLM_TEST_SLEEP", "0")


def test_every_fold_once_in_a_seeded_shuffled_order_reported_by_fold_index(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=3)
    runner = Runner(searcher, clips)
    runner.run()
    fold_ids = sorted(f.fold_id for f in loso_folds(clips))
    orders = {}
    for number in range(3):
        handed = [fold for n, fold in runner.handed if n == number]
        assert sorted(handed) == fold_ids  # each fold exactly once
        orders[number] = handed
        rng = np.random.default_rng([7, number])  # seeded per configuration
        assert handed == [fold_ids[i] for i in rng.permutation(len(fold_ids))]
    assert len({tuple(o) for o in orders.values()}) == 3  # shuffled differently per configuration
    study = searcher.study
    store = FoldStore(searcher.store_root)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        fp = trial.user_attrs["config_fp"]
        results = store.results(fp, "loso")
        # step = stable fold index (position in the sorted fold list), value = that fold's score
        assert trial.intermediate_values == {fold_ids.index(r.fold_id): FoldScore().of(r) for r in results}
        # the objective is pooled positive-class F1 with inner thresholds
        assert trial.value == pytest.approx(score_results(results, mode="inner", aggregate="pooled").mean_f1_pos)


def test_wilcoxon_prunes_a_worse_configuration_and_stops_its_folds(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=2, pruner="wilcoxon", p_threshold=0.1)
    searcher.study.enqueue_trial(GOOD)
    searcher.study.enqueue_trial(BAD)
    scores = {0: 0.9, 1: 0.1}
    runner = Runner(searcher, clips, score=lambda c: scores[c["number"]] + 0.01 * c["fold_index"])
    runner.run()
    good, bad = searcher.study.trials
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    # all 4 differences negative: exact one-sided Wilcoxon p = 1/2**4 = 0.0625 < 0.1, while 1/2**3 is not
    handed_bad = [fold for n, fold in runner.handed if n == 1]
    assert len(handed_bad) == 4
    assert stats.wilcoxon([-0.8] * 4, alternative="less").pvalue < 0.1 < stats.wilcoxon([-0.8] * 3, alternative="less").pvalue
    assert bad.user_attrs["partial_mean"] == pytest.approx(np.mean([0.1 + 0.01 * searcher.core.fold_index[f] for f in handed_bad]))
    assert bad.user_attrs["folds_done"] == 4
    assert searcher.pruned_numbers() == {1}


def _good_one_done_then_bad(tmp_path, clips) -> tuple[FoldSearcher, Runner]:
    """Wilcoxon pruning, one configuration at a time: GOOD (0.9) has all 8 folds in, BAD (0.1) is next."""
    searcher = make_searcher(tmp_path, clips, n_configs=2, pruner="wilcoxon", max_concurrent_configs=1)
    searcher.study.enqueue_trial(GOOD)
    searcher.study.enqueue_trial(BAD)
    scores = {0: 0.9, 1: 0.1}
    runner = Runner(searcher, clips, score=lambda c: scores[c["number"]])
    for _ in range(8):  # config 0, one fold at a time
        runner.complete(*runner.suggest())
    return searcher, runner


def test_pruned_configuration_waits_for_running_folds_then_is_told(tmp_path, clips):
    searcher, runner = _good_one_done_then_bad(tmp_path, clips)
    running = [runner.suggest() for _ in range(6)]  # six folds of config 1 at once
    assert all(c["number"] == 1 for _, c in running)
    for trial_id, config in running[:4]:
        runner.complete(trial_id, config)
    assert searcher.pruned_numbers() == {1}
    assert searcher.study.trials[1].state == TrialState.RUNNING  # two folds still running
    assert runner.suggest()[1] is None  # no new fold of the pruned configuration, budget spent
    searcher.on_trial_complete(running[4][0], None)  # stopped by the scheduler: no result
    runner.complete(*running[5])  # finished anyway: reported, still pruned
    assert searcher.study.trials[1].state == TrialState.PRUNED
    assert runner.suggest()[1] == Searcher.FINISHED


def test_fills_started_configurations_first_and_bounds_configurations_in_flight(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=4, max_concurrent_configs=2)
    runner = Runner(searcher, clips)
    first = [runner.suggest() for _ in range(10)]
    numbers = [c["number"] for _, c in first]
    assert numbers == [0] * 8 + [1] * 2  # all of config 0's folds before opening config 1
    more = [runner.suggest() for _ in range(7)]
    assert [c["number"] for _, c in more[:6]] == [1] * 6
    assert more[6][1] is None  # two configurations in flight, none has folds left
    runner.complete(*first[0])
    assert runner.suggest()[1] is None  # config 0 still has running folds
    for trial_id, config in first[1:8]:
        runner.complete(trial_id, config)
    nxt = runner.suggest()[1]
    assert nxt["number"] == 2  # config 0 told: its slot goes to a new configuration


def test_fold_concurrency_limit(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips)
    assert searcher.set_max_concurrency(2) is True  # Tune's ConcurrencyLimiter then passes through
    runner = Runner(searcher, clips)
    a, b, c = runner.suggest(), runner.suggest(), runner.suggest()
    assert a[1] is not None and b[1] is not None and c[1] is None
    runner.complete(*a)
    assert runner.suggest()[1] is not None


def test_failed_fold_fails_the_configuration(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=2)
    runner = Runner(searcher, clips)
    trial_id, config = runner.suggest()
    runner.complete(trial_id, config, error=True)
    assert searcher.study.trials[0].state == TrialState.FAIL
    assert runner.suggest()[1]["number"] == 1  # its folds are not handed out any more
    outcome = searcher.pop_outcomes()
    assert [(o.number, o.status) for o in outcome] == [(0, "failed")]


def test_save_restore_continues_without_handing_out_a_fold_twice(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=3, max_concurrent_configs=2)
    runner = Runner(searcher, clips)
    for _ in range(5):
        runner.complete(*runner.suggest())
    pending = [runner.suggest() for _ in range(2)]  # running at the snapshot
    checkpoint = tmp_path / "searcher-state.json"
    searcher.save(str(checkpoint))
    # after the snapshot, the old process told Optuna about one fold, then died
    runner.complete(*pending[0])

    restored = make_searcher(tmp_path, clips, n_configs=3, max_concurrent_configs=2)
    restored.restore(str(checkpoint))
    runner2 = Runner(restored, clips)
    runner2.handed = list(runner.handed)
    # Tune re-runs the snapshot's running trials with the same ids
    for trial_id, config in pending:
        runner2.complete(trial_id, config)
    runner2.run()
    per_config: dict[int, list[str]] = {}
    for number, fold in runner2.handed:
        per_config.setdefault(number, []).append(fold)
    assert sorted(per_config) == [0, 1, 2]
    for folds in per_config.values():
        assert len(folds) == len(set(folds)) == 8
    assert [t.state for t in restored.study.trials] == [TrialState.COMPLETE] * 3


def test_restore_adopts_a_configuration_asked_after_the_snapshot(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=2)
    checkpoint = tmp_path / "state.json"
    searcher.save(str(checkpoint))  # snapshot before anything was asked
    runner = Runner(searcher, clips)
    _trial_id, config = runner.suggest()  # asks configuration 0, then the process dies
    restored = make_searcher(tmp_path, clips, n_configs=2)
    restored.restore(str(checkpoint))
    runner2 = Runner(restored, clips)
    runner2.run()
    trials = restored.study.trials
    assert len(trials) == 2  # not asked again: the budget counts the adopted one
    assert restored.configs[0].fp == config["fp"]  # the same configuration, continued
    assert {n for n, _ in runner2.handed} == {0, 1}
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_duplicate_configuration_is_told_without_training(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=2)
    searcher.study.enqueue_trial(GOOD)
    searcher.study.enqueue_trial(GOOD)
    runner = Runner(searcher, clips)
    runner.run()
    first, second = searcher.study.trials
    assert {n for n, _ in runner.handed} == {0}  # config 1 repeats config 0: no fold handed out
    assert second.state == TrialState.COMPLETE and second.value == first.value


def test_median_pruner_gets_running_means_at_fold_counts(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=1, pruner="median")
    runner = Runner(searcher, clips, score=lambda c: float(c["fold_index"]))
    runner.run()
    values = searcher.study.trials[0].intermediate_values
    order = [searcher.core.fold_index[f] for _, f in runner.handed]
    assert sorted(values) == list(range(1, 9))
    for k in range(1, 9):
        assert values[k] == pytest.approx(np.mean(order[:k]))


def test_pocock_threshold_matches_the_published_constants():
    # Pocock (1977) two-sided 5 % constants: K=2 -> 2.178, K=5 -> 2.413 (one-sided 2.5 %)
    for looks, c in ((2, 2.178), (5, 2.413)):
        p = pocock_p_threshold(looks, alpha=0.025, first_look=1)
        assert p == pytest.approx(stats.norm.sf(c), rel=0.08)
    assert pocock_p_threshold(26, alpha=0.1) < 0.1 / 4  # much stricter than the nominal level
    pruner = make_pruner("wilcoxon", p_threshold="pocock", n_folds=26)
    assert math.isclose(pruner._p_threshold, pocock_p_threshold(26, alpha=0.1, first_look=2))


def test_pruned_while_its_last_folds_ran_is_told_complete(tmp_path, clips):
    searcher, runner = _good_one_done_then_bad(tmp_path, clips)
    running = [runner.suggest() for _ in range(8)]  # every fold of config 1 at once
    for trial_id, config in running:
        runner.complete(trial_id, config)
    bad = searcher.study.trials[1]
    # the pruner fired after 4 folds, but all 8 came in: nothing was saved, so Optuna gets the score
    assert bad.state == TrialState.COMPLETE and bad.value is not None
    assert [o.status for o in searcher.pop_outcomes()] == ["complete", "complete"]


def test_start_with_paper_is_the_first_configuration_labelled_and_not_enqueued_again(tmp_path, clips):
    space = space_from_dict({**SPACE, "start_with": "paper",
                             "params": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}})
    searcher = make_searcher(tmp_path, clips, space=space, n_configs=2)
    Runner(searcher, clips).run()
    first, second = sorted(searcher.configs.values(), key=lambda c: c.number)
    assert first.overrides == {"train.lr": ExperimentConfig.preset("paper").train.lr}
    assert first.label == "paper defaults" and second.label == ""
    assert searcher.study.trials[0].user_attrs["label"] == "paper defaults"
    assert second.overrides["train.lr"] != first.overrides["train.lr"]
    # a searcher reopening the same study (a resume) does not enqueue the paper's values again
    again = make_searcher(tmp_path, clips, space=space, n_configs=3)
    again.n_asked = 2
    state = again._ask()
    assert state is not None and state.label == "" and len(again.study.trials) == 3


def test_start_with_two_presets_runs_both_first_in_order(tmp_path, clips):
    space = space_from_dict({**SPACE, "start_with": ["paper", "quick"],
                             "params": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}})
    searcher = make_searcher(tmp_path, clips, space=space, n_configs=3)
    Runner(searcher, clips).run()
    states = sorted(searcher.configs.values(), key=lambda c: c.number)
    assert [s.label for s in states] == ["paper defaults", "quick preset", ""]
    assert [s.overrides["train.lr"] for s in states[:2]] == [ExperimentConfig.preset("paper").train.lr,
                                                              ExperimentConfig.preset("quick").train.lr]
    assert [t.user_attrs.get("label") for t in searcher.study.trials] == ["paper defaults", "quick preset", None]


def test_an_interrupted_and_resumed_sweep_proposes_what_an_uninterrupted_one_does(tmp_path, clips):
    def proposals(searcher: FoldSearcher) -> list[dict]:
        return [c.overrides for c in sorted(searcher.configs.values(), key=lambda c: c.number)]

    options = {"n_configs": 5, "sampler": "tpe", "startup_configs": 2, "max_concurrent_configs": 1}
    straight = make_searcher(tmp_path / "straight", clips, **options)
    Runner(straight, clips).run()

    first = make_searcher(tmp_path / "resumed", clips, **options)
    runner = Runner(first, clips)
    for _ in range(8 * 3 + 2):  # three configurations, and two folds of the fourth
        runner.complete(*runner.suggest())
    checkpoint = tmp_path / "resumed" / "state.json"
    first.save(str(checkpoint))
    resumed = make_searcher(tmp_path / "resumed", clips, **options)  # a new process: a new sampler
    resumed.restore(str(checkpoint))
    Runner(resumed, clips).run()
    assert len(proposals(straight)) == 5
    assert proposals(resumed) == proposals(straight)


def test_optuna_dashboard_shows_the_objective_by_name_and_the_subject_of_each_step(tmp_path, clips):
    """``aullm dashboard`` serves the sweep's study (a real optuna-dashboard process) with the objective's
    name, the subject behind each step and, for a pruned configuration, its partial objective."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is an optional dependency (aullm[dashboard])")
    work = tmp_path / "work"
    folder = work / "sweeps" / "d"
    searcher = make_searcher(folder, clips, n_configs=2, objective="f1_pos:fixed:pooled")
    searcher.study_name = "d"
    Runner(searcher, clips).run()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "dashboard", "--sweep", "d", "--workdir",
                             str(work), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as reply:
                    studies = json.loads(reply.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        (study,) = studies
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as reply:
            detail = json.loads(reply.read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert detail.get("objective_names") == ["f1_pos:fixed:pooled"]
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert json.loads(attrs["steps"]) == {str(i): f for i, f in enumerate(sorted(f.fold_id for f in loso_folds(clips)))}


def test_a_configuration_asked_just_before_a_kill_gets_its_fingerprint_on_resume():
    """The driver killed between Optuna's ask (params in the journal) and the configuration's
    fingerprint attribute: the resumed searcher adopts the trial and writes the attribute, so the
    leaderboard, which maps trials to configurations by it, keeps the configuration."""
    from orchestration.search.progress import study_rows, sync_with_study

    space = space_from_dict({"base": "quick", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    trials = StudyTrials(optuna.storages.InMemoryStorage(), "killed")
    study = trials.open(sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    space.sample(study.ask())  # asked, never given its config_fp
    configs: dict = {}
    assert sync_with_study(configs, study, trials, space, lambda number: ["s01", "s02"]) == []
    (state,) = configs.values()
    assert study.trials[0].user_attrs["config_fp"] == state.fp == space.build(space.decode(study.trials[0].params)).fingerprint()
    assert state.fp in study_rows(study, space)


def test_a_resume_while_a_start_preset_waits_in_the_journal_still_runs_every_configuration(tmp_path, clips):
    space = space_from_dict({**SPACE, "start_with": ["paper", "quick"],
                             "params": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}})
    searcher = make_searcher(tmp_path, clips, space=space, n_configs=3)
    runner = Runner(searcher, clips)
    runner.complete(*runner.suggest())  # asks the paper's values; the quick preset waits in the journal
    checkpoint = tmp_path / "state.json"
    searcher.save(str(checkpoint))

    restored = make_searcher(tmp_path, clips, space=space, n_configs=3)
    restored.restore(str(checkpoint))
    Runner(restored, clips).run()
    assert [t.state for t in restored.study.trials] == [TrialState.COMPLETE] * 3
    assert [s.label for s in sorted(restored.configs.values(), key=lambda c: c.number)] == [
        "paper defaults", "quick preset", ""]


def test_a_snapshot_that_counts_more_asks_than_the_journal_holds_is_resumed_to_its_budget(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=3)
    runner = Runner(searcher, clips)
    for _ in range(8 * 2):  # two configurations complete
        runner.complete(*runner.suggest())
    state = searcher.get_state()
    state["n_asked"] = 3  # what an earlier version saved when a preset waited in the journal at a resume
    restored = make_searcher(tmp_path, clips, n_configs=3)
    restored.set_state(state)
    Runner(restored, clips).run()
    assert [t.state for t in restored.study.trials] == [TrialState.COMPLETE] * 3


def test_a_snapshot_whose_search_ended_before_its_budget_is_refused_for_a_rebuild(tmp_path, clips):
    searcher = make_searcher(tmp_path, clips, n_configs=3)
    runner = Runner(searcher, clips)
    for _ in range(8 * 2):
        runner.complete(*runner.suggest())
    experiment = tmp_path / "ray"
    experiment.mkdir()
    searcher.save(str(experiment / "searcher-state-1.pkl"))
    journal = tmp_path / "optuna.journal"
    assert saved_search_ended_early(experiment, journal, "t") is None  # one configuration to go
    searcher.n_asked = 3  # counted as spent, as a waiting start preset made an earlier version count it
    searcher.save(str(experiment / "searcher-state-2.pkl"))
    assert saved_search_ended_early(experiment, journal, "t") == (
        "its search ended after 2 of 3 configurations")
    Runner(searcher, clips).run()  # what Tune does with it: nothing; the journal still holds two
    assert len(searcher.study.trials) == 2
