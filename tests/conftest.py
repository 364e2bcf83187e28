"""Test-wide environment: no telemetry, no Ray auth token, local rendezvous for DeepSpeed."""

import os
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Three workers on two cores run several trainings at once, each with a thread per core: OpenMP threads
    # that spin while they wait for work would burn the cores the other workers need. Set before torch loads
    # its OpenMP runtime; Ray's workers and the aullm subprocesses inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: Where ``make test`` (pytest-xdist, ``-n 3``) looks up how long each test takes: written by
#: ``make test-durations`` (a serial run with ``--store-durations``). A sweep test waits for part of its time
#: (Slurm's time limit, folds that sleep), so three workers keep two cores busy; what decides the wall time then
#: is that the longest tests start first (longest-processing-time-first scheduling), or the last worker still
#: runs the demo when the others are done.
DURATIONS = Path(__file__).resolve().parent / "durations.json"

#: Modules whose tests share a module-scoped fixture worth keeping (a Ray session, a trained model, a
#: rendered sweep): their tests run together on one worker. Every other test is scheduled on its own.
KEEP_TOGETHER = frozenset({
    "test_sweep_ray", "test_sweep_distributed", "test_ui_browser", "test_export", "test_cli_train",
    "test_learning", "test_train_fold", "test_train_checkpoint", "test_llm_families", "test_model_shapes",
    "test_model_shared_prompt", "test_searcher", "test_racing", "test_cluster_yaml", "test_llm_sweeps",
    "test_sweep_faults",
})


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test's duration (setup + call + teardown) to {DURATIONS.name}")


def xdist_scope(nodeid: str) -> str:
    """The unit a worker runs without interruption: the module for KEEP_TOGETHER, else the test."""
    path = nodeid.partition("::")[0]
    return path if Path(path).stem in KEEP_TOGETHER else nodeid


def expected_durations() -> dict[str, float]:
    import json

    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling with our scopes (``xdist_scope``), handed out longest first (by
    ``durations.json``; a test it does not know counts as short)."""
    from xdist.scheduler import LoadScopeScheduling

    known = expected_durations()

    class LongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not getattr(self, "_longest_first", False):  # the queue is whole by the first assignment
                seconds = {scope: sum(known.get(nodeid, 0.1) for nodeid in unit) for scope, unit in self.workqueue.items()}
                ordered = sorted(self.workqueue.items(), key=lambda item: -seconds[item[0]])
                self.workqueue.clear()
                self.workqueue.update(ordered)
                self._longest_first = True
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call", "teardown"):
        _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--store-durations") or hasattr(session.config, "workerinput"):
        return
    import json

    from aullm_core.atomic import atomic_write_text

    durations = {nodeid: round(seconds, 1) for nodeid, seconds in sorted(_measured.items(), key=lambda kv: -kv[1])
                 if seconds >= 0.5}
    atomic_write_text(DURATIONS, json.dumps(durations, indent=0) + "\n")
