"""Deployment files for the server and the sites (cluster-configs/federated/): they parse, every
command they run exists and is accepted by its own argument parser, and they expose the Fleet API
only. No Docker engine or cluster is needed; the proxy is also run for real when nginx is
installed.

Why the exposure checks: Flower 1.41's SuperLink serves the Fleet API (/v1/fleet/*, what sites
call), the Control API (/v1/control/*: register keys, start runs; no authentication in
open-source Flower) and the Runtime API (/v1/runtime/*) on ONE port. So the SuperLink must bind
loopback (or sit behind a cluster-internal Service), and sites reach it through nginx-fleet.conf,
which forwards /v1/fleet/* and nothing else."""

from __future__ import annotations

import argparse
import configparser
import http.client
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FED = ROOT / "cluster-configs" / "federated"
KNOWN = {"fedray", "flower-superlink", "flower-supernode", "flwr"}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
PROXY_CONF = FED / "nginx-fleet.conf"
FLEET_PREFIX = "/v1/fleet/"


def check_command(argv: list[str]) -> argparse.Namespace | None:
    """The executable is an installed console script and its parser accepts the arguments."""
    exe = Path(argv[0]).name
    assert exe in KNOWN, argv
    assert (Path(sys.executable).parent / exe).exists(), f"{exe} is not installed"
    args = argv[1:]
    if exe == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

        return _parse_args_run_superlink().parse_args(args)
    if exe == "flower-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

        return _parse_args_run_supernode().parse_args(args)
    if exe == "fedray":
        from orchestrator.cli import COMMANDS, OTHER_COMMANDS
        from orchestrator.commands import certs, server, site

        assert args[0] in {*COMMANDS, *OTHER_COMMANDS}
        parser = {
            "server": server.server_parser,
            "site": site.site_parser,
            "certs": certs.certs_parser,
            "site-key": certs.site_key_parser,
        }[args[0]]()
        return parser.parse_args(args[1:])
    return None


def superlink_bind(argv: list[str]) -> tuple[str, int] | None:
    """(host, port) the SuperLink started by ``argv`` binds, or None when it starts none
    (a site, or ``fedray server --superlink`` that only submits)."""
    ns = check_command(argv)
    exe = Path(argv[0]).name
    if exe == "flower-superlink" or (exe == "fedray" and argv[1] == "server"):
        assert ns is not None
        if exe == "fedray" and ns.superlink:
            return None
        return ns.host, ns.port
    return None


# --------------------------------------------------------------------------------------------
# nginx: a small parser of the config language and nginx's location selection


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        (d,) = self.all(name)
        return d


def nginx_tokens(text: str) -> Iterator[str]:
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c in "{};":
            yield c
            i += 1
        elif c in "\"'":
            j = text.index(c, i + 1)
            yield "\x00" + text[i + 1 : j]  # quoted: never a brace or semicolon
            i = j + 1
        else:
            m = re.match(r"[^\s{};\"']+", text[i:])
            assert m, text[i : i + 40]
            yield m.group(0)
            i += len(m.group(0))


