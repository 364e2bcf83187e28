"""Export a sweep's best configuration: train it on every subject, save a checkpoint with a model card.

The checkpoint is ``aullm_core.train.checkpoint``'s (safetensors + configuration + SHA-256
manifest); the model card goes into its ``card.json`` (covered by the manifest) and, for people,
into ``MODEL_CARD.md`` beside it. With ``register``, the folder is logged as an MLflow run's
artifacts and registered as a new version of a registered model (no pickled flavour).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aullm_core.atomic import atomic_write_text, remove_stale_staging, replace_folder, staging_folder
from aullm_core.config import ExperimentConfig, dotted
from aullm_core.errors import ConfigError
from aullm_core.model.llm_source import check_llm
from aullm_core.train.checkpoint import MANIFEST_FILE, save_checkpoint
from aullm_core.train.fold import train_full
from aullm_core.train.uncertainty import objective_interval
from orchestration.export.card import INTENDED_USE, LIMITATIONS, card_markdown
from orchestration.folds.trainable import AULLM_CODE, FoldCode
from orchestration.reports.report import SweepData, load_sweep, sweep_leaderboard
from orchestration.results import tables
from orchestration.search.progress import Status

__all__ = ["CARD_MARKDOWN", "ExportResult", "choose_row", "export_best", "model_card", "predict_folders"]

log = logging.getLogger(__name__)

CARD_MARKDOWN = "MODEL_CARD.md"

#: Cache attributes that describe this machine, not the preprocessing (kept out of the card).
_MACHINE_ATTRS = {"path", "created", "aus_all", "fingerprint", "header_checksum"}


@dataclass
class ExportResult:
    """What ``export_best`` wrote."""

    out_dir: Path
    config_fp: str
    rank: int
    card: dict[str, Any]
    registered: tuple[str, int] | None
    train_seconds: float

    @property
    def card_path(self) -> Path:
        return self.out_dir / CARD_MARKDOWN


def choose_row(board: pd.DataFrame, rank: int = 1) -> pd.Series:
    """The leaderboard row to export: ``rank`` (1 = best); only complete configurations qualify."""
    if board.empty:
        raise ConfigError("the sweep has no configuration with a finished fold: nothing to export")
    row = board[board["rank"] == rank]
    if row.empty:
        raise ConfigError(f"rank {rank}: the leaderboard has ranks 1..{len(board)}")
    row = row.iloc[0]
    if row["status"] != Status.COMPLETE:
        raise ConfigError(
            f"rank {rank} (config {row['config_fp']}) is {row['status']} with {row['folds_done']}/"
            f"{row['n_folds_total']} folds: only configurations with every LOSO fold can be exported"
        )
    return row


def model_card(sweep: SweepData, row: pd.Series, board: pd.DataFrame, config: ExperimentConfig, *,
               data_attrs: dict[str, Any], dataset_name: str, n_clips: int, n_subjects: int,
               thresholds: dict[int, float], llm: dict[str, Any], train_seconds: float, device: str,
               model_name: str) -> dict[str, Any]:
    """The card: structured fields (``card.json``) plus its Hugging Face markdown (``card['markdown']``)."""
    s = sweep.settings
    fp = str(row["config_fp"])
    loso = {f"{m}_{a}": {"mean_f1_pos": float(row[f"{m}_{a}_f1_pos"]), "mean_f1_macro": float(row[f"{m}_{a}_f1_macro"]),
                         "test_tuned": m == "paper"}
            for m, a in tables.VARIANTS if f"{m}_{a}_f1_pos" in row.index and not pd.isna(row[f"{m}_{a}_f1_pos"])}
    cross = {c.removeprefix("cross_"): float(row[c]) for c in row.index
             if c.startswith("cross_") and not pd.isna(row[c])}
    results = sweep.store.results(fp, "loso")
    per_au = tables.per_au_table(results)
    interval = objective_interval(s.objective, results)
    bias = (f"Selected as rank {int(row['rank'])} of {len(board)} configurations by `{s.objective}` on the same "
            "LOSO folds that these numbers come from: they are selection-biased (optimistic). "
            "`aullm report --nested` estimates the search procedure without this bias.")
    number = row.get("number")
    cross_rows = tables.cross_table(sweep.store, [fp])
    markdown = card_markdown(
        sweep_name=s.name, config_fp=fp, number=None if number is None or pd.isna(number) else int(number),
        rank=int(row["rank"]), n_configs=len(board), config=config, results=results, objective=s.objective,
        dataset_name=dataset_name, cache_name=Path(s.cache).name, data_attrs=data_attrs, n_clips=n_clips,
        n_subjects=n_subjects, thresholds=thresholds, llm=llm, train_seconds=train_seconds, device=device,
        variants_table=tables.to_markdown(tables.compact(per_au), index=True) if len(per_au) else "",
        cross_table=tables.to_markdown(cross_rows.drop(columns="config_fp")) if len(cross_rows) else "",
        model_name=model_name, machine_attrs=_MACHINE_ATTRS)
    return {
        "sweep": s.name, "config_fp": fp, "rank": int(row["rank"]), "objective": str(s.objective),
        "objective_value": float(row["objective"]), "objective_interval": [interval.low, interval.high],
        "loso": loso, "cross_domain": cross,
        "per_au": per_au.reset_index().to_dict(orient="records") if len(per_au) else [],
        "data_fingerprint": data_attrs.get("fingerprint"), "cache": Path(s.cache).name, "n_clips": n_clips,
        "n_subjects": n_subjects, "synthetic": data_attrs.get("synthetic"),
        "selection_bias": bias, "paper_protocol": tables.PAPER_NOTE,
        "intended_use": INTENDED_USE, "limitations": LIMITATIONS, "markdown": markdown,
    }


def _interval_text(row: pd.Series) -> str:
    low, high = row.get("objective_low", math.nan), row.get("objective_high", math.nan)
    return "" if pd.isna(low) or pd.isna(high) else f" [{low:.3f}, {high:.3f}]"


def version_description(sweep: SweepData, row: pd.Series, board: pd.DataFrame, *, n_subjects: int) -> str:
    """The registered version's description: the objective with its interval, and the selection bias."""
    number = row.get("number")
    trial = f"#{int(number)} " if number is not None and not pd.isna(number) else ""
    return (f"Configuration {trial}(`{row['config_fp']}`) of sweep `{sweep.settings.name}`, retrained on every subject. "
            f"LOSO {sweep.settings.objective} = {float(row['objective']):.3f}{_interval_text(row)} (95% CI, bootstrap "
            f"over {n_subjects} subjects). Selection-biased: chosen as rank {int(row['rank'])} of {len(board)} "
            "configurations on the same folds these numbers come from, so optimistic; `aullm report --nested` "
            "estimates the search procedure without this bias. Thresholds chosen on training subjects, never on test data.")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a folder holding something else than an aullm checkpoint; temporary files an older, killed
    export left inside it are removed, as are staging folders beside it whose export died."""
    remove_stale_staging(out_dir)
    if not out_dir.exists() or (out_dir / MANIFEST_FILE).is_file():
        return
    leftovers = [p for p in out_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    if any(p not in leftovers for p in out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: folder is not empty and holds no aullm checkpoint; choose another --out")
    for path in leftovers:
        path.unlink(missing_ok=True)


def export_best(workdir: Path, name: str, out_dir: Path, *, rank: int = 1, register: bool = False,
                model_name: str | None = None, tracking_uri: str | None = None, device: str = "cpu",
                progress: bool = True, code: FoldCode = AULLM_CODE) -> ExportResult:
    """Train configuration ``rank`` of sweep ``name`` on every clip of its cache (read by ``code``'s loader,
    the sweep's own) and save it."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    sweep = load_sweep(workdir, name)
    board, _ = sweep_leaderboard(sweep, tracking_uri=tracking_uri)
    row = choose_row(board, rank)
    fp = str(row["config_fp"])
    config = ExperimentConfig.model_validate(sweep.store.configs()[fp])
    llm = check_llm(config.model, device=device)  # before training: the checkpoint is there and unchanged
    if llm is not None and config.model.llm_id not in (None, llm.identity):
        raise ConfigError(f"model.llm={config.model.llm!r}: the checkpoint changed since the sweep trained it "
                          f"(content {llm.identity}, the sweep's {config.model.llm_id}); restore it to export")
    staging = staging_folder(out_dir)  # first: a folder that cannot be written fails before hours of training
    try:
        clips = code.cache_loader(str(sweep.settings.cache))
        log.info("export: training configuration %s on %d clips", fp, len(clips))
        start = time.perf_counter()
        trained = train_full(clips, config, device=device, progress=progress)
        seconds = time.perf_counter() - start
        llm_record = llm.to_dict() if llm is not None else {"family": "tiny (built in code)", "identity": "tiny"}
        card = model_card(sweep, row, board, config, data_attrs=dict(clips.attrs), dataset_name=clips.name,
                          n_clips=len(clips), n_subjects=len(set(clips.subjects)), thresholds=dict(trained.thresholds),
                          llm=llm_record, train_seconds=seconds, device=device, model_name=model_name or f"aullm-{name}")
        card["train_seconds"] = seconds
        card["llm"] = llm_record
        save_checkpoint(trained, staging, card=card)  # the new model is built beside the old one, swapped in whole
        atomic_write_text(staging / CARD_MARKDOWN, card["markdown"])
        replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the previous model
    registered = None
    if register:
        from orchestration.tracking.registry import register_checkpoint

        uri = tracking_uri or sweep.tracking_uri
        if uri is None:
            raise ConfigError("--register needs an MLflow tracking store, but the sweep ran with tracking off")
        registered = register_checkpoint(
            uri, out_dir, model_name=model_name or f"aullm-{name}", sweep_name=name,
            tags={"aullm.config_fp": fp, "aullm.objective": str(sweep.settings.objective)},
            metrics={"loso_objective": float(row["objective"]),
                     **{f"loso_objective_{end}": float(row[f"objective_{end}"]) for end in ("low", "high")
                        if f"objective_{end}" in row.index and row[f"objective_{end}"] == row[f"objective_{end}"]},
                     **{c: float(row[c]) for c in row.index if c.startswith("cross_") and c.endswith("_f1_pos")
                        and row[c] == row[c]}},
            params={k: str(v)[:500] for k, v in dotted(config.model_dump(mode="json"), lists_as_json=True).items()},
            description=version_description(sweep, row, board, n_subjects=len(set(clips.subjects))),
        )
    return ExportResult(out_dir=out_dir, config_fp=fp, rank=rank, card=card, registered=registered,
                        train_seconds=seconds)


def predict_folders(model_dir: Path, folders: list[Path], *, device: str = "cpu") -> pd.DataFrame:
    """AU probabilities and decisions for clip folders (each: the frames from onset to offset).

    Frames are read and preprocessed as the training cache was (its parameters are stored in the
    checkpoint) and sampled as at test time. One row per (clip, AU).
    """
    from aullm_core.data.preprocess import frame_options, list_frames, load_frames
    from aullm_core.errors import DataError
    from aullm_core.train.checkpoint import load_checkpoint
    from aullm_core.train.predict import binarize, predict_clips

    trained = load_checkpoint(Path(model_dir), device=device)
    prep = frame_options(trained.preprocessing)
    clips, lengths = [], []
    for folder in folders:
        paths = list_frames(Path(folder))
        if not paths:
            raise DataError(f"{folder}: no frame files (.jpg, .jpeg, .png, .bmp) in this clip folder")
        clips.append(load_frames(paths, **prep))
        lengths.append(len(paths))
    probs = predict_clips(trained, clips)
    decisions = binarize(trained, probs)
    rows = []
    for i, folder in enumerate(folders):
        for k, au in enumerate(trained.aus):
            rows.append({"clip": str(folder), "n_frames": lengths[i], "frames_sampled": trained.config.data.n_frames,
                         "au": f"AU{au}",
                         "probability": float(probs[i, k]), "threshold": float(trained.thresholds[au]),
                         "present": bool(decisions[i, k])})
    return pd.DataFrame(rows)
