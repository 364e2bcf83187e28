"""``aullm train`` (every fold of a protocol, one after the other) and ``aullm score`` (external CSVs).

Examples:
    aullm train --cache caches/casme2_64.h5 --protocol loso --preset quick --out runs/quick
    aullm train --cache caches/casme2_64.h5 --protocol loso --preset quick --set model.use_llm=false --out runs/no_llm
    aullm train --cache caches/casme2_64.h5 --target caches/samm_64.h5 --protocol cross --preset quick --out runs/cross
    aullm train --cache caches/samm_64.h5 --protocol loso --preset paper --engine deepspeed --device cuda --out runs/paper
    aullm score --labels labels.csv --probs probs.csv --threshold paper --format table
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import numpy as np
import pandas as pd
import typer

from aullm_core.atomic import atomic_write_text
from aullm_core.config import ExperimentConfig
from aullm_core.model.llm_source import check_llm, resolve_model
from aullm_core.train.metrics import Score, score_all, score_arrays, score_results, trivial_scores
from aullm_core.train.result import predictions_frame
from orchestration.cli.options import DeviceOpt, OutDirOpt

__all__ = ["parse_sets", "register", "score_tables"]

_COLUMNS = [
    ("pooled", "paper", "pooled, paper thresholds (TEST-TUNED, leaky)"),
    ("pooled", "fixed", "pooled, fixed 0.5"),
    ("pooled", "inner", "pooled, inner thresholds"),
    ("fold_mean", "paper", "fold mean, paper thresholds (TEST-TUNED, leaky)"),
    ("fold_mean", "fixed", "fold mean, fixed 0.5"),
    ("fold_mean", "inner", "fold mean, inner thresholds"),
    ("pooled", "all_positive", "all-positive predictor"),
    ("pooled", "all_negative", "all-negative predictor"),
]


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, true/false, lists), lists and
    mappings as people type them (``[c_attn, c_proj]``, YAML flow style), else text."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
            if raw.strip().startswith(("[", "{")):
                try:
                    value = yaml.safe_load(raw)
                except yaml.YAMLError:
                    raise ValueError(f"--set {item!r}: {raw!r} is not a list or mapping, e.g. [a, b]") from None
        out[key.strip()] = value
    return out


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def score_tables(scores: Sequence[Score]) -> tuple[str, dict[str, Any]]:
    """Markdown (an F1_pos and an F1_macro table, AUs as rows, protocols side by side) and JSON."""
    by_key = {(s.aggregate, s.mode): s for s in scores}
    columns = [(key, title) for *key, title in _COLUMNS if tuple(key) in by_key]
    aus = scores[0].aus
    lines = []
    for metric, label in (("f1_pos", "positive-class F1 (%)"), ("f1_macro", "macro F1, the paper's metric (%)")):
        lines.append(f"**{label}**\n")
        lines.append("| AU | " + " | ".join(title for _, title in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for au in aus:
            cells = [_fmt(getattr(by_key[tuple(k)], metric)[au]) for k, _ in columns]
            lines.append(f"| AU{au} | " + " | ".join(cells) + " |")
        means = [_fmt(getattr(by_key[tuple(k)], f"mean_{metric}")) for k, _ in columns]
        lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
        lines.append("")
    payload = {"protocols": [s.to_dict() for s in scores]}
    return "\n".join(lines), payload


def train(
    cache: Annotated[Path, typer.Option("--cache", help="HDF5 clip cache (aullm data cache); the source for --protocol cross.")],
    out: OutDirOpt,
    protocol: Annotated[str, typer.Option("--protocol", help="loso (one fold per subject) or cross (train on --cache, test on --target).")] = "loso",
    target: Annotated[Path | None, typer.Option("--target", help="Second cache, the test set of --protocol cross.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="paper (method.md values: 350 epochs, hours on CPU) or quick (minutes on a laptop); default: quick on --device cpu, paper on cuda.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a configuration field, e.g. --set train.lr=1e-4 --set model.use_llm=false (repeatable).")] = None,
    folds: Annotated[int | None, typer.Option("--folds", min=1, help="Only the first K folds (a quick look; scores then cover those folds).")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="torch or deepspeed (default: the configuration's train.engine).")] = None,
    device: DeviceOpt = "cpu",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars over folds and epochs.")] = True,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch CPU threads (default: torch's choice; 1 is faster when other jobs share the cores).")] = None,
) -> None:
    """Train and score every fold of a protocol here, one after the other (no Ray).

    Folds are recorded in the fold store OUT/folds/ (the sweep's, keyed by
    configuration, protocol, fold and data): rerunning is cheap and an interrupted
    run resumes. OUT/predictions.csv holds every test clip's labels (AU<k>) and
    probabilities (prob_AU<k>): feed it to `aullm score --labels ... --probs ...`.

    Prints and writes OUT/scores.md and OUT/scores.json: every AU's F1 under each
    protocol variant side by side (the paper's test-tuned thresholds labelled as
    leaky), the trivial predictors, and the time taken.
    """
    from aullm_core.data.cache import load_cache
    from aullm_core.data.splits import cross_domain_fold, loso_folds
    from orchestration.folds.local import local_store, train_folds

    start = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if protocol not in ("loso", "cross"):
        raise ValueError(f"--protocol {protocol!r}: expected loso or cross")
    if preset is None:
        preset = "quick" if device == "cpu" else "paper"
        click.echo(f"preset {preset} (for --device {device}; --preset paper|quick to choose)", err=True)
    if preset not in ("paper", "quick"):
        raise ValueError(f"--preset {preset!r}: expected paper or quick")
    overrides = parse_sets(sets or [])
    if engine is not None:
        if engine not in ("torch", "deepspeed"):
            raise ValueError(f"--engine {engine!r}: expected torch or deepspeed")
        overrides["train.engine"] = engine
    config = ExperimentConfig.preset(preset).with_overrides(overrides)
    config = config.model_copy(update={"model": resolve_model(config.model)})
    llm = check_llm(config.model, device=device)
    if llm is not None:
        click.echo(llm.line(), err=True)
    source = load_cache(cache)
    if protocol == "cross":
        if target is None:
            raise ValueError("--protocol cross needs --target (the cache to test on)")
        test_set = load_cache(target)
        fold_list = [cross_domain_fold(source, test_set)]
        store = local_store(out, source, test_set)
    else:
        if target is not None:
            raise ValueError("--target is only used with --protocol cross")
        test_set = source
        fold_list = loso_folds(source)
        store = local_store(out, source)
    fold_list = fold_list[:folds] if folds else fold_list
    atomic_write_text(out / "run.json", json.dumps({
        "config_fp": config.fingerprint(), "protocol": protocol, "cache": str(cache),
        "target": str(target) if target else None, "store": str(store.root),
        "config": config.model_dump(mode="json"), "folds": [f.fold_id for f in fold_list],
        "llm": llm.to_dict() if llm is not None else None,
    }, indent=1, ensure_ascii=False))
    results, reused = train_folds(source, test_set, fold_list, config, store, device=device, progress=progress)
    predictions = out / "predictions.csv"
    atomic_write_text(predictions, predictions_frame(results).to_csv(index=False, float_format="%.9g"))

    scores = score_all(results) + trivial_scores(results)
    markdown, payload = score_tables(scores)
    elapsed = time.perf_counter() - start
    fold_time = sum(r.duration_s for r in results)
    header = (
        f"# aullm train: {protocol}, {len(results)} folds ({reused} reused), {source.name}"
        + (f" -> {test_set.name}" if protocol == "cross" else "")
        + f", config {config.fingerprint()}\n\n"
        f"Total time {elapsed:.0f} s (training {fold_time:.0f} s summed over folds). 'paper' thresholds are "
        "picked on the pooled TEST predictions (the published protocol): those columns are test-tuned "
        "and optimistic; 'fixed' and 'inner' thresholds never see test labels.\n"
    )
    payload.update({
        "config_fp": config.fingerprint(), "protocol": protocol, "n_folds": len(results), "reused_folds": reused,
        "total_time_s": elapsed, "training_time_s": fold_time, "config": config.model_dump(mode="json"),
    })
    atomic_write_text(out / "scores.json", json.dumps(payload, indent=1, ensure_ascii=False))
    atomic_write_text(out / "scores.md", header + "\n" + markdown)
    click.echo(header + "\n" + markdown)
    click.echo(f"wrote {out / 'scores.md'}, {out / 'scores.json'} and {predictions} "
               f"(aullm score --labels {predictions} --probs {predictions})")


def _read_au_csv(path: Path, role: str, pattern: str = r"AU\d+") -> pd.DataFrame:
    frame = pd.read_csv(path)
    if not any(re.fullmatch(pattern, str(c)) for c in frame.columns):
        raise ValueError(f"{path}: no AU column in the {role} CSV (expected columns like AU4)")
    return frame


def score(
    labels: Annotated[Path, typer.Option("--labels", help="CSV, one row per clip, 0/1 columns named like AU4, optional 'fold' and 'clip' (aullm train's predictions.csv works).")],
    probs: Annotated[Path, typer.Option("--probs", help="CSV, same rows, probability columns named prob_AU4 (aullm train's predictions.csv) or AU4.")],
    threshold: Annotated[str, typer.Option("--threshold", help="fixed (0.5, the default: leak-free), a number such as 0.4, or paper (the published protocol: thresholds tuned on these very labels, leaky).")] = "fixed",
    output: Annotated[str, typer.Option("--format", help="json or table.")] = "json",
) -> None:
    """Score external predictions: per AU positive-class and macro F1, thresholds used.

    Rows are matched by position (checked by a 'clip' column when both have one).
    With a 'fold' column the fold-mean aggregate is reported beside the pooled one.
    """
    if output not in ("json", "table"):
        raise ValueError(f"--format {output!r}: expected json or table")
    lab = _read_au_csv(labels, "labels")
    prob = _read_au_csv(probs, "probabilities", r"(prob_)?AU\d+")
    au_cols = [c for c in lab.columns if re.fullmatch(r"AU\d+", str(c))]
    prob_cols = [f"prob_{c}" if f"prob_{c}" in prob.columns else c for c in au_cols]
    missing = [c for c in prob_cols if c not in prob.columns]
    if missing:
        raise ValueError(f"{probs}: missing column {missing[0]} (the labels have {', '.join(au_cols)})")
    if len(lab) != len(prob):
        raise ValueError(f"{probs}: {len(prob)} rows, but {labels} has {len(lab)}")
    if "clip" in lab.columns and "clip" in prob.columns:
        bad = np.flatnonzero(lab["clip"].astype(str).to_numpy() != prob["clip"].astype(str).to_numpy())
        if bad.size:
            raise ValueError(f"{probs}: row {bad[0] + 2} is clip {prob['clip'].iloc[bad[0]]!r}, labels say {lab['clip'].iloc[bad[0]]!r}")
    y = lab[au_cols].to_numpy()
    if not np.isin(y, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(y, (0, 1)).all(axis=1))[0])
        raise ValueError(f"{labels}: row {row + 2} has a label other than 0/1")
    p = prob[prob_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError(f"{probs}: row {int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0]) + 2} has a missing or non-numeric probability")
    aus = tuple(int(c[2:]) for c in au_cols)
    fold_col = lab["fold"] if "fold" in lab.columns else prob["fold"] if "fold" in prob.columns else None
    results = score_arrays(p, y, aus, folds=None if fold_col is None else fold_col.astype(str).tolist())
    if threshold == "paper":
        mode, fixed = "paper", 0.5
    elif threshold == "fixed":
        mode, fixed = "fixed", 0.5
    else:
        try:
            mode, fixed = "fixed", float(threshold)
        except ValueError:
            raise ValueError(f"--threshold {threshold!r}: expected paper, fixed or a number in (0, 1)") from None
        if not 0 < fixed < 1:
            raise ValueError(f"--threshold {threshold!r}: expected a number in (0, 1)")
    aggregates = ["pooled"] + (["fold_mean"] if fold_col is not None else [])
    scores = [score_results(results, mode=mode, aggregate=a, fixed_threshold=fixed) for a in aggregates]  # type: ignore[arg-type]
    if output == "json":
        click.echo(json.dumps({"scores": [s.to_dict() for s in scores]}, indent=1))
    else:
        for s in scores:
            leak = " (TEST-TUNED: thresholds chosen on these labels)" if s.test_tuned else ""
            click.echo(f"{s.name}{leak}: {s.n_clips} clips, {s.n_folds} folds")
            click.echo("| AU | threshold | F1_pos | F1_macro |\n|---|---:|---:|---:|")
            for au in s.aus:
                click.echo(f"| AU{au} | {s.thresholds[au]:.2f} | {_fmt(s.f1_pos[au])} | {_fmt(s.f1_macro[au])} |")
            click.echo(f"| mean | | {_fmt(s.mean_f1_pos)} | {_fmt(s.mean_f1_macro)} |\n")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("score")(score)
