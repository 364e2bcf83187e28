"""`aullm demo` end to end from nothing (small sizes): every step's output exists and is consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestration.sweep.folder import SweepFolder
from orchestration.tracking.mlflow_tracker import default_tracking_uri

MAIN = "from orchestration.cli.main import main; main()"


@pytest.mark.slow
def test_demo_from_a_fresh_folder(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, "demo", "--workdir", str(workdir), "--subjects", "4", "--cross-subjects", "3",
         "--clips-per-subject", "3", "--trials", "2"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Done" in out and "aullm ui --workdir" in out

    sweep_dir = workdir / "sweeps" / "demo"
    report = sweep_dir / "report"
    assert {"report.md", "leaderboard.csv", "per_au_f1.png", "fold_au_heatmap.png",
            "pruning_timeline.png"} <= {p.name for p in report.iterdir()}
    model = workdir / "model"
    assert {"manifest.json", "model.safetensors", "config.json", "card.json", "MODEL_CARD.md"} <= {
        p.name for p in model.iterdir()}
    card = json.loads((model / "card.json").read_text())
    assert card["cross_domain"], "the best configuration was trained cross-domain"

    # MLflow: one sweep run, a fold run per stored fold, nothing left RUNNING, a registered version.
    client = MlflowClient(default_tracking_uri(workdir))
    exp = client.get_experiment_by_name("aullm")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_level: dict[str, list] = {}
    for run in runs:
        by_level.setdefault(run.data.tags.get("aullm.level", "?"), []).append(run)
    store = SweepFolder(sweep_dir).store
    assert len(by_level["sweep"]) == 1
    assert len(by_level["fold"]) == len(store.entries())
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert client.get_model_version("aullm-demo", "1").run_id == by_level["export"][0].info.run_id

    # The sweep starts from the paper's values, labelled; the summary sets them beside the best and the
    # label-free predictors, with the data size and difficulty.
    import pandas as pd

    board = pd.read_csv(sweep_dir / "leaderboard.csv")
    paper = board[board["label"] == "paper defaults"]
    assert len(paper) == 1 and int(paper["number"].iloc[0]) == 0
    assert float(paper["param.train.lr"].iloc[0]) == 3e-5
    for text in ("best configuration", "paper's values", "all-positive predictor", "prior-rate predictor",
                 "12 clips of 4 subjects, easy difficulty", "95% intervals over subjects"):
        assert text in " ".join(out.split()), text
    record = json.loads((workdir / "demo.json").read_text())  # the same comparison, for scripts
    assert [r["what"].split(" (")[0] for r in record["comparison"]][-2:] == ["all-positive predictor",
                                                                             "prior-rate predictor"]
    assert record["comparison"][-2]["f1_pos"] == record["baselines"]["all_positive"]
    assert record["data"] == "12 clips of 4 subjects, easy difficulty" and record["folds_trained"] >= 8
    assert record["pruner"] == "race" and record["loso_folds_run"] == sum(1 for e in store.entries() if e[1] == "loso")
    assert record["loso_folds_unpruned"] == 2 * 4 and "an unpruned sweep would train" in " ".join(out.split())
    from aullm_core.data.cache import load_cache

    assert load_cache(workdir / "caches" / "casme2_synth.h5").attrs["synthetic"]["difficulty"] == "easy"

    # Predictions printed for the example clip.
    assert "probability" in out and "AU1" in out
