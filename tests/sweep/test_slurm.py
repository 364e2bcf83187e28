"""The Slurm launcher: the script ``aullm slurm`` writes, and a sweep run across jobs on a real Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from slurm_cluster import local_slurm, missing
from sweep_helpers import ONE_PARAM_SPACE, hooked_aullm_bin, write_tiny_cache
from typer.testing import CliRunner

from orchestration.cli.main import app
from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.slurm import SlurmJob, render_script, time_limit_seconds

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 30 * 60), ("90:15", 90 * 60 + 15), ("04:00:00", 4 * 3600), ("1-12", 36 * 3600),
    ("2-03:04", ((2 * 24 + 3) * 60 + 4) * 60), ("1-00:00:07", 86400 + 7),
])
def test_time_limits_read_as_sbatch_reads_them(value, seconds):
    assert time_limit_seconds(value) == seconds


@pytest.mark.parametrize("value", ["4h", "1:2:3:4", "", "-1", "1-"])
def test_bad_time_limits_name_the_accepted_forms(value):
    with pytest.raises(ValueError, match="expected minutes, MM:SS, HH:MM:SS"):
        time_limit_seconds(value)


def test_a_stop_signal_that_leaves_no_time_to_train_is_refused():
    with pytest.raises(ValueError, match="leaves no time to train in a job of 00:10:00"):
        SlurmJob(name="q", workdir=Path("/shared"), time="00:10:00", stop_before_s=600)


def _job(**extra) -> SlurmJob:
    return SlurmJob(name="q1", workdir=Path("/shared/runs with space"), time="01:00:00",
                    sweep_args=["--space", "/a b/space.yaml", "--cache", "/c/it's.h5", "--configs", "4"], **extra)


def test_the_script_parses_and_puts_every_sbatch_line_before_the_first_command(tmp_path):
    script = render_script(_job(nodes=3, gpus_per_node=4, partition="gpu", account="lab", sbatch_options=["--qos=long"]))
    path = tmp_path / "sweep.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode == 0
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    # sbatch reads #SBATCH lines only until the first line that is not a comment
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives)
    for expected in ("--nodes=3", "--gpus-per-node=4", "--cpus-per-task=8", "--time=01:00:00",
                     "--signal=B:USR1@600", "--partition=gpu", "--account=lab", "--qos=long", "--requeue",
                     "--output=/shared/runs with space/sweeps/q1/slurm/%j.out"):
        assert f"#SBATCH {expected}" in directives


def test_the_settings_block_gives_bash_the_exact_options(tmp_path):
    job = _job(setup="module load cuda/12; source '/opt/my env/bin/activate'")
    block = tmp_path / "settings.sh"
    block.write_text(job.settings_block() + 'printf "%s\\n" "$NAME" "$WORKDIR" "$SETUP" "${SWEEP_ARGS[@]}"\n')
    out = subprocess.run(["bash", str(block)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["q1", "/shared/runs with space", job.setup, *job.sweep_args]


def _space_and_cache(tmp_path: Path, subjects: int = 4) -> tuple[Path, Path]:
    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    return space, write_tiny_cache(tmp_path / "casme2.npz", subjects=subjects)


def test_aullm_slurm_writes_the_script_with_absolute_paths(tmp_path, monkeypatch):
    space, cache = _space_and_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "--name", "q", "--workdir", "runs", "--nodes", "2", "--time", "30",
                                      "--stop-before", "120", "--", "--space", "space.yaml", "--cache=casme2.npz",
                                      "--configs", "3"])
    assert result.exit_code == 0, result.output
    script = (tmp_path / "runs" / "sweeps" / "q" / "slurm" / "sweep.sbatch").read_text()
    assert f"SWEEP_ARGS=(--space {space} --cache {cache} --configs 3)" in script
    assert f"WORKDIR={tmp_path / 'runs'}" in script and "#SBATCH --signal=B:USR1@120" in script
    assert "Submit with: sbatch" in result.output


@pytest.mark.parametrize(("args", "needle"), [
    (["--", "--space", "space.yaml", "--cache", "casme2.npz", "--name", "x"], "--name: set by aullm slurm"),
    (["--", "--space", "space.yaml", "--cache", "casme2.npz", "--configs", "zero"], "'--configs' / '--trials': Input should be a valid integer"),
    (["--", "--cache", "casme2.npz"], "--space and --cache are required"),
    (["--", "--space", "space.yaml", "--cache", "nope.h5"], "nope.h5: cache file not found"),
    (["--time", "5", "--", "--space", "space.yaml", "--cache", "casme2.npz"], "leaves no time to train"),
    (["--resume"], "no sweep named 'q' to resume"),
])
def test_aullm_slurm_refuses_what_would_fail_in_the_queue(tmp_path, monkeypatch, args, needle):
    _space_and_cache(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["slurm", "--name", "q", "--workdir", "runs", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert not (tmp_path / "runs" / "sweeps" / "q" / "slurm" / "sweep.sbatch").exists()


def _jobs(sweep_dir: Path) -> list[list[str]]:
    path = sweep_dir / "slurm" / "jobs.tsv"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


def _wait(ready, timeout_s: float, what: str, outputs) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ready():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{outputs()}")


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_a_sweep_longer_than_its_job_finishes_across_slurm_jobs(tmp_path, request):
    """Two Slurm nodes, a Ray node on each, a job time limit of 2 minutes and a sweep that needs more:
    the first job stops the sweep before its limit and submits the next; that one is cancelled with
    scancel mid-sweep and submits nothing; `aullm slurm --resume --submit` continues it to the end
    (in a job with a longer limit, as a researcher would after seeing how long folds take). Another Ray
    instance on the same machine (another job's, say) is still running when the jobs have ended."""
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    space, cache = _space_and_cache(tmp_path)
    control = tmp_path / "control.json"
    # 20 folds of 10 s on two slots: 100 s of training, more than the 60 to 90 s the first job runs before
    # its warning even when Ray starts fast (at 5 s a fold the first job once finished the whole sweep)
    control.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 10.0}))
    work = tmp_path / "work"
    n_configs, n_folds = 5, 4
    sweep_dir = work / "sweeps" / "s"
    folder = SweepFolder(sweep_dir)
    hooked = hooked_aullm_bin(tmp_path / "bin")  # the batch script's `aullm sweep` trains the cheap folds
    aullm = str(hooked / "aullm")
    port = 6380 + os.getpid() % 3000  # below Ray's worker ports (10002+)
    job = ["--setup", f"source {Path(sys.executable).parent / 'activate'}; export PATH={hooked}:$PATH",
           "--name", "s", "--workdir", str(work), "--nodes", "2", "--cpus-per-node", "1", "--stop-before", "60",
           "--ray-port", str(port), "--max-jobs", "6", "--submit"]

    def stored() -> int:
        return len(folder.store.entries()) if folder.data_file.exists() else 0

    def outputs() -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted((sweep_dir / "slurm").glob("*.out")))

    ray_bin = str(Path(sys.executable).parent / "ray")
    bystander_port = port + 7  # another Ray on this machine, as another job's would be
    bystander = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={bystander_port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    request.addfinalizer(lambda: (bystander.terminate(), bystander.wait(60)))  # `ray start --block` stops its own

    def bystander_alive() -> bool:
        done = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{bystander_port}"], capture_output=True,
                              env=dict(os.environ, RAY_AUTH_MODE="disabled"), check=False)
        return bystander.poll() is None and done.returncode == 0

    _wait(bystander_alive, 60, "the other Ray instance did not start", lambda: "")
    with local_slurm(tmp_path / "slurm") as env:
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p),
            AULLM_TEST_CONTROL=str(control), RAY_AUTH_MODE="disabled", MLFLOW_DISABLE_TELEMETRY="true",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
        )

        def queue() -> list[str]:
            done = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=False)
            return done.stdout.split()

        def submit(*args: str) -> None:
            done = subprocess.run([aullm, "slurm", *job, *args], env=env, capture_output=True, text=True,
                                  check=False, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr

        submit("--time", "2", "--", "--space", str(space), "--cache", str(cache), "--configs", str(n_configs), "--pruner", "none")
        _wait(lambda: len(_jobs(sweep_dir)) == 1 and len(queue()) == 1, 300,
              "the first job did not stop at its time limit and submit the next", outputs)
        at_handover = stored()
        _wait(lambda: stored() >= at_handover + 2, 240, "the second job trained nothing", outputs)
        subprocess.run(["scancel", *queue()], env=env, check=True)
        _wait(lambda: not queue(), 120, "the cancelled job did not end", outputs)
        time.sleep(3)  # a job submitted by the cancelled one would be queued by now
        assert not queue(), outputs()
        # the cancelled job's own line in jobs.tsv is written only if it ended within Slurm's KillWait
        cancelled_line = len(_jobs(sweep_dir)) == 2
        cancelled_at = stored()
        submit("--resume", "--time", "5")  # the rest fits in one job of 5 minutes
        _wait(lambda: _jobs(sweep_dir)[-1][4] == "done" and not queue(), 400, "the resumed sweep did not finish",
              outputs)
        records = (tmp_path / "slurm" / "jobcomp.txt").read_text()
    assert bystander_alive(), "the jobs stopped another Ray instance on their node"
    jobs = _jobs(sweep_dir)
    report = {"jobs": jobs, "folds_stored_at_handover": at_handover, "folds_stored_after_scancel": cancelled_at,
              "cancelled_job_wrote_its_line": cancelled_line,
              "slurm_records": [
                  {k: v for k, v in (f.split("=", 1) for f in line.split() if "=" in f)
                   if k in ("JobId", "JobState", "StartTime", "EndTime")} for line in records.splitlines()]}
    print(json.dumps(report, indent=1))
    after_cancel = jobs[2:] if cancelled_line else jobs[1:]
    assert jobs[0][4] == "time-limit" and jobs[0][3] in ("3", "143"), outputs()
    assert not cancelled_line or jobs[1][4] == "cancelled", outputs()
    assert after_cancel and after_cancel[-1][3:] == ["0", "done"], outputs()
    assert all(j[4] == "time-limit" for j in after_cancel[:-1]), outputs()

    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["finished"] and summary["n_complete"] == n_configs
    assert len(folder.store.entries()) == n_configs * n_folds  # every fold of every configuration, once
    trained = Counter(tuple(line.split()[:3]) for line in (tmp_path / "trainings.txt").read_text().splitlines())
    assert len(trained) == n_configs * n_folds and max(trained.values()) == 1  # no finished fold trained again

    tracker = MlflowTracker(f"sqlite:///{work / 'mlflow.db'}", "s")
    runs = tracker._search(sweep="s")
    folds = Counter((r.data.tags["aullm.config_fp"], r.data.tags["aullm.fold_id"])
                    for r in runs if r.data.tags.get("aullm.level") == "fold")
    assert len(folds) == n_configs * n_folds and max(folds.values()) == 1  # 0 duplicate MLflow runs
    assert Counter(r.data.tags.get("aullm.level") for r in runs) == {"sweep": 1, "config": n_configs,
                                                                     "fold": n_configs * n_folds}
    assert not [r for r in runs if r.info.status == "RUNNING"]
