"""Faults a sweep must survive, performed for real (real processes, real Ray), not mocked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import (
    HOOKED_AULLM,
    ONE_PARAM_SPACE,
    cheap_hooks,
    kill_session,
    local_ray,
    write_tiny_cache,
)

from aullm_core.errors import ConfigError
from orchestration.sweep.folder import SweepFolder
from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parents[1]  # tests/: the helpers Ray workers import


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_local_sweep_runs_beside_another_ray_instance(tmp_path: Path, monkeypatch) -> None:
    """Another Ray head runs on the machine in Ray's default folder (a colleague's, a notebook's): the
    sweep starts a cluster of its own instead of joining that one, whose workers cannot import the
    sweep's code, and leaves it running."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    other = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "1",
         "--port", str(_free_port()), "--include-dashboard", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while not Path("/tmp/ray/ray_current_cluster").is_file() and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        assert other.poll() is None, "the other Ray instance did not start"
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
        space = tmp_path / "space.yaml"
        space.write_text(ONE_PARAM_SPACE)
        cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=3, clips_per_subject=3)
        settings = SweepSettings(
            name="beside", space=space, cache=cache, workdir=tmp_path / "work", n_configs=1, pruner="none", tracking_uri="none",
        )
        summary = run_sweep(settings, cheap_hooks(tracked=True), progress=False)
        assert summary.finished and summary.n_complete == 1
        assert len(SweepFolder(Path(summary.sweep_dir)).store.entries()) == 3
        assert other.poll() is None, "the sweep must not stop the other Ray instance"
    finally:  # SIGKILL the other instance's process tree: on SIGTERM Ray drains for 30 s first
        if other.poll() is None:
            kill_session(other)


def _tiny(tmp_path: Path, monkeypatch, name: str, **extra) -> SweepSettings:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    cache = tmp_path / "casme2.npz"
    if not cache.exists():
        write_tiny_cache(cache, subjects=3, clips_per_subject=3)
    options = {"name": name, "space": space, "cache": cache, "workdir": tmp_path / "work", "n_configs": 2,
               "pruner": "none", "tracking_uri": "none", **extra}
    return SweepSettings(**options)


def _sweep_run_status(tmp_path: Path, name: str) -> str:
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    (run,) = MlflowTracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", name)._search(level="sweep", sweep=name)
    return run.info.status


@pytest.fixture(scope="class")
def one_ray(tmp_path_factory):
    """One local Ray for a class of in-process sweeps that need nothing of their own from it (a sweep run in a
    process where Ray is up uses that Ray and leaves it up): a Ray start and stop is ~5 s of CPU."""
    control = tmp_path_factory.mktemp("control") / "control.json"
    control.write_text("{}")
    with local_ray(2, control):
        yield


