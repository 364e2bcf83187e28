"""``aullm demo``: the whole pipeline on synthetic data, on this machine, in a few minutes.

synthetic CASME II-style and SAMM-style datasets -> HDF5 caches -> quick sweep (LOSO search with
pruning, then cross-domain for the best configurations) -> report -> export of the best
configuration -> prediction on one clip folder. Everything lands in ``--workdir``; running it
again reuses what is there (datasets, caches, the finished sweep).

Example:
    aullm demo                               # ./demo_output
    aullm demo --workdir /tmp/demo --subjects 6 --configs 3
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from aullm_core.atomic import atomic_write_text
from orchestration.cli.export import print_predictions
from orchestration.cli.options import SeedOpt
from orchestration.search.progress import Status

__all__ = ["register", "run_demo"]

REPO = Path(__file__).resolve().parents[2]
QUICK_SPACE = REPO / "search_spaces" / "quick.yaml"
SWEEP_NAME = "demo"
DEMO_RECORD = "demo.json"


def _example_clip(root: Path, out: Path) -> Path:
    """Copy one synthetic clip's frames (onset to offset) into a plain folder, as a user would have."""
    from aullm_core.data.readers import get_reader

    table = get_reader("casme2").read(root)
    clip = table[-1]
    target = out / f"{clip.subject}_{clip.clip}"
    if not target.is_dir():
        tmp = out / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for frame in clip.frames:
            shutil.copy2(frame, tmp / frame.name)
        os.replace(tmp, target)
    return target


def run_demo(workdir: Path, *, subjects: int, clips_per_subject: int, cross_subjects: int, trials: int,
             seed: int, console: Console, difficulty: str = "easy") -> dict[str, object]:
    """Run every step; returns where things are (for the summary and the tests)."""
    # One fold at a time on every core: two one-core folds in parallel share the memory bandwidth
    # that a CPU step is bound by (the projector's weights), and a pruning decision comes sooner.
    cpus_per_fold = float(os.cpu_count() or 1)
    from aullm_core.data.cache import load_cache, make_cache
    from aullm_core.data.synth import write_synthetic
    from aullm_core.train.metrics import loso_baselines
    from orchestration.cli.wiring import sweep_hooks
    from orchestration.export.bundle import export_best, predict_folders
    from orchestration.reports.report import build_report
    from orchestration.sweep.folder import SweepFolder
    from orchestration.sweep.run import run_sweep
    from orchestration.sweep.settings import SweepSettings

    if not QUICK_SPACE.is_file():
        raise FileNotFoundError(f"{QUICK_SPACE}: the quick search space ships with the repository; run from a clone")
    workdir = Path(workdir).resolve()
    steps = 6
    timings: dict[str, float] = {}

    def step(k: int, text: str) -> float:
        console.rule(f"[bold][{k}/{steps}] {text}")
        return time.perf_counter()

    t = step(1, f"Synthetic datasets ({difficulty}): CASME II style ({subjects} subjects x {clips_per_subject} "
                f"clips) and SAMM style ({cross_subjects})")
    casme = write_synthetic("casme2", workdir / "data" / "casme2_synth", subjects=subjects,
                            clips_per_subject=clips_per_subject, seed=seed, difficulty=difficulty)
    samm = write_synthetic("samm", workdir / "data" / "samm_synth", subjects=cross_subjects,
                           clips_per_subject=clips_per_subject, seed=seed + 1, difficulty=difficulty)
    timings["synth"] = time.perf_counter() - t

    t = step(2, "HDF5 clip caches (64x64 grey, decoded once)")
    casme_cache = make_cache("casme2", casme, workdir / "caches" / "casme2_synth.h5").path
    samm_cache = make_cache("samm", samm, workdir / "caches" / "samm_synth.h5").path
    timings["cache"] = time.perf_counter() - t

    t = step(3, f"Quick sweep: {trials} configurations (the first two: the paper's values, the quick preset's), LOSO over {subjects} "
                "subjects, configurations racing over folds, then cross-domain")
    exists = SweepFolder.of(workdir, SWEEP_NAME).settings_file.is_file()
    settings = SweepSettings(name=SWEEP_NAME, space=QUICK_SPACE, cache=casme_cache, cross_cache=samm_cache,
                             workdir=workdir, n_configs=trials, startup_configs=min(trials, 3), top_k_cross=1,
                             seed=seed, resume=exists, cpus_per_fold=cpus_per_fold)
    summary = run_sweep(settings, sweep_hooks())
    timings["sweep"] = time.perf_counter() - t
    clips = load_cache(casme_cache, verify=False)
    baselines = loso_baselines(clips.labels, clips.subjects, seed=seed)

    t = step(4, "Report: leaderboard, per-AU table, plots")
    report = Path(summary.sweep_dir) / "report" / "report.md"  # the finished sweep wrote it
    if not report.is_file():  # it warned instead (a plot or table it could not make): try again here
        report = build_report(workdir, SWEEP_NAME, progress=True).markdown
    timings["report"] = time.perf_counter() - t

    t = step(5, "Export: best configuration retrained on every subject, checkpoint + model card, registered")
    model_dir = workdir / "model"
    exported = export_best(workdir, SWEEP_NAME, model_dir, register=True)
    timings["export"] = time.perf_counter() - t

    t = step(6, "Predict: one clip folder with the exported model")
    clip = _example_clip(casme, workdir / "example_clips")
    predictions = predict_folders(model_dir, [clip])
    timings["predict"] = time.perf_counter() - t
    print_predictions(console, predictions)
    return {"workdir": workdir, "caches": (casme_cache, samm_cache), "summary": summary, "report": report,
            "baselines": baselines, "data": f"{len(clips)} clips of {subjects} subjects, {difficulty} difficulty",
            "export": exported, "clip": clip, "predictions": predictions, "timings": timings}


