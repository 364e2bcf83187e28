"""The MLflow UI of a finished sweep, rendered in headless Chromium: the pages a researcher opens.

Used by ``tests/test_ui_browser.py`` (which checks the rendered DOM) and, run as a script, to make
the README's screenshots from the same pages:

    .venv/bin/python tests/ui_pages.py --workdir demo_output --out docs/screenshots
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AULLM = [sys.executable, "-m", "orchestration.cli"]


def chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ui_server(workdir: Path, port: int) -> Iterator[tuple[str, str]]:
    """``aullm ui`` on ``workdir``; yields (base URL, the page it prints), stops it on exit."""
    log = open(Path(workdir) / f"ui-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*AULLM, "ui", "--workdir", str(workdir), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"aullm ui did not start: {(Path(workdir) / f'ui-{port}.log').read_text()[-2000:]}")
            time.sleep(0.5)
        printed = (Path(workdir) / f"ui-{port}.log").read_text()
        page = next(w for line in printed.splitlines() for w in line.split() if w.startswith(base))
        yield base, page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def render(url: str, *, screenshot: Path | None = None, budget_ms: int = 20000,
           size: tuple[int, int] = (1900, 1200)) -> str:
    """The page's DOM after its scripts ran (and a PNG of it when ``screenshot`` is given)."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*common, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=180)
    done = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180)
    return done.stdout


def render_showing(url: str, needle: str, *, tries: int = 3) -> str:
    """``render``, again with a longer budget while the DOM does not hold ``needle`` yet: on a loaded
    machine the page's scripts and its REST calls may not all have run within the first budget."""
    dom = ""
    for attempt in range(1, tries + 1):
        dom = render(url, budget_ms=20000 * attempt)
        if needle in dom:
            break
    return dom


def pages(workdir: Path, base: str, runs_page: str) -> dict[str, str]:
    """The pages shown in the README: the configurations, the best one's run, its folds by subject, the
    compare view of the top two and the sweep run."""
    import json
    from urllib.parse import quote

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("aullm")
    configs = client.search_runs([experiment.experiment_id], "tags.`aullm.level` = 'config'",
                                 order_by=["metrics.`rank` ASC"], max_results=2)
    sweep = client.search_runs([experiment.experiment_id], "tags.`aullm.level` = 'sweep'", max_results=1)
    out = {"configurations": runs_page}
    if configs:
        best = f"{base}/#/experiments/{experiment.experiment_id}/runs/{configs[0].info.run_id}"
        out["best_configuration"] = f"{best}?workflowType=machine_learning"
        out["best_configuration_folds"] = f"{best}/artifacts/folds.csv"
    if len(configs) == 2:
        ids = json.dumps([r.info.run_id for r in configs])
        out["compare_top_two"] = (f"{base}/#/compare-runs?runs={quote(ids)}"
                                  f"&experiments={quote(json.dumps([experiment.experiment_id]))}")
    if sweep:
        out["sweep"] = (f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                        f"{sweep[0].info.run_id}?workflowType=machine_learning")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="Working folder of a finished sweep.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the PNG screenshots.")
    args = parser.parse_args()
    with ui_server(args.workdir, free_port()) as (base, page):
        for name, url in pages(args.workdir, base, page).items():
            render(url, screenshot=args.out / f"mlflow_{name}.png", size=(1900, 2000 if name == "best_configuration" else 1000))
            print(args.out / f"mlflow_{name}.png")


if __name__ == "__main__":
    main()
