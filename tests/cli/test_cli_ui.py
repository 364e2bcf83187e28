"""`aullm ui` serves the sweep's runs on 127.0.0.1 and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from orchestration.cli.main import app
from orchestration.cli.ui import is_loopback, server_command, server_env
from orchestration.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri

MAIN = "from orchestration.cli.main import main; main()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(port: int, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_ui_serves_the_sweep_runs_and_stops(tmp_path: Path) -> None:
    tracker = MlflowTracker(default_tracking_uri(tmp_path), "uisweep")
    run_id = tracker.start(space={"params": {}}, settings={"name": "uisweep"})
    tracker.finish(pd.DataFrame(), tmp_path / "artifacts")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", MAIN, "ui", "--workdir", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, runs = time.monotonic() + 90, None
        while time.monotonic() < deadline and runs is None:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                exp = api(port, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=aullm")["experiment"]
                runs = api(port, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert runs is not None, "the UI did not answer within 90 s"
        (run,) = runs["runs"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["run_id"] == run_id and tags["aullm.sweep"] == "uisweep"
        assert run["info"]["status"] == "FINISHED"
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # `aullm ui` stops its server's process group
        code = proc.wait(timeout=30)
    assert code == 0
    time.sleep(0.5)
    try:
        os.killpg(proc.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    if leftover:  # never leave a server behind, even when the test fails
        os.killpg(proc.pid, signal.SIGKILL)
    assert not leftover, "the MLflow server outlived `aullm ui`"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_ui_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ui", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no tracking database" in result.output and "aullm demo" in result.output


def test_server_command_is_small_and_local() -> None:
    cmd = server_command("sqlite:////x/mlflow.db", port=5123)
    options = dict(zip(cmd[cmd.index("server") + 1 :: 2], cmd[cmd.index("server") + 2 :: 2]))
    assert options == {"--backend-store-uri": "sqlite:////x/mlflow.db", "--host": "127.0.0.1", "--port": "5123",
                       "--workers": "1"}
    assert server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
