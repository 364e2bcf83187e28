"""``aullm slurm``: write (and submit) the Slurm batch script that runs a sweep across jobs.

Examples:
    aullm slurm --name q1 --workdir /shared/aullm_runs --nodes 2 --gpus-per-node 4 --cpus-per-node 32 \\
        --time 08:00:00 --partition gpu --account lab123 --submit -- \\
        --space search_spaces/paper.yaml --cache /shared/casme2.h5 --gpus-per-fold 0.5
    aullm slurm --name q1 --workdir /shared/aullm_runs --resume --submit    # continue it in new jobs
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from aullm_core.errors import ConfigError

__all__ = ["register", "slurm"]

#: Options the batch script sets itself (so that every job runs the same sweep on its own Ray cluster).
_OWNED = ("--name", "--workdir", "--address", "--resume", "--wait-nodes", "--json", "--no-progress")
_PATHS = ("--space", "--cache", "--cross-cache")


def _help(field: str) -> str:
    from orchestration.sweep.slurm import SlurmJob

    return str(SlurmJob.model_fields[field].description)


def _default_setup() -> str:
    """Activate the environment this command runs in (the same path on every node of a shared file system)."""
    if sys.prefix != sys.base_prefix:
        return f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    return ":"


def _sweep_args(args: list[str]) -> list[str]:
    """The sweep's options, checked by ``aullm sweep``'s own parser, with paths made absolute."""
    from typer.main import get_command

    from orchestration.cli import sweep

    owned = [a for a in args if a.split("=", 1)[0] in _OWNED]
    if owned:
        raise ConfigError(f"aullm sweep options {', '.join(owned)}: set by aullm slurm and its batch script")
    alone = typer.Typer()  # `aullm sweep`'s own parser, without the rest of the command line
    sweep.register(alone)
    command = get_command(alone)
    try:
        params = command.make_context("aullm sweep", list(args)).params
    except typer.TyperException as err:  # typer's click: BadParameter, NoSuchOption, ...
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise ConfigError(f"aullm sweep options after --: {message}") from None
    if params["space"] is None or params["cache"] is None:
        raise ConfigError("aullm sweep options after --: --space and --cache are required for a new sweep")
    from orchestration.search.space import load_space

    load_space(params["space"])  # a bad space fails here, not hours later in the queue
    for option in ("cache", "cross_cache"):
        if params[option] is not None and not Path(params[option]).exists():
            raise ConfigError(f"{params[option]}: cache file not found (build one with `aullm data cache`)")
    out: list[str] = []
    tokens = iter(args)
    for token in tokens:
        key, eq, value = token.partition("=")
        if key in _PATHS:
            value = value if eq else next(tokens)
            out += [key, str(Path(value).resolve())]
        else:
            out.append(token)
    return out


def slurm(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help=_help("name"))] = "sweep",
    workdir: Annotated[Path, typer.Option("--workdir", help="Working folder on the shared file system.")] = Path(
        "aullm_runs"
    ),
    nodes: Annotated[int, typer.Option("--nodes", min=1, help=_help("nodes"))] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=0, help=_help("gpus_per_node"))] = 0,
    cpus_per_node: Annotated[int, typer.Option("--cpus-per-node", min=1, help=_help("cpus_per_node"))] = 8,
    time_limit: Annotated[str, typer.Option("--time", help=_help("time"))] = "04:00:00",
    stop_before: Annotated[int, typer.Option("--stop-before", min=60, help=_help("stop_before_s"))] = 600,
    partition: Annotated[str | None, typer.Option("--partition", help=_help("partition"))] = None,
    account: Annotated[str | None, typer.Option("--account", help=_help("account"))] = None,
    sbatch_option: Annotated[list[str] | None, typer.Option(
        "--sbatch-option", help=_help("sbatch_options") + " Repeat for several.")] = None,
    setup: Annotated[str | None, typer.Option(
        "--setup", help=_help("setup") + " (default: activate the environment running this command)")] = None,
    ray_port: Annotated[int, typer.Option("--ray-port", help=_help("ray_port"))] = 6379,
    max_jobs: Annotated[int, typer.Option("--max-jobs", min=1, help=_help("max_jobs"))] = 10,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the existing sweep of this name.")] = False,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the script with sbatch once it is written.")] = False,
) -> None:
    """Write the Slurm batch script of a sweep (aullm sweep's options go after --), optionally submit it.

    Each job starts a Ray cluster over its nodes, runs the sweep, stops it cleanly before the time
    limit and submits itself again to continue, until the sweep is done.
    """
    from orchestration.sweep.folder import SweepFolder
    from orchestration.sweep.slurm import SlurmJob, render_script

    workdir = workdir.resolve()
    folder = SweepFolder.of(workdir, name)
    if resume and not folder.settings_file.exists():
        raise ConfigError(f"{folder.settings_file}: no sweep named {name!r} to resume (drop --resume to start it)")
    if not resume and folder.settings_file.exists():
        raise ConfigError(f"{folder.path}: a sweep named {name!r} exists: add --resume to continue it")
    if resume and ctx.args:
        raise ConfigError("--resume: the sweep continues with its saved options; give none after --")
    job = SlurmJob(
        name=name, workdir=workdir, sweep_args=[] if resume else _sweep_args(list(ctx.args)), nodes=nodes,
        gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, time=time_limit, stop_before_s=stop_before,
        partition=partition, account=account, sbatch_options=sbatch_option or [],
        setup=_default_setup() if setup is None else setup, ray_port=ray_port, max_jobs=max_jobs,
    )
    job.script_path.parent.mkdir(parents=True, exist_ok=True)  # Slurm writes the job's output there
    job.script_path.write_text(render_script(job))
    typer.echo(f"Wrote {job.script_path}: {nodes} node(s) x ({cpus_per_node} CPUs, {gpus_per_node} GPUs), "
               f"{time_limit} per job, stop {stop_before} s before the limit, at most {max_jobs} jobs")
    if not submit:
        typer.echo(f"Submit with: sbatch {job.script_path}")
        return
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch: not found on this machine (run on a Slurm login node, or drop --submit)")
    done = subprocess.run(["sbatch", "--parsable", str(job.script_path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"sbatch {job.script_path}: {done.stderr.strip() or done.stdout.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    typer.echo(f"Submitted job {job_id}; its output: {job.sweep_dir / 'slurm' / (job_id + '.out')}")


_EXAMPLES = (
    "Examples: aullm slurm --name q1 --workdir /shared/aullm_runs --nodes 2 --gpus-per-node 4 --cpus-per-node 32 "
    "--time 08:00:00 --partition gpu --submit -- --space search_spaces/paper.yaml --cache /shared/casme2.h5 "
    "--gpus-per-fold 0.5  |  aullm slurm --name q1 --workdir /shared/aullm_runs --resume --submit"
)


def register(app: typer.Typer) -> None:
    app.command(
        "slurm", epilog=_EXAMPLES,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(slurm)
