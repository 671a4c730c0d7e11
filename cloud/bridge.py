"""``guaita bridge``: a local stand-in for the IoT rule — MQTT broker → the ingest handler.

For tests, and for observatories that run their own broker instead of AWS IoT Core. It
subscribes to ``<prefix>/+/detection`` and calls :func:`cloud.ingest.handler` with exactly the
event the IoT rule ``SELECT *, topic(2) AS thing ... WHERE isUndefined(thing)`` would produce:
the payload's JSON plus ``thing`` = the topic's second segment (and, like the rule, it drops a
payload that brings its own ``thing``). S3 and Telegram settings come from the same
environment variables as the Lambda (BUCKET, TELEGRAM_*, AWS_ENDPOINT_URL for MinIO/moto).

Messages are acknowledged only after the handler returned (paho's manual ack): if the bridge
dies mid-event, the broker redelivers it to the same persistent session. A rejected event is
acknowledged (resending it cannot help); one that raised (S3 unreachable) is retried a few
times, then left unacknowledged for redelivery on the next connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
RETRIES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="localhost", help="MQTT broker host")
    parser.add_argument("--port", type=int, default=8883, help="MQTT broker port (default 8883)")
    parser.add_argument("--ca", default="", help="CA certificate file (enables TLS)")
    parser.add_argument("--cert", default="", help="client certificate file")
    parser.add_argument("--key", default="", help="client private key file")
    parser.add_argument("--topic-prefix", default="guaita", help="topic prefix (default guaita)")
    parser.add_argument("--bucket", default=os.environ.get("BUCKET", ""),
                        help="S3 bucket (default: $BUCKET)")
    parser.add_argument("--client-id", default="guaita-bridge",
                        help="MQTT client id; keep it fixed so the broker keeps the session")


def event_from_message(topic: str, payload: bytes) -> dict[str, Any] | str:
    """What the IoT rule would pass to the Lambda, or a reason why there is nothing to pass."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"payload is not JSON ({exc})"
    if not isinstance(data, dict):
        return "payload is not a JSON object"
    if "thing" in data:  # the rule's WHERE isUndefined(thing) drops these: no spoofed sender
        return "payload carries its own 'thing' key"
    parts = topic.split("/")
    # topic(2) in IoT SQL is 1-based: the second level, i.e. the thing name.
    data["thing"] = parts[1] if len(parts) > 1 else ""
    return data


class Bridge:
    """Owns the MQTT client and the worker thread that calls the handler."""

    def __init__(
        self,
        args: argparse.Namespace,
        handler: Callable[[dict[str, Any], Any], dict[str, Any]],
    ) -> None:
        import paho.mqtt.client as mqtt  # imported here: the Lambda zip never needs paho

        self.topic = f"{args.topic_prefix}/+/detection"
        self.handler = handler
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.stopping = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            clean_session=False,
            manual_ack=True,
        )
        if args.ca or args.cert:
            self.client.tls_set(
                ca_certs=args.ca or None,
                certfile=args.cert or None,
                keyfile=args.key or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self.client.reconnect_delay_set(1, 60)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.host, self.port = args.host, args.port

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        client.subscribe(self.topic, qos=1)
        log.info("connected to %s:%d, subscribed to %s", self.host, self.port, self.topic)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self.stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # Never block the network loop (keepalives): the worker does the S3/Telegram work.
        self.jobs.put(message)

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                message = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.process(message.topic, message.payload):
                self.client.ack(message.mid, message.qos)

    def process(self, topic: str, payload: bytes) -> bool:
        """Run the handler for one message; True when it may be acknowledged."""
        event = event_from_message(topic, payload)
        if isinstance(event, str):
            log.warning("rejected message on %s: %s", topic, event)
            return True
        for attempt in range(1, RETRIES + 1):
            try:
                result = self.handler(event, None)
            except Exception as exc:  # any failure: retry, then leave unacked
                log.error("ingest failed on %s (attempt %d/%d): %s", topic, attempt, RETRIES, exc)
                if attempt < RETRIES and not self.stopping.wait(2.0 ** (attempt - 1)):
                    continue
                return False
            log.info("%s: %s", topic, json.dumps(result, sort_keys=True))
            return True
        return False

    def run(self) -> int:
        worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        worker.start()
        self.client.connect_async(self.host, self.port, keepalive=60)
        self.client.loop_start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.stopping.set()
            worker.join(timeout=30)  # let the event in hand finish and be acknowledged
            self.client.disconnect()
            self.client.loop_stop()
        return 0


def run(args: argparse.Namespace) -> int:
    if not _PREFIX.fullmatch(args.topic_prefix):
        log.error("--topic-prefix must be one topic level of [A-Za-z0-9_-], got %r",
                  args.topic_prefix)
        return 2
    if not args.bucket:
        log.error("no bucket: pass --bucket or set BUCKET")
        return 2
    if bool(args.cert) != bool(args.key):
        log.error("--cert and --key go together")
        return 2
    os.environ["BUCKET"] = args.bucket
    # botocore's DEBUG output includes response bodies, e.g. a decrypted SSM token: keep it out
    # even under `guaita -v`.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    from cloud import ingest

    ingest.reset()
    bridge = Bridge(args, ingest.handler)

    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        bridge.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    code = bridge.run()
    log.info("bridge stopped after %.0f s", time.monotonic() - started)
    return code
