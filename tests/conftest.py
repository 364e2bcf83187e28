"""Test-wide environment: no telemetry, no Ray auth token, local rendezvous for DeepSpeed."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


#: Tests that start Ray clusters (or Slurm, or a whole sweep in a subprocess) run in two groups, each on
#: one pytest-xdist worker (``make test``: ``-n 3 --dist loadgroup``): two clusters at most at once on a
#: small machine, while the other worker runs the tests that only compute. Most of a sweep test's time is
#: waiting (Ray starting and stopping, folds that sleep), so the groups overlap well with each other and
#: with the computing tests. The split balances the groups' measured durations.
XDIST_GROUPS = {
    "ray-a": ("test_sweep_cli", "test_demo", "test_sweep_ray", "test_sweep_e2e", "test_ui_browser", "test_ray_cluster",
              "test_searcher"),
    "ray-b": ("test_slurm", "test_llm_sweeps", "test_read_only", "test_sweep_faults", "test_tracking_outage",
              "test_sweep_distributed", "test_cli_ui"),
}


def pytest_collection_modifyitems(config, items) -> None:
    import pytest

    group_of = {module: group for group, modules in XDIST_GROUPS.items() for module in modules}
    for item in items:
        group = group_of.get(item.path.stem)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
