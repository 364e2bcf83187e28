"""Replay pruning and racing strategies on a table of real folds, through the sweep's own search code.

Each replay is one sweep as ``aullm sweep`` runs it, minus the training: the project's
``FoldSearcher`` (its Optuna study, sampler, pruner or race, fold orders and scheduling) hands out
folds as Ray Tune would, and a simulated cluster of ``slots`` fold slots finishes each fold after the
duration it took when the table was trained; its result is the table's stored fold (a ``FoldStore``
filled from the table, so the searcher scores configurations exactly as in a sweep). The space is
the table's grid (``bench/spaces/fold_table.yaml``): every configuration the sampler proposes is a
cell of the table.

Per strategy, over ``--seeds`` replay seeds and each slot count: folds spent (and as a fraction of an
unpruned sweep's), the true full-LOSO score of the configuration the sweep returns (its best complete
one), regret against the table's best, simulated wall time and slot utilisation, and the anytime
curves (the returned configuration's true score against folds spent and against simulated time; mean
and 95% interval over seeds). Writes ``--out`` (.json) and a plot (.png).

    .venv/bin/python bench/race_replay.py --seeds 30
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from race_table import FoldTable

from aullm_core.atomic import atomic_write_bytes, atomic_write_text

TABLE = BENCH / "results" / "fold_table"
OUT = BENCH / "results" / "race_replay"
SPACE = BENCH / "spaces" / "fold_table.yaml"

#: name -> SweepSettings fields (the strategies replayed side by side)
STRATEGIES: dict[str, dict] = {
    "none": {"pruner": "none"},
    "wilcoxon": {"pruner": "wilcoxon", "p_threshold": 0.1},
    "wilcoxon-pocock": {"pruner": "wilcoxon", "p_threshold": "pocock"},
    "median": {"pruner": "median"},
    "race-3-3": {"pruner": "race", "race_min_folds": 3, "race_eta": 3.0},
    "race-2-3": {"pruner": "race", "race_min_folds": 2, "race_eta": 3.0},
    "race-4-2": {"pruner": "race", "race_min_folds": 4, "race_eta": 2.0},
    "race-5-3": {"pruner": "race", "race_min_folds": 5, "race_eta": 3.0},
    "race-3-2": {"pruner": "race", "race_min_folds": 3, "race_eta": 2.0},
}


@dataclass
class Replay:
    """One replayed sweep: what it spent and what it returned, step by step."""

    folds: int = 0
    busy_s: float = 0.0
    wall_s: float = 0.0
    returned: str | None = None
    curve: list[tuple[int, float, str | None]] = field(default_factory=list)  # (folds, time, returned fp)
    configs: dict[int, dict] = field(default_factory=dict)


def fill_store(table: FoldTable, root: Path) -> None:
    """The table's folds in a fold store, keyed as a sweep keys them."""
    from orchestration.folds.store import FoldStore
    from orchestration.search.space import load_space

    space = load_space(SPACE)
    store = FoldStore(root)
    for config in table.configs:
        experiment = space.build({k: v for k, v in config.overrides.items()})
        for fold_id, result in config.results.items():
            store.put(config.fp, "loso", fold_id, result, experiment.model_dump(mode="json"))


def best_complete(searcher) -> str | None:
    """The configuration a sweep returns now: its best complete one (the leaderboard's first)."""
    done = [s for s in searcher.configs.values() if s.status == "complete" and s.value is not None]
    return max(done, key=lambda s: (s.value, -s.number)).fp if done else None


