"""Ingest Lambda against moto's S3/SSM server and a fake Telegram API (real HTTP servers)."""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime

import pytest
from test_cloud_support import (
    CHAT_ID,
    MADRID,
    TOKEN,
    CloudEnv,
    free_port,
    make_event,
    rule_event,
)

from cloud import ingest, telegram

pytest_plugins = ["test_cloud_support"]  # the cloud_env and fake_telegram fixtures

RECORD = "detections/20240812/pujalt/pujalt-20240812234107.json"
PREVIEW = "previews/20240812/pujalt/pujalt-20240812234107.jpg"


def test_valid_event_is_stored_and_posted(cloud_env: CloudEnv, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud")
    event = make_event()
    result = ingest.handler(rule_event(event), None)

    assert result["status"] == "stored"
    assert result["keys"] == {"record": RECORD, "preview": PREVIEW}
    assert result["telegram"] == "sent"
    jpeg = base64.b64decode(event["preview"]["data"])
    assert cloud_env.get(PREVIEW) == jpeg
    head = cloud_env.s3.head_object(Bucket=cloud_env.bucket, Key=PREVIEW)
    assert head["ContentType"] == "image/jpeg"
    record = json.loads(cloud_env.get(RECORD))
    assert "thing" not in record
    assert record["preview"] == {"format": "jpeg", "width": 448, "height": 224, "key": PREVIEW}
    assert {k: v for k, v in record.items() if k != "preview"} == {
        k: v for k, v in event.items() if k != "preview"
    }

    [sent] = cloud_env.telegram.requests
    assert sent.path == f"/bot{TOKEN}/sendPhoto"  # token fetched from SSM SecureString
    assert sent.fields["chat_id"] == CHAT_ID
    assert sent.photo == jpeg
    caption = sent.fields["caption"]
    assert "Observatory: pujalt" in caption
    assert "Local time: 2024-08-12 23:41:07 +0200" in caption
    assert "Score: 0.97" in caption
    assert "guaita-resnet18-g1 2024.06.1" in caption
    assert TOKEN not in caplog.text


def test_resend_overwrites_same_keys_and_posts_once(cloud_env: CloudEnv) -> None:
    event = make_event()
    first = ingest.handler(rule_event(event), None)
    second = ingest.handler(rule_event(event), None)
    assert first["keys"] == second["keys"]
    assert cloud_env.keys("detections/") == [RECORD]
    assert cloud_env.keys("previews/") == [PREVIEW]
    assert second["telegram"] == "skipped: already posted"
    assert len(cloud_env.telegram.requests) == 1


def _huge_latency() -> dict[str, float]:
    # Schema-valid (latency_ms allows any number-valued keys) but far over IoT's 128 KB.
    return {f"stage{i:05d}": 1.0 for i in range(12000)}


HOSTILE = {
    "missing score": lambda e: {k: v for k, v in e.items() if k != "score"},
    "score of wrong type": lambda e: {**e, "score": "0.99"},
    "score above 1": lambda e: {**e, "score": 7},
    "NaN score": lambda e: {**e, "score": float("nan")},
    "infinite threshold": lambda e: {**e, "threshold": float("inf")},
    "unknown key": lambda e: {**e, "html": "<b>x</b>"},
    "dot-dot id": lambda e: {**e, "id": "../../site/index"},
    "dots-only id": lambda e: {**e, "id": "a.."},
    "slash in id": lambda e: {**e, "id": "a/b"},
    "newline after id": lambda e: {**e, "id": "pujalt-1\n"},
    "script in observatory": lambda e: {**e, "observatory": "<script>alert(1)</script>"},
    "bad night": lambda e: {**e, "night": "20241399"},
    "bad date": lambda e: {**e, "captured_local": "yesterday"},
    "preview too big": lambda e: {**e, "preview": {**e["preview"], "data": "A" * 90004}},
    "preview not base64": lambda e: {**e, "preview": {**e["preview"], "data": "!!!notb64"}},
    "preview is html": lambda e: {
        **e, "preview": {**e["preview"], "data": base64.b64encode(b"<html>x</html>").decode()}
    },
    "oversized event": lambda e: {**e, "latency_ms": _huge_latency()},
}


@pytest.mark.parametrize("mutate", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_events_are_rejected_and_nothing_written(
    cloud_env: CloudEnv, caplog, mutate
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.ingest")
    event = mutate(make_event())
    result = ingest.handler({**event, "thing": "pujalt"}, None)
    assert result["status"] == "rejected"
    assert result["reason"]
    assert cloud_env.keys() == []
    assert cloud_env.telegram.requests == []
    assert "rejected event" in caplog.text
    assert "\nalert" not in caplog.text and "pujalt-1\n" not in caplog.text  # one log line


@pytest.mark.parametrize(
    "raw",
    [
        rule_event(make_event(observatory="pujalt"), thing="other-site"),  # not itself
        rule_event(make_event(observatory="other-site"), thing="pujalt"),
        make_event(),  # no thing: not from the IoT rule
        rule_event(make_event(), thing="../pujalt"),
        ["not", "an", "object"],
        "a string",
    ],
    ids=["thing≠observatory", "observatory≠thing", "no thing", "hostile thing", "list", "str"],
)
def test_device_may_only_report_as_itself(cloud_env: CloudEnv, raw) -> None:
    result = ingest.handler(raw, None)
    assert result["status"] == "rejected"
    assert cloud_env.keys() == []
    assert cloud_env.telegram.requests == []


def test_safe_segment_whitelist() -> None:
    assert ingest.safe_segment("pujalt-20240812234107", "id") == "pujalt-20240812234107"
    for bad in ("", ".", "..", "a..b", "../x", "a/b", "a\\b", "a\n", " a", "-a", "a b", None, 3):
        with pytest.raises(ingest.Rejected):
            ingest.safe_segment(bad, "id")


def test_suppressed_event_is_stored_not_posted(cloud_env: CloudEnv) -> None:
    result = ingest.handler(rule_event(make_event(suppressed="satellite")), None)
    assert result["status"] == "stored"
    assert result["telegram"] == "skipped: suppressed"
    assert cloud_env.keys("detections/") == [RECORD]
    assert cloud_env.telegram.requests == []


def test_opt_out_by_environment(cloud_env: CloudEnv, monkeypatch) -> None:
    monkeypatch.setenv("TELEGRAM_OPT_OUT", "elsewhere, pujalt")
    ingest.reset()
    result = ingest.handler(rule_event(make_event()), None)
    assert result["telegram"] == "skipped: opted out"
    assert cloud_env.keys("detections/") == [RECORD]
    assert cloud_env.telegram.requests == []


def test_opt_out_by_s3_config(cloud_env: CloudEnv) -> None:
    config = {"pujalt": {"telegram": False}, "montsec": {"telegram": True}}
    cloud_env.s3.put_object(
        Bucket=cloud_env.bucket, Key="config/observatories.json", Body=json.dumps(config)
    )
    out = ingest.handler(rule_event(make_event("pujalt")), None)
    sent = ingest.handler(rule_event(make_event("montsec")), None)
    assert out["telegram"] == "skipped: opted out"
    assert sent["telegram"] == "sent"
    assert [r.fields["caption"].splitlines()[1] for r in cloud_env.telegram.requests] == [
        "Observatory: montsec"
    ]
    assert len(cloud_env.keys("detections/")) == 2


def test_telegram_429_retry_after_is_honoured(cloud_env: CloudEnv) -> None:
    too_many = {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1}}
    cloud_env.telegram.script[:] = [(429, too_many), (429, too_many)]
    result = ingest.handler(rule_event(make_event()), None)
    assert result["telegram"] == "sent"
    assert result["telegram_attempts"] == 3
    assert len(cloud_env.telegram.requests) == 3


def test_telegram_retry_after_beyond_cap_gives_up_but_keeps_record(
    cloud_env: CloudEnv, monkeypatch
) -> None:
    too_many = {"ok": False, "error_code": 429, "parameters": {"retry_after": 3600}}
    cloud_env.telegram.script[:] = [(429, too_many)]
    result = ingest.handler(rule_event(make_event()), None)
    assert result["telegram"] == "failed"
    assert "cap" in result["telegram_error"]
    assert len(cloud_env.telegram.requests) == 1  # did not wait an hour to retry
    assert cloud_env.keys("detections/") == [RECORD]
    assert cloud_env.keys("notified/") == []  # so a re-send will try to post again


def test_telegram_down_never_loses_the_record(cloud_env: CloudEnv, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud")
    monkeypatch.setenv("TELEGRAM_API_BASE", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("TELEGRAM_MAX_WAIT_S", "1.5")
    ingest.reset()
    result = ingest.handler(rule_event(make_event()), None)
    assert result["status"] == "stored"
    assert result["telegram"] == "failed"
    assert cloud_env.keys("detections/") == [RECORD]
    assert cloud_env.keys("previews/") == [PREVIEW]
    assert "telegram failed" in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in json.dumps(result)


def test_telegram_refusal_is_not_retried_and_token_not_leaked(cloud_env: CloudEnv, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud")
    cloud_env.telegram.script[:] = [(401, {"ok": False, "description": "Unauthorized"})]
    result = ingest.handler(rule_event(make_event()), None)
    assert result["telegram"] == "failed"
    assert "401" in result["telegram_error"]
    assert len(cloud_env.telegram.requests) == 1
    assert cloud_env.keys("detections/") == [RECORD]
    assert TOKEN not in caplog.text and TOKEN not in json.dumps(result)


def test_s3_failure_raises_so_lambda_retries(cloud_env: CloudEnv, monkeypatch) -> None:
    monkeypatch.setenv("BUCKET", "no-such-bucket-guaita")
    ingest.reset()
    with pytest.raises(Exception, match="NoSuchBucket"):
        ingest.handler(rule_event(make_event()), None)
    assert cloud_env.telegram.requests == []


def test_caption_and_multipart_are_well_formed() -> None:
    event = make_event(captured_local=datetime(2024, 1, 5, 3, 4, 5, tzinfo=MADRID), score=0.5)
    caption = telegram.format_caption(event)
    assert caption.splitlines()[1:] == [
        "Observatory: pujalt",
        "Local time: 2024-01-05 03:04:05 +0100",
        "Score: 0.50",
        "Model: guaita-resnet18-g1 2024.06.1",
    ]
    files = {"f": ("x.jpg", "image/jpeg", b"\0")}
    body, content_type = telegram.encode_multipart({"a": "é"}, files)
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert "é".encode() in body