@pytest.mark.usefixtures("one_ray")
class TestResumesOnOneRay:
    """A sweep's stored data damaged or replaced between a finished sweep and its resume."""

    def test_a_cache_replaced_before_resume_is_refused_and_never_mixed(self, tmp_path: Path, monkeypatch) -> None:
        """The cache file is rewritten with other clips between a sweep and its resume: the resume names the
        cache and stops before training, and the stored folds stay keyed by the data they were trained on."""
        first = run_sweep(_tiny(tmp_path, monkeypatch, "swap", n_configs=1), cheap_hooks(tracked=True), progress=False)
        folder = SweepFolder(Path(first.sweep_dir))
        before = folder.data().data_key
        assert first.finished and len(folder.store.entries()) == 3

        write_tiny_cache(tmp_path / "casme2.npz", subjects=3, clips_per_subject=3, seed=1)  # same subjects, other clips
        with pytest.raises(ConfigError, match=r"casme2\.npz: the cache changed since the sweep started"):
            run_sweep(_tiny(tmp_path, monkeypatch, "swap", resume=True), cheap_hooks(tracked=True), progress=False)
        assert len(folder.store.entries()) == 3  # nothing trained, nothing mixed in

        other = run_sweep(_tiny(tmp_path, monkeypatch, "fresh", n_configs=1), cheap_hooks(tracked=True), progress=False)
        fresh = SweepFolder(Path(other.sweep_dir))
        assert fresh.data().data_key != before
        assert other.folds_from_store == 0 and len(fresh.store.entries()) == 3

    def test_a_truncated_fold_of_a_finished_sweep_is_retrained_on_resume(self, tmp_path: Path, monkeypatch) -> None:
        """A stored fold's npz is cut in half after the sweep finished: the resume retrains exactly that fold
        and the leaderboard is the clean run's again. A resume refused afterwards (a damaged data.json)
        leaves the finished sweep's MLflow run FINISHED."""
        first = run_sweep(_tiny(tmp_path, monkeypatch, "cut", tracking_uri=None), cheap_hooks(tracked=True), progress=False)
        assert first.finished and _sweep_run_status(tmp_path, "cut") == "FINISHED"
        store = SweepFolder(Path(first.sweep_dir)).store
        fp = first.best_fp
        victim = sorted((store.root / fp / "loso").glob("*.npz"))[1]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a real truncation
        assert len(store.fold_ids(fp, "loso")) == 2

        again = run_sweep(_tiny(tmp_path, monkeypatch, "cut", resume=True, tracking_uri=None), cheap_hooks(tracked=True), progress=False)
        assert again.finished and again.loso_folds_trained == 1 and again.folds_trained == 1
        assert len(store.fold_ids(fp, "loso")) == 3
        clean, repaired = first.leaderboard, again.leaderboard
        assert repaired["config_fp"].tolist() == clean["config_fp"].tolist()
        assert repaired["objective"].tolist() == pytest.approx(clean["objective"].tolist())
        assert _sweep_run_status(tmp_path, "cut") == "FINISHED"

        data = SweepFolder(Path(first.sweep_dir)).data_file
        data.write_text(data.read_text()[:40])  # torn
        with pytest.raises(ConfigError, match="data.json: damaged"):
            run_sweep(_tiny(tmp_path, monkeypatch, "cut", resume=True, tracking_uri=None), cheap_hooks(tracked=True), progress=False)
        assert _sweep_run_status(tmp_path, "cut") == "FINISHED"

    def test_an_edited_fold_record_is_named_and_retrained_on_resume(self, tmp_path: Path, monkeypatch, caplog) -> None:
        """Two AUs swapped in one stored fold's JSON after the sweep finished: the record no longer matches its
        checksum, the report warns naming the file and never uses it, and the resume retrains exactly that fold."""
        import json

        from orchestration.reports.report import build_report

        first = run_sweep(_tiny(tmp_path, monkeypatch, "edit", tracking_uri="none"), cheap_hooks(tracked=True), progress=False)
        store = SweepFolder(Path(first.sweep_dir)).store
        fp = first.best_fp
        victim = sorted((store.root / fp / "loso").glob("*.json"))[1]
        record = json.loads(victim.read_text())
        record["aus"][0], record["aus"][1] = record["aus"][1], record["aus"][0]
        victim.write_text(json.dumps(record, indent=1))
        with caplog.at_level("WARNING"):
            build_report(tmp_path / "work", "edit", tracking_uri=None, progress=False)
        assert any(str(victim) in r.getMessage() and "altered" in r.getMessage() for r in caplog.records)
        assert len(store.fold_ids(fp, "loso")) == 2

        again = run_sweep(_tiny(tmp_path, monkeypatch, "edit", resume=True, tracking_uri="none"), cheap_hooks(tracked=True), progress=False)
        assert again.finished and again.loso_folds_trained == 1
        assert json.loads(victim.read_text())["aus"] == sorted(record["aus"])  # written again, whole
        assert again.leaderboard["objective"].tolist() == pytest.approx(first.leaderboard["objective"].tolist())


def test_folds_killed_by_rays_memory_monitor_end_in_one_line_not_a_traceback(tmp_path: Path, monkeypatch) -> None:
    """Ray's own memory monitor, set to a threshold every worker exceeds, kills each fold trial (and its
    retry): the sweep ends normally and says, in one line per fold, what happened and what to do."""
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.01")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    summary = run_sweep(_tiny(tmp_path, monkeypatch, "oom", n_configs=1, max_failures=1), cheap_hooks(tracked=True), progress=False)
    assert summary.finished and summary.n_failed == 1 and summary.errors
    for line in summary.errors:
        assert line.startswith("configuration 0, fold s0") and "running low on memory" in line
        assert "--concurrency" in line and "Failure #" not in line and "\n" not in line