def nginx_parse(text: str) -> list[Directive]:
    """Directives and blocks as nginx reads them (``if (...)`` parentheses kept as tokens)."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for tok in nginx_tokens(text):
        if tok in (";", "{"):
            assert words, f"empty directive before {tok!r}"
            d = Directive(words[0], [w.lstrip("\x00") for w in words[1:]])
            stack[-1].append(d)
            words = []
            if tok == "{":
                d.block = []
                stack.append(d.block)
        elif tok == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        else:
            words.append(tok)
    assert not words and len(stack) == 1, "unterminated directive or block"
    return stack[0]


def select_location(server: Directive, uri: str) -> Directive | None:
    """nginx's choice among a server's locations: ``=`` exact, then the longest prefix (final
    if ``^~``), then the first matching regex in file order, then that longest prefix."""
    locations = server.all("location")
    for loc in locations:
        assert not loc.all("location"), "nested locations are not modelled"
        if loc.args[0] == "=" and loc.args[1] == uri:
            return loc
    prefixes = [
        (loc.args[-1], loc)
        for loc in locations
        if loc.args[0] not in ("=", "~", "~*") and uri.startswith(loc.args[-1])
    ]
    best = max(prefixes, key=lambda p: len(p[0]))[1] if prefixes else None
    if best is not None and best.args[0] == "^~":
        return best
    for loc in locations:
        if loc.args[0] in ("~", "~*"):
            flags = re.IGNORECASE if loc.args[0] == "~*" else 0
            if re.search(loc.args[1], uri, flags):
                return loc
    return best


def _if_holds(cond: list[str], request_uri: str) -> bool:
    parts = [p for p in (s.strip("()") for s in cond) if p]
    var, op, rx = parts
    assert var == "$request_uri", f"condition on {var} is not modelled"
    flags = re.IGNORECASE if op.endswith("*") else 0
    hit = re.search(rx, request_uri, flags) is not None
    return not hit if op.startswith("!") else hit


def forwards(server: Directive, uri: str) -> bool:
    """Whether a POST of ``uri`` (sent in that exact form) reaches the upstream."""
    loc = select_location(server, uri)
    if loc is None or not loc.all("proxy_pass") or loc.all("return"):
        return False
    for cond in loc.all("if"):
        if _if_holds(cond.args, uri) and cond.all("return"):
            return False
    limit = loc.all("limit_except")
    return not limit or "POST" in limit[0].args


@pytest.fixture(scope="module")
def proxy() -> list[Directive]:
    return nginx_parse(PROXY_CONF.read_text())


def proxy_server(conf: list[Directive]) -> Directive:
    (server,) = [d for d in conf if d.name == "server"]
    return server


def proxy_listen_ports(conf: list[Directive]) -> set[int]:
    return {int(d.args[0].rsplit(":", 1)[-1]) for d in proxy_server(conf).all("listen")}


def proxy_upstream(conf: list[Directive]) -> tuple[str, int]:
    (up,) = [d for d in conf if d.name == "upstream"]
    (srv,) = up.all("server")
    host, port = srv.args[0].rsplit(":", 1)
    return host.strip("[]"), int(port)


@pytest.fixture(scope="module")
def superlink_routes() -> list[str]:
    """Every URL path the Flower 1.41 SuperLink serves (its own FastAPI app)."""
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app

    app = create_app()
    paths = {getattr(c, "path", None) or c.route.path for c in iter_route_contexts(app.routes)}
    return sorted(p for p in paths if p)


def test_flower_serves_fleet_and_control_on_one_app(superlink_routes: list[str]) -> None:
    """The premise of the proxy: one port, told apart by path prefix (re-check on upgrades)."""
    from flwr.supernode import fleet_http_client

    fleet = [p for p in superlink_routes if p.startswith(FLEET_PREFIX)]
    control = [p for p in superlink_routes if p.startswith("/v1/control/")]
    assert fleet and control and "/v1/control/register-node" in control
    # Every call a SuperNode makes is under the Fleet prefix.
    called = re.findall(r'path="([^"]+)"', Path(fleet_http_client.__file__).read_text())
    assert called and set(called) <= set(fleet), set(called) - set(fleet)


def test_proxy_forwards_every_fleet_call_and_nothing_else(
    proxy: list[Directive], superlink_routes: list[str]
) -> None:
    server = proxy_server(proxy)
    forwarded = {p for p in superlink_routes if forwards(server, p)}
    fleet = {p for p in superlink_routes if p.startswith(FLEET_PREFIX)}
    assert forwarded == fleet, (
        f"not forwarded: {sorted(fleet - forwarded)}; wrongly forwarded: {sorted(forwarded - fleet)}"
    )
    for uri in (
        "/",
        "/docs",
        "/openapi.json",
        "/health",
        "/v1/control/start-run",
        "/v1/runtime/create-task",
        "/v1/fleet/../control/start-run",
        "/v1/fleet/%2e%2e/control/start-run",
        "/v1/fleet/..%2fcontrol/start-run",
        "/v1/fleet/x/../../control/start-run",
        "/v1/fleet//control/start-run",
        "/v1/fleet/get-run?next=/v1/control/start-run",
        "/v1/fleet/get-run/",
        "/V1/FLEET/get-run",
    ):
        assert not forwards(server, uri), uri


def test_proxy_reencrypts_to_a_loopback_superlink_and_verifies_it(proxy: list[Directive]) -> None:
    host, _port = proxy_upstream(proxy)
    assert host in LOOPBACK
    server = proxy_server(proxy)
    for d in server.all("listen"):
        assert "ssl" in d.args, f"listen {d.args}: sites must get TLS"
    assert server.one("ssl_certificate").args and server.one("ssl_certificate_key").args
    for loc in server.all("location"):
        for pp in loc.all("proxy_pass"):
            assert pp.args[0].startswith("https://"), "re-encrypt to the SuperLink"
            assert loc.one("proxy_ssl_verify").args == ["on"]
            assert loc.one("proxy_ssl_trusted_certificate").args
            assert loc.one("proxy_ssl_name").args[0] in LOOPBACK


# --------------------------------------------------------------------------------------------
# The proxy for real (when nginx is installed): a fake HTTPS SuperLink records what reaches it


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).seen.append(self.path)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_proxy_and_forwards_only_fleet(
    tmp_path: Path, superlink_routes: list[str]
) -> None:
    from orchestrator.processes.credentials import make_test_pki
    from orchestrator.processes.network import free_port

    _Recorder.seen.clear()
    pki = make_test_pki(tmp_path / "certs")
    certs = pki.ca_cert.parent
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "server.pem", certs / "server.key")
    upstream.socket = ctx.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    (link_host, link_port) = proxy_upstream(nginx_parse(PROXY_CONF.read_text()))
    listen = free_port()
    text = PROXY_CONF.read_text().replace("/etc/fedray/certs", str(certs))
    text = text.replace(f"{link_host}:{link_port}", f"127.0.0.1:{upstream.server_port}")
    text = re.sub(r"listen \d+ ssl", f"listen 127.0.0.1:{listen} ssl", text)
    (tmp_path / "fleet.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\n  access_log off;\n"
        f"  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/fleet.conf;\n}}\n"
    )
    nginx = ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
    check = subprocess.run([*nginx, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(nginx, stderr=subprocess.PIPE, text=True)
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                http.client.HTTPSConnection("127.0.0.1", listen, context=client).connect()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"nginx did not start: {proc.communicate()[1]}")
                time.sleep(0.05)

        def call(uri: str, method: str = "POST") -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", listen, context=client, timeout=10)
            conn.request(method, uri, body=b"\x08\x01", headers={"content-type": "x"})
            status = conn.getresponse().status
            conn.close()
            return status

        fleet = [p for p in superlink_routes if p.startswith(FLEET_PREFIX)]
        for uri in fleet:
            assert call(uri) == 200, uri
        assert _Recorder.seen == fleet
        _Recorder.seen.clear()
        refused = [p for p in superlink_routes if not p.startswith(FLEET_PREFIX)]
        crafted = [
            "/v1/fleet/../control/start-run",
            "/v1/fleet/%2e%2e/control/start-run",
            "/v1/fleet/..%2Fcontrol/start-run",
            "/v1/fleet/%2E%2E%2F%2E%2E%2Fv1/control/start-run",
            "//v1/control/start-run",
            "/v1/fleet/get-run/../../control/start-run",
            "/v1/fleet/get-run?x=/v1/control/start-run",
            "/v1/fleet/pull%2Dmessages",
        ]
        for uri in [*refused, *crafted]:
            assert call(uri) in (400, 403, 404), uri
        assert call(fleet[0], method="GET") == 403
        assert _Recorder.seen == [], f"reached the SuperLink: {_Recorder.seen}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.shutdown()


# --------------------------------------------------------------------------------------------
# docker compose


def compose_services(path: Path) -> dict[str, dict]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc["services"], dict) and doc["services"]
    for svc in doc["services"].values():
        assert svc["image"]
    return doc["services"]


def compose_commands(path: Path) -> list[list[str]]:
    # Compose substitutes ${VAR:-default}/${VAR:?msg} before running; use a sample value.
    return [
        [_subst(str(a)) for a in svc["command"]]
        for svc in compose_services(path).values()
        if "command" in svc
    ]


def _subst(arg: str) -> str:
    if arg.startswith("${"):
        return "fl.example.org:9092" if "SERVER" in arg else "site-a"
    return arg


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: str
    target: int


def published_ports(svc: dict) -> list[Published]:
    """Compose ``ports`` in short ("[IP:][HOST:]CONTAINER[/proto]") or long syntax."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append(Published(p.get("host_ip", ""), str(p.get("published", "")), p["target"]))
            continue
        spec = str(p).split("/")[0]
        parts = spec.rsplit(":", 2)
        target = int(parts[-1])
        host_port = parts[-2] if len(parts) >= 2 else ""
        host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
        out.append(Published(host_ip, host_port, target))
    return out


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


