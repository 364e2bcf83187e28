"""A working folder on a read-only file system (a real read-only bind mount): every command that must
write there ends in one line naming the path, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sweep_helpers import HOOKED_AULLM, ONE_PARAM_SPACE, cheap_hooks, write_tiny_cache

from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings

HERE = Path(__file__).resolve().parents[1]  # tests/: the helpers Ray workers import
MAIN = HOOKED_AULLM


@pytest.fixture
def read_only(tmp_path: Path):
    """(a finished sweep's working folder, the same folder mounted read-only)."""
    work, view = tmp_path / "work", tmp_path / "ro"
    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=3, clips_per_subject=2)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    try:
        summary = run_sweep(SweepSettings(name="s", space=space, cache=cache, workdir=work, n_configs=1, pruner="none"), cheap_hooks(tracked=True), progress=False)
    finally:
        os.environ["PYTHONPATH"] = old or ""
    assert summary.finished
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(work), str(view)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {mounted.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=False)
    try:
        yield space, cache, view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def _one_line(args: list[str], path_part: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(HERE), "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([*MAIN, *args], capture_output=True, text=True, timeout=300, env=env, check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert path_part in errors[0] and ("read-only" in errors[0] or "cannot be written" in errors[0]), errors[0]
    return errors[0]


@pytest.mark.slow
def test_every_command_on_a_read_only_working_folder_is_one_line(read_only, tmp_path: Path) -> None:
    space, cache, view = read_only
    _one_line(["sweep", "--resume", "--name", "s", "--workdir", str(view)], str(view))
    _one_line(["sweep", "--space", str(space), "--cache", str(cache), "--name", "new", "--workdir", str(view)], str(view))
    _one_line(["report", "--sweep", "s", "--workdir", str(view)], str(view))
    _one_line(["export", "--sweep", "s", "--workdir", str(view), "--out", str(view / "model")], str(view))
    from aullm_core.data.synth import write_synthetic

    root = write_synthetic("casme2", tmp_path / "synth", subjects=3, clips_per_subject=1, seed=0, progress=False)
    _one_line(["data", "cache", "--dataset", "casme2", "--root", str(root), "--out", str(view / "c.h5")], str(view))


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 300 MiB tmpfs to run a sweep on."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(disk)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_disk_filling_mid_sweep_stops_it_cleanly_and_the_resume_finishes(small_disk: Path, tmp_path: Path) -> None:
    import json
    import time

    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=4, clips_per_subject=2)
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 1.5}))
    env = {**os.environ, "PYTHONPATH": str(HERE), "AULLM_TEST_CONTROL": str(control), "RAY_AUTH_MODE": "disabled"}
    work = small_disk / "work"
    command = [*MAIN, "sweep", "--space", str(space), "--cache", str(cache), "--trials", "3", "--name", "full",
               "--workdir", str(work), "--pruner", "none", "--num-cpus", "2", "--min-free-mb", "100", "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    counter = tmp_path / "trainings.txt"
    while time.time() < deadline and not (counter.exists() and len(counter.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(filler, "wb") as handle:  # leave about 60 MiB: under the sweep's 100
        handle.write(b"\0" * (free - 60 * 2**20))
    _, err = proc.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, err[-3000:]
    assert len(errors) == 1 and str(work) in errors[0] and "MiB free" in errors[0] and "--resume" in errors[0], err[-2000:]
    assert "Traceback" not in err

    filler.unlink()
    resumed = subprocess.run([*MAIN, "sweep", "--resume", "--name", "full", "--workdir", str(work), "--json"],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 3
    trained = [tuple(line.split()[:3]) for line in counter.read_text().splitlines()]
    assert len(set(trained)) == 12 and len(trained) - len(set(trained)) <= 2  # folds in flight at the stop, at most
