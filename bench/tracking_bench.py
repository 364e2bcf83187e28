"""What MLflow tracking costs the sweep's driver per fold, on the file system a sweep folder lives on.

The driver alone writes to MLflow: per fold one run (metrics per AU and protocol, the loss history,
predictions.csv) and an update of its configuration's run. This logs ``--configs`` x ``--folds``
synthetic fold results with the real ``MlflowTracker`` to a SQLite file in ``--dir`` and, as the
baseline measured in the same run, stores the same results with the real ``FoldStore`` (what a
worker writes per fold) in the same folder. Run it on a cluster's shared file system to see what
SQLite on NFS costs there:

    .venv/bin/python bench/tracking_bench.py                          # a temporary folder here
    .venv/bin/python bench/tracking_bench.py --dir /shared/aullm/tmp --out /shared/aullm/tracking.json

Writes bench/results/tracking_bench.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from aullm_core.atomic import atomic_write_text
from aullm_core.config import ExperimentConfig
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import loso_folds
from aullm_core.train.result import FoldResult
from orchestration.folds.store import FoldStore
from orchestration.tracking.mlflow_tracker import MlflowTracker

RESULTS = Path(__file__).parent / "results" / "tracking_bench.json"
AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17)


def _clips(subjects: int, per_subject: int, rng: np.random.Generator) -> ClipSet:
    names = [f"s{i:02d}" for i in range(1, subjects + 1) for _ in range(per_subject)]
    meta = pd.DataFrame({"subject": names, "clip": [f"{s}_{i}" for i, s in enumerate(names)], "onset": 0,
                         "apex": 2, "offset": 5, "emotion": "other", "n_frames": 6})
    labels = (rng.random((len(names), len(AUS))) < 0.3).astype(np.uint8)
    return ClipSet(name="casme2", frames=[np.zeros((6, 8, 8), np.uint8)] * len(names), meta=meta, aus=AUS,
                   labels=labels)


def _results(clips: ClipSet, rng: np.random.Generator, epochs: int) -> list[FoldResult]:
    out = []
    for fold in loso_folds(clips):
        labels = clips.label_matrix(fold.aus)[fold.test_idx].astype(np.uint8)
        out.append(FoldResult.for_fold(
            fold, clips, labels=labels, probs=rng.random(labels.shape).astype(np.float32),
            epoch_losses=list(np.linspace(1.0, 0.3, epochs)), inner_thresholds=np.full(len(fold.aus), 0.5),
            duration_s=60.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="Folder to write in (default: a temporary one).")
    parser.add_argument("--configs", type=int, default=4, help="Configurations (default 4).")
    parser.add_argument("--folds", type=int, default=26, help="LOSO folds per configuration (default 26, CASME II).")
    parser.add_argument("--epochs", type=int, default=20, help="Loss history length per fold (default 20).")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"Results file (default {RESULTS}).")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    clips = _clips(args.folds, 10, rng)
    params = ExperimentConfig.preset("quick").model_dump(mode="json")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        tracker = MlflowTracker(f"sqlite:///{root / 'mlflow.db'}", "bench")
        tracker.start(space={}, settings={})
        store = FoldStore(root / "folds")
        track_s, store_s, config_s = [], [], []
        for number in range(args.configs):
            fp = f"{number:016x}"
            results = _results(clips, rng, args.epochs)
            for result in results:  # as the driver: a worker stores the fold, the driver logs its run
                mark = time.perf_counter()
                store.put(fp, result.protocol, result.fold_id, result, params)
                store_s.append(time.perf_counter() - mark)
                mark = time.perf_counter()
                tracker.log_fold(fp, params, result, duration_s=result.duration_s)
                track_s.append(time.perf_counter() - mark)
            mark = time.perf_counter()  # the configuration's run, once its folds are in
            tracker.log_config(fp, params, results, status="complete", n_folds_total=len(results), number=number)
            config_s.append(time.perf_counter() - mark)
        tracker.close("FINISHED")
        where = str(args.dir.resolve()) if args.dir else tempfile.gettempdir()
    report = {
        "tracking_ms_per_fold_median": 1000 * statistics.median(track_s),
        "tracking_ms_per_fold_p90": 1000 * float(np.quantile(track_s, 0.9)),
        "tracking_ms_per_config_median": 1000 * statistics.median(config_s),
        "store_ms_per_fold_median": 1000 * statistics.median(store_s),
        "tracking_over_store": statistics.median(track_s) / statistics.median(store_s),
        "fold_runs": len(track_s),
        "configs": args.configs,
        "folds": args.folds,
        "clips_per_fold": 10,
        "aus": len(AUS),
        "epochs": args.epochs,
        "dir": where,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
