"""Test-wide environment: no telemetry, no Ray auth token, local rendezvous for DeepSpeed."""

import os
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


#: Tests that start Ray clusters (or Slurm, or a whole sweep in a subprocess) run in four groups, each on
#: one pytest-xdist worker (``make test``: ``-n 4``), while the tests that only compute spread over the
#: workers. Most of a sweep test's time is waiting (Ray starting and stopping, Slurm's time limit, folds
#: that sleep), so the groups overlap well with each other and with the computing tests. A group lists
#: modules (file stems) or single tests (``stem::test``); the split balances the groups' serial durations
#: measured with ``--durations`` (each about 5 minutes on the 2-core machine).
XDIST_GROUPS = {
    "ray-a": ("test_sweep_cli", "test_sweep_e2e", "test_ray_cluster", "test_searcher"),
    "ray-b": ("test_sweep_faults", "test_read_only", "test_sweep_distributed"),
    "ray-c": ("test_llm_sweeps", "test_sweep_ray", "test_tracking_outage", "test_ui_browser", "test_cli_ui"),
    "slurm-demo": ("test_slurm", "test_demo",
                   "test_sweep_cli::test_two_drivers_resuming_one_sweep_at_once_one_is_refused_naming_the_other"),
}
_GROUP_OF = {member: group for group, members in XDIST_GROUPS.items() for member in members}


def xdist_group(nodeid: str) -> str | None:
    """The group a test runs in (its own test first, then its module), None for a test of no group."""
    path, _, name = nodeid.partition("::")
    stem = Path(path).stem
    return _GROUP_OF.get(f"{stem}::{name.split('[', 1)[0]}", _GROUP_OF.get(stem))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling with our scopes: a group of tests is one scope (one worker runs it,
    its tests in order), every other test its own. Scopes are handed out largest first, so each group starts
    on a worker of its own."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)