def replay(table: FoldTable, strategy: dict, *, seed: int, slots: int, n_configs: int, sampler: str,
           store_root: Path, fold_scores: dict[str, dict[str, float]]) -> Replay:
    """One sweep of ``strategy`` on a simulated cluster of ``slots`` fold slots."""
    from orchestration.folds.outcome import FoldOutcome
    from orchestration.folds.task import FoldTask
    from orchestration.search.plan import SearchCore, SearchPlan
    from orchestration.search.searcher import FoldSearcher
    from orchestration.search.space import load_space

    plan = SearchPlan(seed=seed, sampler=sampler, **strategy)
    core = SearchCore(plan, table.fold_ids)
    searcher = FoldSearcher(
        space=load_space(SPACE), fold_ids=table.fold_ids, data_fp=table.meta["data_fp"], store_root=store_root,
        study_path=None, study_name=f"replay-{seed}", n_configs=n_configs,
        max_concurrent_configs=core.configs_in_flight(slots), plan=plan,
    )
    searcher.set_max_concurrency(slots)
    out = Replay()
    running: list[tuple[float, int, str, dict]] = []
    now, serial = 0.0, 0
    while True:
        while len(running) < slots:
            trial_id = f"t{serial}"
            task = searcher.suggest(trial_id)
            if not isinstance(task, dict):
                break
            serial += 1
            duration = table.duration(task["fp"], task["fold_id"])
            heapq.heappush(running, (now + duration, serial, trial_id, task))
        if not running:
            break
        finish, _, trial_id, task = heapq.heappop(running)
        out.busy_s += table.duration(task["fp"], task["fold_id"])
        now = finish
        out.folds += 1
        fold = FoldTask.model_validate(task)
        outcome = FoldOutcome(number=fold.number, fp=fold.fp, protocol=fold.protocol, fold_id=fold.fold_id,
                              fold_index=fold.fold_index, fold_score=fold_scores[fold.fp][fold.fold_id], trained=False,
                              fold_duration_s=table.duration(fold.fp, fold.fold_id))
        searcher.on_trial_complete(trial_id, outcome.to_tune())
        out.curve.append((out.folds, now, best_complete(searcher)))
    if not searcher.is_done:
        raise RuntimeError(f"replay stalled: nothing running, searcher not done ({strategy}, seed {seed})")
    out.wall_s = now
    out.returned = best_complete(searcher)
    out.configs = {s.number: {"fp": s.fp, "status": s.status, "folds": len(s.scores)} for s in searcher.configs.values()}
    return out


