"""MQTT delivery: drain the durable outbox to the broker (AWS IoT Core or a local Mosquitto).

paho-mqtt 2.x, MQTT 3.1.1, client id = thing name, TLS with a CA + client certificate (optionally
ALPN ``x-amzn-mqtt-ca`` for port 443), or plain TCP for a local broker.

Delivery: a small pump thread publishes the oldest outbox rows at QoS 1, at most `max_inflight`
unacknowledged at a time (AWS allows 100), and deletes a row only after its PUBACK. Why a pump
thread and not ``outbox.ack`` inside ``on_publish``: paho calls on_publish while holding its
internal message lock, and ``publish()`` takes that same lock, so mapping mid → event id under a
lock of ours from both threads can deadlock, and without a lock a fast PUBACK can arrive before
the mid is recorded. Here on_publish only queues the mid; the pump thread, the only one that
publishes events and touches the mid map, acks. When the link drops, paho keeps the
unacknowledged messages and re-sends them (same payload, DUP set) on reconnect; the pump sends
the rest. A process that dies loses nothing: unacknowledged rows are still in SQLite and are sent
again by the next process, so duplicates are only exact re-sends with the same event id.

Availability: last will ``offline`` (retained) on ``<prefix>/<observatory>/availability``;
``online`` (retained) on every connect; ``offline`` on a clean stop. Status: retained, QoS 0,
only while connected (a stale heartbeat is worth nothing; the outbox carries what matters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.config import MQTTConfig, TLSConfig
from edge.events import availability_topic, status_topic
from edge.outbox import Outbox

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
MAX_INFLIGHT = 20  # well below AWS IoT Core's 100 unacknowledged publishes per connection
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 120
PUMP_IDLE_S = 1.0  # the pump also wakes this often on its own (a lost wake costs ≤ 1 s)

# Home Assistant discovery: (status key or dotted path, name, extra discovery fields).
# Keys follow the daemon's status dict (edge/service.py Daemon.status).
HA_SENSORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("frames_seen", "Frames seen", {"state_class": "total_increasing", "icon": "mdi:camera"}),
    ("frames_scored", "Frames scored", {"state_class": "total_increasing", "icon": "mdi:camera"}),
    ("detected", "Meteors detected", {"state_class": "total_increasing", "icon": "mdi:meteor"}),
    ("suppressed", "Candidates suppressed",
     {"state_class": "total_increasing", "icon": "mdi:satellite-variant"}),
    ("outbox_depth", "Outbox depth", {"state_class": "measurement", "icon": "mdi:tray-full"}),
    ("last_frame", "Last frame", {"icon": "mdi:image"}),
    ("last_meteor_utc", "Last meteor", {"device_class": "timestamp", "icon": "mdi:meteor"}),
    ("uptime_s", "Uptime", {"device_class": "duration", "unit_of_measurement": "s",
                            "state_class": "measurement"}),
    ("model.version", "Model version", {"icon": "mdi:brain"}),
)


class PublishError(RuntimeError):
    """MQTT settings that cannot work (bad certificate files), or a failed connection check."""


# ---------------------------------------------------------------- client construction


def uses_tls(cfg: MQTTConfig) -> bool:
    """TLS when any TLS file or ALPN is configured, or on the TLS ports 8883/443."""
    t = cfg.tls
    return bool(t.ca or t.cert or t.alpn) or cfg.port in (8883, 443)


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """Client TLS context: server verified against `ca` (system CAs if empty), client cert, ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # AWS IoT Core requires TLS 1.2+
    try:
        if tls.ca:
            ctx.load_verify_locations(cafile=str(Path(tls.ca).expanduser()))
        else:
            ctx.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise PublishError(f"mqtt.tls.ca: cannot load {tls.ca}: {exc}") from exc
    if tls.cert:
        try:
            ctx.load_cert_chain(str(Path(tls.cert).expanduser()),
                                str(Path(tls.key).expanduser()) if tls.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise PublishError(
                f"mqtt.tls.cert/mqtt.tls.key: cannot load {tls.cert} with {tls.key}: {exc}"
            ) from exc
    if tls.alpn:
        ctx.set_alpn_protocols([p.strip() for p in tls.alpn.split(",") if p.strip()])
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_client(cfg: MQTTConfig, client_id: str, *, clean_session: bool = False) -> paho.Client:
    """A paho client with the transport settings of `cfg` (no callbacks, no will)."""
    if not client_id or len(client_id.encode()) > 128:
        raise PublishError(f"mqtt.client_id: 1-128 bytes required, got {client_id!r}")
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    if uses_tls(cfg):
        client.tls_set_context(tls_context(cfg.tls))
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    return client


def check_connection(cfg: MQTTConfig, client_id: str, timeout: float = 10.0) -> None:
    """Connect once, synchronously, and disconnect; PublishError says why it failed.

    For ``guaita check-config`` and tests: the daemon itself never blocks on the broker. AWS IoT
    drops an existing connection with the same client id, so run it while the daemon is stopped
    (or accept one reconnect of the daemon).
    """
    client = make_client(cfg, client_id, clean_session=True)
    result: dict[str, str] = {}

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["connect"] = "ok" if not reason.is_failure else f"refused: {reason}"

    def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result.setdefault("connect", f"connection closed by the broker ({reason})")

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    where = f"{cfg.host}:{cfg.port}"
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(5, cfg.keepalive_s))
        deadline = time.monotonic() + timeout
        while "connect" not in result and time.monotonic() < deadline:
            rc = client.loop(timeout=0.2)
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,) and "connect" not in result:
                result["connect"] = f"connection lost ({rc.name})"
    except (OSError, ssl.SSLError) as exc:
        raise PublishError(f"MQTT {where}: {exc}") from exc
    finally:
        if result.get("connect") == "ok":
            client.disconnect()
        if client.socket() is not None:
            client.loop(timeout=0.1)  # flush the DISCONNECT
    outcome = result.get("connect", f"no CONNACK within {timeout} s")
    if outcome != "ok":
        if uses_tls(cfg) and "refused" not in outcome:
            # TLS 1.3 reports a rejected client certificate only as a closed connection.
            outcome += ("; with TLS this usually means the broker rejected the client "
                        "certificate (mqtt.tls.cert/key: wrong CA, inactive, or no policy)")
        raise PublishError(f"MQTT {where}: {outcome}")


