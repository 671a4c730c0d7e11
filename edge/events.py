"""Detection events: build the JSON document of edge/schemas/event.schema.json, and MQTT topics.

One event per candidate frame. The id is derived from the observatory and the frame's capture
stamp only, so rebuilding the event for the same frame (after a crash, a rescan) yields the same
id and the cloud overwrites instead of duplicating. The preview is a small JPEG of the original
crop and the difference side by side (the 2021 design: 448×224), sized so the whole event stays
far below AWS IoT Core's 128 KB payload limit. Full-size images never go into an event.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from edge.bundle import Manifest
from edge.config import OBSERVATORY_RE
from edge.eventschema import SCHEMA_VERSION, EventError, validate_event
from edge.frames import Frame

PREVIEW_HALF = 224  # each half of the preview fits in 224×224 → at most 448×224
PREVIEW_MIN_CROP = 224  # never crop tighter than this around a streak (frame permitting)
PREVIEW_MARGIN = 0.25  # context around the streak's bbox, as a share of its longer side
# base64 budget for the preview: leaves >35 KB for the rest and stays under the schema's 90,000.
PREVIEW_MAX_B64 = 60_000
JPEG_QUALITIES = (85, 75, 65, 55, 45, 35, 25)
MAX_EVENT_BYTES = 100_000  # our own bound; AWS IoT Core refuses payloads over 128 KB
MAX_FLAGS = 16
MAX_FLAG_LEN = 64
STREAK_KEYS = ("x1", "y1", "x2", "y2", "length_px", "angle_deg")


# ---------------------------------------------------------------- topics


def _topic(prefix: str, observatory: str, leaf: str) -> str:
    return f"{prefix.rstrip('/')}/{observatory}/{leaf}"


def event_topic(prefix: str, observatory: str) -> str:
    return _topic(prefix, observatory, "detection")


def status_topic(prefix: str, observatory: str) -> str:
    return _topic(prefix, observatory, "status")


def availability_topic(prefix: str, observatory: str) -> str:
    return _topic(prefix, observatory, "availability")


# ---------------------------------------------------------------- times


def event_id(observatory: str, frame: Frame) -> str:
    """Stable: the same frame of the same observatory always gets the same id."""
    return f"{observatory}-{frame.captured:%Y%m%d%H%M%S}"


def local_capture_time(frame: Frame, tz: ZoneInfo) -> datetime:
    """The file name's naive camera-clock time made aware in `tz`.

    In the autumn DST overlap the same wall time occurs twice; AllSky's file names cannot tell
    which, so the first occurrence (fold=0) is taken.
    """
    return frame.captured.replace(tzinfo=tz)


def _utc_z(moment: datetime, timespec: str = "seconds") -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


# ---------------------------------------------------------------- preview


def _crop_rect(shape: tuple[int, int], bbox: list[float] | None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a square-ish window around `bbox`, clamped inside the frame."""
    height, width = shape
    if bbox is None:
        return 0, 0, width, height
    x, y, w, h = (float(v) for v in bbox)
    side = max(w, h) * (1 + 2 * PREVIEW_MARGIN)
    side = max(side, PREVIEW_MIN_CROP)
    cw, ch = min(round(side), width), min(round(side), height)
    cx, cy = x + w / 2, y + h / 2
    x0 = int(min(max(round(cx - cw / 2), 0), width - cw))
    y0 = int(min(max(round(cy - ch / 2), 0), height - ch))
    return x0, y0, x0 + cw, y0 + ch


