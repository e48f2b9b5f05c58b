"""The local server is safe by default (issue 14 point 6): loopback unless --host says otherwise,
HandleReloadConfigRequest refused unless allowed and then confined to the start-up base paths,
and TLS for gRPC through TF Serving's --ssl_config_file (tested with the project's own client)."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import grpc
import pytest
from servertools import free_port, start_server
from testconfig import MODEL

from serving.config import ConfigError
from serving.errors import ServingError
from serving.flags import parse_flags

# ---------------------------------------------------------------- loopback by default


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port or len(address) != width:
                continue
            raw = bytes.fromhex(address)  # each 32-bit word is in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC: ::ffff:127.0.0.1
    return found


def test_host_flag_defaults_to_loopback():
    assert parse_flags([]).host == "127.0.0.1"
    assert parse_flags(["--host=0.0.0.0"]).host == "0.0.0.0"


@pytest.fixture(scope="module")
def default_server(served_base):
    """Started with no --host and no --allow_reload_config_requests."""
    srv = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            f"--model_name={MODEL}",
            f"--model_base_path={served_base}",
            "--file_system_poll_wait_seconds=0",
        ]
    )
    yield srv
    srv.stop(0)


def test_grpc_and_rest_bind_loopback_by_default(default_server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see which address a port is bound to")
    for port in (default_server.grpc_port, default_server.rest_port):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on {port}"
        assert all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


# ---------------------------------------------------------------- HandleReloadConfigRequest


def reload_request(base_path: str, name: str = MODEL):
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(
        name=name, base_path=str(base_path), model_platform="tensorflow"
    )
    return request


def model_service(port: int):
    from tensorflow_serving.apis import model_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, model_service_pb2_grpc.ModelServiceStub(channel)


def status_versions(stub, name=MODEL) -> list[int]:
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return [s.version for s in stub.GetModelStatus(request, timeout=30).model_version_status]


def test_reload_config_is_refused_by_default(default_server, tmp_path):
    channel, stub = model_service(default_server.grpc_port)
    with channel:
        for request in (reload_request("/proc"), reload_request("/nonexistent", name="other")):
            with pytest.raises(grpc.RpcError) as info:
                stub.HandleReloadConfigRequest(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--allow_reload_config_requests" in info.value.details()
        assert status_versions(stub) == [2]  # still served, nothing unloaded


def test_reload_policy_confines_base_paths(tmp_path):
    from serving.config import ReloadPolicy

    root = tmp_path / "models" / "flowers"
    (root / "1").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (tmp_path / "link-to-root").symlink_to(root)
    policy = ReloadPolicy.of(True, [_model("flowers", str(root))])

    policy.check([_model("flowers", str(root))])
    policy.check([_model("flowers", f"{root}/")])
    policy.check([_model("b", str(root / "1"))])  # under a start-up base path
    policy.check([_model("c", str(tmp_path / "link-to-root"))])  # resolves to the root
    policy.check([_model("d", f"{root}/../flowers")])
    for bad in (
        "/proc",
        "/",
        str(outside),
        f"{root}/../../elsewhere",
        str(root / "escape"),  # a symlink inside the root that points out of it
        str(tmp_path / "models" / "flowers2"),  # a sibling sharing the root's prefix
        "relative/path",
    ):
        with pytest.raises(ServingError) as info:
            policy.check([_model("flowers", bad)])
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, bad
        assert "is not under a base path this server was started with" in info.value.message
    with pytest.raises(ServingError, match="--allow_reload_config_requests"):
        ReloadPolicy.of(False, [_model("flowers", str(root))]).check([])


def test_reload_roots_add_places_a_reload_may_use(tmp_path):
    from serving.config import ConfigError, ReloadPolicy, reload_roots, resolve
    from serving.flags import parse_flags

    started, extra = tmp_path / "started", tmp_path / "shared-models"
    for path in (started, extra / "daisies"):
        path.mkdir(parents=True)
    roots = reload_roots(f" {extra} ,gs://bucket/models,")
    assert roots == (str(extra), "gs://bucket/models")
    policy = ReloadPolicy.of(True, [_model("a", str(started))], roots)
    policy.check([_model("daisies", str(extra / "daisies")), _model("a", str(started))])
    policy.check([_model("g", "gs://bucket/models/./g")])
    for bad in (str(tmp_path), "gs://bucket/other", f"{extra}/../elsewhere"):
        with pytest.raises(ServingError, match="--reload_config_base_path_roots adds more"):
            policy.check([_model("x", bad)])
    with pytest.raises(ConfigError, match="'models' is not an absolute path"):
        reload_roots("models")
    roots_flag = f"--reload_config_base_path_roots={extra}"
    flags = parse_flags([f"--model_base_path={started}", roots_flag])
    with pytest.raises(ConfigError, match="has no effect without --allow_reload_config_requests"):
        resolve(flags)
    empty = ReloadPolicy.of(True, [], ())  # started with no model: a reload may add none
    with pytest.raises(ServingError, match=r"started with \(none;"):
        empty.check([_model("a", str(started))])


def _model(name, base_path):
    from serving.config import ModelConfig

    return ModelConfig(name, base_path)


def test_allowed_reload_accepts_the_start_up_base_path_and_refuses_others(
    server, model_stub, served_base, tmp_path
):
    """The session server (tests/serving/conftest.py) runs with --allow_reload_config_requests."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "1").mkdir()
    for base in ("/proc", str(outside), f"{served_base}/../{outside.name}"):
        with pytest.raises(grpc.RpcError) as info:
            model_stub.HandleReloadConfigRequest(reload_request(base), timeout=60)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, base
    assert sorted(status_versions(model_stub)) == [1, 2]  # the refused reloads changed nothing


