"""``aullm sweep``: LOSO hyperparameter search with per-fold Ray Tune trials, Optuna, MLflow.

Examples:
    aullm sweep --space search_spaces/quick.yaml --cache casme2.h5 --configs 8
    aullm sweep --space search_spaces/quick.yaml --cache casme2.h5 --cross-cache samm.h5 --name q1
    aullm sweep --resume --name q1                       # continue an interrupted sweep
    aullm sweep --space search_spaces/paper.yaml --cache /shared/casme2.h5 --address auto \\
        --gpus-per-fold 0.25 --tracking-uri http://mlflow.internal:5000 --workdir /shared/runs
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "sweep"]


def _help(field: str, extra: str = "", *, default_shown: bool = True) -> str:
    """Help text of a SweepSettings field (one description, shown by --help and in the docs)."""
    from orchestration.sweep.settings import SweepSettings

    info = SweepSettings.model_fields[field]
    default = info.default
    shown = ""
    if default_shown and not info.is_required() and default is not None and not isinstance(default, bool):
        shown = f" (default: {default})"
    return f"{info.description}{extra}{shown}"


def _p_threshold(value: str | None) -> float | str | None:
    if value is None or value == "pocock":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected a number in (0, 1) or 'pocock'") from None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _interval(interval: tuple[float, float] | None) -> str:
    """' [0.391, 0.507] 95% CI over subjects', or nothing without an interval."""
    if interval is None or any(math.isnan(v) for v in interval):
        return ""
    return f" [{interval[0]:.3f}, {interval[1]:.3f}] 95% CI over subjects"


def _print_summary(summary: Any, workdir: Path) -> None:
    from rich.console import Console

    from orchestration.cli.report import leaderboard_table

    console = Console()
    state = "finished" if summary.finished else "interrupted"
    if summary.stopped_by:
        state = f"stopped by {summary.stopped_by} (folds in flight are retrained on resume)"
    console.print(
        f"[bold]Sweep {summary.name}[/bold] {state} in {summary.wall_s:.0f} s: "
        f"{summary.n_configs} configurations ({summary.n_complete} complete, {summary.n_pruned} pruned, "
        f"{summary.n_failed} failed); LOSO folds trained in this run {summary.loso_folds_trained}, cross-domain "
        f"{summary.folds_trained - summary.loso_folds_trained}, found in the fold store {summary.folds_from_store}."
    )
    console.print(
        f"Cost: the configurations ran {summary.loso_folds_run} LOSO folds of the {summary.loso_folds_unpruned} an "
        f"unpruned sweep of them would train ({summary.fold_fraction:.2f}; pruner {summary.pruner})."
    )
    if summary.best_fp is not None:
        console.print(
            f"Best: configuration #{summary.best_number} ({summary.best_fp}), {summary.objective} = "
            f"{summary.best_score:.4f}{_interval(summary.best_interval)} (LOSO; selection-biased: chosen on the same folds)"
        )
        for key, value in summary.best_overrides.items():
            console.print(f"  {key} = {value}")
    board = summary.leaderboard
    if not board.empty:
        console.print(leaderboard_table(board, summary.objective, top=10, width=console.width))
    if summary.baselines:
        shown = ", ".join(f"{name} {value:.3f}{_interval((low, high))}".replace(" 95% CI over subjects", "")
                          for name, (value, low, high) in summary.baselines.items())
        console.print(f"Baselines that see no frame, scored as the objective: {shown}")
    for error in summary.errors[:5]:
        console.print(f"[red]failed trial:[/red] {error}")
    console.print(f"Sweep folder: {summary.sweep_dir}")
    if summary.tracking_uri:
        console.print(f"MLflow: {summary.tracking_uri}  (aullm ui --workdir {workdir})")
    if not summary.finished:
        console.print(f"Continue with: aullm sweep --resume --name {summary.name} --workdir {workdir}")
    else:
        console.print(f"Report: aullm report --sweep {summary.name} --workdir {workdir}")


def sweep(
    ctx: typer.Context,
    space: Annotated[Path | None, typer.Option("--space", help=_help("space", " Required unless --resume."))] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help=_help("cache", " Required unless --resume."))] = None,
    cross_cache: Annotated[Path | None, typer.Option("--cross-cache", help=_help("cross_cache"))] = None,
    address: Annotated[str | None, typer.Option("--address", help=_help("address"))] = None,
    trials: Annotated[int | None, typer.Option(
        "--configs", "--trials", min=1,
        help=_help("n_configs", " Each is trained on every LOSO fold (one Ray Tune trial per fold)."))] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help=_help("concurrency"))] = None,
    max_configs: Annotated[
        int | None, typer.Option("--max-configs", min=1, help=_help("max_concurrent_configs"))
    ] = None,
    pruner: Annotated[str | None, typer.Option("--pruner", help=_help("pruner"))] = None,
    p_threshold: Annotated[str | None, typer.Option("--p-threshold", help=_help("p_threshold"))] = None,
    prune_startup_folds: Annotated[
        int | None, typer.Option("--prune-startup-folds", min=0, help=_help("prune_startup_folds"))
    ] = None,
    race_min_folds: Annotated[
        int | None, typer.Option("--race-min-folds", min=1, help=_help("race_min_folds"))
    ] = None,
    race_eta: Annotated[float | None, typer.Option("--race-eta", min=1.01, help=_help("race_eta"))] = None,
    stop_pruned_folds: Annotated[
        bool | None, typer.Option("--stop-pruned-folds/--finish-pruned-folds", help=_help("stop_pruned_folds"))
    ] = None,
    objective: Annotated[str | None, typer.Option("--objective", help=_help("objective"))] = None,
    fold_metric: Annotated[str | None, typer.Option("--fold-metric", help=_help("fold_metric"))] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help=_help("sampler"))] = None,
    startup_configs: Annotated[
        int | None, typer.Option("--startup-configs", min=0, help=_help("startup_configs"))
    ] = None,
    name: Annotated[str, typer.Option("--name", help=_help("name", default_shown=False))] = "sweep",
    resume: Annotated[bool, typer.Option("--resume", help=_help("resume", " Reads the saved settings."))] = False,
    workdir: Annotated[Path, typer.Option("--workdir", help=_help("workdir", default_shown=False))] = Path(
        "aullm_runs"
    ),
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help=_help("tracking_uri"))] = None,
    seed: Annotated[int | None, typer.Option("--seed", help=_help("seed"))] = None,
    num_cpus: Annotated[int | None, typer.Option("--num-cpus", min=1, help=_help("num_cpus"))] = None,
    wait_nodes: Annotated[int | None, typer.Option("--wait-nodes", min=1, help=_help("wait_nodes"))] = None,
    cpus_per_fold: Annotated[float | None, typer.Option("--cpus-per-fold", help=_help("cpus_per_fold"))] = None,
    gpus_per_fold: Annotated[float | None, typer.Option("--gpus-per-fold", help=_help("gpus_per_fold"))] = None,
    workers_per_fold: Annotated[
        int | None, typer.Option("--workers-per-fold", min=1, help=_help("workers_per_fold"))
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help=_help("device"))] = None,
    max_failures: Annotated[int | None, typer.Option("--max-failures", min=0, help=_help("max_failures"))] = None,
    fold_timeout: Annotated[float | None, typer.Option("--fold-timeout", min=1, help=_help("fold_timeout"))] = None,
    min_free_mb: Annotated[float | None, typer.Option("--min-free-mb", min=0, help=_help("min_free_mb"))] = None,
    top_k_cross: Annotated[int | None, typer.Option("--top-k-cross", min=0, help=_help("top_k_cross"))] = None,
    no_resource_check: Annotated[
        bool, typer.Option("--no-resource-check", help="Skip the resource check (autoscaling clusters).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help=_help("verbose"))] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Search hyperparameters with LOSO folds as Ray Tune trials, Optuna TPE + pruning, MLflow runs."""
    from orchestration.cli.wiring import fold_code, sweep_hooks
    from orchestration.sweep.run import load_sweep_settings, run_sweep
    from orchestration.sweep.settings import SweepSettings

    given: dict[str, Any] = {
        "space": space, "cache": cache, "cross_cache": cross_cache, "address": address, "n_configs": trials,
        "concurrency": concurrency, "max_concurrent_configs": max_configs, "pruner": pruner,
        "p_threshold": _p_threshold(p_threshold), "prune_startup_folds": prune_startup_folds,
        "race_min_folds": race_min_folds, "race_eta": race_eta,
        "stop_pruned_folds": stop_pruned_folds, "objective": objective, "fold_metric": fold_metric,
        "sampler": sampler, "startup_configs": startup_configs, "tracking_uri": tracking_uri, "seed": seed,
        "num_cpus": num_cpus, "wait_nodes": wait_nodes, "cpus_per_fold": cpus_per_fold, "gpus_per_fold": gpus_per_fold,
        "workers_per_fold": workers_per_fold, "device": device, "max_failures": max_failures,
        "fold_timeout": fold_timeout, "min_free_mb": min_free_mb,
        "top_k_cross": top_k_cross,
    }
    given = {k: v for k, v in given.items() if v is not None}
    runtime = {"name": name, "workdir": workdir, "resume": resume, "verbose": verbose,
               "check_resources": not no_resource_check}
    if resume:
        stored = load_sweep_settings(workdir, name)
        keep = {k: v for k, v in given.items() if k in ("address", "num_cpus", "wait_nodes", "concurrency")}
        settings = stored.model_copy(update={**keep, **runtime})  # the folder where it is now, moved or not
    else:
        missing = [flag for flag, value in (("--space", space), ("--cache", cache)) if value is None]
        if missing:
            raise typer.BadParameter(f"{' and '.join(missing)} required (or --resume to continue a sweep)")
        settings = SweepSettings(**given, **runtime)
    summary = run_sweep(settings, sweep_hooks(fold_code(ctx)), progress=not (no_progress or as_json))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1, default=str))
    else:
        _print_summary(summary, workdir)
    if summary.stopped_by and summary.stopped_by not in ("SIGTERM", "SIGUSR1", "SIGINT"):
        typer.echo(f"error: {summary.stopped_by}", err=True)  # the sweep stopped itself (a full disk)
        raise typer.Exit(2)
    if not summary.finished:
        raise typer.Exit(3)
    if summary.n_complete == 0 and summary.n_failed > 0:
        first = summary.errors[0] if summary.errors else f"see {summary.sweep_dir}/failures.json"
        typer.echo(f"error: every configuration failed ({summary.n_failed}); the first: {first}", err=True)
        raise typer.Exit(2)


_EXAMPLES = (
    "Examples: aullm sweep --space search_spaces/quick.yaml --cache casme2.h5 --configs 8  |  "
    "aullm sweep --space search_spaces/quick.yaml --cache casme2.h5 --cross-cache samm.h5 --name q1  |  "
    "aullm sweep --resume --name q1  |  aullm sweep --space search_spaces/paper.yaml --cache /shared/casme2.h5 "
    "--address auto --gpus-per-fold 0.25 --tracking-uri http://mlflow:5000 --workdir /shared/runs"
)


def register(app: typer.Typer) -> None:
    app.command("sweep", epilog=_EXAMPLES)(sweep)
