"""``aullm ui``: the MLflow UI on a sweep's tracking store, bound to 127.0.0.1 by default.

Example:
    aullm ui                          # store of ./aullm_runs, http://127.0.0.1:5000
    aullm ui --workdir demo_output --port 5050
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestration.cli.options import WorkdirOpt

__all__ = ["is_loopback", "register", "server_command", "server_env"]


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
    typer.echo(f"MLflow UI on {uri}\n  open http://{shown}:{port}  (Ctrl-C to stop)")
    proc = subprocess.Popen(server_command(uri, host=host, port=port), env=server_env(), start_new_session=True)

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


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