def test_server_compose_binds_the_superlink_to_loopback_and_publishes_only_the_proxy(
    proxy: list[Directive],
) -> None:
    services = compose_services(FED / "docker-compose.server.yml")
    links = {
        name: superlink_bind([str(a) for a in svc["command"]])
        for name, svc in services.items()
        if "command" in svc
    }
    links = {k: v for k, v in links.items() if v is not None}
    assert len(links) == 1
    link_svc, (host, port) = next(iter(links.items()))
    assert host in LOOPBACK, f"the SuperLink binds {host}: its Control API would be reachable"
    assert (host, port) == proxy_upstream(proxy)

    proxies = [
        (name, svc)
        for name, svc in services.items()
        if any(
            str(v).split(":")[0].endswith("nginx-fleet.conf")
            and str(v).split(":")[1].startswith("/etc/nginx/")
            for v in svc.get("volumes", [])
        )
    ]
    assert len(proxies) == 1, "a proxy service mounting nginx-fleet.conf"
    (_name, proxy_svc) = proxies[0]
    # Compose resolves relative sources against the compose file's directory.
    (src,) = [str(v).split(":")[0] for v in proxy_svc["volumes"] if "nginx-fleet" in str(v)]
    assert (FED / src).resolve() == PROXY_CONF.resolve()
    assert str(proxy_svc["image"]).startswith("nginx")
    # It shares the SuperLink's network namespace, so it reaches 127.0.0.1 there.
    assert proxy_svc.get("network_mode") == f"service:{link_svc}"

    published = {
        name: published_ports(svc) for name, svc in services.items() if published_ports(svc)
    }
    assert set(published) <= {link_svc}, f"published by {set(published) - {link_svc}}"
    targets = {p.target for p in published.get(link_svc, [])}
    assert targets == proxy_listen_ports(proxy), targets
    assert port not in targets
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", name