def interval(values: list[float]) -> dict:
    """Mean and a 95% t-interval of the mean."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(a)}


def anytime(replays: list[Replay], truth: dict[str, float], best: float, *, by: str, grid: np.ndarray) -> dict:
    """Regret of the returned configuration against folds spent (or simulated time), over seeds."""
    rows = []
    for r in replays:
        xs = np.array([c[0] if by == "folds" else c[1] for c in r.curve])
        regrets = np.array([best - truth[c[2]] if c[2] is not None else np.nan for c in r.curve])
        idx = np.searchsorted(xs, grid, side="right") - 1
        rows.append(np.where(idx >= 0, regrets[np.clip(idx, 0, None)], np.nan))
    m = np.array(rows)
    mean = np.nanmean(m, axis=0)
    sd = np.nanstd(m, axis=0, ddof=1)
    n = np.sum(~np.isnan(m), axis=0)
    half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
    return {"x": grid.tolist(), "mean": mean.tolist(), "lo": (mean - half).tolist(), "hi": (mean + half).tolist(),
            "n": n.tolist()}


def plot(result: dict, path: Path) -> None:
    """Final regret against the folds spent (the trade-off), then the anytime curves: regret against folds
    and against simulated time per slot count (symlog: the final regrets are small beside the first ones)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = result["setup"]["slots"]
    fig, grid = plt.subplots(2, 3, figsize=(17, 9.5))
    axes = grid.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = str(slots[0])
    none = result["strategies"].get("none", {}).get("by_slots", {}).get(first)
    if none:
        axes[0].axhspan(none["regret"]["lo"], none["regret"]["hi"], color="grey", alpha=0.25,
                        label="no pruning: 95% interval of its mean")
    axes[0].axvline(0.4, color="black", lw=0.8, ls="--", label="40% of the folds")
    for k, (name, s) in enumerate(result["strategies"].items()):
        colour = colours[k % len(colours)]
        b = s["by_slots"][first]
        axes[0].errorbar(b["fold_fraction"]["mean"], b["regret"]["mean"],
                         yerr=[[b["regret"]["mean"] - b["regret"]["lo"]], [b["regret"]["hi"] - b["regret"]["mean"]]],
                         fmt="o", color=colour, capsize=3)
        axes[0].annotate(name, (b["fold_fraction"]["mean"], b["regret"]["mean"]), fontsize=7,
                         xytext=(4, 3), textcoords="offset points")
        curve = b["anytime_folds"]
        axes[1].plot(curve["x"], curve["mean"], color=colour, label=name)
        axes[1].fill_between(curve["x"], curve["lo"], curve["hi"], color=colour, alpha=0.12)
        for j, n in enumerate(slots):
            c = s["by_slots"][str(n)]["anytime_time"]
            axes[2 + j].plot(np.array(c["x"]) / 60, c["mean"], color=colour, label=name)
            axes[2 + j].fill_between(np.array(c["x"]) / 60, c["lo"], c["hi"], color=colour, alpha=0.12)
    axes[0].set(xlabel="folds trained / an unpruned sweep's", ylabel="final regret (F1+), mean and 95% interval",
                title=f"what each strategy spends and returns ({slots[0]} slot)", xlim=(0, 1.05))
    axes[0].set_ylim(bottom=-0.001)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].set(xlabel="folds trained", title=f"regret of the returned configuration vs folds ({slots[0]} slot)")
    for j, n in enumerate(slots):
        axes[2 + j].set(xlabel="simulated wall time (min)", title=f"regret vs simulated time, {n} fold slots")
    for ax in axes[1 : 2 + len(slots)]:
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("regret (F1+; symlog, linear below 0.01)")
    for ax in axes[: 2 + len(slots)]:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    table = axes[2 + len(slots)] if 2 + len(slots) < len(axes) else None
    if table is not None:
        table.axis("off")
        rows = [[name] + [f"{s['by_slots'][str(n)]['fold_fraction']['mean']:.2f} / {s['by_slots'][str(n)]['utilisation']['mean']:.2f}"
                          for n in slots] for name, s in result["strategies"].items()]
        cell = table.table(cellText=rows, colLabels=["strategy"] + [f"{n} slots" for n in slots], loc="center",
                           cellLoc="center")
        cell.auto_set_font_size(False)
        cell.set_fontsize(8)
        table.set_title("fold fraction / slot utilisation (means)", fontsize=9)
    for ax in axes[2 + len(slots) + 1 :]:
        ax.axis("off")
    d = result["table"]["data"]
    fig.suptitle(f"Replay on {result['table']['configs']} configurations x {d['subjects']} LOSO folds "
                 f"({d['subjects']} x {d['clips_per_subject']} clips, {d['difficulty']}, data seed {d.get('seed', '?')}); "
                 f"{result['setup']['n_configs']} proposals a sweep ({result['setup']['sampler']}), "
                 f"{result['setup']['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    plt.close(fig)


def summarise(replays: list[Replay], truth: dict[str, float], best: float, *, n_folds: int, slots: int,
              n_configs: int) -> dict:
    """One strategy at one slot count, over its replay seeds."""
    regrets = [best - truth[r.returned] if r.returned else float("nan") for r in replays]
    unpruned = [sum(1 for c in r.configs.values() if c["status"] != "duplicate") * n_folds for r in replays]
    max_t = max(r.wall_s for r in replays)
    return {
        "folds": interval([r.folds for r in replays]),
        "fold_fraction": interval([r.folds / u for r, u in zip(replays, unpruned)]),
        "regret": interval(regrets),
        "returned_true_score": interval([truth[r.returned] for r in replays if r.returned]),
        "found_best": float(np.mean([g <= 1e-12 for g in regrets])),
        "wall_s": interval([r.wall_s for r in replays]),
        "utilisation": interval([r.busy_s / (slots * r.wall_s) for r in replays]),
        "anytime_folds": anytime(replays, truth, best, by="folds",
                                 grid=np.arange(1, n_configs * n_folds + 1, max(1, n_folds // 2))),
        "anytime_time": anytime(replays, truth, best, by="time", grid=np.linspace(0, max_t, 60)),
        "per_seed": [{"seed": s, "folds": r.folds, "regret": g, "wall_s": r.wall_s}
                     for s, (r, g) in enumerate(zip(replays, regrets))],
    }


#: what each worker process of ``--jobs`` holds: the table, the filled store, the setup
_WORKER: dict = {}


def _init_worker(table_path: Path, store_root: Path, n_configs: int, sampler: str) -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("orchestration").setLevel(logging.ERROR)
    table = FoldTable.load(table_path)
    scores = {c.fp: dict(zip(table.fold_ids, table.fold_scores(c.fp).tolist())) for c in table.configs}
    _WORKER.update(table=table, store_root=store_root, n_configs=n_configs, sampler=sampler, scores=scores)


def _replay_cell(name: str, slots: int, seed: int) -> Replay:
    w = _WORKER
    return replay(w["table"], STRATEGIES[name], seed=seed, slots=slots, n_configs=w["n_configs"],
                  sampler=w["sampler"], store_root=w["store_root"], fold_scores=w["scores"])


def _previous(path: Path, result: dict) -> tuple[dict, float]:
    """Strategies an earlier run of the same setup on the same table already wrote (a resumed bench), and the
    seconds that run took."""
    if not path.exists():
        return {}, 0.0
    old = json.loads(path.read_text())
    if old.get("setup") != result["setup"] or old.get("table", {}).get("true_scores") != result["table"]["true_scores"]:
        return {}, 0.0
    kept = {name: entry for name, entry in old["strategies"].items() if entry.get("settings") == STRATEGIES.get(name)}
    return kept, float(old.get("bench_wall_s", 0.0)) if kept else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE, help="Fold table (.npz + .json) from fold_table.py.")
    parser.add_argument("--seeds", type=int, default=30, help="Replay seeds per strategy.")
    parser.add_argument("--configs", type=int, default=16, help="Configurations a replayed sweep proposes.")
    parser.add_argument("--sampler", default="tpe", help="Sampler (the sweep's default: tpe).")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 8, 32], help="Simulated fold slots.")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="Strategies to replay.")
    parser.add_argument("--out", type=Path, default=OUT, help="Results (.json and .png).")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Replays run side by side (processes).")
    parser.add_argument("--fresh", action="store_true",
                        help="Replay every strategy again (default: keep those an earlier run of the same setup wrote).")
    args = parser.parse_args()

    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("orchestration").setLevel(logging.ERROR)
    table = FoldTable.load(args.table)
    truth = {c.fp: table.true_score(c.fp) for c in table.configs}
    best = max(truth[c.fp] for c in table.grid)
    n_folds = len(table.fold_ids)
    started = time.perf_counter()
    result: dict = {
        "what": "strategies replayed on a table of real AU-LLM folds through the sweep's own FoldSearcher",
        "table": {"file": str(args.table.relative_to(BENCH.parent)) + ".json" if args.table.is_relative_to(BENCH.parent)
                  else str(args.table), "configs": len(table.grid), "folds": n_folds, "data": table.meta["data"],
                  "best_true_score": best, "true_scores": {c.fp: truth[c.fp] for c in table.grid},
                  "seed_noise": table.seed_noise()},
        "setup": {"seeds": args.seeds, "n_configs": args.configs, "sampler": args.sampler, "slots": args.slots,
                  "objective": "f1_pos:inner:pooled", "unpruned_folds": args.configs * n_folds},
        "strategies": {},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    previous, previous_s = _previous(args.out.with_suffix(".json"), result) if not args.fresh else ({}, 0.0)
    with tempfile.TemporaryDirectory(prefix="aullm-replay-") as tmp:
        store_root = Path(tmp) / "folds"
        fill_store(table, store_root)
        todo = [name for name in args.strategies if name not in previous]
        cells = [(name, slots, seed) for name in todo for slots in args.slots for seed in range(args.seeds)]
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init_worker,
                                 initargs=(args.table, store_root, args.configs, args.sampler)) as pool:
            futures = {cell: pool.submit(_replay_cell, *cell) for cell in cells}
            for name in args.strategies:
                if name in previous:
                    result["strategies"][name] = previous[name]
                    print(f"{name:16s} kept from {args.out.with_suffix('.json').name}", flush=True)
                    continue
                entry: dict = {"settings": STRATEGIES[name], "by_slots": {}}
                for slots in args.slots:
                    replays = [futures[(name, slots, seed)].result() for seed in range(args.seeds)]
                    entry["by_slots"][str(slots)] = summarise(replays, truth, best, n_folds=n_folds, slots=slots,
                                                              n_configs=args.configs)
                    b = entry["by_slots"][str(slots)]
                    print(f"{name:16s} {slots:3d} slots: folds {b['folds']['mean']:6.1f} "
                          f"({b['fold_fraction']['mean']:.2f} of unpruned), regret {b['regret']['mean']:.4f} "
                          f"[{b['regret']['lo']:.4f}, {b['regret']['hi']:.4f}], found best {b['found_best']:.2f}, "
                          f"wall {b['wall_s']['mean'] / 60:.1f} min, utilisation {b['utilisation']['mean']:.2f}",
                          flush=True)
                result["strategies"][name] = entry
                result["bench_wall_s"] = previous_s + time.perf_counter() - started
                atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}.json and .png")


if __name__ == "__main__":
    main()
