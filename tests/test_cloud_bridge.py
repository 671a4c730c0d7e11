"""`guaita bridge` end to end: Mosquitto (mutual TLS) → bridge process → ingest → S3 + Telegram."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from test_cloud_support import TOKEN, CloudEnv, make_event

from cloud.bridge import event_from_message
from tests.broker import Broker, run_broker

pytest_plugins = ["test_cloud_support"]  # the cloud_env and fake_telegram fixtures

ROOT = Path(__file__).resolve().parents[1]


def test_event_shape_matches_the_iot_rule() -> None:
    event = make_event()
    got = event_from_message("guaita/pujalt/detection", json.dumps(event).encode())
    assert got == {**event, "thing": "pujalt"}
    assert isinstance(event_from_message("guaita/x/detection", b"\xff\xfe"), str)
    assert isinstance(event_from_message("guaita/x/detection", b"[1, 2]"), str)
    spoof = json.dumps({**event, "thing": "pujalt"}).encode()
    assert isinstance(event_from_message("guaita/other/detection", spoof), str)


class BridgeProcess:
    def __init__(self, broker: Broker, bucket: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "bridge", "--host", broker.host,
             "--port", str(broker.port), "--ca", str(broker.ca), "--cert",
             str(broker.client_cert), "--key", str(broker.client_key), "--bucket", bucket,
             "--topic-prefix", "guaita", "--client-id", "test-bridge"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: sum(text in line for line in self.lines) >= count, timeout
            )
        assert ok, f"no {count}× {text!r} in bridge log:\n{''.join(self.lines)}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    @property
    def log(self) -> str:
        with self.cond:
            return "".join(self.lines)


@contextmanager
def bridge(broker: Broker, bucket: str) -> Iterator[BridgeProcess]:
    process = BridgeProcess(broker, bucket)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def publish(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.tls_set(ca_certs=str(broker.ca), certfile=str(broker.client_cert),
                   keyfile=str(broker.client_key))
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_keys(env: CloudEnv, prefix: str, count: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = env.keys(prefix)
        if len(keys) >= count:
            return keys
        time.sleep(0.2)
    return env.keys(prefix)


def test_bridge_end_to_end_over_tls(cloud_env: CloudEnv, monkeypatch, tmp_path: Path) -> None:
    # The non-AWS mode: the token comes from the environment instead of SSM.
    monkeypatch.delenv("TELEGRAM_TOKEN_PARAM")
    monkeypatch.setenv("TELEGRAM_TOKEN", TOKEN)
    pujalt = make_event("pujalt", seed=1)
    montsec = make_event("montsec", seed=2, score=0.88)
    spoof = make_event("montsec", seed=3)  # published on pujalt's topic: must be refused
    with run_broker(tmp_path) as broker, bridge(broker, cloud_env.bucket) as proc:
        proc.wait_for("subscribed to guaita/+/detection")
        publish(broker, [
            ("guaita/pujalt/detection", json.dumps(pujalt).encode()),
            ("guaita/pujalt/detection", json.dumps({**spoof, "id": "spoofed-1"}).encode()),
            ("guaita/pujalt/detection", b"not json at all"),
            ("guaita/montsec/detection", json.dumps(montsec).encode()),
        ])
        keys = wait_keys(cloud_env, "detections/", 2)
        proc.wait_for("rejected", count=2)
        assert proc.stop() == 0

    assert keys == [
        f"detections/20240812/montsec/{montsec['id']}.json",
        f"detections/20240812/pujalt/{pujalt['id']}.json",
    ]
    record = json.loads(cloud_env.get(keys[1]))
    assert record["id"] == pujalt["id"] and "thing" not in record
    captions = sorted(r.fields["caption"] for r in cloud_env.telegram.requests)
    assert len(captions) == 2
    assert "Observatory: montsec" in captions[0] and "Score: 0.88" in captions[0]
    assert "Observatory: pujalt" in captions[1]
    assert "does not match the sending thing" in proc.log
    assert TOKEN not in proc.log


def test_events_sent_while_bridge_is_down_arrive_after_restart(
    cloud_env: CloudEnv, tmp_path: Path
) -> None:
    event = make_event("pujalt", seed=4)
    with run_broker(tmp_path) as broker:
        with bridge(broker, cloud_env.bucket) as proc:
            proc.wait_for("subscribed to")
            assert proc.stop() == 0
        # The bridge's persistent session (fixed client id, clean_session=False) queues this.
        publish(broker, [("guaita/pujalt/detection", json.dumps(event).encode())])
        assert cloud_env.keys("detections/") == []
        with bridge(broker, cloud_env.bucket) as proc:
            keys = wait_keys(cloud_env, "detections/", 1)
            assert proc.stop() == 0
    assert keys == [f"detections/20240812/pujalt/{event['id']}.json"]


def test_bridge_refuses_bad_options(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "edge.cli", "bridge", "--bucket", "b", "--topic-prefix", "a/#"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2 and "--topic-prefix" in run.stderr


def test_meteor_frame_through_daemon_broker_bridge_to_s3_and_telegram(
    cloud_env: CloudEnv, tmp_path: Path
) -> None:
    """The whole chain with real processes: AllSky-style frames → `guaita run` → Mosquitto
    (mutual TLS) → `guaita bridge` → ingest → S3 (moto) + Telegram (fake)."""
    from tests.test_service import (
        NIGHT,
        THING,
        cp_frame,
        frame_path,
        mqtt_section,
        start_daemon,
        write_config,
    )
    from tests.tinymodel import make_tiny_bundle

    model = make_tiny_bundle(tmp_path / "model", bias=(-14.0, 0.0), sensitivity=255.0,
                             threshold=0.5, name="tiny-e2e", version="7")
    images = tmp_path / "images"
    with run_broker(tmp_path) as broker, bridge(broker, cloud_env.bucket) as proc:
        proc.wait_for("subscribed to guaita/+/detection")
        daemon = start_daemon(tmp_path, write_config(tmp_path, model, mqtt=mqtt_section(broker)))
        try:
            for index, meteor in enumerate([False, False, True, False, False]):
                cp_frame(images, index, meteor=meteor)
            keys = wait_keys(cloud_env, "detections/", 1, timeout=90)
        finally:
            assert daemon.stop() == 0
        assert proc.stop() == 0

    stamp = frame_path(images, 2).name[6:20]
    event_id = f"{THING}-{stamp}"
    assert keys == [f"detections/{NIGHT}/{THING}/{event_id}.json"]
    record = json.loads(cloud_env.get(keys[0]))
    assert record["image"] == frame_path(images, 2).name and record["suppressed"] is None
    jpeg = cloud_env.get(record["preview"]["key"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (record["preview"]["height"], record["preview"]["width"])
    [sent] = cloud_env.telegram.requests
    assert sent.photo == jpeg
    caption = sent.fields["caption"]
    assert f"Observatory: {THING}" in caption
    assert "Local time: 2026-11-20 21:01:00 +0100" in caption  # frame 2, Europe/Madrid
    assert f"Score: {record['score']:.2f}" in caption and "Model: tiny-e2e 7" in caption
