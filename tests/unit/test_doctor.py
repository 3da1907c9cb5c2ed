"""fedray doctor: one OK/WARN/FAIL line per check, exit 1 on a FAIL, every probe bounded in time.

No Ray is started: an unreachable cluster is a free loopback port, a "cluster" that is not a Ray
GCS is a plain TCP listener; certificates come from the test PKI helpers plus one made expired
here with cryptography."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.commands.doctor import main
from orchestrator.doctor import (
    check_certs,
    check_disk,
    check_gpus,
    check_port,
    check_ray,
    check_versions,
)
from orchestrator.doctor.ray_cluster import (
    format_resources,
    parse_cluster_status,
    proto_string,
    resolve_ray_address,
)
from orchestrator.processes import launch
from orchestrator.processes.credentials import make_test_pki
from orchestrator.processes.network import free_port

NOW = datetime.datetime.now(datetime.timezone.utc)


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.strip()]


# ---- the whole command --------------------------------------------------------------------------


def test_doctor_passes_here_with_no_flags(capsys, monkeypatch):
    if check_port(launch.DEFAULT_PORT).status == "FAIL":
        # Another process on this shared machine (e.g. an integration test's SuperLink) holds
        # the default port right now; that is the port check's business, tested below.
        monkeypatch.setattr(launch, "DEFAULT_PORT", free_port())
    t0 = time.monotonic()
    rc = main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert time.monotonic() - t0 < 30
    got = lines(out)
    assert all(ln.split()[0] in ("OK", "WARN", "doctor:") for ln in got), out
    for name in ("torch:", "ray:", "flwr:", "deepspeed:", "transformers:", "cuda:"):
        assert any(ln.split()[1] == name for ln in got if len(ln.split()) > 1), (name, out)
    assert "disk run.root" in out and "disk data.cache_dir" in out and "port " in out
    assert all("-> fix:" in ln for ln in got if ln.startswith("WARN")), out


def test_unreachable_address_fails_fast_naming_it(capsys):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    rc = main(["--address", f"127.0.0.1:{port}"])
    elapsed = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 1
    assert elapsed < 10
    (fail,) = [ln for ln in lines(out) if ln.startswith("FAIL")]
    assert f"127.0.0.1:{port}" in fail and "not reachable" in fail and "-> fix:" in fail


def test_an_open_port_that_is_not_a_ray_gcs_fails_within_the_timeout():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        conns = []
        stop = threading.Event()

        def accept() -> None:  # accepts and never speaks (a wrong service, a stuck proxy)
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    conns.append(srv.accept()[0])
                except OSError:
                    continue

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        try:
            t0 = time.monotonic()
            checks = check_ray(f"127.0.0.1:{port}", timeout=0.3)
            assert time.monotonic() - t0 < 5
        finally:
            stop.set()
            t.join()
            for c in conns:
                c.close()
    (c,) = checks
    assert c.status == "FAIL" and "not a Ray GCS" in c.detail and f"127.0.0.1:{port}" in c.detail


def test_no_address_is_ok_and_says_so():
    (c,) = check_ray(None)
    assert c.status == "OK" and "embedded Ray" in c.detail


def test_ray_addresses_resolve_to_what_is_probed(monkeypatch):
    assert resolve_ray_address("10.0.0.5") == ("gcs", "10.0.0.5", 6379, "http://10.0.0.5:8265")
    assert resolve_ray_address("head:6380")[:3] == ("gcs", "head", 6380)
    assert resolve_ray_address("ray://head")[:3] == ("client", "head", 10001)
    assert resolve_ray_address("http://head:8266/") == (
        "dashboard",
        "head",
        8266,
        "http://head:8266",
    )
    monkeypatch.setenv("RAY_ADDRESS", "h:1234")
    assert resolve_ray_address("auto")[:3] == ("gcs", "h", 1234)


def test_resources_from_the_dashboard_cluster_status():
    status = {
        "data": {
            "clusterStatus": {
                "autoscalerReport": {"activeNodes": {"a": 1}, "idleNodes": {"b": 2}},
                "loadMetricsReport": {
                    "usage": {"CPU": [2.0, 48.0], "GPU": [1.0, 8.0], "node:10.0.0.5": [0, 1]}
                },
            }
        }
    }
    nodes, res = parse_cluster_status(status)
    assert nodes == 3 and res == {"CPU": (2.0, 48.0), "GPU": (1.0, 8.0)}
    assert format_resources(nodes, res) == "3 node(s), CPU 2/48 used, GPU 1/8 used"
    assert parse_cluster_status({"data": {}}) is None


def test_gcs_check_alive_reply_carries_the_ray_version():
    # CheckAliveReply{status: {}, ray_version: "2.55.1"} as a Ray 2.55 GCS sends it.
    assert proto_string(b"\n\x00\x12\x062.55.1", 2) == "2.55.1"
    assert proto_string(b"\x08\x01", 2) is None
    assert proto_string(b"\x12\x09abc", 2) is None  # truncated


# ---- certificates -------------------------------------------------------------------------------


def _expired_server_cert(pki_dir: Path) -> None:
    """Replace server.pem with one the same CA signed that expired yesterday."""
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=30))
        .not_valid_after(NOW - datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    (pki_dir / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_expired_certificate_fails_naming_the_file(tmp_path, capsys):
    make_test_pki(tmp_path / "certs")
    _expired_server_cert(tmp_path / "certs")
    t0 = time.monotonic()
    rc = main(["--certs", str(tmp_path / "certs"), "--port", str(free_port())])
    out = capsys.readouterr().out
    assert rc == 1 and time.monotonic() - t0 < 30
    (fail,) = [ln for ln in lines(out) if ln.startswith("FAIL")]
    assert "server.pem" in fail and "expired" in fail and "fedray certs" in fail
    assert "OK    server.pem issuer: signed by ca.pem" in out


def test_good_certificates_names_and_expiry_warning(tmp_path):
    pki = make_test_pki(tmp_path, hosts=["fl.example.org"], days=365)
    checks = check_certs(tmp_path, hosts=["fl.example.org"])
    assert all(c.status == "OK" for c in checks), [c.line() for c in checks]
    names = next(c for c in checks if c.name == "server.pem names")
    assert "fl.example.org" in names.detail and "127.0.0.1" in names.detail
    soon = check_certs(tmp_path, now=NOW + datetime.timedelta(days=350))
    assert statuses(soon)["server.pem"] == "WARN" and statuses(soon)["ca.pem"] == "WARN"
    late = check_certs(tmp_path, now=NOW + datetime.timedelta(days=400))
    assert statuses(late)["server.pem"] == "FAIL"
    # A name sites dial that the certificate lacks.
    other = check_certs(tmp_path, hosts=["other.example.org"])
    assert any(c.status == "FAIL" and "other.example.org" in c.detail for c in other)
    # A private key others can read.
    pki.server_key.chmod(0o644)
    assert statuses(check_certs(tmp_path))["server.key"] == "WARN"


def test_server_certificate_from_another_ca_fails(tmp_path):
    make_test_pki(tmp_path / "a")
    make_test_pki(tmp_path / "b")
    (tmp_path / "a" / "ca.pem").write_bytes((tmp_path / "b" / "ca.pem").read_bytes())
    assert statuses(check_certs(tmp_path / "a"))["server.pem issuer"] == "FAIL"


def test_missing_and_garbled_certificate_files(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    got = check_certs(tmp_path)
    assert statuses(got) == {"ca.pem": "FAIL", "server.pem": "FAIL", "server.key": "FAIL"}
    assert statuses(check_certs(tmp_path / "nope")) == {"certs": "FAIL"}


# ---- versions, disk, ports -----------------------------------------------------------------------


def test_versions_against_pins():
    requires = [
        "torch==2.13.0",
        "ray[default,train]==2.55.1",
        "flwr[simulation]==1.41.0",
        "deepspeed==0.19.8",
        "transformers==5.23.0",
        "numpy<3,>=1.26",
        'pytest==9.2.0; extra == "test"',
    ]
    have = {
        "torch": "2.13.0+cu128",  # a local build label satisfies the pin
        "ray": "2.54.0",
        "flwr": "1.41.0",
        "deepspeed": None,
        "transformers": "5.23.0",
        "numpy": "2.1.0",
    }
    checks = check_versions(requires, installed=have.get, pyproject=Path("/nonexistent"))
    by = {c.name: c for c in checks}
    assert by["torch"].status == "OK" and by["flwr"].status == "OK"
    assert by["ray"].status == "FAIL" and "2.54.0" in by["ray"].detail
    assert by["ray"].fix == "pip install 'ray[default,train]==2.55.1'"
    assert by["deepspeed"].status == "FAIL" and "not installed" in by["deepspeed"].detail
    assert by["other dependencies"].status == "OK"  # pytest is an extra: not checked
    have["numpy"] = "3.0.0"
    by = {c.name: c for c in check_versions(requires, have.get, Path("/nonexistent"))}
    assert (
        by["other dependencies"].status == "FAIL"
        and "numpy 3.0.0" in by["other dependencies"].detail
    )


def test_source_pyproject_newer_than_installed_metadata_warns(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["torch==2.13.0", "matplotlib>=3.8,<4"]\n')
    have = {"torch": "2.13.0", "matplotlib": None}
    by = {c.name: c for c in check_versions(["torch==2.13.0"], have.get, pyproject)}
    assert by["fedray metadata"].status == "WARN" and "matplotlib" in by["fedray metadata"].detail
    assert by["other dependencies"].status == "FAIL"  # the new dependency is not installed


def test_disk_thresholds_and_directories_not_created_yet(tmp_path):
    (ok,) = check_disk({"runs": tmp_path / "not" / "yet"})
    assert ok.status == "OK" and str(tmp_path) in ok.detail
    (warn,) = check_disk({"runs": tmp_path}, warn_gb=1e9, fail_gb=0)
    assert warn.status == "WARN" and warn.fix
    (fail,) = check_disk({"runs": tmp_path}, warn_gb=1e9, fail_gb=1e9)
    assert fail.status == "FAIL" and "GiB free" in fail.detail


def test_port_in_use_fails_and_a_free_one_is_ok():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = check_port(port)
    assert busy.status == "FAIL" and "in use" in busy.detail and "--port" in busy.fix
    assert check_port(free_port()).status == "OK"
    assert check_port(70000).status == "FAIL"


def test_gpu_check_never_fails_on_a_cpu_machine():
    checks = check_gpus()
    assert checks and all(c.status in ("OK", "WARN") for c in checks)


class _FakeCuda:
    """torch.cuda as a 2-GPU machine shows it (only what check_gpus asks)."""

    class nccl:  # mirrors torch.cuda.nccl
        @staticmethod
        def version() -> tuple[int, int, int]:
            return (2, 27, 3)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 2

    @staticmethod
    def get_device_properties(i: int):
        from types import SimpleNamespace

        return SimpleNamespace(
            name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0
        )


def test_gpu_machine_lists_gpus_and_nccl():
    from types import SimpleNamespace

    fake = SimpleNamespace(
        __version__="2.13.0+cu128", version=SimpleNamespace(cuda="12.8"), cuda=_FakeCuda
    )
    cuda, nccl = check_gpus(fake)
    assert cuda.status == "OK" and "CUDA 12.8, 2 GPU(s)" in cuda.detail
    assert "1: NVIDIA H100 80GB HBM3 (80 GiB, sm_90)" in cuda.detail
    assert (nccl.status, nccl.detail) == ("OK", "2.27.3")
