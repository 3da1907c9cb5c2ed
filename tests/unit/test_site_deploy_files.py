"""Deployment files for the server and the sites (cluster-configs/federated/): they parse, and
every command they run exists and is accepted by its own argument parser. No Docker engine or
cluster is needed."""

from __future__ import annotations

import configparser
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FED = ROOT / "cluster-configs" / "federated"
KNOWN = {"fedray", "flower-superlink", "flower-supernode", "flwr"}


def check_command(argv: list[str]) -> None:
    """The executable is an installed console script and its parser accepts the arguments."""
    exe = Path(argv[0]).name
    assert exe in KNOWN, argv
    assert (Path(sys.executable).parent / exe).exists(), f"{exe} is not installed"
    args = argv[1:]
    if exe == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

        _parse_args_run_superlink().parse_args(args)
    elif exe == "flower-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

        _parse_args_run_supernode().parse_args(args)
    elif exe == "fedray":
        from orchestrator.cli import COMMANDS, OTHER_COMMANDS
        from orchestrator.federated import commands

        assert args[0] in {*COMMANDS, *OTHER_COMMANDS}
        parser = {
            "server": commands.server_parser,
            "site": commands.site_parser,
            "certs": commands.certs_parser,
            "site-key": commands.site_key_parser,
        }[args[0]]()
        parser.parse_args(args[1:])


def compose_commands(path: Path) -> list[list[str]]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc["services"], dict) and doc["services"]
    out = []
    for svc in doc["services"].values():
        assert svc["image"]
        # Compose substitutes ${VAR:-default}/${VAR:?msg} before running; use a sample value.
        out.append([_subst(str(a)) for a in svc["command"]])
    return out


def _subst(arg: str) -> str:
    if arg.startswith("${"):
        return "fl.example.org:9092" if "SERVER" in arg else "site-a"
    return arg


@pytest.mark.parametrize("name", ["docker-compose.server.yml", "docker-compose.site.yml"])
def test_compose_files_parse_and_commands_exist(name: str) -> None:
    cmds = compose_commands(FED / name)
    assert cmds
    for argv in cmds:
        check_command(argv)


def test_server_compose_is_tls_with_site_auth() -> None:
    (argv,) = compose_commands(FED / "docker-compose.server.yml")
    assert "--insecure" not in argv and "--no-site-auth" not in argv
    assert "--certs" in argv and "--site-keys" in argv


@pytest.mark.parametrize("name", ["fedray-server.service", "fedray-site.service"])
def test_systemd_units_parse_and_commands_exist(name: str) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((FED / name).read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert "--insecure" not in argv
    check_command(argv)


def test_kubernetes_manifests() -> None:
    docs = [d for d in yaml.safe_load_all((FED / "k8s-superlink.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "Job", "PersistentVolumeClaim"} <= set(kinds)
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    dep = kinds["Deployment"]["spec"]
    assert dep["selector"]["matchLabels"] == dep["template"]["metadata"]["labels"]
    assert kinds["Service"]["spec"]["selector"] == dep["selector"]["matchLabels"]
    (link,) = dep["template"]["spec"]["containers"]
    check_command(link["command"])
    assert "--enable-supernode-auth" in link["command"]
    assert "--insecure" not in link["command"]
    port = link["ports"][0]["containerPort"]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == port
    (submit,) = kinds["Job"]["spec"]["template"]["spec"]["containers"]
    check_command(submit["command"])
    assert f"superlink:{port}" in submit["command"]


def test_docs_show_each_files_command() -> None:
    docs = (ROOT / "docs" / "sites.md").read_text()
    for name in (
        "docker-compose.server.yml",
        "docker-compose.site.yml",
        "fedray-server.service",
        "fedray-site.service",
        "k8s-superlink.yaml",
    ):
        assert f"cluster-configs/federated/{name}" in docs, name


def test_dockerfile_disables_runtime_installs() -> None:
    text = (FED / "Dockerfile").read_text()
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
