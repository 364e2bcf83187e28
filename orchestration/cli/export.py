"""``aullm export`` (best configuration -> checkpoint) and ``aullm predict`` (checkpoint -> AU probabilities).

Example:
    aullm export --sweep quick --out models/quick             # train on every subject, save
    aullm export --sweep quick --out models/quick --register  # and register it in MLflow
    aullm predict --model models/quick --clip clips/EP02_01f
    aullm predict --model models/quick --clip a/ --clip b/ --format json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from orchestration.cli.options import (
    DeviceOpt,
    FormatOpt,
    OutDirOpt,
    SweepNameOpt,
    TrackingUriOpt,
    WorkdirOpt,
)

__all__ = ["print_predictions", "register"]


def export(
    ctx: typer.Context,
    sweep: SweepNameOpt,
    out: OutDirOpt,
    workdir: WorkdirOpt = Path("aullm_runs"),
    rank: Annotated[int, typer.Option("--rank", min=1, help="Leaderboard rank to export (1 = best).")] = 1,
    register_model: Annotated[
        bool, typer.Option("--register", help="Also register the checkpoint in the MLflow model registry.")
    ] = False,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model name (default: aullm-<sweep>).")
    ] = None,
    tracking_uri: TrackingUriOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Train the sweep's best complete configuration on every subject of its cache and write a
    checkpoint (safetensors + manifest + configuration + model card)."""
    from orchestration.cli.wiring import fold_code
    from orchestration.export.bundle import export_best

    result = export_best(workdir, sweep, out, rank=rank, register=register_model, model_name=model_name,
                         tracking_uri=tracking_uri, device=device, code=fold_code(ctx))
    card = result.card
    typer.echo(f"Exported configuration {result.config_fp} (rank {result.rank}, {card['objective']} = "
               f"{card['objective_value']:.3f} LOSO, selection-biased) trained on {card['n_clips']} clips "
               f"in {result.train_seconds:.0f} s")
    typer.echo(f"  checkpoint: {result.out_dir}\n  model card: {result.card_path}")
    if result.registered:
        run_id, version = result.registered
        typer.echo(f"  registered: {model_name or f'aullm-{sweep}'} version {version} (run {run_id})")


def predict(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint folder written by `aullm export`.")],
    clip: Annotated[
        list[Path],
        typer.Option("--clip", help="Folder of one clip's frames, onset to offset (repeat for several clips)."),
    ],
    output_format: FormatOpt = "table",
    device: DeviceOpt = "cpu",
) -> None:
    """Print AU probabilities for clip folders, and the decisions at the checkpoint's thresholds."""
    from orchestration.export.bundle import predict_folders

    if output_format not in ("table", "json"):
        raise typer.BadParameter(f"--format {output_format!r}: expected table or json")
    frame = predict_folders(model, list(clip), device=device)
    for name, rows in frame.groupby("clip", sort=False):
        have, sampled = int(rows["n_frames"].iloc[0]), int(rows["frames_sampled"].iloc[0])
        if have < sampled:
            typer.echo(f"warning: {name}: {have} frame(s), fewer than the {sampled} the model samples per clip: "
                       "frames are repeated, so this prediction is less reliable than the model's scores say", err=True)
    if output_format == "json":
        clips = []
        for name, rows in frame.groupby("clip", sort=False):
            clips.append({"clip": name, "n_frames": int(rows["n_frames"].iloc[0]),
                          "aus": {r.au: {"probability": round(r.probability, 6), "threshold": r.threshold,
                                         "present": r.present} for r in rows.itertuples()}})
        typer.echo(json.dumps({"model": str(model), "clips": clips}, indent=2))
        return
    print_predictions(Console(), frame)


def print_predictions(console: Console, frame: pd.DataFrame) -> None:
    """One table per clip: AU, probability, threshold, decision."""
    for name, rows in frame.groupby("clip", sort=False):
        console.print(f"[bold]{name}[/bold] ({int(rows['n_frames'].iloc[0])} frames)", soft_wrap=True)
        table = Table()
        for col, justify in (("AU", "left"), ("probability", "right"), ("threshold", "right"), ("present", "center")):
            table.add_column(col, justify=justify)
        for r in rows.itertuples():
            table.add_row(r.au, f"{r.probability:.3f}", f"{r.threshold:.2f}", "yes" if r.present else "no")
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("predict")(predict)
