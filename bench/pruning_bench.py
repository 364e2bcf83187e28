"""How many folds does Wilcoxon pruning save, and does it still find as good a configuration?

Two sweeps over the same synthetic CASME II-style dataset (26 subjects x 10 clips = 26 LOSO folds,
written by ``write_synthetic`` and cached by ``make_cache``), the same search space, the same
number of configurations and the same seeds; one with ``--pruner wilcoxon`` (the default), one
with ``--pruner none`` (the baseline, in the same run). Real Ray Tune, Optuna, fold store; tracking
off (it does not change which folds run).

    saving = 1 - folds_trained_pruned / folds_trained_full

and, for each sweep, its best configuration and that configuration's full LOSO score (the
objective, pooled positive-class F1 with inner thresholds; a best configuration always has every
fold). Training is deterministic, so a configuration both sweeps tried scores the same in both;
the JSON also says where each sweep's best ranks in the other sweep.

The folds are trained by ``bench/_frame_diff_fold.py`` (a linear AU head on apex-minus-onset
frames, trained with the configuration's learning rate, weight decay, epochs, dropout, loss and
inner thresholds; ~0.1 s a fold): the AU-LLM model gives no signal in folds short enough for
hundreds of them on 2 CPU cores (3-4 epochs: pooled F1 ~0.1 whatever the learning rate). On a GPU
machine, ``--fold-fn aullm_core.train.fold.train_fold --space search_spaces/quick.yaml`` runs the
same comparison with the real model.

    .venv/bin/python bench/pruning_bench.py                   # 20 configurations per sweep
    .venv/bin/python bench/pruning_bench.py --configs 10 --seed 1

Writes bench/results/pruning_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _synth_data import synthetic_dataset

from aullm_core.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "pruning_bench.json"
SPACE = """\
base: quick
fixed: {train.inner_val_share: 0.2, train.inner_refit: false}
params:
  train.lr: {type: float, low: 1.0e-5, high: 1.0, log: true}
  train.weight_decay: {type: float, low: 0.0, high: 0.05}
  train.epochs: {type: int, low: 20, high: 300, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.7}
  train.loss: {type: categorical, choices: [faithful, asl, bce]}
"""
BENCH = Path(__file__).resolve().parent


def _sweep(name: str, pruner: str, args: argparse.Namespace, space: Path, cache: Path, work: Path) -> dict:
    from orchestration.fold_store import FoldStore
    from orchestration.settings import SweepSettings
    from orchestration.sweep import run_sweep

    settings = SweepSettings(
        name=name, space=space, cache=cache, workdir=work, n_configs=args.configs, pruner=pruner,
        p_threshold=args.p_threshold, seed=args.seed, concurrency=2, max_concurrent_configs=1,
        startup_configs=args.startup, tracking_uri="none", fold_fn=args.fold_fn, fold_metric=args.fold_metric,
    )
    started = time.perf_counter()
    summary = run_sweep(settings, progress=True)
    wall = time.perf_counter() - started
    store = FoldStore(Path(summary.sweep_dir) / "folds")
    board = summary.leaderboard
    return {
        "folds_trained": len(store.entries()),
        "best_config_fp": summary.best_fp,
        "best_config": summary.best_overrides,
        "best_full_loso_score": summary.best_score,
        "n_complete": summary.n_complete,
        "n_pruned": summary.n_pruned,
        "wall_s": wall,
        "configs": [
            {"fp": r.config_fp, "state": r.state, "objective": None if r.objective != r.objective else r.objective,
             "folds_done": int(r.folds_done)}
            for r in board.itertuples()
        ],
    }


def _rank(fp: str | None, other: dict) -> dict:
    """Where configuration ``fp`` stands in the other sweep (same fingerprint = same folds, same scores)."""
    for entry in other["configs"]:
        if entry["fp"] == fp:
            complete = sorted((c["objective"] for c in other["configs"] if c["objective"] is not None), reverse=True)
            rank = complete.index(entry["objective"]) + 1 if entry["objective"] is not None else None
            return {"state": entry["state"], "objective": entry["objective"], "rank_among_complete": rank}
    return {"state": "not sampled"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=20, help="Configurations per sweep.")
    parser.add_argument("--subjects", type=int, default=26, help="Synthetic subjects = LOSO folds.")
    parser.add_argument("--clips", type=int, default=10, help="Clips per subject.")
    parser.add_argument("--space", type=Path, default=None, help="Search space YAML (default: the one above).")
    parser.add_argument("--fold-fn", default="_frame_diff_fold.frame_diff_fold", help="Fold training function.")
    parser.add_argument("--startup", type=int, default=5, help="Random configurations before TPE.")
    parser.add_argument("--p-threshold", default=0.1, type=lambda v: v if v == "pocock" else float(v))
    parser.add_argument("--fold-metric", default="auto", help="Per-fold score for pruning (auto: f1_pos_inner).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
    import ray

    from aullm_core.data.cache import make_cache

    started = time.perf_counter()
    root = synthetic_dataset("casme2", args.subjects, args.clips, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="aullm-pruning-"))
    cache = make_cache("casme2", root, work / "casme2.h5", progress=False).path
    space = args.space
    if space is None:
        space = work / "space.yaml"
        space.write_text(SPACE)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pruned = _sweep("pruned", "wilcoxon", args, space, cache, work)
    full = _sweep("full", "none", args, space, cache, work)
    ray.shutdown()

    gap = None
    if pruned["best_full_loso_score"] is not None and full["best_full_loso_score"] is not None:
        gap = full["best_full_loso_score"] - pruned["best_full_loso_score"]
    result = {
        "folds_trained_pruned": pruned["folds_trained"],
        "folds_trained_full": full["folds_trained"],
        "saving": 1.0 - pruned["folds_trained"] / full["folds_trained"],
        "best_pruned": {k: pruned[k] for k in ("best_config_fp", "best_config", "best_full_loso_score")},
        "best_full": {k: full[k] for k in ("best_config_fp", "best_config", "best_full_loso_score")},
        "best_score_gap_full_minus_pruned": gap,
        "within_0.02": gap is not None and gap <= 0.02,
        "pruned_best_in_full_sweep": _rank(pruned["best_config_fp"], full),
        "full_best_in_pruned_sweep": _rank(full["best_config_fp"], pruned),
        "sweeps": {"pruned": pruned, "full": full},
        "setup": {
            "configs": args.configs, "subjects": args.subjects, "clips_per_subject": args.clips,
            "fold_fn": args.fold_fn, "space": SPACE if args.space is None else str(args.space),
            "seed": args.seed, "p_threshold": args.p_threshold,
            "prune_startup_folds": 2, "startup_configs": args.startup, "objective": "f1_pos:inner:pooled",
            "fold_metric": args.fold_metric, "slots": 2, "max_concurrent_configs": 1,
        },
        "bench_wall_s": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work while measured)",
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sweeps"}, indent=1))


if __name__ == "__main__":
    main()