def test_site_compose_publishes_nothing() -> None:
    for name, svc in compose_services(FED / "docker-compose.site.yml").items():
        assert not published_ports(svc), name


# --------------------------------------------------------------------------------------------
# systemd


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((FED / name).read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    return unit


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


@dataclass
class Wrapper:
    """``fedray-server-start`` run with a stand-in ``fedray`` that records its arguments."""

    tmp: Path
    calls: list[list[str]] = field(default_factory=list)

    def run(self, env: dict[str, str]) -> list[str]:
        out = self.tmp / f"argv{len(self.calls)}"
        fake = self.tmp / "fedray"
        fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" > {out}\n')
        fake.chmod(0o755)
        subprocess.run(
            ["sh", str(FED / "fedray-server-start")],
            env={"PATH": os.environ["PATH"], **env, "FEDRAY_BIN": str(fake)},
            check=True,
            timeout=30,
        )
        argv = ["fedray", *out.read_bytes().decode().split("\0")[1:-1]]
        self.calls.append(argv)
        return argv


def test_systemd_site_unit_parses_and_command_exists() -> None:
    argv = shlex.split(read_unit("fedray-site.service")["Service"]["ExecStart"])
    assert "--insecure" not in argv
    assert superlink_bind(argv) is None
    check_command(argv)


def test_systemd_server_unit_starts_through_the_wrapper_with_its_env_file() -> None:
    service = read_unit("fedray-server.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert [Path(argv[0]).name] == ["fedray-server-start"] and len(argv) == 1, (
        f"ExecStart must run the shipped wrapper (which reads FEDRAY_RESUME), not {argv}"
    )
    exe = argv[0]
    assert (FED / "fedray-server-start").stat().st_mode & 0o111, "wrapper is not executable"
    env_file = service["EnvironmentFile"].lstrip("-")
    text = (FED / "fedray-server.service").read_text()
    # The install lines in the unit put both files where the unit looks for them.
    assert re.search(rf"fedray-server-start\s+{re.escape(str(Path(exe).parent))}/?\s", text)
    assert re.search(rf"fedray-server\.env\s+{re.escape(env_file)}\s", text)


def test_systemd_server_new_run_and_resume_are_wired(tmp_path: Path) -> None:
    env = read_env_file(FED / "fedray-server.env")
    assert "FEDRAY_RESUME" in env and env["FEDRAY_RESUME"] == "", "new run by default"
    wrapper = Wrapper(tmp_path)

    argv = wrapper.run(env)
    ns = check_command(argv)
    assert argv[1] == "server" and ns is not None and ns.resume is None
    assert ns.args == [env["FEDRAY_JOB"], f"run.dir={env['FEDRAY_RUN_DIR']}"]
    assert "--insecure" not in argv and "--no-site-auth" not in argv
    host, port = superlink_bind(argv) or ("", 0)
    assert host in LOOPBACK, f"the SuperLink binds {host}: its Control API would be reachable"
    assert (host, port) == proxy_upstream(nginx_parse(PROXY_CONF.read_text()))

    run_dir = env["FEDRAY_RUN_DIR"]
    resumed = wrapper.run({**env, "FEDRAY_RESUME": run_dir})
    ns = check_command(resumed)
    assert ns is not None and ns.resume == Path(run_dir)
    assert ns.args == [], "fedray refuses a CONFIG next to --resume"
    assert superlink_bind(resumed) == (host, port)
    # The unit's own instructions name the variable the wrapper consumes.
    assert "FEDRAY_RESUME=" in (FED / "fedray-server.service").read_text()


# --------------------------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> list[dict]:
    docs = [d for d in yaml.safe_load_all((FED / "k8s-superlink.yaml").read_text()) if d]
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    return docs


def _of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_kubernetes_manifests() -> None:
    docs = k8s_docs()
    assert {"Deployment", "Service", "Job", "PersistentVolumeClaim", "NetworkPolicy"} <= {
        d["kind"] for d in docs
    }
    (dep,) = _of_kind(docs, "Deployment")
    spec = dep["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    for svc in _of_kind(docs, "Service"):
        assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]
    (link,) = [c for c in spec["template"]["spec"]["containers"] if c["name"] == "superlink"]
    check_command(link["command"])
    assert "--enable-supernode-auth" in link["command"]
    assert "--insecure" not in link["command"]
    (job,) = _of_kind(docs, "Job")
    (submit,) = job["spec"]["template"]["spec"]["containers"]
    check_command(submit["command"])


def header_commands(path: Path) -> list[str]:
    """The commands a file's leading comment shows (``\\`` continuations joined)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return [" ".join(c.split()) for c in "\n".join(lines).replace("\\\n", " ").splitlines()]


def _container_port(containers: list[dict], target: int | str) -> tuple[dict, int]:
    for c in containers:
        for p in c.get("ports", []):
            if target in (p.get("name"), p["containerPort"]):
                return c, p["containerPort"]
    raise AssertionError(f"no container port {target!r}")


def test_kubernetes_exposes_only_the_fleet_proxy(proxy: list[Directive]) -> None:
    docs = k8s_docs()
    (dep,) = _of_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork")
    containers = pod["containers"]
    for c in containers:
        for p in c.get("ports", []):
            assert "hostPort" not in p, f"{c['name']} publishes a hostPort"
    (link,) = [
        c
        for c in containers
        if c.get("command") and Path(c["command"][0]).name == "flower-superlink"
    ]
    _host, link_port = superlink_bind(link["command"]) or ("", 0)
    assert link_port == proxy_upstream(proxy)[1]

    outside = []
    for svc in _of_kind(docs, "Service"):
        kind = svc["spec"].get("type", "ClusterIP")
        for sp in svc["spec"]["ports"]:
            c, port = _container_port(containers, sp.get("targetPort", sp["port"]))
            if c is link:
                assert port == link_port
                assert kind == "ClusterIP", f"Service {svc['metadata']['name']} is {kind}"
            elif kind != "ClusterIP":
                outside.append((c, port))
    assert outside, "sites need a Service that reaches the proxy"
    for c, port in outside:
        assert c["image"].split("/")[-1].startswith("nginx"), c["name"]
        assert port in proxy_listen_ports(proxy)
        # The proxy's config is nginx-fleet.conf, delivered as a ConfigMap (see the header).
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/nginx/conf.d"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        cm = vol["configMap"]["name"]
        assert (
            f"kubectl create configmap {cm} "
            "--from-file=default.conf=cluster-configs/federated/nginx-fleet.conf"
        ) in header_commands(FED / "k8s-superlink.yaml")


def test_kubernetes_control_port_reachable_only_by_the_submit_job() -> None:
    docs = k8s_docs()
    (dep,) = _of_kind(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (link,) = [
        c
        for c in dep["spec"]["template"]["spec"]["containers"]
        if c.get("command") and Path(c["command"][0]).name == "flower-superlink"
    ]
    _host, link_port = superlink_bind(link["command"]) or ("", 0)
    (policy,) = _of_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == pod_labels
    assert "Ingress" in policy["spec"]["policyTypes"]
    (job,) = _of_kind(docs, "Job")
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    rules_for_link = [
        r
        for r in policy["spec"]["ingress"]
        if not r.get("ports") or any(p["port"] == link_port for p in r["ports"])
    ]
    assert rules_for_link
    for rule in rules_for_link:
        peers = rule.get("from")
        assert peers, "the SuperLink port is open to every pod"
        for peer in peers:
            assert set(peer) == {"podSelector"}, peer
            assert peer["podSelector"]["matchLabels"].items() <= job_labels.items()

    # The Job submits through the ClusterIP Service, whose name the certificate carries.
    (submit,) = job["spec"]["template"]["spec"]["containers"]
    ns = check_command(submit["command"])
    assert ns is not None and ns.superlink
    svc_name, svc_port = ns.superlink.rsplit(":", 1)
    (svc,) = [s for s in _of_kind(docs, "Service") if s["metadata"]["name"] == svc_name]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert int(svc_port) in {p["port"] for p in svc["spec"]["ports"]}
    (certs,) = [c for c in header_commands(FED / "k8s-superlink.yaml") if "fedray certs" in c]
    assert f"--host {svc_name}" in certs, "the server certificate must name the Service"


# --------------------------------------------------------------------------------------------
# All files


def test_no_file_turns_on_flowers_legacy_grpc_apis() -> None:
    """FLWR_INTERNAL_GRPC_{CONTROL,FLEET}_API=1 would start extra gRPC servers on 0.0.0.0."""
    for path in FED.iterdir():
        assert "FLWR_INTERNAL_GRPC" not in path.read_text(), path.name
        assert "--control-api-address" not in path.read_text(), path.name


def test_docs_show_each_files_command() -> None:
    docs = (ROOT / "docs" / "sites.md").read_text()
    for name in (
        "docker-compose.server.yml",
        "docker-compose.site.yml",
        "fedray-server.service",
        "fedray-site.service",
        "k8s-superlink.yaml",
        "nginx-fleet.conf",
        "fedray-server-start",
        "fedray-server.env",
    ):
        assert f"cluster-configs/federated/{name}" in docs, name


def test_docs_say_how_to_reach_the_control_api() -> None:
    docs = (ROOT / "docs" / "sites.md").read_text()
    section = docs.split("## Deployment files and network exposure", 1)[1].split("\n## ", 1)[0]
    for needle in ("/v1/fleet/", "/v1/control/", "ssh ", "kubectl port-forward", "FEDRAY_RESUME"):
        assert needle in section, needle


def test_dockerfile_disables_runtime_installs() -> None:
    text = (FED / "Dockerfile").read_text()
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
