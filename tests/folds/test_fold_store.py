"""FoldStore: round trip without pickle, idempotent put, torn records read as missing."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from aullm_core.train.result import FoldResult
from orchestration.folds.store import FoldStore


def _result(fold_id: str = "sub01", protocol: str = "loso", seed: int = 0, inner: bool = True) -> FoldResult:
    rng = np.random.default_rng(seed)
    return FoldResult(
        fold_id=fold_id,
        protocol=protocol,
        aus=(1, 2, 4),
        clip_ids=["EP01_01", "EP01_02", "EP02_01"],
        subjects=[fold_id] * 3,
        probs=rng.random((3, 3)).astype(np.float32),
        labels=rng.integers(0, 2, (3, 3)).astype(np.uint8),
        epoch_losses=[1.0, 0.5, 0.25],
        inner_thresholds=np.array([0.3, 0.4, 0.5]) if inner else None,
        best_epoch=2,
        duration_s=1.5,
        extra={"train_clips": 200.0},
    )


def _same(a: FoldResult, b: FoldResult) -> None:
    assert (a.fold_id, a.protocol, a.aus, a.clip_ids, a.subjects) == (b.fold_id, b.protocol, b.aus, b.clip_ids, b.subjects)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.epoch_losses == b.epoch_losses and a.best_epoch == b.best_epoch and a.extra == b.extra
    if a.inner_thresholds is None:
        assert b.inner_thresholds is None
    else:
        np.testing.assert_array_equal(a.inner_thresholds, b.inner_thresholds)


def test_round_trip_and_listing(tmp_path):
    store = FoldStore(tmp_path)
    config = {"train": {"lr": 0.001}}
    assert store.get("abc", "loso", "sub01") is None
    assert store.put("abc", "loso", "sub01", _result("sub01"), config) is True
    store.put("abc", "loso", "sub02", _result("sub02", seed=1, inner=False), config)
    store.put("abc", "cross", "casme2->samm", _result("casme2->samm", "cross"), config)
    store.put("def", "loso", "sub01", _result("sub01", seed=2), {"train": {"lr": 0.01}})
    _same(store.get("abc", "loso", "sub01"), _result("sub01"))
    _same(store.get("abc", "loso", "sub02"), _result("sub02", seed=1, inner=False))
    assert [r.fold_id for r in store.results("abc", "loso")] == ["sub01", "sub02"]
    assert [r.fold_id for r in store.results("abc", "cross")] == ["casme2->samm"]
    assert store.configs() == {"abc": config, "def": {"train": {"lr": 0.01}}}
    assert sorted(store.entries()) == [
        ("abc", "cross", "casme2->samm"), ("abc", "loso", "sub01"), ("abc", "loso", "sub02"), ("def", "loso", "sub01")
    ]
    # no pickle anywhere: the npz loads with allow_pickle=False, the rest is JSON
    for path in tmp_path.rglob("*.npz"):
        np.load(path, allow_pickle=False)
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())
    assert not list(tmp_path.rglob("*.tmp"))


def test_put_is_idempotent_first_record_wins(tmp_path):
    store = FoldStore(tmp_path)
    assert store.put("abc", "loso", "sub01", _result(seed=0), {}) is True
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert store.put("abc", "loso", "sub01", _result(seed=5), {}) is False
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after
    _same(store.get("abc", "loso", "sub01"), _result(seed=0))


def test_torn_or_altered_records_read_as_missing(tmp_path):
    store = FoldStore(tmp_path)
    store.put("abc", "loso", "sub01", _result(), {})
    npz = next(tmp_path.rglob("*.npz"))
    record = next(tmp_path.rglob("sub01.json"))
    npz.write_bytes(npz.read_bytes()[:-10])  # truncated array file
    assert store.get("abc", "loso", "sub01") is None
    assert store.results("abc", "loso") == []
    # a later put repairs it
    assert store.put("abc", "loso", "sub01", _result(), {}) is True
    _same(store.get("abc", "loso", "sub01"), _result())
    record.unlink()  # npz without its JSON: not stored
    assert store.get("abc", "loso", "sub01") is None


def test_mismatched_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"result is \(loso, sub02\), expected \(loso, sub01\)"):
        FoldStore(tmp_path).put("abc", "loso", "sub01", _result("sub02"), {})


def _writer(root: str, seed: int) -> None:
    FoldStore(root).put("abc", "loso", "sub01", _result(seed=seed), {"seed": seed})


def test_concurrent_writers_leave_one_whole_record(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stored = FoldStore(tmp_path).get("abc", "loso", "sub01")
    assert stored is not None
    seeds = [s for s in range(4) if np.array_equal(stored.probs, _result(seed=s).probs)]
    assert len(seeds) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_edited_configuration_or_record_is_named_and_not_used(tmp_path, caplog):
    from aullm_core.config import ExperimentConfig

    store = FoldStore(tmp_path)
    config = ExperimentConfig.preset("quick")
    fp = config.fingerprint()
    store.put(fp, "loso", "sub01", _result(), config.model_dump(mode="json"))
    assert fp in store.configs() and store.get(fp, "loso", "sub01") is not None
    path = tmp_path / fp / "config.json"
    path.write_text(json.dumps(config.with_overrides({"train.lr": 0.5}).model_dump(mode="json")))
    with caplog.at_level("WARNING"):
        assert fp not in store.configs()  # the leaderboard would show another learning rate than was trained
    assert any(str(path) in r.getMessage() for r in caplog.records)
    record = tmp_path / fp / "loso" / "sub01.json"
    meta = json.loads(record.read_text())
    meta["best_epoch"] = 7
    record.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        assert store.get(fp, "loso", "sub01") is None
    assert any(str(record) in r.getMessage() and "altered" in r.getMessage() for r in caplog.records)
