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


# --- Kubernetes: the federated submit Job, the KubeRay RayJob, the CUDA image -----------------

FED = ROOT.parent / "federated"
K8S_VERSION = "1.30"  # schemas bundled with kubernetes-validate (offline)

# KubeRay's CRD schema is not available offline: the fields the operator requires of a RayJob
# (ray.io/v1) that runs on an existing RayCluster, and that fedray needs (an entrypoint).
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["entrypoint"],
            "oneOf": [{"required": ["clusterSelector"]}, {"required": ["rayClusterSpec"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "clusterSelector": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "minProperties": 1,
                },
                "submissionMode": {
                    "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
                },
                "backoffLimit": {"type": "integer", "minimum": 0},
                "shutdownAfterJobFinishes": {"const": False},  # must not delete a shared cluster
                "submitterPodTemplate": {"type": "object", "required": ["spec"]},
            },
        },
    },
}


def k8s_validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # strict: unknown fields fail


def test_federated_manifests_match_the_kubernetes_schemas():
    docs = [d for d in yaml.safe_load_all((FED / "k8s-superlink.yaml").read_text()) if d]
    for doc in docs:
        k8s_validate(doc)
    broken = next(d for d in docs if d["kind"] == "Job")
    broken = json.loads(json.dumps(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo
    import kubernetes_validate

    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(broken)


def test_submit_job_writes_its_run_dir_on_the_shared_volume():
    docs = [d for d in yaml.safe_load_all((FED / "k8s-superlink.yaml").read_text()) if d]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    run_dir = next(a.split("=", 1)[1] for a in c["command"] if a.startswith("run.dir="))
    mount = next(m for m in c["volumeMounts"] if run_dir.startswith(m["mountPath"] + "/"))
    assert not mount.get("readOnly"), "the run dir must be writable"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # The same claim the SuperLink (ServerApp) writes rounds and checkpoints to.
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    link_vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == link_vols["runs"]["persistentVolumeClaim"]["claimName"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    if pvc["spec"]["accessModes"] == ["ReadWriteOnce"]:  # shareable only on one node
        term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
    assert pod["securityContext"]["fsGroup"] == 1000  # the image's non-root user can write


def test_kuberay_rayjob_runs_fedray_pretrain_on_the_raycluster():
    job = yaml.safe_load((ROOT / "kuberay-rayjob.yaml").read_text())
    jsonschema.validate(job, RAYJOB_SCHEMA)
    cluster = yaml.safe_load((ROOT / "kuberay-gpu.yaml").read_text())
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    args = job["spec"]["entrypoint"].split()
    assert args[:2] == ["fedray", "pretrain"] and "cluster.address=auto" in args
    # The entrypoint's config validates with the real schema, and its run.root is the volume
    # every Ray pod of the cluster mounts.
    from orchestrator.config import PretrainJob, load_config

    pj = load_config(PretrainJob, args[2], args[3:])
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for g in groups:
        (c,) = g["template"]["spec"]["containers"]
        assert any(m["mountPath"] == pj.run.root for m in c["volumeMounts"])
        assert c["image"].endswith("-cuda")
    pod = job["spec"]["submitterPodTemplate"]
    k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                  "template": pod})  # fmt: skip
    bad = {**job, "spec": {k: v for k, v in job["spec"].items() if k != "entrypoint"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, RAYJOB_SCHEMA)


def test_cuda_image_beside_the_cpu_one():
    cpu = (FED / "Dockerfile").read_text()
    cuda = (FED / "Dockerfile.cuda").read_text()
    assert "download.pytorch.org/whl/cpu" in cpu and "whl/cpu" not in cuda.split("FROM", 1)[1]
    assert (
        "NVIDIA_VISIBLE_DEVICES" in cuda
        and "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in cuda
    )
    assert "docker build -f cluster-configs/federated/Dockerfile.cuda" in cuda
    # Every COPY source exists in the repository (the build context is its root).
    repo = ROOT.parents[1]
    for line in cuda.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (repo / src).exists(), src


def header_fedray_commands(path: Path) -> list[list[str]]:
    """``fedray pretrain|submit ...`` commands shown in a file's comments (continuations joined)."""
    import shlex

    text = "\n".join(
        line.lstrip("# ").rstrip() for line in path.read_text().splitlines() if line.startswith("#")
    ).replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        for start in ("fedray pretrain ", "fedray submit "):
            if start in line:
                cmd = line[line.index(start) :].split("  #")[0].rstrip('"')
                cmds.append(shlex.split(cmd))
    return cmds


@pytest.mark.parametrize(
    "name", ["aws-gpu.yaml", "on-prem-gpu.yaml", "kuberay-gpu.yaml", "kuberay-rayjob.yaml"]
)
def test_header_commands_are_valid_jobs(name: str):
    """Every command a header shows loads as a valid job; submitted ones pass submit's checks."""
    from orchestrator.config import PretrainJob, load_config
    from orchestrator.submit import prepare_job

    cmds = header_fedray_commands(ROOT / name)
    assert cmds, name
    for cmd in cmds:
        args = [a for a in cmd[2:] if not a.startswith(("--", "http://"))]
        job = load_config(PretrainJob, args[0], args[1:])
        if cmd[1] == "submit":
            prepare_job(job)
        if job.scaling.use_gpu and name == "aws-gpu.yaml":  # min_workers < what 32 GPUs need
            assert job.cluster.autoscaling, cmd
