"""cluster.yaml validates against the cluster-launcher schema Ray ships, and installs this project."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_cluster_yaml_validates_against_ray_schema(cluster: dict, schema: dict) -> None:
    jsonschema.validate(cluster, schema)


def test_schema_rejects_what_ray_rejects(cluster: dict, schema: dict) -> None:
    """The validator is not vacuous: a top-level min_workers (removed from Ray's format) fails."""
    bad = copy.deepcopy(cluster)
    bad["min_workers"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_ray_prepares_the_config(cluster: dict) -> None:
    """Ray's own preparation (defaults merged for the provider) accepts it and keeps our node types."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_gpu_workers_and_project_setup(cluster: dict) -> None:
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "fold trials must not be scheduled on the head"
    gpu_types = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(n["node_config"]["InstanceType"].startswith("g5.") for n in gpu_types)
    setup = "\n".join(cluster["setup_commands"])
    assert "MLFLOW_TRACKING_URI=" in setup
    # torch is installed before the project, the project is installed from the cloned repository.
    torch_at = setup.index("pip install -q torch==")
    project_at = setup.index("pip install -q -e ~/aullm")
    assert torch_at < project_at
    assert "git clone" in setup
    assert "/mnt/aullm" in setup  # the caches on shared storage
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])


def test_on_premises_variant_from_the_readme(cluster: dict, schema: dict) -> None:
    """The README's on-premises recipe: local provider, node types derived by Ray from the hosts."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    local = copy.deepcopy(cluster)
    local["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    local["auth"] = {"ssh_user": "aullm", "ssh_private_key": "~/.ssh/id_ed25519"}
    for key in ("max_workers", "available_node_types", "head_node_type"):
        local.pop(key)
    jsonschema.validate(local, schema)
    prepared = prepare_config(local)
    validate_config(prepared)
    assert prepared["max_workers"] == 2  # one per listed worker host
