"""The MLflow UI of a finished sweep, rendered by a real browser (headless Chromium).

Checked in the DOM the page's scripts produce, not in the REST API: the page ``aullm ui`` prints lists
the configurations best first with their rank, objective and trial number in the run name, and the
best configuration's run links its fold runs by subject. Skipped, saying why, without Chromium
(``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from sweep_helpers import cheap_hooks, write_tiny_cache
from ui_pages import chromium, free_port, pages, render_showing, ui_server

from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (apt-get install chromium)")]

HERE = Path(__file__).resolve().parents[1]  # tests/: the helpers Ray workers import


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    space = root / "space.yaml"
    space.write_text("base: quick\nstart_with: paper\nparams:\n"
                     "  train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    cache = write_tiny_cache(root / "casme2.npz", subjects=4, clips_per_subject=3)
    settings = SweepSettings(name="ui", space=space, cache=cache, workdir=root / "work", n_configs=3,
                             startup_configs=2, num_cpus=2)
    summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
    assert summary.finished and summary.n_complete + summary.n_pruned == 3
    return root / "work"


def test_the_printed_page_shows_configurations_best_first_and_the_best_run_its_folds(finished: Path) -> None:
    with ui_server(finished, free_port()) as (base, page):
        dom = render_showing(page, ">objective_high<")
        names = re.findall(r">(\d+\. (?:[0-9.]+|-) #\d+(?: [a-z-]+)*)<", dom)
        assert len(names) == 3, f"configuration runs not in the rendered table: {names}"
        assert [int(n.split(".")[0]) for n in names] == [1, 2, 3]  # sorted by rank
        assert any(n.endswith("paper-defaults") for n in names)  # the paper's values, labelled
        assert "Model training" in dom and "aullm.level" in dom  # training view, filtered to configurations
        shown = pages(finished, base, page)
        best = render_showing(shown["best_configuration"], ">AU01/f1_low<")
        assert names[0] in best
        subjects = set(re.findall(r">(s0[1-4]) [0-9a-f]{6}<", best))
        assert subjects == {"s01", "s02", "s03", "s04"}, "fold runs are named by their subject"
        for column in ("objective", "objective_low", "objective_high", "folds_done", "train.lr"):
            assert f">{column}<" in dom, f"the landing table has no {column} column"
        table = best[best.index("Metrics ("):]  # the run page's metrics box (the description above names them too)
        first = [table.find(f">{m}<") for m in ("objective", "objective_low", "objective_high", "AU01/f1", "AU01/f1_low")]
        assert -1 not in first and first == sorted(first), "the configuration page does not lead with the objective"
        assert ">folds_done<" not in table[: first[-1]] and "test_tuned" not in table[: first[-1]]
        folds = render_showing(shown["best_configuration_folds"], ">AU1 F1<")
        assert all(f">{s}<" in folds for s in ("s01", "s02", "s03", "s04")) and ">AU1 F1<" in folds
        compare = render_showing(shown["compare_top_two"], names[1])
        assert names[0] in compare and names[1] in compare
