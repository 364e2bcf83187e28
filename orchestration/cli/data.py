"""``aullm data``: read a dataset as distributed, write a synthetic one, build and check HDF5 caches.

Examples:
    aullm data synth --style casme2 --subjects 26 --clips-per-subject 10 --out synth/casme2 --seed 0
    aullm data inspect --dataset casme2 --root synth/casme2 --format table
    aullm data inspect --dataset samm --root /data/SAMM_v2 --overrides samm_fixes.yaml --format json
    aullm data cache --dataset casme2 --root synth/casme2 --out caches/casme2_64.h5 --size 64 --grey
    aullm data verify caches/casme2_64.h5
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from aullm_core.model.config import MIN_FRAME_SIZE
from orchestration.cli.options import (
    AnnotationsOpt,
    DatasetOpt,
    FormatOpt,
    FramesOpt,
    LenientOpt,
    OverridesOpt,
    RootOpt,
    SeedOpt,
)

__all__ = ["register"]

data_app = typer.Typer(
    help="Datasets: inspect a distribution, write synthetic data, build and verify HDF5 clip caches.",
    no_args_is_help=True,
)


class _EchoHandler(logging.Handler):
    """Library warnings (e.g. clips skipped by --lenient) to stderr, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def _log_warnings() -> None:
    logger = logging.getLogger("aullm_core")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(level=logging.WARNING))


@data_app.callback()
def _data() -> None:
    _log_warnings()


def _console(*, stderr: bool = False) -> Console:
    """Rich console that never wraps a line (summaries stay one line each, paths intact)."""
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def _parse_crop(value: str | None) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--crop {value!r}: expected x,y,w,h (four integers, pixels of the full frame)"
        ) from None
    return x, y, w, h


def _parse_frame_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(p) for p in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame-size {value!r}: expected WIDTHxHEIGHT, e.g. 400x300") from None
    return width, height


@data_app.command("inspect")
def inspect(
    dataset: DatasetOpt,
    root: RootOpt,
    annotations: AnnotationsOpt = None,
    frames: FramesOpt = None,
    overrides: OverridesOpt = None,
    lenient: LenientOpt = False,
    output: FormatOpt = "table",
) -> None:
    """Parse a dataset's coding sheet, check every clip folder, print the table and a summary.

    With --format json, stdout is a JSON list of objects with the keys subject, clip, onset, apex,
    offset, aus, emotion, n_frames, and the summary goes to stderr.

    Example: aullm data inspect --dataset casme2 --root /data/CASME2 --format json > casme2.json
    """
    from aullm_core.data.readers import get_reader
    from aullm_core.data.records import AU_SETS

    if output not in ("table", "json"):
        raise ValueError(f"--format {output!r}: expected table or json")
    reader = get_reader(dataset)
    table = reader.read(root, frames=frames, annotations=annotations, overrides=overrides, lenient=lenient)
    rows = table.records()
    vocabulary = AU_SETS[reader.name]
    if output == "json":
        click.echo(json.dumps(rows, indent=1))
        console = _console(stderr=True)
    else:
        console = _console()
        view = Table(title=f"{reader.name}: {table.sheet}")
        for column in rows[0]:
            view.add_column(
                column, justify="right" if column in ("onset", "apex", "offset", "n_frames") else "left"
            )
        for row in rows:
            view.add_row(
                *(
                    "" if v is None else "+".join(map(str, v)) if isinstance(v, list) else str(v)
                    for v in row.values()
                )
            )
        console.print(view)
    positives = table.positives()
    console.print(
        f"{len(table)} clips, {len(table.subjects)} subjects, {sum(a.n_frames for a in table)} frames"
        + (f", {len(table.skipped)} clips skipped" if table.skipped else "")
    )
    console.print(
        "positives per AU (* = the paper's vocabulary): "
        + ", ".join(f"AU{au}{'*' if au in vocabulary else ''} {n}" for au, n in positives.items())
    )
    missing = [au for au in vocabulary if au not in positives]
    if missing:
        console.print(f"vocabulary AUs never coded: {', '.join(f'AU{au}' for au in missing)}")


