"""``aullm score`` against sklearn and ``aullm train`` end to end on a tiny synthetic cache."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from aullm_core.train.metrics import PAPER_THRESHOLDS
from orchestration.cli.main import app
from orchestration.cli.train import parse_sets
from orchestration.folds.store import FoldStore

runner = CliRunner()


def _csvs(tmp_path, seed=0, n=40):
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"clip": [f"c{i}" for i in range(n)], "fold": rng.choice(["s1", "s2", "s3"], n)})
    probs = pd.DataFrame({"clip": labels["clip"]})
    for au, rate in ((2, 0.2), (4, 0.5), (12, 0.3)):
        y = (rng.random(n) < rate).astype(int)
        labels[f"AU{au}"] = y
        probs[f"AU{au}"] = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    probs.to_csv(tmp_path / "probs.csv", index=False)
    return labels, probs


def _score(tmp_path, *args):
    result = runner.invoke(app, ["score", "--labels", str(tmp_path / "labels.csv"),
                                 "--probs", str(tmp_path / "probs.csv"), *args])
    return result


def test_score_fixed_threshold_matches_sklearn(tmp_path):
    labels, probs = _csvs(tmp_path)
    result = _score(tmp_path, "--threshold", "0.4", "--format", "json")
    assert result.exit_code == 0, result.output
    scores = {s["protocol"]: s for s in json.loads(result.output)["scores"]}
    assert set(scores) == {"pooled/fixed", "fold_mean/fixed"}
    pooled = scores["pooled/fixed"]
    assert pooled["test_tuned"] is False
    for au in (2, 4, 12):
        y, p = labels[f"AU{au}"], probs[f"AU{au}"] >= 0.4
        entry = pooled["per_au"][f"AU{au}"]
        assert entry["f1_pos"] == pytest.approx(f1_score(y, p))
        assert entry["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
        assert entry["threshold"] == 0.4
    assert pooled["mean_f1_pos"] == pytest.approx(np.mean([pooled["per_au"][f"AU{a}"]["f1_pos"] for a in (2, 4, 12)]))


def test_score_defaults_to_a_leak_free_threshold(tmp_path):
    _csvs(tmp_path, seed=2)
    result = _score(tmp_path, "--format", "json")
    assert result.exit_code == 0, result.output
    pooled = json.loads(result.output)["scores"][0]
    assert pooled["protocol"] == "pooled/fixed" and pooled["test_tuned"] is False
    assert {entry["threshold"] for entry in pooled["per_au"].values()} == {0.5}


def test_score_paper_sweep_matches_sklearn_and_is_marked_leaky(tmp_path):
    labels, probs = _csvs(tmp_path, seed=1)
    result = _score(tmp_path, "--threshold", "paper")
    assert result.exit_code == 0, result.output
    pooled = json.loads(result.output)["scores"][0]
    assert pooled["protocol"] == "pooled/paper" and pooled["test_tuned"] is True
    for au in (2, 4, 12):
        sweep = [f1_score(labels[f"AU{au}"], probs[f"AU{au}"] >= t, average="macro") for t in PAPER_THRESHOLDS]
        assert pooled["per_au"][f"AU{au}"]["f1_macro"] == pytest.approx(max(sweep))
    table = _score(tmp_path, "--threshold", "paper", "--format", "table")
    assert "TEST-TUNED" in table.output and "| AU4 |" in table.output


@pytest.mark.parametrize("change,message", [
    (lambda lab, prob: prob.drop(columns=["AU4"]), "missing column AU4"),
    (lambda lab, prob: prob.assign(clip=prob["clip"][::-1].to_numpy()), "row 2 is clip"),
    (lambda lab, prob: prob.assign(AU2="x"), "non-numeric"),
])
def test_score_bad_input_is_one_line(tmp_path, change, message):
    labels, probs = _csvs(tmp_path)
    change(labels, probs).to_csv(tmp_path / "probs.csv", index=False)
    result = _score(tmp_path)
    assert result.exit_code == 2
    assert message in result.output and "probs.csv" in result.output
    assert "Traceback" not in result.output


def test_parse_sets():
    assert parse_sets(["train.lr=1e-4", "model.use_llm=false", "model.llm=tiny", "model.lora.targets=[\"q_proj\"]"]) == {
        "train.lr": 1e-4, "model.use_llm": False, "model.llm": "tiny", "model.lora.targets": ["q_proj"]}
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["lr"])


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from aullm_core.data.cache import make_cache
    from aullm_core.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    data = write_synthetic("casme2", root / "casme2", subjects=3, clips_per_subject=2, seed=0, progress=False)
    return make_cache("casme2", data, root / "casme2.h5", progress=False).path


def test_train_end_to_end_and_idempotent(tiny_cache, tmp_path):
    args = ["train", "--cache", str(tiny_cache), "--protocol", "loso", "--preset", "quick", "--folds", "2",
            "--set", "train.epochs=1", "--set", "train.inner_val_share=0.5", "--out", str(tmp_path / "run"),
            "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 folds (0 reused)" in first.output and "TEST-TUNED" in first.output
    payload = json.loads((tmp_path / "run" / "scores.json").read_text())
    names = {p["protocol"] for p in payload["protocols"]}
    assert {"pooled/paper", "pooled/fixed", "pooled/inner", "fold_mean/inner", "pooled/all_positive"} <= names
    predictions = tmp_path / "run" / "predictions.csv"
    frame = pd.read_csv(predictions)
    assert {"clip", "subject", "fold", "AU1", "prob_AU1"} <= set(frame.columns) and frame["fold"].nunique() == 2
    scored = runner.invoke(app, ["score", "--labels", str(predictions), "--probs", str(predictions),
                                 "--threshold", "fixed"])
    assert scored.exit_code == 0, scored.output
    pooled = next(p for p in json.loads(scored.output)["scores"] if p["protocol"] == "pooled/fixed")
    assert pooled["mean_f1_pos"] == pytest.approx(next(p for p in payload["protocols"]
                                                       if p["protocol"] == "pooled/fixed")["mean_f1_pos"])
    aus = [c for c in frame.columns if c.startswith("AU")]
    want = np.mean([f1_score(frame[a], frame[f"prob_{a}"] >= 0.5, zero_division=0) for a in aus])
    assert pooled["mean_f1_pos"] == pytest.approx(want)
    assert len(FoldStore(next((tmp_path / "run" / "folds").iterdir())).entries()) == 2
    md = (tmp_path / "run" / "scores.md").read_text()
    assert "| **mean** |" in md and "all-negative predictor" in md
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "2 folds (2 reused)" in again.output
    assert json.loads((tmp_path / "run" / "scores.json").read_text())["protocols"] == payload["protocols"]


def test_train_bad_options_are_one_line(tiny_cache, tmp_path):
    result = runner.invoke(app, ["train", "--cache", str(tiny_cache), "--protocol", "cross", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--target" in result.output
    result = runner.invoke(app, ["train", "--cache", str(tiny_cache), "--set", "train.nope=1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "train.nope" in result.output
