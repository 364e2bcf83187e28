"""Check a fold's resource request against the cluster before a sweep starts.

Ray leaves a trial whose placement group can never be satisfied PENDING forever; a sweep asking
for a GPU on a CPU-only cluster would simply hang. ``check_fold_resources`` turns that into a
one-line ``ResourceError`` naming the resource, what one fold asks for and what the cluster has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from aullm_core.errors import AullmError

__all__ = [
    "TRIAL_DRIVER_CPU",
    "ResourceError",
    "check_fold_resources",
    "cluster_view",
    "fold_bundles",
    "max_parallel_folds",
]

#: CPU held by a trial that only drives a multi-worker Ray Train run (its workers hold the rest).
TRIAL_DRIVER_CPU = 0.1


class ResourceError(AullmError):
    """A fold asks for more than the Ray cluster can ever give."""


def fold_bundles(cpus_per_fold: float, gpus_per_fold: float, workers_per_fold: int) -> list[dict[str, float]]:
    """What one fold needs: one bundle per process (the trial, plus Ray Train workers if any)."""
    worker = {"CPU": float(cpus_per_fold), **({"GPU": float(gpus_per_fold)} if gpus_per_fold > 0 else {})}
    if workers_per_fold <= 1:
        return [worker]
    return [{"CPU": TRIAL_DRIVER_CPU}] + [dict(worker) for _ in range(workers_per_fold)]


def cluster_view() -> tuple[dict[str, float], list[dict[str, float]]]:
    """(total resources, resources of each alive node) of the connected Ray cluster."""
    import ray

    totals = {k: float(v) for k, v in ray.cluster_resources().items()}
    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    return totals, nodes


def _describe(resources: Mapping[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in resources] + sorted(
        k for k in resources if k not in ("CPU", "GPU") and not k.startswith(("node:", "accelerator_type"))
        and "memory" not in k
    )
    return ", ".join(f"{k} {resources[k]:g}" for k in keys) or "nothing"


def check_fold_resources(
    bundles: Sequence[Mapping[str, float]],
    totals: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]],
) -> None:
    """Raise ResourceError unless every bundle fits on some node and all fit in the cluster."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    hint = "lower --cpus-per-fold/--gpus-per-fold/--workers-per-fold or connect to a bigger cluster"
    for key, value in need.items():
        if totals.get(key, 0.0) + 1e-9 < value:
            raise ResourceError(
                f"one fold needs {key} {value:g} but the Ray cluster has {key} {totals.get(key, 0.0):g} "
                f"(cluster: {_describe(totals)}): {hint}"
            )
    for bundle in bundles:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in nodes):
            raise ResourceError(
                f"no single node can hold one fold worker ({_describe(bundle)}); the largest node has "
                f"{_describe(max(nodes, key=lambda n: (n.get('GPU', 0.0), n.get('CPU', 0.0)), default={}))}: {hint}"
            )


def max_parallel_folds(bundles: Sequence[Mapping[str, float]], totals: Mapping[str, float]) -> int:
    """How many folds the cluster's totals allow at once (at least 1)."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    fits = [math.floor(totals.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min(fits)) if fits else 1
