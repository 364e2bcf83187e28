"""A fold table (written by ``bench/fold_table.py``) read back: every configuration's fold results,
their true full-LOSO scores and the numbers that say whether the table can rank anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aullm_core.train.objective import DEFAULT_OBJECTIVE, Objective
from aullm_core.train.result import FoldResult


@dataclass
class TableConfig:
    """One configuration of the table: its label (``grid`` or a seed replicate) and its folds."""

    number: int
    label: str
    fp: str
    overrides: dict
    results: dict[str, FoldResult]  # fold id -> result

    @property
    def is_grid(self) -> bool:
        return self.label == "grid"


class FoldTable:
    """Every configuration x every LOSO fold of one dataset."""

    def __init__(self, meta: dict, configs: list[TableConfig]) -> None:
        self.meta = meta
        self.configs = configs
        self.fold_ids: list[str] = list(meta["fold_ids"])
        self.by_fp = {c.fp: c for c in configs}

    @classmethod
    def load(cls, path: Path) -> FoldTable:
        meta = json.loads(path.with_suffix(".json").read_text())
        aus = tuple(meta["aus"])
        configs = []
        with np.load(path.with_suffix(".npz")) as arrays:
            for k, row in enumerate(meta["configs"]):
                results = {}
                for f in meta["fold_ids"]:
                    labels = arrays[f"c{k}/{f}/labels"]
                    results[f] = FoldResult(
                        fold_id=f, protocol="loso", aus=aus, clip_ids=row["clip_ids"][f], subjects=[f] * len(labels),
                        probs=arrays[f"c{k}/{f}/probs"], labels=labels, epoch_losses=[],
                        inner_thresholds=arrays.get(f"c{k}/{f}/inner"), best_epoch=row["best_epoch"][f],
                        duration_s=row["durations_s"][f],
                    )
                configs.append(TableConfig(row["number"], row["label"], row["fp"], row["overrides"], results))
        return cls({k: v for k, v in meta.items() if k != "configs"}, configs)

    @property
    def grid(self) -> list[TableConfig]:
        return [c for c in self.configs if c.is_grid]

    def true_score(self, fp: str, objective: Objective = DEFAULT_OBJECTIVE) -> float:
        """The configuration's full-LOSO objective (every fold)."""
        config = self.by_fp[fp]
        return objective.of_results([config.results[f] for f in self.fold_ids])

    def fold_scores(self, fp: str, objective: Objective = DEFAULT_OBJECTIVE) -> np.ndarray:
        """The per-fold scores the pruners compare, in ``fold_ids`` order (NaN: undefined)."""
        score = objective.fold_score
        return np.array([score.of(self.by_fp[fp].results[f]) for f in self.fold_ids], dtype=float)

    def duration(self, fp: str, fold_id: str) -> float:
        return float(self.by_fp[fp].results[fold_id].duration_s)

    def describe(self) -> str:
        """What the table holds: configurations, scores, spread against seed-to-seed noise."""
        d = self.meta["data"]
        lines = [(f"{len(self.configs)} configurations x {len(self.fold_ids)} folds; data: {d['style']} "
                 f"{d['subjects']} x {d['clips_per_subject']} clips, {d['difficulty']}, seed {d['seed']}")]
        grid = sorted(((self.true_score(c.fp), c) for c in self.grid), key=lambda x: -x[0])
        for score, c in grid:
            lines.append(f"  {score:.3f}  {c.overrides}  ({sum(r.duration_s for r in c.results.values()):.0f} s)")
        noise = self.seed_noise()
        if noise:
            lines.append(f"seed replicates of {noise['overrides']}: {noise['scores']} -> sd {noise['sd']:.4f}")
        if len(grid) >= 2:
            scores = [s for s, _ in grid]
            lines.append(f"best {scores[0]:.3f}, median {float(np.median(scores)):.3f}: spread "
                         f"{scores[0] - float(np.median(scores)):.3f}")
        return "\n".join(lines)

    def seed_noise(self) -> dict | None:
        """Full-LOSO scores of the replicated configuration under each training seed, and their sd."""
        replicates = [c for c in self.configs if not c.is_grid]
        if not replicates:
            return None
        base = {k: v for k, v in replicates[0].overrides.items() if k != "train.seed"}
        same = [c for c in self.grid if c.overrides == base] + replicates
        scores = [self.true_score(c.fp) for c in same]
        return {"overrides": base, "scores": [round(s, 4) for s in scores],
                "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan")}
