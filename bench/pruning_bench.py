"""How many folds does Wilcoxon pruning save on AU-LLM folds, and does it still find the best?

For each seed, two sweeps over the same synthetic CASME II-style dataset (by default the easy
difficulty, 8 subjects x 6 clips = 8 LOSO folds, where AU-LLM folds carry signal), the same search
space (``search_spaces/quick.yaml``), the same number of configurations and the same seed: one with
``--pruner wilcoxon``, one with ``--pruner none`` (the baseline, in the same run). Real Ray Tune,
Optuna, fold store, AU-LLM folds (``aullm_core.train.fold.train_fold``, the quick preset); tracking
off (it does not change which folds run).

    saving = 1 - folds_trained_pruned / folds_trained_full

and, for each sweep, its best configuration, that configuration's full LOSO score (the objective:
pooled positive-class F1 with inner thresholds; a best configuration always has every fold) and,
where the two sweeps' bests differ, the paired per-subject difference of their fold scores. Wall
time beside fold counts.

``--fold-fn _frame_diff_fold.frame_diff_fold --space <surrogate space>`` reruns the older
surrogate comparison (a linear AU head on frame differences, ~0.1 s a fold); its results are in
``bench/results/pruning_bench_surrogate.json``, a second, labelled figure.

    .venv/bin/python bench/pruning_bench.py                        # 12 configurations, seeds 0 and 1
    .venv/bin/python bench/pruning_bench.py --configs 6 --seeds 0

Writes bench/results/pruning_bench.json (after every seed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _synth_data import synthetic_dataset

from aullm_core.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "pruning_bench.json"
BENCH = Path(__file__).resolve().parent
QUICK_SPACE = BENCH.parent / "search_spaces" / "quick.yaml"


def _sweep(name: str, pruner: str, args: argparse.Namespace, seed: int, space: Path, cache: Path,
           work: Path) -> dict:
    from orchestration.folds.trainable import FoldCode
    from orchestration.sweep.folder import SweepFolder
    from orchestration.sweep.run import SweepHooks, run_sweep
    from orchestration.sweep.settings import SweepSettings

    settings = SweepSettings(
        name=name, space=space, cache=cache, workdir=work, n_configs=args.configs, pruner=pruner,
        p_threshold=args.p_threshold, seed=seed, concurrency=1, cpus_per_fold=2, max_concurrent_configs=1,
        startup_configs=args.startup, tracking_uri="none", fold_metric=args.fold_metric,
    )
    module, _, function = args.fold_fn.rpartition(".")
    code = FoldCode(fold_fn=getattr(importlib.import_module(module), function))
    started = time.perf_counter()
    summary = run_sweep(settings, SweepHooks(code=code), progress=True)
    wall = time.perf_counter() - started
    store = SweepFolder(Path(summary.sweep_dir)).store
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
            {"fp": r.config_fp, "state": r.status, "objective": None if r.objective != r.objective else r.objective,
             "folds_done": int(r.folds_done)}
            for r in board.itertuples()
        ],
        "best_fold_scores": _fold_scores(store, summary.best_fp, args.fold_metric),
    }


def _fold_scores(store, fp: str | None, fold_metric: str) -> dict[str, float]:
    """Per-subject fold scores of a configuration (the pruner's metric), from the sweep's store."""
    from aullm_core.train.objective import FoldScore

    if fp is None:
        return {}
    score = FoldScore.parse("f1_pos:inner" if fold_metric == "auto" else fold_metric)
    return {r.fold_id: score.of(r) for r in store.results(fp, "loso")}


def _paired(pruned: dict, full: dict) -> dict | None:
    """Paired per-subject difference (full best minus pruned best) where the two bests differ."""
    if pruned["best_config_fp"] == full["best_config_fp"]:
        return None
    a, b = pruned["best_fold_scores"], full["best_fold_scores"]
    common = sorted(set(a) & set(b))
    diffs = [b[f] - a[f] for f in common]
    return {"subjects": len(common), "mean": sum(diffs) / len(diffs) if diffs else None,
            "per_subject": dict(zip(common, diffs))}


def _rank(fp: str | None, other: dict) -> dict:
    """Where configuration ``fp`` stands in the other sweep (same fingerprint = same folds, same scores)."""
    for entry in other["configs"]:
        if entry["fp"] == fp:
            complete = sorted((c["objective"] for c in other["configs"] if c["objective"] is not None), reverse=True)
            rank = complete.index(entry["objective"]) + 1 if entry["objective"] is not None else None
            return {"state": entry["state"], "objective": entry["objective"], "rank_among_complete": rank}
    return {"state": "not sampled"}


def _compare(pruned: dict, full: dict) -> dict:
    gap = None
    if pruned["best_full_loso_score"] is not None and full["best_full_loso_score"] is not None:
        gap = full["best_full_loso_score"] - pruned["best_full_loso_score"]
    return {
        "folds_trained_pruned": pruned["folds_trained"],
        "folds_trained_full": full["folds_trained"],
        "saving": 1.0 - pruned["folds_trained"] / full["folds_trained"],
        "wall_s_pruned": pruned["wall_s"],
        "wall_s_full": full["wall_s"],
        "same_best": pruned["best_config_fp"] == full["best_config_fp"],
        "best_pruned": {k: pruned[k] for k in ("best_config_fp", "best_config", "best_full_loso_score")},
        "best_full": {k: full[k] for k in ("best_config_fp", "best_config", "best_full_loso_score")},
        "best_score_gap_full_minus_pruned": gap,
        "paired_fold_difference_full_minus_pruned": _paired(pruned, full),
        "pruned_best_in_full_sweep": _rank(pruned["best_config_fp"], full),
        "full_best_in_pruned_sweep": _rank(full["best_config_fp"], pruned),
        "sweeps": {"pruned": pruned, "full": full},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=12, help="Configurations per sweep.")
    parser.add_argument("--subjects", type=int, default=8, help="Synthetic subjects = LOSO folds.")
    parser.add_argument("--clips", type=int, default=6, help="Clips per subject.")
    parser.add_argument("--difficulty", default="easy", help="Synthetic difficulty (realistic or easy).")
    parser.add_argument("--space", type=Path, default=QUICK_SPACE, help="Search space YAML.")
    parser.add_argument("--fold-fn", default="aullm_core.train.fold.train_fold", help="Fold training function.")
    parser.add_argument("--startup", type=int, default=5, help="Random configurations before TPE.")
    parser.add_argument("--p-threshold", default=0.1, type=lambda v: v if v == "pocock" else float(v))
    parser.add_argument("--fold-metric", default="auto", help="Per-fold score for pruning, <f1_pos|f1_macro>:<inner|fixed> (auto: f1_pos:inner).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="One pair of sweeps per seed.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
    import ray

    from aullm_core.data.cache import make_cache

    started = time.perf_counter()
    result: dict = {
        "setup": {
            "configs": args.configs, "subjects": args.subjects, "clips_per_subject": args.clips,
            "difficulty": args.difficulty, "fold_fn": args.fold_fn, "space": str(args.space.name),
            "space_text": args.space.read_text(), "seeds": args.seeds, "p_threshold": args.p_threshold,
            "prune_startup_folds": 2, "startup_configs": args.startup, "objective": "f1_pos:inner:pooled",
            "fold_metric": args.fold_metric, "slots": 1, "cpus_per_fold": 2, "max_concurrent_configs": 1,
        },
        "seeds": {},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    for seed in args.seeds:
        root = synthetic_dataset("casme2", args.subjects, args.clips, seed=seed, difficulty=args.difficulty)
        work = Path(tempfile.mkdtemp(prefix="aullm-pruning-"))
        cache = make_cache("casme2", root, work / "casme2.h5", progress=False).path
        pruned = _sweep("pruned", "wilcoxon", args, seed, args.space, cache, work)
        full = _sweep("full", "none", args, seed, args.space, cache, work)
        result["seeds"][str(seed)] = _compare(pruned, full)
        result["bench_wall_s"] = time.perf_counter() - started
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result["seeds"][str(seed)].items() if k != "sweeps"}, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