def _fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) to fit inside box×box."""
    w, h = size
    scale = min(1.0, box / w, box / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _stretch(diff: np.ndarray) -> np.ndarray:
    """Make faint differences visible: map the 99.9th percentile (at least 8 grey levels) to 255."""
    top = max(float(np.percentile(diff, 99.9)), 8.0)
    return np.clip(diff.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)


def render_preview(
    current: np.ndarray, difference: np.ndarray, bbox: list[float] | None, half: int = PREVIEW_HALF
) -> np.ndarray:
    """The original crop (left) and the stretched difference crop (right), each ≤ half×half."""
    if current.dtype != np.uint8 or difference.dtype != np.uint8:
        raise ValueError("preview: current and difference must be uint8")
    if current.ndim not in (2, 3) or (current.ndim == 3 and current.shape[2] != 3):
        raise ValueError(f"preview: current must be grey HxW or BGR HxWx3, got {current.shape}")
    if difference.ndim != 2 or difference.shape != current.shape[:2]:
        raise ValueError(
            f"preview: difference must be grey {current.shape[:2]}, got {difference.shape}"
        )
    x0, y0, x1, y1 = _crop_rect(difference.shape, bbox)
    size = _fit((x1 - x0, y1 - y0), half)
    original = cv2.resize(current[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    diff = difference[y0:y1, x0:x1]
    factor = (x1 - x0) / size[0]
    if factor >= 2:
        # A 1-pixel streak would be averaged away by a 6× downscale: widen it first.
        k = int(factor)
        diff = cv2.dilate(diff, np.ones((k, k), np.uint8))
    diff = _stretch(cv2.resize(diff, size, interpolation=cv2.INTER_AREA))
    if original.ndim == 3:
        diff = cv2.cvtColor(diff, cv2.COLOR_GRAY2BGR)
    return np.hstack([original, diff])


def encode_preview(image: np.ndarray, max_b64: int = PREVIEW_MAX_B64) -> dict[str, Any]:
    """The preview object of the schema: the best JPEG quality whose base64 fits `max_b64`."""
    while True:
        for quality in JPEG_QUALITIES:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
                raise ValueError("preview: JPEG encoding failed")
            data = base64.b64encode(buf.tobytes()).decode("ascii")
            if len(data) <= max_b64:
                return {"format": "jpeg", "width": int(image.shape[1]),
                        "height": int(image.shape[0]), "data": data}
        # Even the lowest quality is too big (pure noise): halve the size and try again.
        if image.shape[0] < 16 or image.shape[1] < 16:  # pragma: no cover - cannot happen
            raise ValueError("preview: cannot fit the budget")
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                           interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- event


def _streak(streak: dict[str, Any] | None) -> dict[str, Any] | None:
    if streak is None:
        return None
    missing = [k for k in (*STREAK_KEYS, "bbox") if k not in streak]
    if missing:
        raise ValueError(f"streak: missing {missing}")
    out: dict[str, Any] = {k: round(float(streak[k]), 2) for k in STREAK_KEYS}
    bbox = [round(float(v), 2) for v in streak["bbox"]]
    if len(bbox) != 4:
        raise ValueError(f"streak.bbox: expected [x, y, width, height], got {streak['bbox']!r}")
    out["bbox"] = bbox
    if streak.get("peak") is not None:
        out["peak"] = round(float(streak["peak"]), 2)
    return out


def build_event(
    *,
    observatory: str,
    tz: ZoneInfo,
    frame: Frame,
    score: float,
    threshold: float,
    manifest: Manifest,
    current: np.ndarray,
    difference: np.ndarray,
    streak: dict[str, Any] | None,
    suppressed: str | None,
    flags: list[str],
    latency_ms: dict[str, float],
    processed_utc: datetime,
) -> dict[str, Any]:
    """One schema-valid detection event (raises EventError/ValueError on bad input).

    `current` is the full frame (grey or BGR uint8), `difference` the full-resolution positive
    difference (grey uint8). `streak` uses full-frame pixel coordinates; keys other than the
    schema's are ignored. Flags beyond the schema's 16×64 limits are cut rather than failing
    the detection; negative latencies (clock steps) are clamped to 0.
    """
    if not OBSERVATORY_RE.match(observatory):
        raise ValueError(f"observatory: letters, digits, '-' and '_' only, got {observatory!r}")
    if processed_utc.tzinfo is None:
        raise ValueError("processed_utc must be timezone-aware (datetime.now(UTC))")
    for name, value in (("score", score), ("threshold", threshold)):
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    geometry = _streak(streak)
    local = local_capture_time(frame, tz)
    preview = encode_preview(
        render_preview(current, difference, geometry["bbox"] if geometry else None)
    )
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": event_id(observatory, frame),
        "observatory": observatory,
        "night": frame.night,
        "image": frame.name,
        "captured_utc": _utc_z(local),
        "captured_local": local.isoformat(timespec="seconds"),
        "processed_utc": _utc_z(processed_utc, "milliseconds"),
        "score": round(float(score), 6),
        "threshold": round(float(threshold), 6),
        "model": {"name": manifest.name, "version": manifest.version,
                  "sha256": manifest.sha256},
        "streak": geometry,
        "suppressed": suppressed,
        "flags": [str(f)[:MAX_FLAG_LEN] for f in dict.fromkeys(flags)][:MAX_FLAGS],
        "latency_ms": {str(k): round(max(0.0, float(v)), 1) for k, v in latency_ms.items()},
        "preview": preview,
    }
    return validate_event(event)


def encode_event(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, refusing NaN and anything over MAX_EVENT_BYTES."""
    payload = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > MAX_EVENT_BYTES:
        raise EventError(f"event {event.get('id')}: {len(payload)} bytes > {MAX_EVENT_BYTES}")
    return payload


def decode_event(payload: bytes) -> dict[str, Any]:
    """Parse and validate a payload (the inverse of encode_event)."""
    return validate_event(json.loads(payload))


def preview_jpeg(event: dict[str, Any]) -> bytes:
    """The preview's JPEG bytes (for a file sink or a test)."""
    return base64.b64decode(event["preview"]["data"])
