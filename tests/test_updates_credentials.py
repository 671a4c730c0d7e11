"""S3 credentials from the AWS IoT credentials provider: a real mutual-TLS HTTPS stand-in."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tinymodel import make_tiny_bundle

from edge.config import Config, parse_config
from edge.model_admin import publish
from edge.signing import generate_keypair
from edge.updates import ModelManager, iot_credentials, s3_client

ALIAS = "guaita-models"
CREDS = {"accessKeyId": "ASIATESTPROVIDER", "secretAccessKey": "secret/from/provider",
         "sessionToken": "token-from-provider", "expiration": "2030-01-01T00:00:00Z"}


def _cert(subject: str, issuer_key: Any, issuer: x509.Name | None, key: Any,
          ca: bool = False, ip: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path.with_suffix(".pem"), path.with_suffix(".key")


class Provider:
    """HTTPS server that, like AWS IoT, wants a client certificate signed by its CA."""

    def __init__(self, tmp: Path):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("test CA", ca_key, None, ca_key, ca=True)
        self.ca, _ = _write(tmp / "ca", ca, ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert, server_keyfile = _write(
            tmp / "server", _cert("provider", ca_key, ca.subject, server_key, ip="127.0.0.1"),
            server_key)
        device_key = ec.generate_private_key(ec.SECP256R1())
        self.cert, self.key = _write(
            tmp / "device", _cert("test-station", ca_key, ca.subject, device_key), device_key)
        self.requests: list[dict[str, Any]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer = self.connection.getpeercert()
                cn = dict(x[0] for x in peer["subject"])["commonName"]
                provider.requests.append({"path": self.path, "cn": cn,
                                          "thing": self.headers.get("x-amzn-iot-thingname")})
                if self.path == f"/role-aliases/{ALIAS}/credentials":
                    status, body = 200, {"credentials": CREDS}
                else:
                    status, body = 403, {"message": "Access Denied"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(server_cert, server_keyfile)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.ca)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    p = Provider(tmp_path)
    yield p
    p.close()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"guaita-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return name


def _config(tmp: Path, provider: Provider, bucket: str, endpoint: str, alias: str = ALIAS,
            public_key: Path | None = None) -> Config:
    if public_key is None:
        _, public_key = generate_keypair(tmp / "keys")
    model = make_tiny_bundle(tmp / "shipped", version="1")
    return parse_config(f"""
observatory = "test-station"
[paths]
state = "{tmp / 'state'}"
model = "{model}"
[mqtt.tls]
ca = "{provider.ca}"
cert = "{provider.cert}"
key = "{provider.key}"
[updates]
enabled = true
bucket = "{bucket}"
endpoint_url = "{endpoint}"
public_key = "{public_key}"
credentials_provider = "{provider.url}"
role_alias = "{alias}"
""")


def test_credentials_are_fetched_with_the_device_certificate(
    tmp_path: Path, provider: Provider, bucket: str, s3_endpoint: str
) -> None:
    cfg = _config(tmp_path, provider, bucket, s3_endpoint)
    creds = iot_credentials(cfg)
    assert creds == {"aws_access_key_id": CREDS["accessKeyId"],
                     "aws_secret_access_key": CREDS["secretAccessKey"],
                     "aws_session_token": CREDS["sessionToken"]}
    assert provider.requests == [{"path": f"/role-aliases/{ALIAS}/credentials",
                                  "cn": "test-station", "thing": "test-station"}]


def test_s3_requests_are_signed_with_the_provider_credentials(
    tmp_path: Path, provider: Provider, bucket: str, s3_endpoint: str
) -> None:
    client = s3_client(_config(tmp_path, provider, bucket, s3_endpoint))
    sent: list[dict[str, str]] = []
    client.meta.events.register("before-send.s3.*",
                                lambda request, **_: sent.append(dict(request.headers)))
    client.list_objects_v2(Bucket=bucket)
    auth = sent[0]["Authorization"]
    auth = auth.decode() if isinstance(auth, bytes) else auth
    token = sent[0]["X-Amz-Security-Token"]
    assert f"Credential={CREDS['accessKeyId']}/" in auth
    assert (token.decode() if isinstance(token, bytes) else token) == CREDS["sessionToken"]


def test_manager_updates_through_the_provider(
    tmp_path: Path, provider: Provider, bucket: str, s3_endpoint: str
) -> None:
    private, public = generate_keypair(tmp_path / "maintainer")
    cfg = _config(tmp_path, provider, bucket, s3_endpoint, public_key=public)
    manager = ModelManager(cfg)
    publish(make_tiny_bundle(tmp_path / "v2", version="2", bias=(1.0, 0.0)), bucket=bucket,
            private_key=private, endpoint_url=s3_endpoint, region="eu-west-1")
    assert manager.check() == "switched to tiny@2"
    assert len(provider.requests) == 1


def test_a_refused_role_alias_is_a_clear_error(
    tmp_path: Path, provider: Provider, bucket: str, s3_endpoint: str, caplog
) -> None:
    manager = ModelManager(_config(tmp_path, provider, bucket, s3_endpoint, alias="nope"))
    result = manager.check()
    assert result.startswith("error: IoT credentials provider ") and "HTTP 403" in result
    assert "model update check failed: IoT credentials provider" in caplog.text
    assert manager.active().bundle.label == "tiny@1"
