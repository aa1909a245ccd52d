"""cluster.yaml is a launchable Ray cluster config whose nodes install latentmill."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())


def test_cluster_config_has_a_head_and_gpu_workers():
    types = CONFIG["available_node_types"]
    assert CONFIG["head_node_type"] in types
    assert any(node["resources"].get("GPU", 0) >= 1 for node in types.values())
    assert CONFIG["max_workers"] >= max(node.get("max_workers", 0) for node in types.values())


def test_every_node_installs_the_project():
    assert "/home/ubuntu/latentmill" in CONFIG["file_mounts"]
    assert any("pip install" in c and "latentmill" in c for c in CONFIG["setup_commands"])
    assert any("ray start --head" in c for c in CONFIG["head_start_ray_commands"])
