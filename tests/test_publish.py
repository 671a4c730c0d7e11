"""MQTT delivery against a real Mosquitto with mutual TLS: payload, refused certificates,
availability and last will, outages with SIGKILLed publishers, in-flight re-sends, plain TCP,
ALPN/SNI as AWS IoT Core on 443, Home Assistant discovery."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jinja2
import jsonschema
import pytest

from edge.config import TLSConfig
from edge.events import availability_topic, encode_event, event_topic, status_topic
from edge.eventschema import SCHEMA_PATH
from edge.outbox import Outbox
from edge.publish import (
    HA_SENSORS,
    Publisher,
    PublishError,
    check_connection,
    discovery_topics,
    tls_context,
)
from tests.broker import THING, Broker, Subscriber, issue, make_ca, run_broker, sample_event

OBS = "pujalt"
DETECTION = event_topic("guaita", OBS)
AVAILABILITY = availability_topic("guaita", OBS)
STATUS = status_topic("guaita", OBS)
SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
REPO = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what or "condition not met")
        time.sleep(0.05)


def queue_event(box: Outbox, i: int) -> dict:
    event = sample_event(i, OBS)
    assert box.add(event["id"], DETECTION, encode_event(event))
    return event


def detection_ids(messages) -> list[str]:
    return [m.json()["id"] for m in messages if m.topic == DETECTION]


# ---------------------------------------------------------------- delivery over mutual TLS


def test_detection_arrives_over_mutual_tls(tmp_path, mqtt_broker):
    broker = mqtt_broker
    with Subscriber(broker, ["guaita/#"]) as sub:
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 100)
        event = queue_event(box, 0)
        publisher = Publisher(broker.client_mqtt(), THING, OBS, box)
        publisher.start()
        publisher.wake()
        messages = sub.wait_for(lambda ms: any(m.topic == DETECTION for m in ms))
        (msg,) = [m for m in messages if m.topic == DETECTION]
        assert msg.payload == encode_event(event)  # byte for byte what was queued
        assert msg.qos == 1
        received = msg.json()
        assert not list(SCHEMA_VALIDATOR.iter_errors(received))
        assert received["id"] == "pujalt-20240607003000" and received["observatory"] == OBS
        assert publisher.flush(10) and box.depth() == 0 and publisher.delivered == 1
        assert [m.payload for m in sub.on(AVAILABILITY)] == [b"online"]
        publisher.stop(5)
        box.close()
        # The broker saw the certificate's CN as the user name (use_identity_as_username).
        assert f"as {THING} (" in broker.log_path.read_text()
        assert f"u'{THING}'" in broker.log_path.read_text()


def test_a_certificate_from_another_ca_is_refused(tmp_path):
    with run_broker(tmp_path) as broker:
        check_connection(broker.client_mqtt(), THING)  # control: the right certificate works
        rogue = make_ca(tmp_path / "rogue", "rogue CA")
        cert, key = issue(rogue, tmp_path / "rogue", "client", THING, server=False)
        bad = broker.client_mqtt(tls=TLSConfig(ca=str(broker.ca), cert=str(cert), key=str(key)))
        with pytest.raises(PublishError, match="certificate"):
            check_connection(bad, THING)
        no_cert = broker.client_mqtt(tls=TLSConfig(ca=str(broker.ca)))
        with pytest.raises(PublishError):
            check_connection(no_cert, THING)
        # And the client refuses a broker its CA did not sign.
        wrong_server = broker.client_mqtt(tls=TLSConfig(
            ca=str(rogue.cert_path), cert=str(broker.client_cert), key=str(broker.client_key)))
        with pytest.raises(PublishError, match="certificate verify failed"):
            check_connection(wrong_server, THING)

        # The daemon's publisher with the rogue certificate: refused, the event stays queued.
        box = Outbox(tmp_path / "outbox.sqlite", 10)
        queue_event(box, 0)
        publisher = Publisher(bad, THING, OBS, box, reconnect_min_s=1, reconnect_max_s=1)
        before = broker.log_path.read_text().count("certificate verify failed")
        publisher.start()
        wait_until(lambda: broker.log_path.read_text().count("certificate verify failed")
                   >= before + 2, what="broker never rejected the rogue certificate")
        assert not publisher.connected and box.depth() == 1 and publisher.delivered == 0
        publisher.stop(2)
        box.close()


def test_bad_certificate_files_are_a_clear_error(tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(PublishError, match=r"mqtt\.tls\.ca"):
        tls_context(TLSConfig(ca=str(tmp_path / "junk.pem")))
    with pytest.raises(PublishError, match=r"mqtt\.tls\.cert"):
        tls_context(TLSConfig(cert=str(tmp_path / "junk.pem"), key=str(tmp_path / "junk.pem")))


# ---------------------------------------------------------------- availability


CHILD = r"""
import dataclasses, json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.broker import sample_event
from edge.config import MQTTConfig, TLSConfig
from edge.events import encode_event, event_topic
from edge.outbox import Outbox
from edge.publish import Publisher

