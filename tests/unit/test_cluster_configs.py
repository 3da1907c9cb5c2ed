"""Ray cluster launcher YAMLs validate against the schema shipped inside the ray package."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "cluster-configs" / "ray"
LAUNCHER_CONFIGS = ["aws-gpu.yaml", "on-prem-gpu.yaml"]


def ray_schema() -> dict:
    ray_dir = Path(find_spec("ray").submodule_search_locations[0])  # no heavy `import ray`
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_yaml_matches_ray_schema(name: str):
    cfg = yaml.safe_load((ROOT / name).read_text())
    jsonschema.validate(cfg, ray_schema())
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_schema_rejects_a_broken_config():
    cfg = yaml.safe_load((ROOT / "aws-gpu.yaml").read_text())
    cfg["available_node_types"]["gpu_8x"]["min_workers"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema())


def test_gpu_nodes_and_fedray_commands():
    aws = yaml.safe_load((ROOT / "aws-gpu.yaml").read_text())
    assert aws["available_node_types"]["gpu_8x"]["node_config"]["InstanceType"].startswith("p")
    assert any("fedray" in c for c in aws["setup_commands"])
    for name in ["aws-gpu.yaml", "on-prem-gpu.yaml", "kuberay-gpu.yaml", "slurm-ray.sbatch"]:
        text = (ROOT / name).read_text()
        assert "fedray pretrain" in text, name  # each documents its launch command


def test_kuberay_manifest_shape():
    doc = yaml.safe_load((ROOT / "kuberay-gpu.yaml").read_text())
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    workers = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_slurm_script_parses():
    import subprocess

    subprocess.run(["bash", "-n", str(ROOT / "slurm-ray.sbatch")], check=True)
