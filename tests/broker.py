"""Test helpers: a throw-away PKI and a real Mosquitto broker on a loopback port.

The broker is configured the way AWS IoT Core behaves for a device: TLS only, a client
certificate signed by the test CA is required (``require_certificate``), and the certificate's
CN becomes the MQTT user name (``use_identity_as_username``). It can be stopped and started again
on the same port, for outage tests.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge.bundle import Manifest
from edge.config import MQTTConfig, TLSConfig
from edge.events import build_event
from edge.frames import parse_frame
from edge.preprocess import PreprocessSpec

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"  # Debian: /usr/sbin
THING = "pujalt-pi"  # the client certificate's CN = AWS IoT thing name = MQTT client id


# ---------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2)))


def make_ca(directory: Path, name: str = "guaita test CA") -> Issuer:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(cert, key, _write_cert(cert, directory / "ca.pem"))


def issue(ca: Issuer, directory: Path, stem: str, common_name: str, *,
          server: bool) -> tuple[Path, Path]:
    """A leaf certificate + key signed by `ca`: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(common_name, ca.cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server else
                    ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return (_write_cert(cert, directory / f"{stem}.pem"),
            _write_key(key, directory / f"{stem}.key"))


# ---------------------------------------------------------------- broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    host: str
    port: int
    tls: bool
    ca: Path | None
    client_cert: Path | None
    client_key: Path | None
    directory: Path
    ca_issuer: Issuer | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        if not Path(MOSQUITTO).is_file():
            raise RuntimeError(f"{MOSQUITTO} not found: apt-get install mosquitto (make setup)")
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                      stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM); clients see the connection drop."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def freeze(self) -> None:
        """SIGSTOP: the broker stops reading; publishes sit unacknowledged in its socket."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever it had not processed is lost, nothing is saved."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def client_mqtt(self, **overrides: Any) -> MQTTConfig:
        """An edge.config.MQTTConfig for this broker with the good client certificate."""
        tls = (TLSConfig(ca=str(self.ca), cert=str(self.client_cert), key=str(self.client_key))
               if self.tls else TLSConfig())
        values: dict[str, Any] = {"enabled": True, "host": self.host, "port": self.port,
                                  "client_id": THING, "topic_prefix": "guaita", "tls": tls,
                                  "keepalive_s": 5}
        values.update(overrides)
        return MQTTConfig(**values)


def _config_text(broker: Broker) -> str:
    lines = [
        f"listener {broker.port} {broker.host}",
        # Persistent sessions survive a clean stop (SIGTERM), so a subscriber with
        # clean_session=False misses nothing while the broker is down.
        "persistence true",
        f"persistence_location {broker.directory}/",
        f"user {getpass.getuser()}",  # as root mosquitto would drop to 'mosquitto' otherwise
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if broker.tls:
        d = broker.directory
        lines += [
            f"cafile {d / 'ca.pem'}",
            f"certfile {d / 'server.pem'}",
            f"keyfile {d / 'server.key'}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    else:
        lines.append("allow_anonymous true")
    return "\n".join(lines) + "\n"


@contextmanager
def run_broker(tmp_path: Path, tls: bool = True, port: int | None = None) -> Iterator[Broker]:
    """A running Mosquitto; TLS with a fresh test CA and client cert (CN = THING) by default."""
    directory = tmp_path / "broker"
    directory.mkdir(parents=True, exist_ok=True)
    ca = cert = key = None
    issuer = None
    if tls:
        issuer = make_ca(directory)
        issue(issuer, directory, "server", "localhost", server=True)
        cert, key = issue(issuer, directory, "client", THING, server=False)
        ca = issuer.cert_path
    broker = Broker("127.0.0.1", port or free_port(), tls, ca, cert, key, directory, issuer)
    broker.config_path.write_text(_config_text(broker))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ---------------------------------------------------------------- subscriber


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects every message on `topics`; re-subscribes after the broker comes back.

    With clean_session=False (default) its QoS 1 session lives in the broker, so messages
    published while it is disconnected (broker restart) are delivered when it reconnects.
    """

    def __init__(self, broker: Broker, topics: list[str], client_id: str = "test-subscriber",
                 clean_session: bool = False):
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        if broker.tls:
            # The subscriber presents the same CA's client cert (its CN is only a user name).
            self.client.tls_set(ca_certs=str(broker.ca), certfile=str(broker.client_cert),
                                keyfile=str(broker.client_key))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self._subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(self, *_a: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                                         msg.qos))
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise TimeoutError("subscriber did not get its SUBACK")

    def wait_for(self, predicate: Callable[[list[Message]], bool],
                 timeout: float = 20.0) -> list[Message]:
        """Block until `predicate(messages)` holds; TimeoutError with what arrived otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise TimeoutError(f"got {[(m.topic, m.payload[:60]) for m in self.messages]}")
            return list(self.messages)

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- sample events


def sample_event(i: int, observatory: str = "pujalt") -> dict[str, Any]:
    """A real, schema-valid detection event for frame number `i` of one night (small frames)."""
    captured = dt.datetime(2024, 6, 7, 0, 30) + dt.timedelta(seconds=30 * i)
    frame = parse_frame(Path(f"/allsky/images/20240606/image-{captured:%Y%m%d%H%M%S}.jpg"))
    assert frame is not None
    rng = np.random.default_rng(i)
    current = np.clip(rng.normal(30, 3, (240, 320)), 0, 255).astype(np.uint8)
    difference = np.zeros_like(current)
    x1, y1, x2, y2 = 40 + i % 100, 60, 200, 90 + i % 50
    cv2.line(current, (x1, y1), (x2, y2), 200, 2)
    cv2.line(difference, (x1, y1), (x2, y2), 150, 2)
    manifest = Manifest(name="guaita-test", version="1", sha256="0" * 64,
                        preprocessing=PreprocessSpec(), input_shape=(1, 3, 224, 224),
                        classes=("meteor", "not_meteor"), recommended_threshold=0.85,
                        created_at="2024-06-01T00:00:00Z")
    return build_event(
        observatory=observatory, tz=ZoneInfo("Europe/Madrid"), frame=frame,
        score=0.9 + (i % 10) / 100, threshold=0.85, manifest=manifest, current=current,
        difference=difference,
        streak={"x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "length_px": float(np.hypot(x2 - x1, y2 - y1)),
                "angle_deg": float(np.degrees(np.arctan2(y2 - y1, x2 - x1))),
                "bbox": [x1, y1, x2 - x1, y2 - y1]},
        suppressed=None, flags=[], latency_ms={"total": 120.0},
        processed_utc=dt.datetime(2024, 6, 7, 0, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
    )