# ---------------------------------------------------------------- TLS (--ssl_config_file)


def _pem(obj) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return obj.public_bytes(serialization.Encoding.PEM)


def _certificate(subject: str, key, issuer=None, issuer_key=None, *, ca=False, server=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, both CA-signed;
    and a client certificate from another, untrusted CA."""
    from cryptography.hazmat.primitives.asymmetric import ec

    root = tmp_path_factory.mktemp("pki")
    files = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("xfer test CA", ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("another CA", other_key, ca=True)
    for name, issuer, issuer_key, kind in (
        ("server", ca, ca_key, {"server": True}),
        ("client", ca, ca_key, {}),
        ("stranger", other_ca, other_key, {}),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"xfer-{name}", key, issuer, issuer_key, **kind)
        files[f"{name}.key"] = root / f"{name}.key"
        files[f"{name}.key"].write_bytes(_pem(key))
        files[f"{name}.pem"] = root / f"{name}.pem"
        files[f"{name}.pem"].write_bytes(_pem(cert))
    files["ca.pem"] = root / "ca.pem"
    files["ca.pem"].write_bytes(_pem(ca))
    return files


def ssl_config(path: Path, pki, *, client_verify: bool) -> Path:
    """TF Serving's SSLConfig text proto: the PEM texts themselves, escaped in strings."""

    def text(p: Path) -> str:
        return json.dumps(p.read_text())  # a JSON string is a valid text-format string here

    lines = [
        f"server_key: {text(pki['server.key'])}",
        f"server_cert: {text(pki['server.pem'])}",
        f"custom_ca: {text(pki['ca.pem'])}",
        f"client_verify: {'true' if client_verify else 'false'}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ssl_config_file_parses_like_tf_serving(pki, tmp_path):
    from serving.ssl_config import load_ssl_file

    options = load_ssl_file(str(ssl_config(tmp_path / "ssl.config", pki, client_verify=True)))
    assert options.server_key == pki["server.key"].read_bytes()
    assert options.server_cert == pki["server.pem"].read_bytes()
    assert options.custom_ca == pki["ca.pem"].read_bytes() and options.client_verify
    for text, message in (
        ('server_key: "/etc/tls/server.key"\nserver_cert: "x"\n', "PEM text itself"),
        ("server_kee: 1\n", "ssl.config:1:"),
        (f"server_key: {json.dumps(pki['server.key'].read_text())}\n", "server_cert is empty"),
        (
            f"server_key: {json.dumps(pki['server.key'].read_text())}\n"
            f"server_cert: {json.dumps(pki['server.pem'].read_text())}\nclient_verify: true\n",
            "client_verify needs custom_ca",
        ),
    ):
        (tmp_path / "ssl.config").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_ssl_file(str(tmp_path / "ssl.config"))


def tls_server(served_base, config_path: Path):
    return start_server(
        [
            f"--port={free_port()}",
            f"--model_name={MODEL}",
            f"--model_base_path={served_base}",
            "--file_system_poll_wait_seconds=0",
            f"--ssl_config_file={config_path}",
        ]
    )


def status_over(port: int, credentials=None) -> grpc.StatusCode:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    target = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def score(port: int, images, out: Path, **tls):
    from client.config import ScoreConfig
    from client.scorer import run

    config = ScoreConfig(
        inputs=[str(p) for p in images],
        target=[f"127.0.0.1:{port}"],
        model_name=MODEL,
        output=str(out),
        batch_size=4,
        quiet=True,
        **tls,
    )
    return run(config)


@pytest.fixture(scope="module")
def shapes_images(shapes_root) -> list[Path]:
    return sorted(p for p in shapes_root.rglob("img_*") if p.suffix in (".jpg", ".png"))[:8]


def test_tls_with_the_project_client(served_base, pki, shapes_images, tmp_path):
    srv = tls_server(served_base, ssl_config(tmp_path / "ssl.config", pki, client_verify=False))
    try:
        out = tmp_path / "tls.jsonl"
        summary = score(srv.grpc_port, shapes_images, out, root_certs=str(pki["ca.pem"]))
        assert summary.scored == len(shapes_images)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == len(shapes_images) and all("error" not in r for r in rows)
        # the port speaks TLS only: a plaintext client gets nowhere
        assert status_over(srv.grpc_port) == grpc.StatusCode.UNAVAILABLE
        # and a client that does not trust the CA is refused at the handshake
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki["stranger.pem"].read_bytes())
        assert status_over(srv.grpc_port, untrusted) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(0)


def test_tls_client_verify_requires_a_certificate_signed_by_custom_ca(
    served_base, pki, shapes_images, tmp_path
):
    srv = tls_server(served_base, ssl_config(tmp_path / "ssl.config", pki, client_verify=True))
    try:
        ca = pki["ca.pem"].read_bytes()
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
        assert status_over(srv.grpc_port, no_cert) == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki["stranger.key"].read_bytes(),
            certificate_chain=pki["stranger.pem"].read_bytes(),
        )
        assert status_over(srv.grpc_port, stranger) == grpc.StatusCode.UNAVAILABLE
        out = tmp_path / "mtls.jsonl"
        summary = score(
            srv.grpc_port,
            shapes_images,
            out,
            root_certs=str(pki["ca.pem"]),
            client_cert=str(pki["client.pem"]),
            client_key=str(pki["client.key"]),
        )
        assert summary.scored == len(shapes_images)
        assert len(out.read_text().splitlines()) == len(shapes_images)
    finally:
        srv.stop(0)