# ---------------------------------------------------------------- the publisher


class Publisher:
    """Owns the MQTT connection; drains `outbox` at QoS 1; never blocks the daemon thread."""

    def __init__(
        self,
        mqtt: MQTTConfig,
        client_id: str,
        observatory: str,
        outbox: Outbox,
        *,
        max_inflight: int = MAX_INFLIGHT,
        reconnect_min_s: int = RECONNECT_MIN_S,
        reconnect_max_s: int = RECONNECT_MAX_S,
        sw_version: str = "",
    ) -> None:
        self.cfg = mqtt
        self.client_id = client_id
        self.observatory = observatory
        self.outbox = outbox
        self.max_inflight = max_inflight
        self.sw_version = sw_version
        self.availability_topic = availability_topic(mqtt.topic_prefix, observatory)
        self.status_topic = status_topic(mqtt.topic_prefix, observatory)
        self.delivered = 0  # outbox events acknowledged by the broker since start

        self._client = make_client(mqtt, client_id, clean_session=False)
        # Our cap is the effective one; paho's leaves room for availability/status QoS 1.
        self._client.max_inflight_messages_set(max_inflight + 10)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._reconnect_max_s = reconnect_max_s
        self._client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish

        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acked: queue.SimpleQueue[int] = queue.SimpleQueue()  # mids from on_publish
        self._inflight: dict[int, str] = {}  # mid → event id; pump thread only
        self._failures = 0  # consecutive failed connection attempts (log the first loudly)
        self._pump_thread: threading.Thread | None = None
        self._started = False

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def start(self) -> None:
        """Connect in the background; retries with exponential backoff; never raises on a
        broker that is down (DNS failure and refused connections included)."""
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        self._pump_thread = threading.Thread(target=self._pump, name="guaita-mqtt-pump",
                                             daemon=True)
        self._pump_thread.start()
        log.info("MQTT: connecting to %s:%d as %s (%s)", self.cfg.host, self.cfg.port,
                 self.client_id, "TLS" if uses_tls(self.cfg) else "plain TCP")

    def wake(self) -> None:
        """Something was added to the outbox: publish it now (any thread)."""
        self._wake.set()

    def publish_status(self, status: dict[str, Any]) -> bool:
        """Heartbeat on the status topic (retained, QoS 0); skipped while offline."""
        if not self.connected:
            return False
        payload = json.dumps(status, separators=(",", ":"), default=str)
        info = self._client.publish(self.status_topic, payload, qos=0, retain=True)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight (batch mode, tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0 and not self._inflight:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.outbox.depth() == 0 and not self._inflight

    def stop(self, timeout: float = 5.0) -> None:
        """Let in-flight events be acknowledged, announce 'offline', disconnect cleanly."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._pump_thread is not None:
            self._pump_thread.join(max(0.1, deadline - time.monotonic()))
        # The pump has stopped: collect the PUBACKs still on their way here, so those rows are
        # not sent again by the next start.
        while self._inflight and self.connected and time.monotonic() < deadline:
            self._drain_acks(block=0.05)
        self._drain_acks()
        if self.connected:
            info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            # Connection lost meanwhile (RuntimeError): the broker sends the will instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        # Unacknowledged rows stay in the outbox; a later start() sends them again.
        self._inflight.clear()
        self._started = False
        log.info("MQTT: stopped (%d delivered, %d still queued)", self.delivered,
                 self.outbox.depth())

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any,
                    _p: Any) -> None:
        if reason.is_failure:
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "MQTT: %s:%d refused the connection: %s", self.cfg.host,
                    self.cfg.port, reason)
            return
        self._failures = 0
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        if self.cfg.home_assistant_discovery:
            self._publish_discovery(client)
        self._connected.set()
        log.info("MQTT: connected to %s:%d (session present: %s, %d queued)", self.cfg.host,
                 self.cfg.port, bool(getattr(flags, "session_present", False)),
                 self.outbox.depth())
        self._wake.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping.is_set():
            log.warning("MQTT: connection lost (%s); reconnecting with backoff", reason)

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "MQTT: cannot connect to %s:%d; retrying with backoff up to %d s "
                "(events wait in the outbox)", self.cfg.host, self.cfg.port,
                self._reconnect_max_s)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        # Called with paho's message lock held: no locks, no outbox access here.
        self._acked.put(mid)
        self._wake.set()

    # ------------------------------------------------------------ pump thread

    def _pump(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(PUMP_IDLE_S)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._drain_acks()
                if self.connected:
                    self._fill()
            except Exception:  # the pump must outlive a bad row or a full disk
                log.exception("MQTT: delivery error; retrying")
                time.sleep(1.0)

    def _drain_acks(self, block: float = 0.0) -> None:
        while True:
            try:
                mid = self._acked.get(timeout=block) if block else self._acked.get_nowait()
            except queue.Empty:
                return
            block = 0.0
            event_id = self._inflight.pop(mid, None)
            if event_id is None:  # availability, status or discovery message
                continue
            self.outbox.ack(event_id)
            self.delivered += 1
            log.debug("MQTT: delivered %s", event_id)

    def _fill(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for item in self.outbox.pending(room, exclude=set(self._inflight.values())):
            info = self._client.publish(item.topic, item.payload, qos=1)
            # NO_CONN: paho keeps the message and sends it on reconnect, so it is in flight too.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("MQTT: publish of %s failed (%s); will retry", item.event_id,
                            info.rc.name)
                break
            self._inflight[info.mid] = item.event_id
            self.outbox.mark_attempt(item.event_id)
            if item.attempts >= 3:
                log.warning("MQTT: event %s sent %d times without acknowledgement",
                            item.event_id, item.attempts + 1)

    # ------------------------------------------------------------ Home Assistant

    def _publish_discovery(self, client: paho.Client) -> None:
        node = f"guaita_{self.observatory}"
        device = {"identifiers": [node], "name": f"guaita {self.observatory}",
                  "manufacturer": "guaita", "model": "AllSky meteor detector"}
        if self.sw_version:
            device["sw_version"] = self.sw_version
        for key, name, extra in HA_SENSORS:
            object_id = key.replace(".", "_")
            template = _value_template(key)
            config = {
                "name": name,
                "unique_id": f"{node}_{object_id}",
                "state_topic": self.status_topic,
                "value_template": template,
                "availability_topic": self.availability_topic,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
                "device": device,
                **extra,
            }
            topic = f"{self.cfg.home_assistant_prefix}/sensor/{node}/{object_id}/config"
            client.publish(topic, json.dumps(config, separators=(",", ":")), qos=1, retain=True)


def _value_template(key: str) -> str:
    """Jinja for one status field; a missing or null value renders "None" (HA: unknown)."""
    expr = "value_json"
    for part in key.split(".")[:-1]:
        expr = f"({expr}.get('{part}') or {{}})"
    return "{{ " + f"{expr}.get('{key.split('.')[-1]}')" + " }}"


def discovery_topics(cfg: MQTTConfig, observatory: str) -> list[str]:
    """The retained discovery config topics a Publisher with HA discovery writes."""
    node = f"guaita_{observatory}"
    return [f"{cfg.home_assistant_prefix}/sensor/{node}/{key.replace('.', '_')}/config"
            for key, _, _ in HA_SENSORS]
