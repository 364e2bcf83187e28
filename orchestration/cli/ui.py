"""``aullm ui``: the MLflow UI on a sweep's tracking store, bound to 127.0.0.1 by default.

Example:
    aullm ui                          # store of ./aullm_runs, http://127.0.0.1:5000
    aullm ui --workdir demo_output --port 5050
    aullm dashboard --sweep demo --workdir demo_output    # optuna-dashboard on the sweep's study
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import typer

from aullm_core.errors import ConfigError
from orchestration.cli.options import SweepNameOpt, WorkdirOpt
from orchestration.sweep.folder import SweepFolder

__all__ = ["is_loopback", "register", "runs_page", "server_command", "server_env"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mlflow_executable() -> list[str]:
    beside = Path(sys.executable).with_name("mlflow")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "mlflow"]


def server_command(tracking_uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server`` with one worker (two processes, ~0.5 GB instead of ~15 processes)."""
    return [*_mlflow_executable(), "server", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def server_env() -> dict[str, str]:
    """Environment of the server: no background job runner, no telemetry."""
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def runs_page(base: str, experiment_id: str, view: str | None = None) -> str:
    """The experiment's configurations, best first, in MLflow's model-training view: the page to open.

    With a sweep's shared view (``view``, an experiment tag the tracker writes), the table also shows the
    objective, its interval and the searched parameters as columns; without one (a store written by an
    older aullm) the URL filters to configuration runs sorted by rank. MLflow 3 opens in its GenAI view
    unless told (``workflowType``).
    """
    if view is not None:
        query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": view}, quote_via=quote)
    else:
        query = urlencode({"workflowType": "machine_learning", "searchFilter": "tags.`aullm.level` = 'config'",
                           "orderByKey": "metrics.`rank`", "orderByAsc": "true"}, quote_via=quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def _resolve_uri(workdir: Path, tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    db = workdir / "mlflow.db"
    if not db.is_file():
        raise FileNotFoundError(
            f"{db}: no tracking database here; run `aullm sweep` or `aullm demo` first, or pass --workdir"
        )
    return f"sqlite:///{db.resolve()}"


def ui(
    workdir: WorkdirOpt = Path("aullm_runs"),
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="Any MLflow backend store URI (default: sqlite:///<workdir>/mlflow.db)."),
    ] = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Interface to bind. Keep 127.0.0.1 unless others must reach it: the UI "
                     "has no authentication."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the UI.", min=1, max=65535)] = 5000,
) -> None:
    """Start the MLflow UI on the sweeps' tracking store; Ctrl-C stops it."""
    uri = _resolve_uri(workdir, tracking_uri)
    if not is_loopback(host):
        typer.echo(f"warning: binding to {host} makes the MLflow UI (no authentication) reachable from the "
                   "network; prefer 127.0.0.1 and an SSH tunnel", err=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    from orchestration.tracking.index import find_experiment, sweep_views

    experiment = find_experiment(uri)
    views = sweep_views(uri, experiment) if experiment is not None else []
    lines = [f"MLflow UI on {uri}"]
    if experiment is None:
        lines.append(f"  {base}")
    elif not views:
        lines.append(f"  configurations, best first: {runs_page(base, experiment)}")
    for i, (key, name) in enumerate(views):
        lines.append(f"  {'configurations, best first' if i == 0 else 'also'} ({name}): {runs_page(base, experiment, key)}")
    typer.echo("\n".join([*lines, "  (Ctrl-C to stop)"]))
    _serve(server_command(uri, host=host, port=port), server_env())


def _stop_group(proc: subprocess.Popen) -> None:
    """Terminate the server and its worker (its own process group), then kill what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def dashboard_command(journal: Path, *, host: str = "127.0.0.1", port: int = 8080) -> list[str]:
    """``optuna-dashboard`` on a sweep's Optuna journal; ConfigError when it is not installed."""
    beside = Path(sys.executable).with_name("optuna-dashboard")
    if not beside.exists():
        raise ConfigError("optuna-dashboard is not installed: pip install 'aullm[dashboard]' (or optuna-dashboard)")
    return [str(beside), str(journal), "--storage-class", "JournalFileStorage", "--host", host, "--port", str(port)]


def dashboard(
    sweep: SweepNameOpt,
    workdir: WorkdirOpt = Path("aullm_runs"),
    host: Annotated[str, typer.Option("--host", help="Interface to bind (no authentication: keep 127.0.0.1).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the dashboard.", min=1, max=65535)] = 8080,
) -> None:
    """optuna-dashboard on a sweep's study: history, parameter importance, each fold's score per
    configuration (step i = the i-th subject in the study's user attribute 'steps'); Ctrl-C stops it."""
    journal = SweepFolder.of(workdir, sweep).journal
    if not journal.is_file():
        raise FileNotFoundError(f"{journal}: no Optuna study of a sweep named {sweep!r} here; pass --workdir")
    if not is_loopback(host):
        typer.echo(f"warning: binding to {host} makes the dashboard (no authentication) reachable from the network",
                   err=True)
    command = dashboard_command(journal, host=host, port=port)
    typer.echo(f"optuna-dashboard on {journal}\n  open http://{host}:{port}  (Ctrl-C to stop)")
    _serve(command, os.environ.copy())


def _serve(command: list[str], env: dict[str, str]) -> None:
    """Run a server in its own process group until it ends or Ctrl-C / SIGTERM stops it."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_group(proc)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
    app.command("dashboard")(dashboard)
