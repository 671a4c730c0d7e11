"""Ingest Lambda: one detection event from the IoT rule → S3 record + preview → Telegram.

The IoT rule ``SELECT *, topic(2) AS thing FROM '<prefix>/+/detection' WHERE
isUndefined(thing)`` hands us the device's JSON plus ``thing``, the thing name taken from the
topic (a payload with a ``thing`` key of its own never gets here). The IoT policy lets a device
publish only under its own thing name, so ``thing`` is trustworthy and the payload is not: an
event is accepted only if its ``observatory`` equals ``thing``, it satisfies the shared JSON
Schema, and every value that ends up in an S3 key passes a strict whitelist. Anything else is
rejected with a logged reason and nothing is written (retrying a bad event cannot help, so we
do not raise).

Order matters for durability: the preview and the record are written to S3 first; Telegram is
a notification that may fail (logged, reported in the return value) without losing the record.
S3 errors do raise, so Lambda's asynchronous retries and the on-failure queue keep the event.

Configuration (environment):
  BUCKET                 S3 bucket for detections/ and previews/ (required)
  TELEGRAM_CHAT_ID       chat/channel to post to; empty disables Telegram
  TELEGRAM_TOKEN_PARAM   SSM SecureString parameter holding the bot token
  TELEGRAM_TOKEN         the token itself (local bridge without SSM); never logged
  TELEGRAM_API_BASE      default https://api.telegram.org (tests point it at a fake)
  TELEGRAM_OPT_OUT       comma-separated observatories that never post to Telegram
  TELEGRAM_MAX_WAIT_S    cap on the total time spent waiting for Telegram retries (20)
  OBSERVATORY_CONFIG_KEY S3 key of {"<obs>": {"telegram": false}} (config/observatories.json)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError

from cloud import telegram
from edge.eventschema import EventError, validate_event

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)

MAX_EVENT_BYTES = 128 * 1024  # AWS IoT Core's payload limit: anything larger did not come from it
DETECTIONS = "detections"
PREVIEWS = "previews"
NOTIFIED = "notified"  # marker per event once Telegram accepted it: a re-send does not re-post

# One path segment: starts alphanumeric, then a small alphabet; no slash, no "..", no newline.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Rejected(ValueError):
    """The event is bad or hostile; the message is the logged reason."""


@dataclass(frozen=True)
class Settings:
    bucket: str
    telegram_chat_id: str = ""
    telegram_token_param: str = ""
    telegram_token: str = field(default="", repr=False)
    telegram_api_base: str = telegram.DEFAULT_API_BASE
    telegram_opt_out: frozenset[str] = frozenset()
    telegram_max_wait_s: float = 20.0
    observatory_config_key: str = "config/observatories.json"
    config_ttl_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        bucket = env.get("BUCKET", "")
        if not bucket:
            raise RuntimeError("BUCKET is not set")
        return cls(
            bucket=bucket,
            telegram_chat_id=env.get("TELEGRAM_CHAT_ID", ""),
            telegram_token_param=env.get("TELEGRAM_TOKEN_PARAM", ""),
            telegram_token=env.get("TELEGRAM_TOKEN", ""),
            telegram_api_base=env.get("TELEGRAM_API_BASE") or telegram.DEFAULT_API_BASE,
            telegram_opt_out=frozenset(
                s.strip() for s in env.get("TELEGRAM_OPT_OUT", "").split(",") if s.strip()
            ),
            telegram_max_wait_s=float(env.get("TELEGRAM_MAX_WAIT_S", "20")),
            observatory_config_key=env.get("OBSERVATORY_CONFIG_KEY", "config/observatories.json"),
        )


def safe_segment(value: Any, what: str) -> str:
    """``value`` if it is safe as one S3 key segment, else Rejected (whitelist, not blacklist)."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or ".." in value:
        raise Rejected(f"{what} is not a safe name: {_show(value)}")
    return value


