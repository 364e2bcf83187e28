"""The demo's closing comparison: best, paper's values and baselines, a missing score shown as '-'."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from orchestration.cli.demo import comparison_rows, interval_of


def test_rows_name_the_best_the_paper_values_and_a_failed_paper_configuration_has_no_score() -> None:
    board = pd.DataFrame([
        {"number": 3, "label": "", "status": "complete", "objective": 0.45, "folds_done": 8, "n_folds_total": 8,
         "param.train.lr": 2e-5, "objective_low": 0.4, "objective_high": 0.5},
        {"number": 0, "label": "paper defaults", "status": "failed", "objective": np.nan, "folds_done": 0,
         "n_folds_total": 8, "param.train.lr": 3e-5, "objective_low": np.nan, "objective_high": np.nan},
    ])
    rows = comparison_rows(SimpleNamespace(leaderboard=board), {"all_positive": 0.2, "prior": 0.1})
    assert rows[0] == ("best configuration (selection-biased)", "#3 train.lr=2e-05", 0.45)
    assert rows[1] == ("paper's values (failed, 0/8 folds)", "#0 train.lr=3e-05", None)
    assert [r[2] for r in rows[2:]] == [0.2, 0.1]
    assert [interval_of(board, r[1]) for r in rows] == ["[0.400, 0.500]", "", "", ""]
