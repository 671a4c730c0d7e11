"""Shared pieces for the cloud tests (holds no tests itself).

- ``make_event``: a schema-valid detection event with a real JPEG preview;
- ``FakeTelegram``: a real HTTP server on a loopback port standing in for api.telegram.org,
  recording every request (multipart decoded) and answering from a script (e.g. 429 then 200);
- ``cloud_env``: a fresh bucket on the moto S3 server, the token in moto's SSM, the env vars
  the Lambda reads, and the ingest handler's per-container cache reset.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import cv2
import numpy as np
import pytest

TOKEN = "123456:TEST-token-must-never-be-logged"
CHAT_ID = "-1001234567890"
TOKEN_PARAM = "/guaita/telegram-token"
MADRID = ZoneInfo("Europe/Madrid")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preview_jpeg(seed: int = 0, width: int = 448, height: int = 224) -> bytes:
    """Original crop (grey sky, white streak) | difference (black, green streak), as JPEG.

    The green half lets a screenshot test tell a loaded preview from a broken image.
    """
    rng = np.random.default_rng(seed)
    half = width // 2
    sky = rng.normal(30, 4, (height, half)).clip(0, 255).astype(np.uint8)
    x0, y0 = 20 + seed * 7 % 60, 30 + seed * 13 % 80
    cv2.line(sky, (x0, y0), (x0 + 150, y0 + 60), 230, 2)
    left = cv2.cvtColor(sky, cv2.COLOR_GRAY2BGR)
    right = np.zeros((height, width - half, 3), np.uint8)
    cv2.line(right, (x0, y0), (x0 + 150, y0 + 60), (0, 255, 0), 5)
    ok, data = cv2.imencode(".jpg", np.hstack([left, right]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def make_event(
    observatory: str = "pujalt",
    captured_local: datetime | None = None,
    *,
    score: float = 0.973,
    suppressed: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """A detection event as the edge publishes it (schema version 1)."""
    local = captured_local or datetime(2024, 8, 12, 23, 41, 7, tzinfo=MADRID)
    night = (local - timedelta(hours=12)).strftime("%Y%m%d")
    stamp = local.strftime("%Y%m%d%H%M%S")
    jpeg = preview_jpeg(seed)
    event: dict[str, Any] = {
        "schema_version": 1,
        "id": f"{observatory}-{stamp}",
        "observatory": observatory,
        "night": night,
        "image": f"image-{stamp}.jpg",
        "captured_utc": local.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z",
        "captured_local": local.isoformat(timespec="seconds"),
        "processed_utc": (local + timedelta(seconds=3)).astimezone(UTC).replace(tzinfo=None)
        .isoformat(timespec="milliseconds") + "Z",
        "score": score,
        "threshold": 0.85,
        "model": {"name": "guaita-resnet18-g1", "version": "2024.06.1", "sha256": "ab" * 32},
        "streak": {"x1": 600.0, "y1": 410.0, "x2": 750.0, "y2": 470.0, "length_px": 161.6,
                   "angle_deg": 21.8, "bbox": [600.0, 410.0, 150.0, 60.0], "peak": 87.5},
        "suppressed": suppressed,
        "flags": [],
        "latency_ms": {"preprocess": 12.5, "model": 98.0},
        "preview": {"format": "jpeg", "width": 448, "height": 224,
                    "data": base64.b64encode(jpeg).decode()},
    }
    event.update(overrides)
    return event


def rule_event(event: dict[str, Any], thing: str | None = None) -> dict[str, Any]:
    """What the IoT rule ``SELECT *, topic(2) AS thing`` hands the Lambda."""
    return {**event, "thing": event["observatory"] if thing is None else thing}


# ---------------------------------------------------------------------------- Telegram


@dataclass
class TelegramRequest:
    path: str
    fields: dict[str, str]
    photo: bytes | None


@dataclass
class FakeTelegram:
    """Answers POST /bot<token>/sendPhoto from ``script`` (status, json), then 200 ok."""

    url: str = ""
    requests: list[TelegramRequest] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if self.script:
                return self.script.pop(0)
            return 200, {"ok": True, "result": {"message_id": len(self.requests)}}

    def record(self, path: str, content_type: str, body: bytes) -> None:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        fields: dict[str, str] = {}
        photo = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                photo = part.get_payload(decode=True)
            else:
                fields[name] = part.get_payload(decode=True).decode()
        with self.lock:
            self.requests.append(TelegramRequest(path, fields, photo))


def _handler_for(fake: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            fake.record(self.path, self.headers.get("Content-Type", ""), body)
            status, answer = fake.answer()
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- AWS


@dataclass
class CloudEnv:
    s3: Any
    bucket: str
    telegram: FakeTelegram

    def keys(self, prefix: str = "") -> list[str]:
        answer = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in answer.get("Contents", ()))

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture
def cloud_env(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, fake_telegram: FakeTelegram
) -> Iterator[CloudEnv]:
    from cloud import ingest

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    bucket = f"guaita-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    boto3.client("ssm").put_parameter(
        Name=TOKEN_PARAM, Value=TOKEN, Type="SecureString", Overwrite=True
    )
    for name, value in {
        "BUCKET": bucket,
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "TELEGRAM_TOKEN_PARAM": TOKEN_PARAM,
        "TELEGRAM_API_BASE": fake_telegram.url,
        "TELEGRAM_MAX_WAIT_S": "5",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("TELEGRAM_TOKEN", "TELEGRAM_OPT_OUT"):
        monkeypatch.delenv(name, raising=False)
    ingest.reset()
    try:
        yield CloudEnv(s3, bucket, fake_telegram)
    finally:
        ingest.reset()
