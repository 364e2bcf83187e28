"""The replay harness (bench/race_replay.py) on a small table: it drives the real FoldSearcher, spends
what each strategy should, and scores what it returns against the table's truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from race_replay import SPACE, fill_store, replay
from race_table import FoldTable, TableConfig

from aullm_core.train.result import FoldResult
from orchestration.search.space import load_space

FOLDS = [f"sub{i:02d}" for i in range(1, 10)]


def _table() -> FoldTable:
    """The fold-table grid with a made-up quality per learning rate: every fold of every configuration."""
    space = load_space(SPACE)
    lrs = space.params[0].candidates()
    rng = np.random.default_rng(0)
    labels = {f: (rng.random((5, 3)) < 0.4).astype(np.uint8) for f in FOLDS}
    configs = []
    cells = [dict(zip([p.key for p in space.params], v)) for v in
             __import__("itertools").product(*[p.candidates() for p in space.params])]
    for number, overrides in enumerate(cells):
        quality = 0.2 + 0.8 * (1 - abs(lrs.index(overrides["train.lr"]) - 5) / 5)
        results = {}
        for f in FOLDS:
            y = labels[f]
            logits = 3 * quality * (2.0 * y - 1) + rng.normal(0, 1.0, y.shape)
            results[f] = FoldResult(fold_id=f, protocol="loso", aus=(1, 2, 4), clip_ids=[f"{f}_{k}" for k in range(5)],
                                    subjects=[f] * 5, probs=1 / (1 + np.exp(-logits)), labels=y, epoch_losses=[],
                                    inner_thresholds=np.full(3, 0.5), duration_s=5.0 + (number % 3))
        configs.append(TableConfig(number, "grid", space.build(overrides).fingerprint(), overrides, results))
    meta = {"fold_ids": FOLDS, "data_fp": "fake0123456789ab",
            "data": {"style": "casme2", "subjects": 9, "clips_per_subject": 5, "difficulty": "made up", "seed": 0}}
    return FoldTable(meta, configs)


@pytest.fixture(scope="module")
def table_and_store(tmp_path_factory):
    table = _table()
    root = tmp_path_factory.mktemp("replay") / "folds"
    fill_store(table, root)
    scores = {c.fp: dict(zip(table.fold_ids, table.fold_scores(c.fp).tolist())) for c in table.configs}
    return table, root, scores


@pytest.mark.parametrize("slots", [1, 4])
def test_unpruned_replay_trains_every_fold_of_every_configuration_and_returns_its_best(table_and_store, slots):
    table, root, scores = table_and_store
    out = replay(table, {"pruner": "none"}, seed=1, slots=slots, n_configs=6, sampler="random",
                 store_root=root, fold_scores=scores)
    distinct = {c["fp"] for c in out.configs.values()}
    assert out.folds == len(distinct) * len(FOLDS)
    truth = {fp: table.true_score(fp) for fp in distinct}
    assert out.returned == max(truth, key=truth.get)  # unpruned: the sweep returns the best it saw
    assert 0 < out.busy_s / (slots * out.wall_s) <= 1 + 1e-9
    assert out.wall_s >= out.busy_s / slots - 1e-9


def test_a_race_spends_fewer_folds_than_an_unpruned_sweep_of_the_same_configurations(table_and_store):
    table, root, scores = table_and_store
    common = {"seed": 2, "n_configs": 12, "sampler": "random", "store_root": root, "fold_scores": scores}
    full = replay(table, {"pruner": "none"}, slots=1, **common)
    race = replay(table, {"pruner": "race", "race_min_folds": 2, "race_eta": 3.0}, slots=1, **common)
    assert [c["fp"] for c in race.configs.values()] == [c["fp"] for c in full.configs.values()]  # same proposals
    assert race.folds < full.folds
    stopped = [c for c in race.configs.values() if c["status"] == "pruned"]
    assert stopped and all(c["folds"] in (2, 6) for c in stopped)  # stopped at a rung (2, 6, 9)
    assert race.returned is not None


def test_a_race_keeps_every_slot_busy_on_a_cluster(table_and_store):
    table, root, scores = table_and_store
    out = replay(table, {"pruner": "race", "race_min_folds": 2, "race_eta": 3.0}, seed=3, slots=8, n_configs=12,
                 sampler="random", store_root=root, fold_scores=scores)
    assert out.busy_s / (8 * out.wall_s) > 0.5