@data_app.command("synth")
def synth(
    style: Annotated[
        str,
        typer.Option(
            "--style", help="Layout and look: casme2 (colour face crops) or samm (grey, head and background)."
        ),
    ],
    subjects: Annotated[int, typer.Option("--subjects", min=1, help="Number of subjects.")],
    clips_per_subject: Annotated[int, typer.Option("--clips-per-subject", min=1, help="Clips per subject.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder to create (absent or empty; reused if it holds the same dataset)."
        ),
    ],
    seed: SeedOpt = 0,
    frame_size: Annotated[
        str | None,
        typer.Option(
            "--frame-size", help="WIDTHxHEIGHT instead of the style's (casme2 140x170, samm 400x300)."
        ),
    ] = None,
    difficulty: Annotated[
        str,
        typer.Option(
            "--difficulty",
            help="realistic (calibrated nuisances and AU sizes) or easy (7x larger AU motions, a third of "
            "the nuisances: a few subjects carry a learnable signal, for laptop demos). Recorded in the "
            "dataset's synth.json and in every cache built from it.",
        ),
    ] = "realistic",
    amplitude: Annotated[
        float | None,
        typer.Option(
            "--amplitude",
            help="AU motion amplitude factor instead of the difficulty's (realistic: casme2 1.4, samm 1.8; "
            "easy: 7x); lower is harder.",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Rendering processes (default: one per CPU).")
    ] = None,
) -> None:
    """Write a synthetic dataset in a real dataset's on-disk format (JPEG frames + .xlsx coding sheet).

    The same readers load it: `aullm data inspect --dataset <style> --root <out>`.

    Example: aullm data synth --style samm --subjects 28 --clips-per-subject 6 --out synth/samm --seed 1
    """
    from aullm_core.data.readers import get_reader
    from aullm_core.data.synth import write_synthetic

    start = time.perf_counter()
    root = write_synthetic(
        style,
        out,
        subjects=subjects,
        clips_per_subject=clips_per_subject,
        seed=seed,
        frame_size=_parse_frame_size(frame_size),
        difficulty=difficulty,
        amplitude=amplitude,
        workers=workers,
    )
    table = get_reader(style).read(root)
    _console().print(
        f"{root}: {len(table)} {style}-style clips, {len(table.subjects)} subjects, difficulty {difficulty}, "
        f"{sum(a.n_frames for a in table)} frames, sheet {table.sheet.name} "
        f"({time.perf_counter() - start:.1f} s)"
    )


@data_app.command("cache")
def cache(
    dataset: DatasetOpt,
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", help="HDF5 file to write, e.g. caches/casme2_64.h5.")],
    frames: FramesOpt = None,
    annotations: AnnotationsOpt = None,
    overrides: OverridesOpt = None,
    lenient: LenientOpt = False,
    size: Annotated[
        int, typer.Option("--size", min=MIN_FRAME_SIZE, help="Frames are resized to SIZE x SIZE (aspect not kept; "
                               f"the model takes any size from {MIN_FRAME_SIZE}, the paper uses 64).")
    ] = 64,
    color: Annotated[
        bool, typer.Option("--color/--grey", help="Keep RGB, or convert to grey (the paper's input).")
    ] = False,
    crop: Annotated[
        str | None, typer.Option("--crop", help="x,y,w,h crop in full-frame pixels, applied before resizing.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Decoding processes (default: one per CPU).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if --out exists (else reuse or refuse).")
    ] = False,
) -> None:
    """Decode every clip (onset..offset) once into one HDF5 file for training.

    The same sources and parameters reuse an existing --out; other ones are refused without --force.

    Example: aullm data cache --dataset samm --root /data/SAMM_v2 --out caches/samm_64.h5 --workers 8
    """
    from aullm_core.data.cache import make_cache

    built = make_cache(
        dataset,
        root,
        out,
        frames=frames,
        annotations=annotations,
        overrides=overrides,
        lenient=lenient,
        size=size,
        color=color,
        crop=_parse_crop(crop),
        force=force,
        workers=workers,
    )
    what = "reused existing cache" if built.reused else "wrote"
    _console().print(
        f"{what} {built.path}: {built.n_clips} clips, {built.n_frames} frames, {size}x{size} "
        f"{'colour' if color else 'grey'}{f', crop {crop}' if crop else ''} ({built.seconds:.1f} s)"
    )
    for line in built.skipped:
        _console(stderr=True).print(f"skipped {line}", markup=False)


@data_app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="HDF5 cache written by `aullm data cache`.")],
) -> None:
    """Check a cache's structure and every checksum; exit 2 with one line if it is truncated or altered.

    Example: aullm data verify caches/casme2_64.h5
    """
    from aullm_core.data.cache import verify_cache

    header = verify_cache(path)
    params = header["params"]
    _console().print(
        f"ok {path}: {header['dataset']}, {header['n_clips']} clips, {header['n_frames']} frames, "
        f"{params['size']}x{params['size']} {'colour' if params['color'] else 'grey'}, "
        f"checksums of {len(header['checksums'])} datasets match",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``aullm`` app."""
    app.add_typer(data_app, name="data")
