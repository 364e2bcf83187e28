"""A real Slurm on this machine for the tests: munged, slurmctld and two slurmd on 127.0.0.1.

``local_slurm(folder)`` writes a munge key and a ``slurm.conf`` in ``folder``, starts the daemons in
the foreground as child processes (so their PIDs are known), waits until both nodes are idle, yields
the environment that points Slurm's commands at that configuration, and stops every daemon it
started, by PID. Two slurmd on one machine (``slurmd -N``) make a two-node cluster, so a job's
multi-node start (a Ray head on one node, a Ray worker on the other) is exercised.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["local_slurm", "missing"]

_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo")


def missing() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    absent = [b for b in _BINARIES if shutil.which(b) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmctld and slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, nodes: int, cpus: int) -> str:
    ports = [_free_port() for _ in range(nodes + 1)]
    lines = [
        "ClusterName=aullmtest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge.sock'}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}/%n",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd'}.%n.pid",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd'}.%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        "KillWait=10",  # seconds between SIGTERM and SIGKILL when a job ends (Slurm's default: 30)
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder / 'jobcomp.txt'}",
        *[f"NodeName=n{i} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[i]} CPUs={cpus} State=UNKNOWN"
          for i in range(1, nodes + 1)],
        (f"PartitionName=debug Nodes={','.join(f'n{i}' for i in range(1, nodes + 1))} Default=YES "
         "MaxTime=INFINITE State=UP"),
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def local_slurm(folder: Path, *, nodes: int = 2, cpus_per_node: int = 1) -> Iterator[dict[str, str]]:
    """A running one-machine Slurm cluster; yields the environment for sbatch/srun/squeue."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", *(f"spool/n{i}" for i in range(1, nodes + 1))):
        (folder / sub).mkdir(exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, nodes, cpus_per_node))
    env = dict(os.environ, SLURM_CONF=str(conf))
    log = open(folder / "daemons.log", "ab")  # noqa: SIM115 (open while the daemons run, closed below)
    daemons: list[subprocess.Popen] = []

    def start(*command: str) -> None:
        daemons.append(subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        start("munged", "-F", "--force", f"--socket={folder / 'munge.sock'}", f"--key-file={key}",
              f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
              f"--seed-file={folder / 'munge.seed'}")
        _wait(lambda: (folder / "munge.sock").exists(), 20, "munged did not create its socket", daemons)
        start("slurmctld", "-D", "-i")
        for i in range(1, nodes + 1):
            start("slurmd", "-D", "-N", f"n{i}")
        _wait(lambda: _idle_nodes(env) >= nodes, 60, "the Slurm nodes did not become idle", daemons)
        yield env
    finally:
        for proc in reversed(daemons):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(daemons):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def _idle_nodes(env: dict[str, str]) -> int:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True, check=False)
    return sum(1 for state in done.stdout.split() if state == "idle") if done.returncode == 0 else 0


def _wait(ready, timeout_s: float, message: str, daemons: list[subprocess.Popen]) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ready():
            return
        dead = [p.args[0] for p in daemons if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{message}: {', '.join(dead)} exited")
        time.sleep(0.5)
    raise RuntimeError(message)
