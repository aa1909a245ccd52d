"""The cluster files users apply agree with the RayJob CRD, with `latentmill invert` and with each other:
rayjob.yaml (KubeRay), cluster.yaml (`ray up`) and the README's `ray job submit` command."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from latentmill.cli import main as cli
from tests.markdown_blocks import readme_cluster_commands

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "tests" / "fixtures" / "kuberay" / "rayjob.v1.schema.json"


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((REPO / "rayjob.yaml").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def invert_options(command: str) -> dict[str, object]:
    """The parameters `latentmill invert` parses from a command line (raises on an unknown option)."""
    words = shlex.split(command)
    start = words.index("invert") + 1
    invert = cli.commands["invert"]
    with invert.make_context("invert", words[start:], resilient_parsing=False) as ctx:
        return dict(ctx.params)


def test_the_rayjob_manifest_is_valid_against_the_kuberay_crd(rayjob, validator):
    errors = sorted(validator.iter_errors(rayjob), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"


def test_the_schema_check_catches_a_broken_manifest(rayjob, validator):
    broken = copy.deepcopy(rayjob)
    del broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    broken["spec"]["shutdownAfterJobFinishes"] = "yes"
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("'template' is a required property" in m for m in messages)
    assert any("is not of type 'boolean'" in m for m in messages)


def test_the_rayjob_entrypoint_is_a_valid_invert_command_that_fits_its_workers(rayjob):
    entrypoint = rayjob["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m latentmill invert")
    options = invert_options(entrypoint)
    assert options["concurrency"] == "auto"
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    limits = worker["resources"]["limits"]
    assert float(limits["nvidia.com/gpu"]) >= options["num_gpus"] > 0
    assert float(limits["cpu"]) >= options["cpus_per_actor"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "actors go to the GPU workers, not the head"


def test_the_rayjob_ray_version_is_one_the_project_supports(rayjob):
    version = tuple(map(int, rayjob["spec"]["rayClusterSpec"]["rayVersion"].split(".")))
    pyproject = (REPO / "pyproject.toml").read_text()
    low, high = re.search(r'"ray\[default[^"]*\]>=([\d.]+),<([\d.]+)"', pyproject).groups()
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))


def test_cluster_yaml_installs_the_project_and_starts_ray_with_token_auth():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert any("pip install -e" in c and "latentmill" in c for c in cluster["setup_commands"])
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "/home/ubuntu/.ray/auth_token" in cluster["file_mounts"]
    gpu = cluster["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] >= 1


def test_the_readme_cluster_command_is_a_valid_invert_command():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## On a cluster"):readme.index("## Reading the store")]
    commands = readme_cluster_commands(REPO / "README.md")
    assert commands[0].endswith("source .venv/bin/activate"), "from a fresh shell, the environment comes first"
    assert all(c.endswith("--block &") for c in commands if c.startswith("ray start")), "each node stops alone"
    assert not [c for c in commands if c.startswith("ray stop")], "ray stop stops every Ray on the machine"
    (submit,) = [c for c in commands if c.startswith("ray job submit")]
    assert submit.startswith("ray job submit --working-dir . -- python -m latentmill invert")
    options = invert_options(submit.split(" -- ", 1)[1])
    assert options["concurrency"] == "auto" and options["num_gpus"] == 1
    assert "pip install" in section and "ray[default]" in section
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"ray[default,' in pyproject, "setup installs what `ray job submit` and the dashboard need"


def test_the_dockerfile_builds_the_image_rayjob_names_on_its_ray_version(rayjob):
    dockerfile = (REPO / "Dockerfile").read_text()
    ray_version, python = re.search(r"^FROM rayproject/ray:([\d.]+)-py(\d+)-gpu$", dockerfile, re.M).groups()
    assert ray_version == rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    assert python == "311"  # the Python the project is tested on
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    images = re.findall(r"image: (\S+)", (REPO / "rayjob.yaml").read_text())
    assert images and all(image == f"YOUR_REGISTRY/latentmill:{version}" for image in images)
    assert f"docker build -t YOUR_REGISTRY/latentmill:{version} ." in dockerfile
    for package in ("pipeline", "jobs", "latentmill"):  # what `pip install .` needs, nothing of the tests
        assert f"COPY --chown=ray:users {package} ./{package}" in dockerfile