def comparison_rows(summary: object, baselines: dict[str, float]) -> list[tuple[str, str, float | None]]:
    """(what, configuration, leak-free pooled F1+) for the best, the paper's values and the baselines."""
    board = summary.leaderboard  # type: ignore[attr-defined]
    rows: list[tuple[str, str, float | None]] = []
    complete = board[board["status"] == Status.COMPLETE] if not board.empty else board
    if not complete.empty:
        best = complete.iloc[0]
        rows.append(("best configuration (selection-biased)", _describe(best), float(best["objective"])))
    paper = board[board["label"] == "paper defaults"] if "label" in board else board.iloc[0:0]
    if not paper.empty:
        row = paper.iloc[0]
        value = row["objective"]  # over the folds it has: all of them unless pruned or failed
        rows.append((f"paper's values ({row['status']}, {row['folds_done']}/{row['n_folds_total']} folds)",
                     _describe(row), None if pd.isna(value) else float(value)))
    rows.append(("all-positive predictor", "every clip has every AU", baselines["all_positive"]))
    rows.append(("prior-rate predictor", "positive at the training subjects' rate", baselines["prior"]))
    return rows


def _write_record(path: Path, out: dict[str, object], total_s: float) -> None:
    """``demo.json``: the comparison table, the data and the step timings, for scripts (bench/demo_bench.py)."""
    summary, baselines = out["summary"], out["baselines"]
    record = {
        "data": out["data"],
        "wall_s": round(total_s, 1),
        "timings_s": {k: round(v, 1) for k, v in out["timings"].items()},  # type: ignore[attr-defined]
        "phases_s": summary.phases,  # type: ignore[attr-defined]
        "folds_trained": summary.folds_trained,  # type: ignore[attr-defined]
        "loso_folds_run": summary.loso_folds_run,  # type: ignore[attr-defined]
        "loso_folds_unpruned": summary.loso_folds_unpruned,  # type: ignore[attr-defined]
        "pruner": summary.pruner,  # type: ignore[attr-defined]
        "n_configs": summary.n_configs,  # type: ignore[attr-defined]
        "n_complete": summary.n_complete,  # type: ignore[attr-defined]
        "n_pruned": summary.n_pruned,  # type: ignore[attr-defined]
        "objective": str(summary.objective),  # type: ignore[attr-defined]
        "baselines": baselines,
        "comparison": [{"what": w, "configuration": c, "f1_pos": v,
                        "interval": interval_of(summary.leaderboard, c)}  # type: ignore[attr-defined]
                       for w, c, v in comparison_rows(summary, baselines)],  # type: ignore[arg-type]
    }
    atomic_write_text(path, json.dumps(record, indent=1, default=str))


def _describe(row: object) -> str:
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}  # type: ignore[attr-defined]
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"#{row['number']} {text}"  # type: ignore[index]


