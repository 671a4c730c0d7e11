"""The daemon end to end, as a real process: watcher, pipeline, outbox, MQTT over mutual TLS,
sd_notify, restarts. Frames are real JPEG files written the way AllSky writes them (cp)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edge.eventschema import SCHEMA_PATH
from tests.broker import THING, Subscriber, run_broker
from tests.drawing import draw_meteor
from tests.tinymodel import make_tiny_bundle

NIGHT = "20261120"
START = datetime(2026, 11, 20, 21, 0, 0)
SIZE = (240, 320)


# ---------------------------------------------------------------- frames, AllSky style


def frame_image(index: int, meteor: bool) -> np.ndarray:
    rng = np.random.default_rng(index)
    image = np.clip(35 + rng.normal(0, 3, SIZE), 0, 255)
    if meteor:
        draw_meteor(image, (40, 30 + index % 50), (260, 200), 120.0, 3)
    return image.astype(np.uint8)


def frame_path(images: Path, index: int, night: str = NIGHT) -> Path:
    captured = START + timedelta(seconds=30 * index)
    return images / night / f"image-{captured:%Y%m%d%H%M%S}.jpg"


def cp_frame(images: Path, index: int, meteor: bool = False, slow: bool = False,
             data: bytes | None = None, night: str = NIGHT) -> Path:
    """Write like `cp`: create, write (optionally in two halves with a pause), close."""
    if data is None:
        _, buf = cv2.imencode(".jpg", frame_image(index, meteor), [cv2.IMWRITE_JPEG_QUALITY, 95])
        data = buf.tobytes()
    path = frame_path(images, index, night)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        if slow:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(1.0)
        fh.write(data[len(data) // 2 if slow else 0:])
    return path


# ---------------------------------------------------------------- the daemon process


@dataclass
class Daemon:
    proc: subprocess.Popen
    notify: socket.socket
    log: Path
    state: Path

    def wait_for_notify(self, needle: bytes, timeout: float = 60) -> list[bytes]:
        seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                continue
            seen.append(message)
            if needle in message:
                return seen
        raise AssertionError(f"no {needle!r} in {seen}; log: {self.log.read_text()[-3000:]}")

    def processed(self) -> dict[str, tuple[float, int, str | None]]:
        db = self.state / "processed.sqlite"
        if not db.exists():
            return {}
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT path, score, detected, suppressed FROM processed")
            return {Path(p).name: (s, d, r) for p, s, d, r in rows}

    def wait_processed(self, count: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.processed()
            if len(done) >= count:
                return done
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"only {len(self.processed())}/{count} processed; log: "
                             f"{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.notify.close()
        return code


def write_config(tmp_path: Path, model: Path, mqtt: str = "", extra: str = "") -> Path:
    config = tmp_path / "guaita.toml"
    config.write_text(f"""
observatory = "{THING}"
timezone = "Europe/Madrid"
[paths]
images = "{tmp_path / 'images'}"
state = "{tmp_path / 'state'}"
model = "{model}"
[outbox]
file_sink = "{tmp_path / 'events.jsonl'}"
[suppression]
decision_timeout_s = 2.0
auto_mask = false
[mqtt]
status_interval_s = 2
{mqtt}
{extra}
""")
    return config


def start_daemon(tmp_path: Path, config: Path, watchdog_usec: int | None = None) -> Daemon:
    notify_path = tmp_path / f"notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = tmp_path / "daemon.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
    daemon = Daemon(proc, sock, log, tmp_path / "state")
    daemon.wait_for_notify(b"READY=1")
    return daemon


@pytest.fixture
def model(tmp_path: Path) -> Path:
    # Meteor logit = mean of the two difference channels − 14: a quiet pair scores ≈ 0.02,
    # a bright new line ≈ 0.99 (see tests/tinymodel.py).
    return make_tiny_bundle(tmp_path / "model", bias=(-14.0, 0.0), sensitivity=255.0,
                            threshold=0.5)


def events_in(tmp_path: Path) -> list[dict]:
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------- tests


def test_tiny_model_separates_lines_from_noise(model):
    from edge.model import open_scorer

    scorer = open_scorer(model)
    quiet = scorer.score(frame_image(0, False), frame_image(1, False))
    streak = scorer.score(frame_image(0, False), frame_image(1, True))
    assert quiet < 0.2 and streak > 0.8


def test_watcher_cp_semantics_truncation_new_night_and_restart(tmp_path, model):
    images = tmp_path / "images"
    daemon = start_daemon(tmp_path, write_config(tmp_path, model))
    cp_frame(images, 0)
    cp_frame(images, 1, slow=True)  # half written, pause, rest: scored once, complete
    cp_frame(images, 2, meteor=True)
    good = cv2.imencode(".jpg", frame_image(3, False))[1].tobytes()
    cp_frame(images, 3, data=good[: len(good) // 2])  # a truncated JPEG: refused, not scored
    thumb = images / NIGHT / "thumbnails" / frame_path(images, 4).name
    thumb.parent.mkdir(parents=True)
    thumb.write_bytes(good)  # thumbnails are not frames
    cp_frame(images, 4)
    done = daemon.wait_processed(4)
    assert frame_path(images, 3).name not in done
    assert done[frame_path(images, 2).name][1] == 1  # the meteor frame was detected
    assert done[frame_path(images, 1).name][1] == 0
    assert "truncated" in daemon.log.read_text()
    # A new night folder appears: its first frame has no reference, the second is scored.
    cp_frame(images, 1000, night="20261121")
    cp_frame(images, 1001, meteor=True, night="20261121")
    done = daemon.wait_processed(6)
    assert daemon.stop() == 0
    # Frames that arrive while the daemon is down are caught up at start; nothing twice.
    cp_frame(images, 1002, night="20261121")
    cp_frame(images, 1003, meteor=True, night="20261121")
    daemon = start_daemon(tmp_path, write_config(tmp_path, model))
    done = daemon.wait_processed(8)
    time.sleep(3)  # past decision_timeout_s: the last frame is flushed
    assert daemon.stop() == 0
    events = events_in(tmp_path)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "a frame was reported twice"
    assert {e["image"] for e in events if not e["suppressed"]} == {
        frame_path(images, 2).name, frame_path(images, 1001).name, frame_path(images, 1003).name
    }
    schema = json.loads(SCHEMA_PATH.read_text())
    for event in events:
        jsonschema.validate(event, schema)


def test_sd_notify_ready_status_and_watchdog(tmp_path, model):
    daemon = start_daemon(tmp_path, write_config(tmp_path, model), watchdog_usec=1_000_000)
    seen = daemon.wait_for_notify(b"WATCHDOG=1", timeout=10)
    seen += daemon.wait_for_notify(b"WATCHDOG=1", timeout=10)
    assert any(m.startswith(b"STATUS=") or b"\nSTATUS=" in m for m in seen) or \
        b"STATUS=" in b"".join(seen)
    assert daemon.stop() == 0


def test_sighup_rejects_a_bad_config_and_keeps_running(tmp_path, model):
    config = write_config(tmp_path, model)
    daemon = start_daemon(tmp_path, config)
    good = config.read_text()
    config.write_text(good + "\n[detection]\nthreshold = 7\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload rejected" not in daemon.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "detection.threshold" in daemon.log.read_text()
    cp_frame(tmp_path / "images", 0)
    cp_frame(tmp_path / "images", 1, meteor=True)
    cp_frame(tmp_path / "images", 2)
    done = daemon.wait_processed(2)
    assert done[frame_path(tmp_path / "images", 1).name][1] == 1
    assert daemon.stop() == 0


def mqtt_section(broker) -> str:
    return f"""enabled = true
