"""The Slurm batch script of a sweep: ``SlurmJob`` (what the job asks Slurm for) and ``render_script``.

The script is ``orchestration/templates/slurm_sweep.sbatch``, a plain bash file that explains itself;
``render_script`` puts the ``#SBATCH`` lines after its first line and fills its settings block
(sweep name and folder, the sweep's options, the environment setup). Nothing else is generated, so
what runs on the cluster is what the template says.
"""

from __future__ import annotations

import re
import shlex
from importlib.resources import files
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestration.sweep.settings import sweep_path

__all__ = ["SlurmJob", "render_script", "time_limit_seconds"]

_TEMPLATE = "templates/slurm_sweep.sbatch"
_SETTINGS_START = "# --- settings ---\n"
_SETTINGS_END = "# --- end of settings ---\n"

#: sbatch's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
#: days-hours:minutes, days-hours:minutes:seconds.
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)")


def time_limit_seconds(value: str) -> int:
    """Seconds in an sbatch ``--time`` value; ValueError naming the accepted forms otherwise."""
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"time {value!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (sbatch --time)"
        )
    g = {k: int(v) if v is not None else 0 for k, v in match.groupdict().items()}
    if match.group("d") is not None:
        return ((g["d"] * 24 + g["dh"]) * 60 + g["dm"]) * 60 + g["ds"]
    if match.group("c") is not None:
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g["b"]


class SlurmJob(BaseModel):
    """What one job of the sweep asks Slurm for, and how the sweep is started and continued in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Sweep name (aullm sweep --name); the job is called aullm-<name>.")
    workdir: Path = Field(description="Working folder on the cluster's shared file system (absolute).")
    sweep_args: list[str] = Field(default_factory=list, description="aullm sweep's options for the first job.")
    nodes: int = Field(1, ge=1, description="Nodes of each job: a Ray head on the first, a Ray worker on each other.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (sbatch --gpus-per-node).")
    cpus_per_node: int = Field(8, ge=1, description="CPUs per node given to Ray (sbatch --cpus-per-task, one task per node).")
    time: str = Field("04:00:00", description="Wall-time limit of each job (sbatch --time).")
    stop_before_s: int = Field(
        600, ge=60, description="Seconds before the time limit at which the sweep is asked to stop (sbatch --signal; "
        "Slurm sends it up to 60 s early)."
    )
    partition: str | None = Field(None, description="Slurm partition (sbatch --partition).")
    account: str | None = Field(None, description="Slurm account (sbatch --account).")
    sbatch_options: list[str] = Field(default_factory=list, description="Further #SBATCH options, e.g. --qos=long.")
    setup: str = Field(":", description="Shell commands that make `aullm` and `ray` available on every node.")
    ray_port: int = Field(6379, ge=1024, le=10001, description="Port of the Ray head (below Ray's worker ports).")
    max_jobs: int = Field(10, ge=1, description="Jobs the sweep may take in all before it stops resubmitting itself.")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        time_limit_seconds(value)
        return value.strip()

    @field_validator("sbatch_options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for option in value:
            if not option.startswith("--") or "\n" in option:
                raise ValueError(f"sbatch option {option!r}: expected one long option such as --qos=long")
        return value

    @model_validator(mode="after")
    def _stop_fits(self) -> SlurmJob:
        limit = time_limit_seconds(self.time)
        if self.stop_before_s >= limit:
            raise ValueError(
                f"stop_before_s={self.stop_before_s}: leaves no time to train in a job of {self.time} "
                f"({limit} s); give a longer --time or a smaller --stop-before"
            )
        return self

    @property
    def sweep_dir(self) -> Path:
        return sweep_path(self.workdir, self.name)

    @property
    def script_path(self) -> Path:
        return self.sweep_dir / "slurm" / "sweep.sbatch"

    def sbatch_lines(self) -> list[str]:
        lines = [
            f"--job-name=aullm-{self.name}",
            f"--nodes={self.nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={self.cpus_per_node}",
            *([f"--gpus-per-node={self.gpus_per_node}"] if self.gpus_per_node else []),
            f"--time={self.time}",
            f"--signal=B:USR1@{self.stop_before_s}",
            "--requeue",
            "--open-mode=append",
            f"--output={self.sweep_dir / 'slurm' / '%j.out'}",
            *([f"--partition={self.partition}"] if self.partition else []),
            *([f"--account={self.account}"] if self.account else []),
            *self.sbatch_options,
        ]
        return [f"#SBATCH {line}" for line in lines]

    def settings_block(self) -> str:
        values = {
            "NAME": shlex.quote(self.name),
            "WORKDIR": shlex.quote(str(self.workdir)),
            "SWEEP_ARGS": "(" + " ".join(shlex.quote(a) for a in self.sweep_args) + ")",
            "SETUP": shlex.quote(self.setup),
            "RAY_PORT": str(self.ray_port),
            "MAX_JOBS": str(self.max_jobs),
        }
        return "".join(f"{key}={value}\n" for key, value in values.items())


def render_script(job: SlurmJob) -> str:
    """The template with the job's #SBATCH lines and settings filled in."""
    template = files("orchestration").joinpath(_TEMPLATE).read_text()
    shebang, rest = template.split("\n", 1)
    start = rest.index(_SETTINGS_START) + len(_SETTINGS_START)
    end = rest.index(_SETTINGS_END)
    body = rest[:start] + job.settings_block() + rest[end:]
    return "\n".join([shebang, *job.sbatch_lines(), body])
