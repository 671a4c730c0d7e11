"""Shared fixtures: real components (S3 API server, MQTT broker) started per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP: moto in server mode on a loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="eu-west-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- MQTT (tests/broker.py)


@pytest.fixture
def mqtt_broker(tmp_path) -> Iterator:
    """A real Mosquitto on a loopback port: TLS, test CA, `require_certificate true`; the client
    certificate (CN = tests.broker.THING) is at broker.client_cert / broker.client_key."""
    from tests.broker import run_broker

    with run_broker(tmp_path) as broker:
        yield broker


@pytest.fixture
def mqtt_broker_plain(tmp_path) -> Iterator:
    """A real Mosquitto without TLS (a local broker, Home Assistant style)."""
    from tests.broker import run_broker

    with run_broker(tmp_path, tls=False) as broker:
        yield broker
