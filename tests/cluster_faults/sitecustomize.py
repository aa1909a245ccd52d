"""Fault injection for the test clusters of tests/ray_cluster.py, loaded by every Python process of a node
started with this folder on PYTHONPATH (its raylet's workers, the job's driver): once latentmill's shard
processor is imported, each shard first says it started (a file `<Ray node id>~<shard>.started` in
$LATENTMILL_TEST_FAULTS), then waits until the file `release` or `release~<shard>` is there; on a node with
a file `never~<Ray node id>`, it never goes on, so the node dies holding it. The tests decide when shards run instead of sizing jobs to make a kill
land; latentmill's code is unchanged. Nothing happens in a process without $LATENTMILL_TEST_FAULTS."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

TARGET = "pipeline.invert.shard_processor"


def _hold(processor: type) -> None:
    folder = Path(os.environ["LATENTMILL_TEST_FAULTS"])
    process = processor.process

    def held_process(self, spec, attempt=1):
        import ray

        node, shard = ray.get_runtime_context().get_node_id(), spec.shard_id.replace("/", "_")
        (folder / f"{node}~{shard}.started").touch()
        while (folder / f"never~{node}").exists() or not (
                (folder / "release").exists() or (folder / f"release~{shard}").exists()):
            time.sleep(0.05)
        return process(self, spec, attempt)

    processor.process = held_process


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _hold(module.ShardProcessor)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("LATENTMILL_TEST_FAULTS"):
    sys.meta_path.insert(0, _PatchOnImport())
