"""What a fold or configuration run shows in MLflow, in the order a researcher reads it.

MLflow's run page lists metrics in the order they were first logged, so each dict here starts with the
objective and its 95% interval over subjects, then each AU's F1 under the objective's protocol with its
interval and its number of positive clips, then the bookkeeping, and last the protocol variants' means
under labelled names (``protocols/test_tuned_pooled/...`` for the leaky one). The full per-AU grid of
every variant is a table artifact (``scores.csv``), not 200 metrics.

An AU without a positive clip in a fold has no positive-class F1 there: it is NaN on the fold run (MLflow
shows NaN), grey in the heatmaps, and left out of fold means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from aullm_core.train.metrics import score_results
from aullm_core.train.objective import Objective
from aullm_core.train.result import FoldResult
from aullm_core.train.uncertainty import au_support, objective_interval, per_au_intervals

__all__ = ["PROTOCOL_LABEL", "au_metric", "config_metrics", "direction_key", "fold_metrics", "fold_table", "labelled",
           "variant_means"]

#: threshold mode -> the name its metrics carry (the paper's thresholds are tuned on the test predictions)
PROTOCOL_LABEL = {"paper": "test_tuned", "fixed": "fixed", "inner": "inner"}


def au_metric(au: int, what: str = "f1") -> str:
    """'AU04/f1', 'AU04/f1_low', 'AU04/positives': zero-padded so the AUs sort as numbers."""
    return f"AU{int(au):02d}/{what}"


def _per_au(objective: Objective, results: Sequence[FoldResult]) -> dict[int, float]:
    """Each AU's F1 under the objective's protocol over these folds; NaN for positive-class F1 where no
    clip is positive (undefined, not zero)."""
    score = score_results(list(results), mode=objective.thresholds, aggregate=objective.aggregate)
    values = score.f1_pos if objective.metric == "f1_pos" else score.f1_macro
    support = au_support(results)
    return {au: (math.nan if objective.metric == "f1_pos" and support[au] == 0 else float(values[au]))
            for au in score.aus}


def fold_metrics(objective: Objective, result: FoldResult) -> dict[str, float]:
    """A fold run's metrics: its objective (the fold's clips scored as the objective scores), per-AU F1
    and positives. Empty when the objective does not apply (inner thresholds asked for and absent)."""
    one = objective.model_copy(update={"aggregate": "pooled"})
    try:
        per_au = _per_au(one, [result])
    except ValueError:
        return {}
    defined = [v for v in per_au.values() if not math.isnan(v)]
    out = {"objective": float(np.mean(defined)) if defined else math.nan}
    support = au_support([result])
    for au, value in per_au.items():
        out[au_metric(au)] = value
        out[au_metric(au, "positives")] = float(support[au])
    return out


def config_metrics(objective: Objective, results: Sequence[FoldResult]) -> dict[str, float]:
    """A configuration run's leading metrics: objective with its interval, then per AU its F1 with
    interval and its positives."""
    interval = objective_interval(objective, results)
    out = {"objective": interval.value, "objective_low": interval.low, "objective_high": interval.high}
    support = au_support(results)
    for au, au_interval in per_au_intervals(objective, results).items():
        out[au_metric(au)] = au_interval.value
        out[au_metric(au, "f1_low")] = au_interval.low
        out[au_metric(au, "f1_high")] = au_interval.high
        out[au_metric(au, "positives")] = float(support[au])
    return out


def variant_means(results: Sequence[FoldResult], prefix: str = "protocols/",
                  aggregates: Sequence[str] = ("pooled", "fold_mean")) -> dict[str, float]:
    """Mean F1+ and F1-macro of every protocol variant that applies, under labelled names."""
    from aullm_core.train.metrics import score_all

    out = {}
    for score in score_all(list(results)):
        if score.aggregate not in aggregates:
            continue
        name = f"{prefix}{PROTOCOL_LABEL[score.mode]}_{score.aggregate}"
        out[f"{name}/mean_f1_pos"] = score.mean_f1_pos
        out[f"{name}/mean_f1_macro"] = score.mean_f1_macro
    return out


def fold_table(objective: Objective, results: Sequence[FoldResult]) -> pd.DataFrame:
    """One row per fold, by subject: clips, positives per AU, the fold's objective and per-AU F1 (NaN where
    the AU has no positive clip)."""
    rows = []
    for result in sorted(results, key=lambda r: r.fold_id):
        metrics = fold_metrics(objective, result)
        row: dict[str, object] = {"subject": result.fold_id, "clips": len(result.clip_ids),
                                  "objective": metrics.get("objective", math.nan)}
        for au in result.aus:
            row[f"AU{au} F1"] = metrics.get(au_metric(au), math.nan)
        for au in result.aus:
            row[f"AU{au} positives"] = int(metrics.get(au_metric(au, "positives"), 0))
        rows.append(row)
    return pd.DataFrame(rows)


def labelled(column: str) -> str:
    """'paper_pooled_f1_pos' -> 'test_tuned_pooled_f1_pos': the grid's columns named as the run's metrics."""
    mode, _, rest = column.partition("_")
    return f"{PROTOCOL_LABEL.get(mode, mode)}_{rest}"


def direction_key(fold_id: str) -> str:
    """'casme2->samm' -> 'casme2_to_samm' (MLflow metric names do not allow '>')."""
    return fold_id.replace("->", "_to_")
