"""Real-site plumbing without a federation: certificates, site keys, the exact Flower commands
(parsed by Flower's own argument parsers), the Flower CLI files, the CLI, process stopping."""

from __future__ import annotations

import ipaddress
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from orchestrator.commands import certs as certs_cmd
from orchestrator.commands import server as server_cmd
from orchestrator.commands import site as site_cmd
from orchestrator.processes import credentials, launch, site
from orchestrator.processes.managed import (
    ManagedProcess,
    ProcessFailed,
    running_processes,
    wait_until,
)
from orchestrator.processes.network import free_port, port_free

# ---- certificates and keys ---------------------------------------------------------------


def test_test_pki_server_cert_has_sans_and_is_signed_by_ca(tmp_path: Path) -> None:
    pki = credentials.make_test_pki(tmp_path, hosts=["fl.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.5"),
    }
    srv.verify_directly_issued_by(ca)  # raises if not signed by the CA
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_test_pki_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    credentials.make_test_pki(tmp_path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        credentials.make_test_pki(tmp_path)
    credentials.make_test_pki(tmp_path, overwrite=True)


def test_site_key_is_what_flower_reads(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    key = credentials.make_site_key(tmp_path / "keys" / "hospital-a")
    assert key.public == tmp_path / "keys" / "hospital-a.pub"
    assert stat.S_IMODE(key.private.stat().st_mode) == 0o600
    # SuperNode side: --auth-supernode-private-key is loaded like this (flower_supernode.py)
    private = load_ssh_private_key(key.private.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    # Server side: `flwr supernode register KEY.pub` accepts it
    assert try_load_public_key(key.public)
    assert credentials.load_site_public_key(key.public).public_numbers() == (
        private.public_key().public_numbers()
    )
    with pytest.raises(FileExistsError):
        credentials.make_site_key(key.private)
    with pytest.raises(ValueError, match=r"\.pub"):
        credentials.make_site_key(tmp_path / "x.pub")


def test_public_key_check_names_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "rsa.pub"
    bad.write_text("not a key\n")
    with pytest.raises(ValueError, match="fedray site-key"):
        credentials.load_site_public_key(bad)
    with pytest.raises(FileNotFoundError):
        credentials.load_site_public_key(tmp_path / "missing.pub")


# ---- commands, parsed by Flower's own parsers ----------------------------------------------


def test_node_config_round_trips_through_flower_parser() -> None:
    from flwr.common.config import parse_config_args

    cfg = {
        "data-path": "/data/site a/x.csv",
        "site-name": "bank-a",
        "num-threads": 2,
        "weird": "C:\\data\\it's.csv",
    }
    text = launch.format_node_config(cfg)
    assert parse_config_args([text]) == cfg
    with pytest.raises(ValueError, match="key"):
        launch.format_node_config({"bad key": 1})


def test_superlink_command_parses_with_flower(tmp_path: Path) -> None:
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    tls = launch.ServerTLS(tmp_path / "ca.pem", tmp_path / "s.pem", tmp_path / "s.key")
    argv = launch.superlink_argv("0.0.0.0", 9092, tls, True, database=tmp_path / "db")
    assert argv[0] == "flower-superlink"
    ns = _parse_args_run_superlink().parse_args(argv[1:])
    assert ns.enable_supernode_auth and not ns.insecure
    assert (ns.ssl_certfile, ns.ssl_keyfile, ns.ssl_ca_certfile) == tuple(
        str(p) for p in (tls.server_cert, tls.server_key, tls.ca_cert)
    )
    assert ns.port == 9092 and ns.host == "0.0.0.0"
    assert ns.runtime_dependency_install is False
    insecure = launch.superlink_argv("127.0.0.1", 9092, None, False)
    assert _parse_args_run_superlink().parse_args(insecure[1:]).insecure
    with pytest.raises(ValueError, match="needs TLS"):
        launch.superlink_argv("127.0.0.1", 9092, None, True)


def test_site_command_parses_with_flower(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    data = tmp_path / "a.csv"
    data.write_text("text,label\nhi,positive\n")
    key = credentials.make_site_key(tmp_path / "a")
    opts = site.SiteOptions(
        server="fl.example.org:9092",
        data=data,
        name="bank-a",
        key=key.private,
        root_cert=tmp_path / "ca.pem",
        port=9111,
    )
    argv = opts.argv()
    assert argv[0] == "flower-supernode"
    ns = _parse_args_run_supernode().parse_args(argv[1:])
    assert ns.superlink == "fl.example.org:9092" and not ns.insecure
    assert ns.root_certificates == str(tmp_path / "ca.pem")
    assert ns.auth_supernode_private_key == str(key.private)
    assert ns.port == 9111
    assert parse_config_args([ns.node_config]) == {
        "data-path": str(data),
        "site-name": "bank-a",
    }
    with pytest.raises(ValueError, match="needs TLS"):
        launch.supernode_argv("h:1", {}, root_cert=None, insecure=True, key=key.private, port=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("fl.example.org", ("fl.example.org", launch.DEFAULT_PORT)),
        ("[::1]:8000", ("::1", 8000)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert launch.parse_address(text) == expected


@pytest.mark.parametrize("bad", ["", "a b:1", "host:0", "host:99999", "http://h:1"])
def test_parse_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        launch.parse_address(bad)


# ---- files the Flower CLI reads --------------------------------------------------------------


def test_generated_app_dir_is_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.cli.config_utils import load_and_validate

    app = launch.write_app_dir(tmp_path / "app")
    config, _ = load_and_validate(app / "pyproject.toml", check_module=False)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": launch.SERVERAPP, "clientapp": launch.CLIENTAPP}
    assert set(config["tool"]["flwr"]["app"]["config"]) >= {"config-yaml", "run-dir"}


def test_flwr_config_names_our_superlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    launch.write_flwr_config(tmp_path, "127.0.0.1:9999", tmp_path / "ca.pem", insecure=False)
    conn = read_superlink_connection()
    assert conn.name == launch.CONNECTION
    assert conn.address == "127.0.0.1:9999"
    assert conn.root_certificates == str(tmp_path / "ca.pem")
    launch.write_flwr_config(tmp_path, "127.0.0.1:9999", None, insecure=True)
    assert read_superlink_connection().insecure


def test_run_config_carries_the_job_to_the_server_app(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config, to_yaml
    from orchestrator.federated.server_app import job_from_run_config

    job = load_config(FederatedJob, None, ["federation.num_rounds=7"], "simulate-demo")
    path = launch.write_run_config(tmp_path / "rc.toml", to_yaml(job), str(tmp_path / "run"))
    run_config = parse_config_args([str(path)])  # what `flwr run --run-config FILE` sends
    got, run_dir = job_from_run_config(run_config)
    assert got == job
    assert run_dir == tmp_path / "run"


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_registers_site_commands() -> None:
    from orchestrator.cli import OTHER_COMMANDS

    assert {"server", "site", "certs", "site-key"} <= set(OTHER_COMMANDS)
    assert OTHER_COMMANDS["server"][1]() is server_cmd.server_main


def test_server_dry_run_prints_tls_and_auth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = credentials.make_site_key(tmp_path / "keys" / "a")
    rc = server_cmd.server_main(
        [
            "federation.num_rounds=2",
            f"run.dir={tmp_path / 'run'}",
            "--dry-run",
            "--site-keys",
            str(tmp_path / "keys"),
            "--port",
            "9555",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "--enable-supernode-auth" in out and "--insecure" not in out
    assert f"flwr supernode register {key.public}" in out
    assert "num_rounds: 2" in out


def test_server_rejects_insecure_with_site_keys(tmp_path: Path) -> None:
    credentials.make_site_key(tmp_path / "a")
    rc = server_cmd.server_main(["--insecure", "--site-keys", str(tmp_path / "a.pub")])
    assert rc == 2


def test_server_resume_needs_a_run_dir(tmp_path: Path) -> None:
    assert server_cmd.server_main(["--resume", str(tmp_path)]) == 2


def test_server_bad_config_exits_2() -> None:
    from orchestrator.cli import main

    assert main(["server", "federation.min_sites=0", "--dry-run"]) == 2


def test_site_rejects_missing_data_and_insecure_key(tmp_path: Path) -> None:
    assert site_cmd.site_main(["--server", "h:1", "--data", str(tmp_path / "no.csv")]) == 2
    data = tmp_path / "a.csv"
    data.write_text("text,label\n")
    key = credentials.make_site_key(tmp_path / "k")
    argv = ["--server", "h:1", "--data", str(data), "--insecure", "--key", str(key.private)]
    assert site_cmd.site_main(argv) == 2


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_site_port_in_use_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "a.csv"
    data.write_text("text,label\nhi,positive\n")
    with _listening() as s:
        port = s.getsockname()[1]
        argv = ["--server", "127.0.0.1:1", "--data", str(data), "--insecure", "--port", str(port)]
        assert site_cmd.site_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0, err  # one line, no traceback
    assert f"--port {port}" in err and "already in use" in err and "Leave --port out" in err
    assert not (tmp_path / "logs").exists() and not running_processes()


def test_site_without_port_gets_its_own_free_port(tmp_path: Path) -> None:
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    data = tmp_path / "a.csv"
    data.write_text("text,label\nhi,positive\n")
    opts = site_cmd.site_options(
        site_cmd.site_parser().parse_args(["--server", "h:1", "--data", str(data), "--insecure"])
    )
    assert opts.port is None
    ports = []
    for i in range(2):  # two sites on one machine; nothing is started
        proc = site.site_process(opts, tmp_path / f"{i}.log", tmp_path / str(i))
        ns = _parse_args_run_supernode().parse_args(proc.argv[1:])
        assert ns.host == "127.0.0.1"
        ports.append(ns.port)
    assert all(port_free("127.0.0.1", p) for p in ports)
    assert ports[0] != ports[1]


def test_server_port_in_use_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with _listening() as s:
        port = s.getsockname()[1]
        rc = server_cmd.server_main(
            [f"run.dir={tmp_path / 'run'}", "--insecure", "--port", str(port)]
        )
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--port {port}: port {port} on 127.0.0.1 is already in use" in err
    assert err.strip().count("\n") == 0, err
    assert not (tmp_path / "run").exists() and not running_processes()


def test_server_checks_model_path_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        f"model.path={tmp_path / 'no-model'}",
        f"run.dir={tmp_path / 'run'}",
        "--insecure",
        "--port",
        str(free_port()),
    ]
    assert server_cmd.server_main(argv) == 2
    err = capsys.readouterr().err
    assert "config error: model.path" in err and "no config.json" in err
    assert not (tmp_path / "run").exists() and not running_processes()


def test_check_inputs_names_the_missing_tokenizer(tmp_path: Path) -> None:
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import ConfigError, load_config
    from orchestrator.federated.setup import check_inputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    overrides = [f"model.path={model}", "data.tokenizer.path=null"]  # no bundled tokenizer
    job = load_config(FederatedJob, None, overrides, "simulate-demo")
    with pytest.raises(ConfigError, match="holds no tokenizer") as e:
        check_inputs(job)
    assert e.value.key == "data.tokenizer.path"


def _run_dir_with_config(tmp_path: Path, *overrides: str) -> Path:
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config, to_yaml

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = load_config(FederatedJob, None, ["federation.num_rounds=2", *overrides], "simulate-demo")
    (run_dir / "config.yaml").write_text(to_yaml(job))
    return run_dir


def test_server_resume_merges_overrides_that_may_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.processes import server_session

    run_dir = _run_dir_with_config(tmp_path)
    seen = {}

    def fake_serve(job, opts, run_dir, resume=False, out=None):  # type: ignore[no-untyped-def]
        seen.update(job=job, run_dir=run_dir, resume=resume)
        return server_session.ServerRun(run_dir, 1, "finished:completed", [])

    monkeypatch.setattr(server_session, "serve", fake_serve)
    argv = [
        "--resume",
        str(run_dir),
        "federation.num_rounds=10",
        "federation.round_timeout_s=30",
        "--insecure",
        "--port",
        str(free_port()),
    ]
    assert server_cmd.server_main(argv) == 0
    assert seen["resume"] and seen["run_dir"] == run_dir
    assert seen["job"].federation.num_rounds == 10
    assert seen["job"].federation.round_timeout_s == 30
    assert seen["job"].strategy.name == "fedavg"  # the rest from RUN_DIR/config.yaml


def test_server_resume_refuses_changed_keys_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.processes import server_session

    run_dir = _run_dir_with_config(tmp_path)
    monkeypatch.setattr(server_session, "serve", lambda *a, **k: pytest.fail("started"))
    argv = ["--resume", str(run_dir), "federation.num_rounds=10", "strategy.name=fedadam"]
    assert server_cmd.server_main([*argv, "train.lr=0.5", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert "strategy.name: 'fedavg' -> 'fedadam'" in err and "train.lr" in err
    assert "federation.num_rounds" not in err
    # --dry-run and --print-config check the same way; a CONFIG file is refused.
    assert server_cmd.server_main([*argv, "--dry-run"]) == 2
    assert server_cmd.server_main(["--resume", str(run_dir), "job.yaml"]) == 2
    assert "drop 'job.yaml'" in capsys.readouterr().err


def test_server_resume_print_config_shows_the_merged_job(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = _run_dir_with_config(tmp_path)
    argv = ["--resume", str(run_dir), "federation.num_rounds=7", "--print-config"]
    assert server_cmd.server_main(argv) == 0
    assert "num_rounds: 7" in capsys.readouterr().out


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_non_loopback_host_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, host, warned
) -> None:
    from orchestrator.processes import server_session

    class FakeSuperLink:  # what ServerSession.open uses of SuperLinkProcess; starts nothing
        def __init__(self, opts, state_dir, tls, **kw):  # type: ignore[no-untyped-def]
            self.opts, self.tls, self.env = opts, tls, {"FLWR_HOME": str(state_dir)}
            self.address = f"127.0.0.1:{opts.port}"
            self.proc = ManagedProcess("superlink", ["true"], state_dir / "superlink.log")

        def start(self):  # type: ignore[no-untyped-def]
            return self

        def stop(self) -> None:
            pass

    monkeypatch.setattr(server_session, "SuperLinkProcess", FakeSuperLink)
    opts = server_session.ServerOptions(host=host, port=9093, insecure=True, site_auth=False)
    session = server_session.ServerSession(opts, tmp_path / "s", tmp_path / "tls")
    with caplog.at_level("WARNING", logger=server_session.__name__), session:
        session.open()
    hits = [r.getMessage() for r in caplog.records if "not a loopback address" in r.getMessage()]
    assert len(hits) == (1 if warned else 0), hits
    if warned:
        assert "Control API" in hits[0] and "nginx-fleet.conf" in hits[0]


def test_server_dry_run_site_example_gets_a_free_port(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert server_cmd.server_main([f"run.dir={tmp_path / 'r'}", "--dry-run", "--insecure"]) == 0
    assert '"<free port>"' in capsys.readouterr().out


def test_certs_and_site_key_commands(tmp_path: Path) -> None:
    assert certs_cmd.certs_main([str(tmp_path / "c"), "--host", "fl.example.org"]) == 0
    assert (tmp_path / "c" / "server.pem").is_file()
    assert certs_cmd.certs_main([str(tmp_path / "c")]) == 2  # would overwrite
    assert certs_cmd.site_key_main([str(tmp_path / "k" / "a")]) == 0
    assert certs_cmd.site_key_main([str(tmp_path / "k" / "a")]) == 2


# ---- process management ------------------------------------------------------------------------


@pytest.mark.integration  # a real process tree
def test_stop_terminates_process_and_its_children(tmp_path: Path) -> None:
    # A parent that starts a child which ignores SIGTERM: both must be gone after stop().
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("child up", flush=True); time.sleep(600)\'])\n'
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    p = ManagedProcess("tree", [sys.executable, "-c", script], tmp_path / "tree.log").start()
    try:
        wait_until(lambda: "child up" in p.log_tail(), 20, "child start", watch=[p])
        child_pid = int(p.log_tail().split("child ")[1].split()[0])
        t0 = time.monotonic()
        p.stop(timeout=2)
        assert not p.alive()
        assert time.monotonic() - t0 < 15
        assert _gone(child_pid)
    finally:
        p.stop(timeout=1)


def _gone(pid: int) -> bool:
    """Exited (a zombie left for a non-reaping init in containers counts as exited)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_wait_until_reports_an_exited_process(tmp_path: Path) -> None:
    p = ManagedProcess(
        "dies",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        tmp_path / "d.log",
    ).start()
    try:
        with pytest.raises(ProcessFailed, match="boom"):
            wait_until(lambda: False, 20, "never", watch=[p])
    finally:
        p.stop()


def test_missing_executable_says_how_to_fix(tmp_path: Path) -> None:
    p = ManagedProcess("nope", ["fedray-no-such-binary"], tmp_path / "n.log")
    with pytest.raises(ProcessFailed, match="not found"):
        p.start()


def test_console_scripts_exist() -> None:
    bin_dir = Path(sys.executable).parent
    for name in ("flower-superlink", "flower-supernode", "flwr", "flwr-clientapp", "fedray"):
        assert (bin_dir / name).exists(), name
    out = subprocess.run(
        [str(bin_dir / "fedray"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "server" in out and "site-key" in out


def test_error_replies_for_lost_sites_get_the_sites_name():
    from orchestrator.federated.rounds import attribute_lost_replies
    from strategies.replies import SiteReport

    reports = [
        SiteReport(11, "s0", True, {"accuracy": 0.5}),
        SiteReport(1, "1", False, reason="Node Unavailable"),  # the SuperLink answering for 33
    ]
    attribute_lost_replies(reports, sent=[11, 22, 33][::2], site_names={33: "s2"})
    assert [(r.node_id, r.site, r.accepted) for r in reports] == [
        (11, "s0", True),
        (33, "s2", False),
    ]
    # Ambiguous (two sites silent, one foreign reply): left as it is.
    reports = [SiteReport(1, "1", False)]
    attribute_lost_replies(reports, sent=[22, 33], site_names={})
    assert reports[0].site == "1"


# ---- fedray simulate: the simulation SuperLink and flwr run --federation-config ------------


def test_simulation_settings_reach_flower_as_a_simulation_config() -> None:
    from flwr.cli.run.run import _parse_federation_config_overrides
    from flwr.cli.typing import SuperLinkConnection
    from flwr.simulation.app import _run_simulation_settings

    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config
    from orchestrator.federated.simulate import federation_config

    job = load_config(
        FederatedJob,
        None,
        ["federation.num_sites=5", "federation.num_cpus=3", "federation.gpus_per_site=0.25"],
        "simulate-demo",
    )
    argv = launch.submit_argv(Path("app"), Path("rc.toml"), federation_config(job))
    text = argv[argv.index("--federation-config") + 1]
    assert argv[-1] == "--stream"
    # What `flwr run` sends, then what `flwr-simulation` makes of it.
    sim = _parse_federation_config_overrides(
        [text], SuperLinkConnection(name="x", address="127.0.0.1:1", insecure=True)
    )
    num, backend, backend_config, _, _ = _run_simulation_settings(sim)
    assert (num, backend) == (5, "ray")
    assert backend_config == {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.25},
        "init_args": {"num_cpus": 3},
    }


def test_fractional_cpus_per_site_is_a_config_error() -> None:
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import ConfigError, load_config
    from orchestrator.federated.simulate import federation_config

    job = load_config(FederatedJob, None, ["federation.cpus_per_site=0.5"], "simulate-demo")
    with pytest.raises(ConfigError, match="whole CPUs") as e:
        federation_config(job)
    assert e.value.key == "federation.cpus_per_site"


def test_simulation_superlink_command_parses_with_flower() -> None:
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    argv = launch.superlink_argv("127.0.0.1", 40123, None, False, simulation=True)
    ns = _parse_args_run_superlink().parse_args(argv[1:])
    assert ns.simulation and ns.insecure and ns.port == 40123 and ns.host == "127.0.0.1"
    assert ns.runtime_dependency_install is False


def test_simulate_dry_run_shows_the_supported_path(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from orchestrator.cli import main

    rc = main(["simulate", "federation.num_sites=3", f"run.dir={tmp_path / 'run'}", "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "flower-superlink --simulation" in out and "num-supernodes=3" in out
    assert "run_simulation" not in out
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
