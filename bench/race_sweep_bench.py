"""The default strategy against no pruning in real sweeps (Ray Tune, Optuna, AU-LLM folds, no replay).

Two sweeps over one fresh synthetic CASME II-style set (a data seed the fold table did not use),
``--sampler random`` with the same seed so both see the same configurations in the same order, one
fold at a time on every core: the default pruner (``race``) and ``--pruner none``. Reported:

- folds trained by each and their ratio;
- the configuration each returns (its best complete one) and its full-LOSO objective;
- the unpruned sweep's best and one standard error of it: the standard deviation of its objective
  over a bootstrap of subjects (resampled folds, the objective recomputed on their pooled clips);
- whether the race's pick scores no lower than that best minus one standard error.

    nice -n 5 .venv/bin/python bench/race_sweep_bench.py --subjects 16 --configs 12 --data-seed 7

Writes bench/results/race_sweep.json (after each sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _synth_data import synthetic_dataset

from aullm_core.atomic import atomic_write_text

RESULTS = BENCH / "results" / "race_sweep.json"
QUICK_SPACE = BENCH.parent / "search_spaces" / "quick.yaml"


def bootstrap_se(results: list, objective, *, draws: int, seed: int) -> float:
    """Standard deviation of the objective over subjects resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(results), len(results))
        values.append(objective.of_results([results[i] for i in pick]))
    return float(np.std(values, ddof=1))


def sweep(name: str, pruner: str, args: argparse.Namespace, cache: Path, work: Path) -> dict:
    from orchestration.sweep.folder import SweepFolder
    from orchestration.sweep.run import run_sweep
    from orchestration.sweep.settings import SweepSettings

    started = time.perf_counter()
    for _ in range(3):  # a sweep that stopped before its end (killed, a fold slot lost) is resumed
        settings = SweepSettings(name=name, space=args.space, cache=cache, workdir=work, n_configs=args.configs,
                                 pruner=pruner, sampler="random", seed=args.seed,
                                 cpus_per_fold=float(os.cpu_count() or 1), tracking_uri="none",
                                 resume=(work / "sweeps" / name / "sweep.json").is_file())
        summary = run_sweep(settings, progress=True)
        if summary.finished:
            break
    else:
        raise SystemExit(f"sweep {name} did not finish in three runs: {summary.sweep_dir}")
    store = SweepFolder(Path(summary.sweep_dir)).store
    board = summary.leaderboard
    return {
        "pruner": pruner, "finished": summary.finished, "wall_s": time.perf_counter() - started,
        "folds_trained": len(store.entries()),
        "folds_unpruned": summary.loso_folds_unpruned, "returned_fp": summary.best_fp,
        "returned": summary.best_overrides, "returned_score": summary.best_score,
        "configs": [{"number": int(r.number), "fp": r.config_fp, "status": r.status, "folds": int(r.folds_done),
                     "objective": None if r.objective != r.objective else float(r.objective)}
                    for r in board.itertuples()],
        "sweep_dir": str(summary.sweep_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=16, help="Synthetic subjects = LOSO folds (at least 14).")
    parser.add_argument("--clips", type=int, default=6, help="Clips per subject.")
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--data-seed", type=int, default=7, help="Seed of the data (the fold table used 0).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of both sweeps (sampler and fold order).")
    parser.add_argument("--configs", type=int, default=12, help="Configurations per sweep (at least 10).")
    parser.add_argument("--space", type=Path, default=QUICK_SPACE)
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap draws over subjects.")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aullm-race-sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from aullm_core.data.cache import make_cache
    from aullm_core.train.objective import DEFAULT_OBJECTIVE
    from orchestration.sweep.folder import SweepFolder

    root = synthetic_dataset("casme2", args.subjects, args.clips, seed=args.data_seed, difficulty=args.difficulty)
    work = args.work / f"{args.subjects}x{args.clips}-s{args.data_seed}-{args.difficulty}"
    cache = make_cache("casme2", root, work / "casme2.h5", progress=False).path
    result: dict = {
        "what": "default pruner (race) vs none, real Ray sweeps of AU-LLM folds, same random proposals",
        "data": {"style": "casme2", "subjects": args.subjects, "clips_per_subject": args.clips,
                 "difficulty": args.difficulty, "seed": args.data_seed},
        "setup": {"configs": args.configs, "sampler": "random", "seed": args.seed, "space": args.space.name,
                  "slots": 1, "objective": str(DEFAULT_OBJECTIVE), "bootstrap_draws": args.bootstrap},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "sweeps": {},
    }
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    for name, pruner in (("race", "race"), ("none", "none")):
        result["sweeps"][name] = sweep(name, pruner, args, cache, work)
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    ray.shutdown()
    race, full = result["sweeps"]["race"], result["sweeps"]["none"]
    results = SweepFolder(Path(full["sweep_dir"])).store.results(full["returned_fp"], "loso")
    se = bootstrap_se(results, DEFAULT_OBJECTIVE, draws=args.bootstrap, seed=args.seed)
    result["comparison"] = {
        "folds_ratio": race["folds_trained"] / full["folds_trained"],
        "unpruned_best": full["returned_score"], "unpruned_best_se": se,
        "race_returned_score": race["returned_score"],
        "race_minus_unpruned_best": race["returned_score"] - full["returned_score"],
        "within_one_se": race["returned_score"] >= full["returned_score"] - se,
        "same_configuration": race["returned_fp"] == full["returned_fp"],
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["comparison"], indent=1))


if __name__ == "__main__":
    main()
