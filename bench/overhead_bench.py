"""Orchestration overhead of a sweep of short folds: how much of the slots' time is training?

    efficiency = sum of fold training times / (sweep wall time x parallel slots)

The sweep is the real thing: ``run_sweep`` with the real ``train_fold`` on a synthetic CASME II-style
cache, Ray Tune with ``reuse_actors`` and one fold per trial, the Optuna searcher, the fold store
and MLflow tracking on SQLite; 2 slots (one CPU each) on this machine. Fold training time is each
FoldResult's own ``duration_s`` (measured inside ``train_fold``), so everything else counts as
overhead: trial start-up, result reporting, searcher and tracking calls, idle slots. Ray is
started before the clock (its 5-8 s start-up is reported apart), the sweep's own wall time is
what is measured. The baseline in the same run is the same folds' training time.

    .venv/bin/python bench/overhead_bench.py                  # 4 configurations x 26 LOSO folds
    .venv/bin/python bench/overhead_bench.py --configs 2 --subjects 10

Writes bench/results/overhead_bench.json.
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

RESULTS = Path(__file__).parent / "results" / "overhead_bench.json"
SPACE = """\
base: quick
fixed: {train.epochs: 2, train.batch_size: 32, train.inner_refit: false, model.efp_input: high}
params:
  train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
  model.dropout: {type: float, low: 0.1, high: 0.5}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=4, help="Configurations (each runs every LOSO fold).")
    parser.add_argument("--subjects", type=int, default=26, help="Synthetic subjects = LOSO folds (CASME II: 26).")
    parser.add_argument("--clips", type=int, default=2, help="Clips per subject (few: short folds).")
    parser.add_argument("--slots", type=int, default=2, help="Folds at once (one CPU each).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import ray

    from aullm_core.data.cache import make_cache
    from orchestration.cli.wiring import sweep_hooks
    from orchestration.sweep.folder import SweepFolder
    from orchestration.sweep.run import run_sweep
    from orchestration.sweep.settings import SweepSettings

    root = synthetic_dataset("casme2", args.subjects, args.clips, seed=0)
    work = Path(tempfile.mkdtemp(prefix="aullm-overhead-"))
    cache = make_cache("casme2", root, work / "casme2.h5", progress=False).path
    space = work / "space.yaml"
    space.write_text(SPACE)

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - t0
    settings = SweepSettings(name="overhead", space=space, cache=cache, workdir=work, n_configs=args.configs,
                             pruner="none", concurrency=args.slots, max_concurrent_configs=2, seed=0)
    t0 = time.perf_counter()
    summary = run_sweep(settings, sweep_hooks(), progress=False)  # tracked in MLflow, as `aullm sweep`
    wall = time.perf_counter() - t0
    ray.shutdown()

    store = SweepFolder(Path(summary.sweep_dir)).store
    durations = [r.duration_s for fp, protocol, fold in store.entries() for r in [store.get(fp, protocol, fold)] if r]
    busy = sum(durations)
    result = {
        "efficiency": busy / (wall * args.slots),
        "sum_fold_training_s": busy,
        "sweep_wall_s": wall,
        "slots": args.slots,
        "folds": len(durations),
        "mean_fold_s": busy / len(durations),
        "ray_start_s": ray_start_s,
        "phases_s": summary.phases,
        "worker_startup_note": "the first fold in each worker process also imports torch/transformers/peft "
        "and builds the frozen LLM; that time is outside train_fold's duration, so it counts as overhead",
        "efficiency_including_ray_start": busy / ((wall + ray_start_s) * args.slots),
        "configs": args.configs,
        "subjects": args.subjects,
        "clips_per_subject": args.clips,
        "tracking": "mlflow sqlite",
        "reuse_actors": True,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work while measured)",
        "load_average_1min_after": os.getloadavg()[0],
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
