"""Options shared by several commands, defined once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import typer

DatasetOpt = Annotated[
    str, typer.Option("--dataset", help="Dataset format: casme2 or samm.", case_sensitive=False)
]
RootOpt = Annotated[
    Path,
    typer.Option("--root", help="Distribution's top folder (holds CASME2_RAW_selected/ or SAMM/ and the sheet)."),
]
FramesOpt = Annotated[
    Path | None, typer.Option("--frames", help="Frame folder, overriding the default under --root.")
]
AnnotationsOpt = Annotated[
    Path | None, typer.Option("--annotations", help="Coding sheet (.xlsx), overriding the default under --root.")
]
OverridesOpt = Annotated[
    Path | None,
    typer.Option("--overrides", help="YAML mapping clip -> AU string resolving ambiguous AU cells."),
]
LenientOpt = Annotated[
    bool, typer.Option("--lenient", help="Skip bad clips with a warning listing each, instead of failing.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
OutDirOpt = Annotated[Path, typer.Option("--out", help="Output folder.")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: table or json.")]
OutputFormat = Literal["table", "json"]
WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", help="Working folder holding sweeps/<name>/ and mlflow.db.")
]
SweepNameOpt = Annotated[str, typer.Option("--sweep", help="Name of the sweep (a folder under <workdir>/sweeps/).")]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: the sweep's, sqlite:///<workdir>/mlflow.db)."),
]
def check_device(value: str) -> str:
    """``--device``: cpu, cuda or cuda:N, and a CUDA device only where torch sees one (one line otherwise)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r}: expected cpu, cuda or cuda:N")
    if value.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            seen = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
            raise typer.BadParameter(f"{value!r}: this machine's torch sees {seen}; use --device cpu")
    return value


DeviceOpt = Annotated[str, typer.Option("--device", help="Torch device for training/prediction: cpu, cuda or cuda:N.",
                                        callback=check_device)]
