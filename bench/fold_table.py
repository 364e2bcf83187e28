"""A table of real AU-LLM folds: every configuration of a grid x every LOSO fold, trained once.

The table is what racing strategies are replayed on (``bench/race_replay.py``): with every
(configuration, fold) result at hand, a strategy's search can be rerun many times from its own
search code without training, and its cost (folds) and quality (the true full-LOSO score of what it
returns) read off exactly.

Each fold is trained by the sweep's own fold function through the sweep's own fold store
(``orchestration.folds.trainable.run_fold``: the same ``FoldTask``, fingerprint and store key as a sweep
with ``--pruner none``), one fold at a time on every core. Stored folds are never trained again, so
the script resumes where it stopped; after every configuration it rewrites the compact table
(``--out``, .npz + .json: per-fold test probabilities, labels, inner thresholds and durations, so any
objective can be recomputed). Where the store is gone (a fresh machine), ``--out`` seeds it back.

Besides the grid (``bench/spaces/fold_table.yaml``, 32 configurations), one configuration is trained
again under other training seeds (``--replicates``): the seed-to-seed noise of one configuration,
which the spread between configurations must exceed for a table to rank anything.

    nice -n 19 .venv/bin/python bench/fold_table.py            # hours on 2 cores; rerun to resume
    .venv/bin/python bench/fold_table.py --status               # what is done, what the spread is
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _synth_data import synthetic_dataset

from aullm_core.atomic import atomic_write_bytes, atomic_write_text

SPACE = BENCH / "spaces" / "fold_table.yaml"
OUT = BENCH / "results" / "fold_table"
WORK = Path(os.environ.get("AULLM_FOLD_TABLE_DIR", "/var/tmp/aullm-fold-table"))
#: the configuration trained again under other seeds (the quick preset's values)
REPLICATED = {"train.lr": 3.0e-4, "train.batch_size": 16, "model.lora.r": 16}


def grid(space) -> list[dict]:
    """Every combination of the space's categorical choices, in the space's key order."""
    keys = [p.key for p in space.params]
    choices = [p.candidates() for p in space.params]
    return [dict(zip(keys, values)) for values in itertools.product(*choices)]


def run_order(space, replicates: list[int], seed: int) -> list[tuple[str, dict]]:
    """(label, overrides) in training order: the paper's values, the replicated configuration and its
    seed replicates first (so the noise is known early), then the rest of the grid in a seeded order."""
    cells = grid(space)
    paper = space.start_params()
    first = [("grid", paper), ("grid", REPLICATED)]
    first += [(f"replicate seed {s}", {**REPLICATED, "train.seed": s}) for s in replicates]
    rest = [c for c in cells if c not in (paper, REPLICATED)]
    rng = np.random.default_rng(seed)
    return first + [("grid", rest[i]) for i in rng.permutation(len(rest))]


def export(path: Path, meta: dict, rows: list[dict], store, fold_ids: list[str]) -> None:
    """The compact table: one npz of arrays (probs, labels, inner thresholds per fold) and a JSON
    of everything else. Only configurations with every fold stored are included."""
    arrays: dict[str, np.ndarray] = {}
    configs = []
    for row in rows:
        results = [store.get(row["fp"], "loso", f) for f in fold_ids]
        if any(r is None for r in results):
            continue
        k = len(configs)
        for f, r in zip(fold_ids, results):
            arrays[f"c{k}/{f}/probs"] = np.asarray(r.probs, dtype=np.float32)
            arrays[f"c{k}/{f}/labels"] = np.asarray(r.labels, dtype=np.uint8)
            if r.inner_thresholds is not None:
                arrays[f"c{k}/{f}/inner"] = np.asarray(r.inner_thresholds, dtype=np.float32)
        configs.append({
            **row,
            "durations_s": {f: round(float(r.duration_s), 3) for f, r in zip(fold_ids, results)},
            "clip_ids": {f: list(r.clip_ids) for f, r in zip(fold_ids, results)},
            "best_epoch": {f: r.best_epoch for f, r in zip(fold_ids, results)},
        })
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path.with_suffix(".npz"), buffer.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "configs": configs}, indent=1) + "\n")


def reseed(path: Path, store, configs_by_fp: dict, clips, fold_ids: list[str]) -> int:
    """Put the folds of a committed table back into an empty store, for the same data only.

    The same data is recognised by its content (``content_fp``), not by the cache's header checksum:
    a cache written on another machine covers other modification times. A table written before it
    recorded ``content_fp`` is reused only if every fold's clips and labels equal this data's.
    """
    from aullm_core.train.result import FoldResult

    if not path.with_suffix(".json").is_file():
        return 0
    table = json.loads(path.with_suffix(".json").read_text())
    recorded = table.get("content_fp")
    if recorded is not None and recorded != clips.content_fingerprint:
        print(f"{path}.json holds folds of other data ({recorded} != {clips.content_fingerprint}): not reused")
        return 0
    aus = tuple(table["aus"])
    n = 0
    with np.load(path.with_suffix(".npz")) as arrays:
        for k, row in enumerate(table["configs"]):
            if row["fp"] not in configs_by_fp:
                continue
            for f in fold_ids:
                if f not in row["clip_ids"] or store.has(row["fp"], "loso", f):
                    continue
                labels = arrays[f"c{k}/{f}/labels"]
                mine = clips.meta["subject"].astype(str) == f
                expected = clips.label_matrix(aus)[mine.to_numpy()]
                if row["clip_ids"][f] != [str(c) for c in clips.meta.loc[mine, "clip"]] or not np.array_equal(
                        labels, expected):
                    print(f"{path}.json: fold {f} of configuration {k} holds other clips or labels: not reused")
                    return n
                inner = arrays.get(f"c{k}/{f}/inner")
                result = FoldResult(
                    fold_id=f, protocol="loso", aus=aus, clip_ids=row["clip_ids"][f],
                    subjects=[f] * len(labels), probs=arrays[f"c{k}/{f}/probs"], labels=labels,
                    epoch_losses=[], inner_thresholds=inner, best_epoch=row["best_epoch"][f],
                    duration_s=row["durations_s"][f],
                )
                store.put(row["fp"], "loso", f, result, configs_by_fp[row["fp"]])
                n += 1
    return n


def status(path: Path) -> None:
    """Print what the committed table holds: configurations done, scores, spread against seed noise."""
    from race_table import FoldTable

    table = FoldTable.load(path)
    print(table.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=26, help="Synthetic subjects = LOSO folds (CASME II: 26).")
    parser.add_argument("--clips", type=int, default=6, help="Clips per subject.")
    parser.add_argument("--difficulty", default="easy", help="Synthetic difficulty (realistic or easy).")
    parser.add_argument("--data-seed", type=int, default=0, help="Seed of the synthetic dataset.")
    parser.add_argument("--order-seed", type=int, default=0, help="Seed of the order the grid is trained in.")
    parser.add_argument("--replicates", type=int, nargs="*", default=[2, 3],
                        help="Training seeds the replicated configuration is trained again with (its own is 1).")
    parser.add_argument("--space", type=Path, default=SPACE, help="Grid space YAML (categorical parameters only).")
    parser.add_argument("--work", type=Path, default=WORK, help="Folder of the data, cache and fold store.")
    parser.add_argument("--out", type=Path, default=OUT, help="Compact table (.npz + .json) to write.")
    parser.add_argument("--max-configs", type=int, default=None, help="Stop after this many configurations.")
    parser.add_argument("--status", action="store_true", help="Only print what the written table holds.")
    args = parser.parse_args()
    if args.status:
        status(args.out)
        return

    from aullm_core.data.cache import load_cache, make_cache
    from aullm_core.data.splits import loso_folds
    from aullm_core.errors import CacheError
    from orchestration.folds.store import FoldStore
    from orchestration.folds.task import FoldTask
    from orchestration.folds.trainable import FoldJob, run_fold
    from orchestration.search.space import load_space

    space = load_space(args.space)
    root = synthetic_dataset("casme2", args.subjects, args.clips, seed=args.data_seed,
                             data_dir=args.work / "data", difficulty=args.difficulty)
    cache_path = args.work / f"casme2-{args.subjects}x{args.clips}-s{args.data_seed}.h5"
    try:
        cache = make_cache("casme2", root, cache_path, progress=False).path
    except CacheError:  # the synthetic data was written again (other code): this bench's own cache, rebuilt
        cache = make_cache("casme2", root, cache_path, progress=False, force=True).path
    clips = load_cache(cache)
    fold_ids = sorted(f.fold_id for f in loso_folds(clips))
    data_fp = clips.fingerprint
    store = FoldStore(args.work / "folds" / data_fp)
    job = FoldJob(store_root=str(store.root), cache=str(cache), cpus_per_fold=float(os.cpu_count() or 1))

    order = run_order(space, args.replicates, args.order_seed)
    if args.max_configs is not None:
        order = order[: args.max_configs]
    rows, configs_by_fp = [], {}
    for number, (label, overrides) in enumerate(order):
        config = space.build(overrides)
        rows.append({"number": number, "label": label, "fp": config.fingerprint(), "overrides": overrides})
        configs_by_fp[config.fingerprint()] = config.model_dump(mode="json")
    restored = reseed(args.out, store, configs_by_fp, clips, fold_ids)
    if restored:
        print(f"seeded the store with {restored} folds from {args.out}.npz")
    meta = {
        "what": "AU-LLM LOSO folds, every configuration x every fold (bench/fold_table.py)",
        "space": str(args.space.relative_to(BENCH.parent)) if args.space.is_relative_to(BENCH.parent) else str(args.space),
        "space_text": args.space.read_text(),
        "data": {"style": "casme2", "subjects": args.subjects, "clips_per_subject": args.clips,
                 "clips": len(clips), "difficulty": args.difficulty, "seed": args.data_seed},
        "data_fp": data_fp, "content_fp": clips.content_fingerprint, "aus": [int(a) for a in clips.aus], "fold_ids": fold_ids,
        "objective": "f1_pos:inner:pooled", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads_per_fold": int(job.cpus_per_fold),
    }
    total = len(order) * len(fold_ids)
    done = sum(store.has(r["fp"], "loso", f) for r in rows for f in fold_ids)
    started = time.perf_counter()
    trained = 0
    for row in rows:
        config = space.build(row["overrides"])
        for index, fold_id in enumerate(fold_ids):
            if store.has(row["fp"], "loso", fold_id):
                continue
            task = FoldTask(number=row["number"], fp=row["fp"], experiment=config, protocol="loso",
                            fold_id=fold_id, fold_index=index, data_fp=data_fp)
            out = run_fold(task.to_tune(), job)
            trained += 1
            done += 1
            rate = (time.perf_counter() - started) / trained
            print(f"[{done}/{total}] config {row['number']} {row['label']} {row['overrides']} fold {fold_id}: "
                  f"score {out.fold_score:.3f}, {out.fold_duration_s:.1f} s; "
                  f"~{(total - done) * rate / 3600:.1f} h left", flush=True)
        meta["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        export(args.out, meta, rows, store, fold_ids)
    print(f"table complete: {len(rows)} configurations x {len(fold_ids)} folds -> {args.out}.npz/.json")


if __name__ == "__main__":
    main()