def _show(value: Any, limit: int = 80) -> str:
    """A hostile value made safe for one log line (repr escapes newlines and controls)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def keys_for(event: Mapping[str, Any]) -> tuple[str, str]:
    """(record key, preview key) of a validated event; the same event always gives the same keys."""
    night = safe_segment(event["night"], "night")
    observatory = safe_segment(event["observatory"], "observatory")
    event_id = safe_segment(event["id"], "id")
    record = f"{DETECTIONS}/{night}/{observatory}/{event_id}.json"
    preview = f"{PREVIEWS}/{night}/{observatory}/{event_id}.jpg"
    return record, preview


def check_event(raw: Any) -> tuple[dict[str, Any], bytes]:
    """Validate an IoT-rule event; return (detection event without ``thing``, preview JPEG)."""
    if not isinstance(raw, dict):
        raise Rejected(f"event is not a JSON object but {type(raw).__name__}")
    try:
        # allow_nan=False: a NaN score would slip through every minimum/maximum check.
        size = len(json.dumps(raw, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise Rejected(f"event is not plain JSON: {exc}") from None
    if size > MAX_EVENT_BYTES:
        raise Rejected(f"event is {size} bytes, over the {MAX_EVENT_BYTES} byte limit")
    event = dict(raw)
    if "thing" not in event:
        raise Rejected("no 'thing' in the event: not delivered by the IoT rule")
    thing = safe_segment(event.pop("thing"), "thing")
    try:
        validate_event(event)
    except EventError as exc:
        raise Rejected(f"schema: {exc}") from None
    if event["observatory"] != thing:
        raise Rejected(
            f"observatory {_show(event['observatory'])} does not match the sending thing "
            f"{_show(thing)}: a device may only report as itself"
        )
    keys_for(event)  # rejects ids/names the schema allows but a key must not contain
    try:
        datetime.strptime(event["night"], "%Y%m%d")
        for name in ("captured_utc", "captured_local", "processed_utc"):
            datetime.fromisoformat(event[name])
    except ValueError as exc:
        raise Rejected(f"bad date: {exc}") from None
    try:
        jpeg = base64.b64decode(event["preview"]["data"], validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("preview.data is not valid base64") from None
    # Served as image/jpeg from our site: accept JPEG bytes only, never HTML or SVG.
    if not (jpeg.startswith(b"\xff\xd8\xff") and jpeg.rstrip(b"\0").endswith(b"\xff\xd9")):
        raise Rejected("preview.data is not a JPEG image")
    return event, jpeg


def record_for(event: Mapping[str, Any], preview_key: str) -> dict[str, Any]:
    """The stored record: the event, its preview's base64 replaced by the preview's S3 key."""
    record = dict(event)
    preview = {k: v for k, v in event["preview"].items() if k != "data"}
    record["preview"] = {**preview, "key": preview_key}
    return record


class Ingestor:
    """Holds the AWS clients and the per-container caches (token, observatory config)."""

    def __init__(self, settings: Settings, s3: Any = None, ssm: Any = None) -> None:
        self.settings = settings
        self.s3 = s3 or boto3.client("s3")
        self._ssm = ssm
        self._token: str | None = settings.telegram_token or None
        self._config: tuple[float, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ configuration

    def telegram_token(self) -> str:
        """The bot token, fetched from SSM once per container (never logged)."""
        if self._token is None:
            if not self.settings.telegram_token_param:
                raise telegram.TelegramError("no TELEGRAM_TOKEN_PARAM configured", 0)
            ssm = self._ssm or boto3.client("ssm")
            answer = ssm.get_parameter(
                Name=self.settings.telegram_token_param, WithDecryption=True
            )
            self._token = answer["Parameter"]["Value"]
        return self._token

    def observatory_config(self) -> dict[str, Any]:
        """config/observatories.json from S3, cached for a minute; {} when absent or bad."""
        now = time.monotonic()
        if self._config and now - self._config[0] < self.settings.config_ttl_s:
            return self._config[1]
        config: dict[str, Any] = {}
        key = self.settings.observatory_config_key
        try:
            body = self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                config = loaded
            else:
                log.error("%s is not a JSON object; ignoring it", key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
        except ValueError as exc:
            log.error("%s is not valid JSON (%s); ignoring it", key, exc)
        self._config = (now, config)
        return config

    def telegram_enabled_for(self, observatory: str) -> bool:
        if observatory in self.settings.telegram_opt_out:
            return False
        entry = self.observatory_config().get(observatory)
        return not (isinstance(entry, dict) and entry.get("telegram") is False)

    # ------------------------------------------------------------------ the work

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def ingest(self, raw: Any) -> dict[str, Any]:
        try:
            event, jpeg = check_event(raw)
        except Rejected as exc:
            who = raw.get("thing") if isinstance(raw, dict) else None
            log.warning("rejected event from thing %s: %s", _show(who), exc)
            return {"status": "rejected", "reason": str(exc)}

        record_key, preview_key = keys_for(event)
        bucket = self.settings.bucket
        # Preview first: a record in S3 always has its image.
        self.s3.put_object(Bucket=bucket, Key=preview_key, Body=jpeg, ContentType="image/jpeg")
        body = json.dumps(record_for(event, preview_key), sort_keys=True, indent=1).encode()
        self.s3.put_object(
            Bucket=bucket, Key=record_key, Body=body, ContentType="application/json"
        )
        log.info("stored %s (score %.3f, suppressed=%s)", record_key, event["score"],
                 event["suppressed"])
        result: dict[str, Any] = {
            "status": "stored",
            "keys": {"record": record_key, "preview": preview_key},
        }
        result.update(self.notify(event, jpeg))
        return result

    def notify(self, event: Mapping[str, Any], jpeg: bytes) -> dict[str, Any]:
        """Post to Telegram unless suppressed/opted out/already posted; never raises."""
        observatory = event["observatory"]
        if event["suppressed"] is not None:
            return {"telegram": "skipped: suppressed"}
        if not self.settings.telegram_chat_id:
            return {"telegram": "disabled"}
        marker = f"{NOTIFIED}/{event['night']}/{observatory}/{event['id']}"
        try:
            if not self.telegram_enabled_for(observatory):
                return {"telegram": "skipped: opted out"}
            if self._exists(marker):
                return {"telegram": "skipped: already posted"}
            token = self.telegram_token()
            sent = telegram.send_photo(
                token,
                self.settings.telegram_chat_id,
                jpeg,
                telegram.format_caption(event),
                api_base=self.settings.telegram_api_base,
                max_total_wait_s=self.settings.telegram_max_wait_s,
            )
        except (telegram.TelegramError, ClientError, OSError) as exc:
            # The record is already in S3; the alert is lost, the detection is not.
            error = str(exc).replace(self._token, "<token>") if self._token else str(exc)
            log.error("telegram failed for %s/%s: %s", observatory, event["id"], error)
            return {"telegram": "failed", "telegram_error": error}
        try:
            self.s3.put_object(
                Bucket=self.settings.bucket, Key=marker, Body=str(sent.message_id or "").encode()
            )
        except ClientError as exc:  # only costs a duplicate post on a re-send
            log.warning("could not write %s: %s", marker, exc)
        return {"telegram": "sent", "telegram_attempts": sent.attempts}


_INGESTOR: Ingestor | None = None


def reset() -> None:
    """Forget the cached clients and settings (tests, or the bridge after changing the env)."""
    global _INGESTOR
    _INGESTOR = None


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda entry point (the IoT rule invokes it asynchronously with the rule's JSON)."""
    global _INGESTOR
    if _INGESTOR is None:
        _INGESTOR = Ingestor(Settings.from_env())
    return _INGESTOR.ingest(event)