_, _, cfg_json, db, mode, *numbers = sys.argv
raw = json.loads(cfg_json)
cfg = MQTTConfig(**{**raw, "tls": TLSConfig(**raw["tls"])})
box = Outbox(db, 1000)
pub = Publisher(cfg, cfg.client_id, "pujalt", box, reconnect_min_s=1, reconnect_max_s=2)
pub.start()
if mode == "add":  # a daemon finding meteors while the broker is down
    for i in map(int, numbers):
        event = sample_event(i, "pujalt")
        assert box.add(event["id"], event_topic(cfg.topic_prefix, "pujalt"), encode_event(event))
        pub.wake()
        print(event["id"], flush=True)
    print("added", flush=True)
elif mode == "online":
    print("connected" if pub.wait_connected(20) else "not connected", flush=True)
elif mode == "deliver":
    ok = pub.flush(60)
    pub.stop(5)
    print("flushed" if ok else "NOT flushed", box.depth(), flush=True)
    sys.exit(0)
time.sleep(3600)  # until the test kills it
"""


def run_child(broker: Broker, db: Path, mode: str, *numbers: int) -> subprocess.Popen[str]:
    cfg = json.dumps(dataclasses.asdict(broker.client_mqtt()))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), cfg, str(db), mode, *map(str, numbers)],
        stdout=subprocess.PIPE, text=True,
    )


def read_until(child: subprocess.Popen[str], last: str, timeout: float = 60.0) -> list[str]:
    """Lines the child prints up to and including `last` (a timer kills a stuck child)."""
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    lines = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith(last):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"child ended before {last!r}: {lines}")


def sigkill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL


def test_availability_online_offline_and_last_will(tmp_path):
    with run_broker(tmp_path) as broker, Subscriber(broker, [AVAILABILITY]) as sub:
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 10)
        publisher = Publisher(broker.client_mqtt(), THING, OBS, box)
        publisher.start()
        sub.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
        publisher.stop(5)  # clean stop: says offline itself
        sub.wait_for(lambda ms: [m.payload for m in ms] == [b"online", b"offline"])
        box.close()

        # Abrupt death: no goodbye, the broker publishes the last will.
        child = run_child(broker, tmp_path / "child.sqlite", "online")
        assert read_until(child, "connected")[-1] == "connected"
        sub.wait_for(lambda ms: len(ms) == 3 and ms[-1].payload == b"online")
        sigkill(child)
        messages = sub.wait_for(lambda ms: len(ms) == 4)
        assert messages[-1].payload == b"offline"

    # Retained: a newcomer (Home Assistant after a restart) learns the state at once.
    with run_broker(tmp_path / "b2") as broker2:
        box = Outbox(tmp_path / "o2.sqlite", 10)
        publisher = Publisher(broker2.client_mqtt(), THING, OBS, box)
        publisher.start()
        assert publisher.wait_connected(10)
        with Subscriber(broker2, [AVAILABILITY], client_id="latecomer") as late:
            msg = late.wait_for(lambda ms: len(ms) >= 1)[0]
            assert msg.payload == b"online" and msg.retain
        publisher.stop(5)
        box.close()


# ---------------------------------------------------------------- never lose a detection


def test_no_detection_lost_when_broker_down_and_publisher_sigkilled(tmp_path):
    db = tmp_path / "outbox.sqlite"
    with run_broker(tmp_path) as broker:
        broker.stop()  # the link is down all night

        first = run_child(broker, db, "add", *range(12))
        ids_first = read_until(first, "added")[:-1]
        sigkill(first)  # kill -9 while the broker is unreachable

        # Restarted daemon re-processes some frames (same ids) and finds three more meteors.
        second = run_child(broker, db, "add", *range(8, 15))
        ids_second = read_until(second, "added")[:-1]
        sigkill(second)
        assert ids_first[8:] == ids_second[:4]  # stable ids across processes
        expected = sorted(set(ids_first) | set(ids_second))
        assert len(expected) == 15
        with Outbox(db, 1000) as box:
            assert box.depth() == 15

        broker.start()
        with Subscriber(broker, [DETECTION]) as sub:
            sub.wait_subscribed()
            third = run_child(broker, db, "deliver")
            assert read_until(third, "flushed")[-1] == "flushed 0"
            third.wait(10)
            messages = sub.wait_for(lambda ms: set(detection_ids(ms)) == set(expected))
        by_id: dict[str, set[bytes]] = {}
        for m in messages:
            by_id.setdefault(m.json()["id"], set()).add(m.payload)
            assert not list(SCHEMA_VALIDATOR.iter_errors(m.json()))
        # Duplicates, if any, are exact re-sends of the same event.
        assert all(len(payloads) == 1 for payloads in by_id.values())
        assert sorted(by_id) == expected
        assert by_id["pujalt-20240607003000"] == {encode_event(sample_event(0, OBS))}
        with Outbox(db, 1000) as box:
            assert box.depth() == 0


def test_in_flight_events_are_resent_after_a_broker_crash(tmp_path):
    """Published but never acknowledged (the broker froze, then crashed): sent again."""
    with run_broker(tmp_path) as broker, Subscriber(broker, [DETECTION]) as sub:
        sub.wait_subscribed()
        broker.stop()  # clean stop saves the subscriber's persistent session
        broker.start()
        box = Outbox(tmp_path / "outbox.sqlite", 100)
        publisher = Publisher(broker.client_mqtt(), THING, OBS, box,
                              reconnect_min_s=1, reconnect_max_s=1)
        publisher.start()
        assert publisher.wait_connected(10)
        sub.wait_subscribed()

        broker.freeze()
        events = [queue_event(box, i) for i in range(5)]
        publisher.wake()
        wait_until(lambda: publisher.inflight == 5, what="events never went in flight")
        broker.kill()  # the five PUBLISH packets die unread with the broker
        assert box.depth() == 5 and publisher.delivered == 0

        broker.start()
        messages = sub.wait_for(lambda ms: len(set(detection_ids(ms))) == 5, timeout=30)
        assert set(detection_ids(messages)) == {e["id"] for e in events}
        wait_until(lambda: box.depth() == 0, what="outbox not emptied")
        assert publisher.delivered == 5
        publisher.stop(5)
        box.close()


def test_outage_while_running_then_reconnect(tmp_path):
    with run_broker(tmp_path) as broker, Subscriber(broker, [DETECTION]) as sub:
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 100)
        publisher = Publisher(broker.client_mqtt(), THING, OBS, box,
                              reconnect_min_s=1, reconnect_max_s=2)
        publisher.start()
        assert publisher.wait_connected(10)
        queue_event(box, 0)
        publisher.wake()
        sub.wait_for(lambda ms: len(detection_ids(ms)) == 1)

        broker.stop()
        wait_until(lambda: not publisher.connected, what="disconnect not noticed")
        for i in range(1, 6):
            queue_event(box, i)
            publisher.wake()
        assert publisher.publish_status({"frames_seen": 1}) is False  # offline: skipped
        assert box.depth() == 5

        broker.start()
        messages = sub.wait_for(lambda ms: len(set(detection_ids(ms))) == 6, timeout=30)
        assert sorted(set(detection_ids(messages))) == [sample_event(i, OBS)["id"]
                                                        for i in range(6)]
        assert publisher.flush(10) and box.depth() == 0
        publisher.stop(5)
        box.close()


def test_many_events_with_a_small_in_flight_window_arrive_in_order(tmp_path):
    with run_broker(tmp_path) as broker, Subscriber(broker, [DETECTION]) as sub:
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 1000)
        for i in range(40):
            queue_event(box, i)
        publisher = Publisher(broker.client_mqtt(), THING, OBS, box, max_inflight=3)
        publisher.start()
        messages = sub.wait_for(lambda ms: len(detection_ids(ms)) >= 40, timeout=60)
        assert detection_ids(messages) == [sample_event(i, OBS)["id"] for i in range(40)]
        assert publisher.flush(10) and publisher.delivered == 40
        publisher.stop(5)
        box.close()


def test_start_never_blocks_or_raises_without_a_broker(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite", 10)
    queue_event(box, 0)
    with run_broker(tmp_path) as broker:
        port = broker.port
    for host in ("127.0.0.1", "no-such-host.invalid"):
        cfg = dataclasses.replace(broker.client_mqtt(), host=host, port=port)
        publisher = Publisher(cfg, THING, OBS, box, reconnect_min_s=1, reconnect_max_s=1)
        publisher.start()
        publisher.wake()
        assert not publisher.wait_connected(1.5)
        publisher.stop(2)
    assert box.depth() == 1
    box.close()


# ---------------------------------------------------------------- transports


def test_plain_tcp_local_mosquitto(tmp_path, mqtt_broker_plain):
    broker = mqtt_broker_plain
    with Subscriber(broker, ["guaita/#"]) as sub:
        assert broker.ca is None
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 10)
        cfg = broker.client_mqtt(port=broker.port)
        assert cfg.tls == TLSConfig()
        event = queue_event(box, 3)
        publisher = Publisher(cfg, "guaita-local", OBS, box)
        publisher.start()
        messages = sub.wait_for(lambda ms: detection_ids(ms) == [event["id"]])
        assert [m.payload for m in messages if m.topic == DETECTION] == [encode_event(event)]
        publisher.stop(5)
        box.close()


def test_alpn_and_sni_as_aws_iot_on_443(tmp_path):
    """A TLS server standing in for AWS IoT Core: checks SNI, ALPN, the client certificate and
    the MQTT 3.1.1 CONNECT, then answers CONNACK."""
    with run_broker(tmp_path) as broker:
        broker.stop()  # only its PKI is used here
    d = broker.directory
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(d / "server.pem", d / "server.key")
    server_ctx.load_verify_locations(d / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.set_alpn_protocols(["x-amzn-mqtt-ca"])
    seen: dict[str, object] = {}
    server_ctx.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["alpn"] = tls.selected_alpn_protocol()
            seen["cn"] = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
            seen["connect"] = tls.recv(4096)
            tls.sendall(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK accepted
            tls.recv(4096)  # DISCONNECT

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cfg = broker.client_mqtt(host="localhost", port=port, tls=TLSConfig(
        ca=str(broker.ca), cert=str(broker.client_cert), key=str(broker.client_key),
        alpn="x-amzn-mqtt-ca"))
    check_connection(cfg, THING)
    thread.join(10)
    listener.close()
    assert seen["sni"] == "localhost"
    assert seen["alpn"] == "x-amzn-mqtt-ca"
    assert seen["cn"] == THING
    connect = seen["connect"]
    assert isinstance(connect, bytes) and connect[0] == 0x10  # CONNECT
    assert b"\x00\x04MQTT\x04" in connect  # protocol level 4 = MQTT 3.1.1
    assert THING.encode() in connect


# ---------------------------------------------------------------- status, Home Assistant


def test_status_and_home_assistant_discovery(tmp_path, mqtt_broker):
    broker = mqtt_broker
    with Subscriber(broker, ["homeassistant/#", STATUS]) as sub:
        sub.wait_subscribed()
        box = Outbox(tmp_path / "outbox.sqlite", 10)
        cfg = broker.client_mqtt(home_assistant_discovery=True)
        publisher = Publisher(cfg, THING, OBS, box, sw_version="0.1.0")
        publisher.start()
        topics = discovery_topics(cfg, OBS)
        assert len(topics) == len(HA_SENSORS)
        messages = sub.wait_for(lambda ms: {m.topic for m in ms} >= set(topics))
        configs = {m.topic: m.json() for m in messages if m.topic in topics}
        # Retained: Home Assistant restarting later still discovers the sensors.
        with Subscriber(broker, ["homeassistant/#"], client_id="ha-restarted") as late:
            again = late.wait_for(lambda ms: {m.topic for m in ms} >= set(topics))
            assert all(m.retain for m in again)
        status = {"frames_seen": 812, "frames_scored": 810, "detected": 3, "suppressed": 5,
                  "outbox_depth": 0, "last_frame": "image-20240607043000.jpg",
                  "last_meteor_utc": "2024-06-07T02:13:30Z", "uptime_s": 3600.5,
                  "model": {"name": "guaita", "version": "2024.06.1", "sha256": "0" * 64}}
        assert publisher.publish_status(status)
        received = sub.wait_for(lambda ms: any(m.topic == STATUS for m in ms))
        (msg,) = [m for m in received if m.topic == STATUS]
        assert msg.json() == status

        env = jinja2.Environment()
        for topic, config in configs.items():
            assert config["state_topic"] == STATUS
            assert config["availability_topic"] == AVAILABILITY
            assert config["device"]["identifiers"] == [f"guaita_{OBS}"]
            assert config["unique_id"].startswith(f"guaita_{OBS}_")
            key = next(k for k, _, _ in HA_SENSORS if topic.endswith(
                f"/{k.replace('.', '_')}/config"))
            expected = status
            for part in key.split("."):
                expected = expected[part]
            rendered = env.from_string(config["value_template"]).render(value_json=msg.json())
            assert rendered == str(expected)
            # A status without the field renders "None" (Home Assistant: unknown), not an error.
            assert env.from_string(config["value_template"]).render(value_json={}) == "None"
        assert configs[f"homeassistant/sensor/guaita_{OBS}/last_meteor_utc/config"][
            "device_class"] == "timestamp"
        publisher.stop(5)
        box.close()