host = "{broker.host}"
port = {broker.port}
client_id = "{THING}"
topic_prefix = "guaita"
keepalive_s = 5
[mqtt.tls]
ca = "{broker.ca}"
cert = "{broker.client_cert}"
key = "{broker.client_key}"
"""


def test_detection_arrives_over_mutual_tls(tmp_path, model):
    with run_broker(tmp_path) as broker:
        sub = Subscriber(broker, ["guaita/#"])
        sub.wait_subscribed()
        config = write_config(tmp_path, model, mqtt=mqtt_section(broker))
        daemon = start_daemon(tmp_path, config)
        images = tmp_path / "images"
        for index, meteor in enumerate([False, False, True, False, False]):
            cp_frame(images, index, meteor=meteor)
        topic = f"guaita/{THING}/detection"
        messages = sub.wait_for(lambda ms: any(m.topic == topic for m in ms))
        event = next(m for m in messages if m.topic == topic).json()
        jsonschema.validate(event, json.loads(SCHEMA_PATH.read_text()))
        assert event["image"] == frame_path(images, 2).name
        assert event["id"] == f"{THING}-{frame_path(images, 2).name[6:20]}"
        assert event["suppressed"] is None and event["score"] >= event["threshold"]
        assert event["observatory"] == THING and event["night"] == NIGHT
        sub.wait_for(lambda ms: any(m.topic == f"guaita/{THING}/status" for m in ms))
        # A late subscriber gets the availability as a retained message.
        with Subscriber(broker, [f"guaita/{THING}/availability"], client_id="late") as late:
            online = late.wait_for(lambda ms: len(ms) > 0)
        assert online[-1].payload == b"online" and online[-1].retain
        assert daemon.stop() == 0
        sub.close()


def test_outage_sigkill_restart_nothing_lost(tmp_path, model):
    images = tmp_path / "images"
    with run_broker(tmp_path) as broker:
        config = write_config(tmp_path, model, mqtt=mqtt_section(broker))
        broker.stop()  # the network is down all night
        daemon = start_daemon(tmp_path, config)
        meteors = {3, 6, 9}
        for index in range(12):
            cp_frame(images, index, meteor=index in meteors)
        daemon.wait_processed(11)
        expected = {f"{THING}-{frame_path(images, i).name[6:20]}" for i in meteors}
        daemon.stop(signal.SIGKILL)  # power cut: nothing in memory survives
        broker.start()
        sub = Subscriber(broker, [f"guaita/{THING}/detection"])
        sub.wait_subscribed()
        daemon = start_daemon(tmp_path, config)
        messages = sub.wait_for(lambda ms: {m.json()["id"] for m in ms} >= expected, timeout=60)
        received = [m.json() for m in messages]
        alerts = {e["id"] for e in received if not e["suppressed"]}
        assert alerts == expected
        # Re-sends are possible, but only as exact copies with the same id.
        by_id: dict[str, bytes] = {}
        for m in messages:
            assert by_id.setdefault(m.json()["id"], m.payload) == m.payload
        assert daemon.stop() == 0
        sub.close()