def test_a_node_lost_mid_fold_stores_the_retry_not_the_orphan(tmp_path: Path, monkeypatch) -> None:
    """A second Ray node whose raylet is SIGKILLed while one of its workers trains a fold: the orphaned
    worker stops at once instead of finishing the fold beside Tune's retry, so every fold is trained
    and stored once, by a live node, and the sweep finishes on the node that is left."""
    import json
    import threading
    from collections import Counter

    import psutil
    import ray
    from ray.cluster_utils import Cluster

    control = tmp_path / "control.json"
    control.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 4.0}))
    monkeypatch.setenv("AULLM_TEST_CONTROL", str(control))
    settings = _tiny(tmp_path, monkeypatch, "node", max_failures=2)  # sets PYTHONPATH for the nodes too
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    raylet = doomed.all_processes["raylet"][0].process
    orphans: list[psutil.Process] = []
    survivors: list[psutil.Process] = []
    counter = tmp_path / "trainings.txt"
    before_kill: list[str] = []  # folds finished (by any worker) when the node was lost

    def kill_the_node_mid_fold() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            busy = [c for c in psutil.Process(raylet.pid).children()
                    if c.cmdline()[:1] == ["ray::ImplicitFunc.train"]]
            if busy:
                time.sleep(1.0)  # well inside the fold's 4 s
                orphans.extend(busy)
                os.kill(raylet.pid, signal.SIGKILL)
                before_kill.extend(counter.read_text().splitlines() if counter.exists() else [])
                _, alive = psutil.wait_procs(busy, timeout=15)
                survivors.extend(alive)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_node_mid_fold, daemon=True)
    try:
        killer.start()
        summary = run_sweep(settings.model_copy(update={"address": cluster.address}), cheap_hooks(tracked=True), progress=False)
        killer.join(30)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert orphans, "no fold ran on the second node"
    assert not survivors, "the orphaned worker outlived its raylet by more than 15 s"
    assert summary.finished and summary.n_complete == 2
    lines = [line.split() for line in counter.read_text().splitlines()]
    orphan_pids = {str(p.pid) for p in orphans}
    finished_by_orphans = [line for line in lines if line[3] in orphan_pids]
    assert finished_by_orphans == [line.split() for line in before_kill if line.split()[3] in orphan_pids], \
        "the orphaned worker finished its fold after its node was lost"
    trained = Counter(tuple(line[:3]) for line in lines)
    assert len(trained) == 2 * 3 and max(trained.values()) == 1
    assert len(SweepFolder(Path(summary.sweep_dir)).store.entries()) == 2 * 3


def test_fold_timeout_limit_follows_the_longest_fold_unless_given() -> None:
    from orchestration.search.scheduler import FoldTimeout

    auto = FoldTimeout()
    assert auto.limit is None  # nothing finished yet: no limit
    auto.finished(10.0)
    assert auto.limit == 120.0  # at least the floor
    auto.finished(60.0)
    assert auto.limit == 300.0  # 5 x the longest
    assert FoldTimeout(seconds=7.0).limit == 7.0


@pytest.mark.slow
def test_a_hung_fold_is_killed_past_its_time_limit_and_retried(tmp_path: Path) -> None:
    """A fold worker stopped with SIGSTOP: past --fold-timeout the sweep kills it, says so in one line,
    retries the fold and finishes with every fold stored once."""
    import json

    space = tmp_path / "space.yaml"
    space.write_text(ONE_PARAM_SPACE)
    cache = write_tiny_cache(tmp_path / "casme2.npz", subjects=3, clips_per_subject=2)
    started = tmp_path / "started.txt"
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 1.0, "started": str(started)}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
           "AULLM_TEST_CONTROL": str(control), "RAY_AUTH_MODE": "disabled"}
    command = [*HOOKED_AULLM, "sweep", "--space", str(space),
               "--cache", str(cache), "--trials", "1", "--name", "hung", "--workdir", str(tmp_path / "work"),
               "--pruner", "none", "--concurrency", "1", "--num-cpus", "2", "--fold-timeout", "8", "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (started.exists() and started.read_text().strip()):
        time.sleep(0.05)
    fold, pid = started.read_text().split()[:2]
    os.kill(int(pid), signal.SIGSTOP)  # the worker hangs mid-fold
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out[out.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 1
    warnings = [line for line in err.splitlines() if "ran past its time limit" in line]
    assert len(warnings) == 1 and f"fold {fold} " in warnings[0]
    assert not psutil_alive(int(pid))
    trained = (tmp_path / "trainings.txt").read_text().split("\n")
    assert sorted({line.split()[2] for line in trained if line}) == ["s01", "s02", "s03"]


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
