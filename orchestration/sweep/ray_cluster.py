"""Joining the Ray cluster a sweep runs on, or starting a local one for it.

A local cluster listens on 127.0.0.1 only. Ray 2.60 has no bind-address option: each server binds
loopback when the node's IP is loopback and every interface otherwise, and ``ray.init`` replaces a
given 127.0.0.1 by the machine's routable IP unless ``ray_constants.ENABLE_RAY_CLUSTER`` is off
(``services.get_node_ip_address``; the ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` switch, read once when
ray is imported). ``start_ray`` turns it off for the local cluster it starts, so its GCS, raylet,
object manager, workers and agents are unreachable from other machines. A multi-node cluster
(``--address``) is the cluster's business: its nodes must listen on the network, so protect it at
the network boundary (and with ``RAY_AUTH_MODE=token``), as Ray's security guide says.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from orchestration.sweep.resources import ResourceError
from orchestration.sweep.settings import SweepSettings

__all__ = ["start_ray", "wait_for_nodes"]

logger = logging.getLogger(__name__)


def start_ray(settings: SweepSettings) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down."""
    import ray

    if not settings.verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # failures are summarised at the end
    if ray.is_initialized():
        return False
    from aullm_core.train.host_memory import fold_worker_env

    runtime_env = {"env_vars": fold_worker_env()}  # the allocator setting fold threads need (host_memory)
    if settings.address is None:
        from ray._private import ray_constants

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray_constants.ENABLE_RAY_CLUSTER = False  # loopback only (module docstring)
        ray.init(
            address="local",  # a new local cluster, even beside another Ray instance on this machine
            _node_ip_address="127.0.0.1",
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=settings.verbose,
            logging_level=logging.INFO if settings.verbose else logging.WARNING,
            runtime_env=runtime_env,
        )
    else:
        ray.init(address=settings.address, log_to_driver=settings.verbose, runtime_env=runtime_env)
    return True


def wait_for_nodes(n_nodes: int, address: str, *, timeout_s: float = 600.0,
                   stopped: Callable[[], bool] = lambda: False) -> None:
    """Block until the connected cluster has ``n_nodes`` alive nodes (Slurm's workers join after the head),
    or ``stopped()`` says the sweep is being stopped."""
    import ray

    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline and not stopped():
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= n_nodes:
            logger.info("%d of %d Ray nodes are up at %s", alive, n_nodes, address)
            return
        time.sleep(1.0)
    if stopped():
        return
    raise ResourceError(
        f"--wait-nodes {n_nodes}: only {alive} Ray node(s) joined the cluster at {address} within {timeout_s:.0f} s"
    )
