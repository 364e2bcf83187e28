"""A real MLflow tracking server killed mid-sweep: training goes on, the records are sent when it is back,
nothing is lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from sweep_helpers import HOOKED_AULLM, ONE_PARAM_SPACE, write_tiny_cache

from orchestration.cli.ui import server_command, server_env

HERE = Path(__file__).resolve().parents[1]  # tests/: the helpers Ray workers import


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(server_command(f"sqlite:///{db}", port=port), env=server_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start")


@pytest.mark.slow
def test_training_goes_on_while_the_tracking_server_is_down(tmp_path: Path) -> None:
    port, db = _port(), tmp_path / "mlflow.db"
    server = _serve(db, port)
    uri = f"http://127.0.0.1:{port}"
    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=4, clips_per_subject=2)
    counter = tmp_path / "trainings.txt"
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"counter": str(counter), "sleep": 1.0}))
    env = {**os.environ, "PYTHONPATH": str(HERE), "AULLM_TEST_CONTROL": str(control), "RAY_AUTH_MODE": "disabled",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    command = [*HOOKED_AULLM, "sweep", "--space", str(space), "--cache", str(cache), "--trials", "3", "--name", "out",
               "--workdir", str(tmp_path / "work"), "--pruner", "none", "--num-cpus", "2", "--json",
               "--tracking-uri", uri]
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (counter.exists() and len(counter.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-sweep
        server.wait(30)
        down = len(counter.read_text().splitlines())
        time.sleep(8)
        assert len(counter.read_text().splitlines()) >= down + 4, "training stopped while MLflow was down"
        server = _serve(db, port)  # back, on the same database
        out, err = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, err[-3000:]
        assert json.loads(out[out.index("{"):])["finished"]
        assert sum("does not answer" in line for line in err.splitlines()) == 1
        assert "answers again" in err

        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("aullm").experiment_id], max_results=1000)
        folds = Counter((r.data.tags["aullm.config_fp"], r.data.tags["aullm.fold_id"]) for r in runs
                        if r.data.tags.get("aullm.level") == "fold")
        assert len(folds) == 3 * 4 and max(folds.values()) == 1  # every fold once, none duplicated
        assert {r.info.status for r in runs} == {"FINISHED"}
    finally:
        sweep.kill()
        os.killpg(server.pid, signal.SIGKILL)
