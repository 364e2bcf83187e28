"""``aullm sweep`` from the command line: help, one-line errors, and kill + resume in a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from sweep_helpers import HOOKED_AULLM, kill_session, sweep_env, trainings, write_tiny_cache
from typer.testing import CliRunner

from orchestration.cli.main import app
from orchestration.sweep.folder import SweepFolder

TESTS = Path(__file__).resolve().parents[1]
AULLM = HOOKED_AULLM
SPACE = """\
base: quick
fixed: {train.epochs: 2}
params:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.1, high: 0.5}
"""


def test_help_explains_every_option():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    for option in ("--space", "--cache", "--cross-cache", "--address", "--trials", "--concurrency", "--pruner",
                   "--name", "--resume", "--workdir", "--tracking-uri", "--gpus-per-fold", "--workers-per-fold",
                   "--p-threshold", "--objective", "--top-k-cross", "--max-configs"):
        assert option in result.output
    assert "Examples: aullm sweep" in result.output


@pytest.mark.parametrize(
    ("space", "needle"),
    [("base: quick\nparams:\n  train.lr: {type: float, low: 0.1, high: 0.01}\n", "params.train.lr: low must be <= high"),
     ("base: quick\nparams:\n  train.learning_rate: {type: float, low: 0.1, high: 0.2}\n",
      "unknown configuration key 'train.learning_rate'")],
)
def test_invalid_space_fails_fast_with_one_line(tmp_path, space, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(space)
    cache = write_tiny_cache(tmp_path / "c.npz")
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["sweep", "--space", str(path), "--cache", str(cache), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and needle in lines[0]
    assert time.perf_counter() - started < 20  # before Ray is started
    assert not (tmp_path / "sweeps").exists()


def test_multi_worker_folds_need_the_deepspeed_engine(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cache = write_tiny_cache(tmp_path / "c.npz")
    result = CliRunner().invoke(app, ["sweep", "--space", str(space), "--cache", str(cache), "--workdir",
                                      str(tmp_path), "--workers-per-fold", "2"])
    assert result.exit_code == 2
    assert "workers_per_fold=2 needs train.engine: deepspeed in every configuration" in result.output


def test_missing_inputs_and_existing_names_are_clear(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "--space and --cache required" in result.output
    result = CliRunner().invoke(app, ["sweep", "--resume", "--name", "nope", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "no sweep named 'nope'" in result.output


@pytest.mark.slow
def test_killed_sweep_resumes_without_retraining_or_duplicate_runs(tmp_path):
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    command, work, folder = _new_sweep(tmp_path, "k", subjects=6, trials=3, options=["--no-progress"])
    env = sweep_env(tmp_path)

    def stored() -> int:  # data.json (which names the store) is written once the sweep has started
        return len(folder.store.entries()) if folder.data_file.exists() else 0

    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while stored() < 7 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        kill_session(proc)  # the whole session: driver and the Ray it started
    store = folder.store
    finished_before = set(store.entries())
    trained_before = trainings(tmp_path)
    assert 7 <= len(finished_before) < 18

    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "k", "--workdir", str(work), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["resumed"] and summary["n_complete"] == 3

    _trained_each_missing_fold_once(tmp_path, folder, at_kill=trained_before, stored_at_kill=finished_before,
                                    n_folds=3 * 6)
    assert set(store.entries()) == set(trained_before) | set(trainings(tmp_path)[len(trained_before):])

    tracker = MlflowTracker(f"sqlite:///{work / 'mlflow.db'}", "k")
    folds = tracker._search(level="fold", sweep="k")
    keys = Counter((r.data.tags["aullm.config_fp"], r.data.tags["aullm.fold_id"]) for r in folds)
    assert max(keys.values()) == 1 and len(keys) == 3 * 6  # one run per fold, none duplicated
    assert len(tracker._search(level="config", sweep="k")) == 3
    assert len(tracker._search(level="sweep", sweep="k")) == 1


@pytest.mark.slow
def test_a_killed_sweep_moved_to_another_folder_resumes_there(tmp_path):
    """SIGKILL mid-sweep, the working folder moved elsewhere (as when copying results off a scratch disk),
    then --resume in the new place: it finishes there, the old place gets nothing, no fold is retrained."""
    import shutil

    command, work, folder = _new_sweep(tmp_path, "m", subjects=4, trials=2,
                                       options=["--no-progress", "--tracking-uri", "none"])
    moved = tmp_path / "elsewhere"
    env = sweep_env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while (not folder.data_file.exists() or len(folder.store.entries()) < 3) and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        kill_session(proc)  # and its Ray workers: an operator moves the folder once they are gone too (a worker
        # still finishing its fold would write where the folder was)
    done_before = len(folder.store.entries())
    assert 3 <= done_before < 8
    shutil.move(str(work), moved)

    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "m", "--workdir", str(moved), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 2, (summary, resumed.stderr[-3000:])
    assert summary["sweep_dir"] == str((moved / "sweeps" / "m").resolve())
    assert not work.exists(), "the old folder must not be written to"
    here = SweepFolder(moved / "sweeps" / "m")
    assert len(here.store.entries()) == 8 and summary["loso_folds_trained"] == 8 - done_before
    assert json.loads(here.settings_file.read_text())["workdir"] == str(moved.resolve())


@pytest.mark.slow
def test_a_sigterm_stops_the_sweep_cleanly(tmp_path):
    """SIGTERM (scancel, a preemption, Slurm's batch script before the time limit) to the driver alone:
    it stops the search, keeps the folds it finished, closes its MLflow runs, says so and exits 3
    (that such a sweep resumes across Slurm jobs is tests/test_slurm.py's)."""
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    command, work, folder = _new_sweep(tmp_path, "s", subjects=4, trials=3, options=["--json"])
    proc = subprocess.Popen(command, env=sweep_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while (not folder.data_file.exists() or len(folder.store.entries()) < 3) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the driver only, as Slurm's batch script does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    summary = json.loads(out[out.index("{"):])
    assert summary["stopped_by"] == "SIGTERM" and not summary["finished"] and summary["n_complete"] < 3
    stored = folder.store.entries()
    assert 3 <= len(stored) < 12 and summary["loso_folds_trained"] <= len(stored)
    assert "Traceback" not in err
    tracker = MlflowTracker(f"sqlite:///{work / 'mlflow.db'}", "s")
    runs = tracker._search(sweep="s")
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs if r.data.tags.get("aullm.level") == "sweep"} == {"KILLED"}


@pytest.mark.slow
def test_a_sigterm_before_the_first_fold_stops_cleanly_and_the_resume_runs_the_sweep(tmp_path):
    """Slurm's time-limit warning can come while a slow job is still starting: the driver stopped before Ray
    Tune asked for a first configuration has no Optuna study yet. It exits 3 like any stop (the batch script
    then submits the next job), and the resume runs the whole sweep."""
    command, work, folder = _new_sweep(tmp_path, "early", subjects=3, trials=1, options=["--json"])
    env = sweep_env(tmp_path)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not folder.data_file.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err and "error:" not in err
    summary = json.loads(out[out.index("{"):])
    assert summary["stopped_by"] == "SIGTERM" and not summary["finished"] and summary["n_complete"] == 0
    assert not trainings(tmp_path)

    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "early", "--workdir", str(work), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 1 and len(folder.store.entries()) == 3


@pytest.mark.slow
def test_a_race_killed_and_resumed_makes_the_decisions_of_an_uninterrupted_one(tmp_path):
    """One fold slot, so the race's decisions depend on the fold results only: the resumed sweep must stop
    the same configurations at the same rungs as one that ran through, and train no fold twice."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=8)
    env = sweep_env(tmp_path)

    def command(work: Path, name: str) -> list[str]:
        return [*AULLM, "sweep", "--space", str(space), "--cache", str(cache), "--trials", "6", "--name", name,
                "--workdir", str(work), "--pruner", "race", "--race-min-folds", "2", "--race-eta", "2",
                "--concurrency", "1", "--startup-configs", "2", "--seed", "5", "--num-cpus", "2", "--json"]

    def decisions(out: str) -> dict[int, tuple[str, int]]:
        summary = json.loads(out[out.index("{"):])
        assert summary["finished"]
        board = pd.read_csv(Path(summary["sweep_dir"]) / "leaderboard.csv")
        return {int(r.number): (str(r.status), int(r.folds_done)) for r in board.itertuples()}

    whole = subprocess.run(command(tmp_path / "a", "race"), check=False, env=env, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = decisions(whole.stdout)
    assert any(status == "pruned" for status, _ in expected.values())
    assert (tmp_path / "trainings.txt").exists()
    (tmp_path / "trainings.txt").unlink()

    work = tmp_path / "b"
    folder = SweepFolder(work / "sweeps" / "race")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command(work, "race"), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 180
        while (not folder.data_file.exists() or len(folder.store.entries()) < 11) and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        kill_session(proc)  # mid-race: past configuration 0's folds, configuration 1 racing
    trained_before, stored_before = trainings(tmp_path), set(folder.store.entries())
    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "race", "--workdir", str(work), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert decisions(resumed.stdout) == expected
    assert len(trainings(tmp_path)) > len(trained_before)
    _trained_each_missing_fold_once(tmp_path, folder, at_kill=trained_before, stored_at_kill=stored_before,
                                    n_folds=sum(done for _, done in expected.values()))


@pytest.mark.slow
def test_two_drivers_resuming_one_sweep_at_once_one_is_refused_naming_the_other(tmp_path):
    work, folder, env = _killed_sweep(tmp_path, "two", stored=3)
    trained_before, stored_before = trainings(tmp_path), set(folder.store.entries())
    resume = [*AULLM, "sweep", "--resume", "--name", "two", "--workdir", str(work), "--json"]
    both = [subprocess.Popen(resume, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outcomes = [(p.wait(300), *p.communicate()) for p in both]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], [o[2][-2000:] for o in outcomes]
    refused = next(err for code, _, err in outcomes if code == 2)
    lines = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "being run by pid" in lines[0] and "Traceback" not in refused
    winner = next(p for p, (code, _, _) in zip(both, outcomes) if code == 0)
    assert f"pid {winner.pid} " in lines[0]
    out = next(out for code, out, _ in outcomes if code == 0)
    summary = json.loads(out[out.index("{"):])
    assert summary["finished"] and summary["n_configs"] == 3  # the budget of 3, not more
    _trained_each_missing_fold_once(tmp_path, folder, at_kill=trained_before, stored_at_kill=stored_before,
                                    n_folds=3 * 4)


@pytest.mark.slow
def test_a_resume_whose_tune_state_is_torn_rebuilds_from_the_journal_and_finishes(tmp_path):
    """The driver is killed, then Ray Tune's saved state is torn as a full disk leaves it (the experiment
    state cut short, the searcher state empty): the resume rebuilds the search from the Optuna journal and
    the fold store, finishes within the budget and trains no finished fold again."""
    work, folder, env = _killed_sweep(tmp_path, "torn", stored=5)
    trained_before, before = trainings(tmp_path), set(folder.store.entries())
    experiment = folder.ray / "loso"
    for state in experiment.glob("experiment_state-*.json"):
        state.write_bytes(state.read_bytes()[:32768 if state.stat().st_size > 32768 else 100])
    for state in experiment.glob("searcher-state-*.pkl"):
        state.write_bytes(b"")
    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "torn", "--workdir", str(work), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Ray Tune's saved state cannot be used" in resumed.stderr
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 3 and summary["n_configs"] == 3
    _trained_each_missing_fold_once(tmp_path, folder, at_kill=trained_before, stored_at_kill=before, n_folds=12)
    assert list((folder.path / "superseded").glob("ray-loso-*"))


@pytest.mark.slow
def test_a_sweep_saved_by_an_earlier_layout_of_the_package_resumes(tmp_path):
    """Tune's snapshot pickles name the modules of the layout that wrote it: a sweep killed under an earlier
    layout (here: every ``orchestration.search`` module renamed, with same-length bytes, in Tune's pickles) is
    resumed from the fold store and the Optuna journal, without training a stored fold again."""
    work, folder, env = _killed_sweep(tmp_path, "moved", stored=5)
    trained_before, before = trainings(tmp_path), set(folder.store.entries())
    renamed = 0
    for state in (folder.ray / "loso").rglob("*"):
        if state.is_file() and b"orchestration.search." in (data := state.read_bytes()):
            state.write_bytes(data.replace(b"orchestration.search.", b"orchestration.xsarch."))
            renamed += 1
    assert renamed, "Tune's snapshot names no orchestration.search module"
    resumed = subprocess.run([*AULLM, "sweep", "--resume", "--name", "moved", "--workdir", str(work), "--json"],
                             check=False, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "saved by another version of aullm" in resumed.stderr and "xsarch" in resumed.stderr
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 3 and summary["n_configs"] == 3
    _trained_each_missing_fold_once(tmp_path, folder, at_kill=trained_before, stored_at_kill=before, n_folds=12)


def _trained_each_missing_fold_once(tmp_path: Path, folder: SweepFolder, *, at_kill: list, stored_at_kill: set,
                                    n_folds: int) -> None:
    """What a resume must train: every fold not stored when the driver was killed, once; no stored fold again.
    A fold the kill caught after it trained but before it was stored counts as not stored (it is trained
    again, which is right: its result was lost)."""
    after = trainings(tmp_path)[len(at_kill):]
    assert len(after) == len(set(after)), "the resume trained a fold twice"
    assert not set(after) & stored_at_kill, "the resume trained a stored fold again"
    assert set(folder.store.entries()) == stored_at_kill | set(after) and len(folder.store.entries()) == n_folds


def _killed_sweep(tmp_path: Path, name: str, *, stored: int) -> tuple[Path, SweepFolder, dict[str, str]]:
    """A 3-configuration sweep of 4-subject folds, SIGKILLed (driver and its Ray) once ``stored`` folds are in."""
    command, work, folder = _new_sweep(tmp_path, name, subjects=4, trials=3, options=["--no-progress"])
    env = sweep_env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while (not folder.data_file.exists() or len(folder.store.entries()) < stored) and time.time() < deadline:
            time.sleep(0.1)
        kill_session(proc)
    assert folder.data_file.exists() and len(folder.store.entries()) >= stored, (
        f"the sweep had not stored {stored} folds within 180 s: " + (tmp_path / "first.log").read_text()[-2000:])
    return work, folder, env


def test_a_whole_tune_state_is_not_taken_for_a_damaged_one(tmp_path):
    """Tune's files as it writes them (its search_gen_state '.json' is a pickle) pass; a cut or empty one does not."""
    import pickle

    from orchestration.sweep.phases import tune_state_damage

    (tmp_path / "experiment_state-1.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "search_gen_state-1.json").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "searcher-state-1.pkl").write_bytes(pickle.dumps({"b": 2}))
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"c": 3}))
    assert tune_state_damage(tmp_path) is None
    (tmp_path / "search_gen_state-1.json").write_bytes(b"")
    assert "search_gen_state-1.json is empty" in tune_state_damage(tmp_path)
    (tmp_path / "experiment_state-1.json").write_text('{"trial_da')
    assert "experiment_state-1.json" in tune_state_damage(tmp_path)
    (tmp_path / "experiment_state-1.json").unlink()  # a sweep stopped before Tune saved anything but tuner.pkl
    assert "no experiment state" in tune_state_damage(tmp_path)


def _new_sweep(tmp_path: Path, name: str, *, subjects: int, trials: int,
               options: list[str]) -> tuple[list[str], Path, SweepFolder]:
    """(the ``aullm sweep`` command, its working folder, its sweep folder) of a new unpruned sweep of ``trials``
    configurations of the test space over a ``subjects``-subject cache, written to ``tmp_path``."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=subjects)
    work = tmp_path / "work"
    command = [*AULLM, "sweep", "--space", str(space), "--cache", str(cache), "--trials", str(trials), "--name", name,
               "--workdir", str(work), "--pruner", "none", "--num-cpus", "2", *options]
    return command, work, SweepFolder(work / "sweeps" / name)