def interval_of(board: pd.DataFrame, configuration: str) -> str:
    """'[0.31, 0.49]': the 95% bootstrap interval over subjects of the leaderboard row this comparison row
    names ('#<trial> ...'), or '' (a baseline, or no interval)."""
    if not configuration.startswith("#") or "number" not in board or "objective_low" not in board:
        return ""
    number = int(configuration[1:].split()[0])
    row = board[board["number"] == number]
    if row.empty or pd.isna(row["objective_low"].iloc[0]):
        return ""
    return f"[{row['objective_low'].iloc[0]:.3f}, {row['objective_high'].iloc[0]:.3f}]"


def _comparison_table(summary: object, baselines: dict[str, float], data: str) -> Table:
    table = Table(title=f"LOSO, pooled positive-class F1 with inner thresholds (leak-free); {data}")
    table.add_column("what")
    table.add_column("configuration")
    table.add_column("F1+", justify="right")
    table.add_column("x all-positive", justify="right")
    board = summary.leaderboard  # type: ignore[attr-defined]
    intervals = []
    for what, config, value in comparison_rows(summary, baselines):
        ratio = "" if value is None else f"{value / baselines['all_positive']:.2f}"
        table.add_row(what, config, "-" if value is None else f"{value:.3f}", ratio)
        if interval_of(board, config):
            intervals.append(f"{what.split(' (')[0]} {interval_of(board, config)}")
    if intervals:  # under the table, which stays narrow enough for 80 columns
        table.caption = "95% intervals over subjects (bootstrap): " + "; ".join(intervals)
    return table


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for everything the demo writes.")] = Path(
        "demo_output"
    ),
    subjects: Annotated[
        int, typer.Option("--subjects", min=3, help="Subjects of the CASME II-style dataset (= LOSO folds).")
    ] = 8,
    clips_per_subject: Annotated[
        int, typer.Option("--clips-per-subject", min=1,
                          help="Clips per subject in both synthetic datasets (CASME II has about 10).")
    ] = 10,
    cross_subjects: Annotated[
        int, typer.Option("--cross-subjects", min=1, help="Subjects of the SAMM-style dataset (cross-domain test).")
    ] = 3,
    difficulty: Annotated[
        str,
        typer.Option(
            "--difficulty",
            help="Synthetic difficulty: easy (a few subjects carry a learnable signal: the laptop demo) or "
            "realistic (calibrated; needs about 26 subjects and longer training to learn).",
        ),
    ] = "easy",
    trials: Annotated[
        int,
        typer.Option(
            "--configs", "--trials", min=1,
            help="Configurations the sweep tries: the paper's values, the quick preset's, then Optuna's proposals "
            "(each races over the LOSO folds).",
        ),
    ] = 4,
    seed: SeedOpt = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete --workdir first and start from nothing.")] = False,
) -> None:
    """Synthetic data -> cache -> quick sweep -> report -> export -> predict, then tell where it all is."""
    console = Console()
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    started = time.perf_counter()
    out = run_demo(workdir, subjects=subjects, clips_per_subject=clips_per_subject, cross_subjects=cross_subjects,
                   trials=trials, seed=seed, console=console, difficulty=difficulty)
    total = time.perf_counter() - started
    summary, report, exported = out["summary"], out["report"], out["export"]
    wd = out["workdir"]
    _write_record(wd / DEMO_RECORD, out, total)
    console.rule("[bold]Done")
    console.print(_comparison_table(summary, out["baselines"], out["data"]))
    best = f"{summary.best_score:.3f}" if summary.best_score is not None else "-"
    console.print(
        f"Finished in {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in out['timings'].items())}).\n"
        f"Sweep: {summary.n_configs} configurations ({summary.n_complete} complete, {summary.n_pruned} pruned), "
        f"{summary.folds_trained} folds trained (LOSO: {summary.loso_folds_run} of the {summary.loso_folds_unpruned} "
        f"an unpruned sweep would train); best {summary.objective} = {best} (selection-biased).\n"
        f"  data and caches:  {wd / 'data'}, {wd / 'caches'}\n"
        f"  sweep folder:     {summary.sweep_dir}\n"
        f"  report:           {report} (+ CSV and PNG beside it)\n"
        f"  model:            {exported.out_dir} (model card {exported.card_path})\n"
        f"  example clip:     {out['clip']}\n"
        f"  this summary:     {wd / DEMO_RECORD}\n"
        f"Next:\n"
        f"  aullm ui --workdir {workdir}          # MLflow UI on http://127.0.0.1:5000\n"
        f"  aullm report --sweep {SWEEP_NAME} --workdir {workdir} --nested --outer-folds 2 --budget 2\n"
        f"  aullm predict --model {exported.out_dir} --clip {out['clip']}"
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
