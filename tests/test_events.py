"""Detection events: schema, stable ids, local/UTC times across DST, preview content and size."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import jsonschema
import numpy as np
import pytest

from edge.bundle import Manifest
from edge.events import (
    MAX_EVENT_BYTES,
    availability_topic,
    build_event,
    decode_event,
    encode_event,
    event_topic,
    preview_jpeg,
    status_topic,
)
from edge.eventschema import SCHEMA_PATH, EventError
from edge.frames import parse_frame
from edge.preprocess import PreprocessSpec

MADRID = ZoneInfo("Europe/Madrid")
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
MANIFEST = Manifest(
    name="guaita-resnet18-g1", version="2024.06.1", sha256="ab" * 32,
    preprocessing=PreprocessSpec(), input_shape=(1, 3, 224, 224),
    classes=("meteor", "not_meteor"), recommended_threshold=0.85,
    created_at="2024-06-01T00:00:00Z",
)
PROCESSED = datetime(2024, 6, 7, 1, 2, 3, 456789, tzinfo=UTC)


def frame(night: str, stamp: str):
    f = parse_frame(Path(f"/home/pi/allsky/images/{night}/image-{stamp}.jpg"))
    assert f is not None
    return f


def streak(x1=600.0, y1=410.0, x2=700.0, y2=410.0):
    xs, ys = sorted((x1, x2)), sorted((y1, y2))
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "length_px": float(np.hypot(x2 - x1, y2 - y1)),
            "angle_deg": float(np.degrees(np.arctan2(y2 - y1, x2 - x1))),
            "bbox": [xs[0], ys[0], xs[1] - xs[0], ys[1] - ys[0]], "peak": np.float32(87.5)}


def make(current, difference, *, f=None, tz=MADRID, observatory="pujalt", **overrides):
    kwargs = dict(observatory=observatory, tz=tz, frame=f or frame("20240606", "20240607003015"),
                  score=0.973, threshold=0.85, manifest=MANIFEST, current=current,
                  difference=difference, streak=streak(), suppressed=None,
                  flags=["persistence-checked"],
                  latency_ms={"read": 41.25, "preprocess": 12.0, "model": 98.04},
                  processed_utc=PROCESSED)
    kwargs.update(overrides)
    return build_event(**kwargs)


def dark(shape=(976, 1304), seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(30, 3, shape), 0, 255).astype(np.uint8)


def check_schema(event):
    errors = sorted(VALIDATOR.iter_errors(event), key=str)
    assert not errors, [e.message for e in errors]


def test_event_is_schema_valid_and_carries_the_facts():
    cur = cv2.cvtColor(dark(), cv2.COLOR_GRAY2BGR)
    event = make(cur, dark(seed=1))
    check_schema(event)
    assert event["id"] == "pujalt-20240607003015"
    assert event["night"] == "20240606" and event["image"] == "image-20240607003015.jpg"
    assert event["captured_local"] == "2024-06-07T00:30:15+02:00"
    assert event["captured_utc"] == "2024-06-06T22:30:15Z"
    assert event["processed_utc"] == "2024-06-07T01:02:03.456Z"
    assert event["model"] == {"name": MANIFEST.name, "version": "2024.06.1",
                              "sha256": "ab" * 32}
    assert event["streak"]["bbox"] == [600.0, 410.0, 100.0, 0.0]
    assert event["streak"]["peak"] == 87.5 and type(event["streak"]["peak"]) is float
    assert event["score"] == 0.973 and event["suppressed"] is None
    assert event["latency_ms"] == {"read": 41.2, "preprocess": 12.0, "model": 98.0}
    # Round trip through the wire format, and both validators agree.
    payload = encode_event(event)
    assert b" " not in payload[:200]  # compact
    assert decode_event(payload) == event


def test_event_without_streak_and_suppressed():
    event = make(dark(), dark(seed=1), streak=None, suppressed="satellite",
                 flags=["continues-next-frame"])
    check_schema(event)
    assert event["streak"] is None and event["suppressed"] == "satellite"
    # No streak: the whole frame, aspect kept: 1304×976 → 224×168 per half.
    assert (event["preview"]["width"], event["preview"]["height"]) == (448, 168)


@pytest.mark.parametrize(
    ("night", "stamp", "local", "utc"),
    [
        # Spring forward in Madrid (2024-03-31 02:00 CET → 03:00 CEST).
        ("20240330", "20240331015930", "2024-03-31T01:59:30+01:00", "2024-03-31T00:59:30Z"),
        ("20240330", "20240331030030", "2024-03-31T03:00:30+02:00", "2024-03-31T01:00:30Z"),
        # Fall back (2024-10-27 03:00 CEST → 02:00 CET): before, ambiguous (first fold), after.
        ("20241026", "20241027013000", "2024-10-27T01:30:00+02:00", "2024-10-26T23:30:00Z"),
        ("20241026", "20241027023000", "2024-10-27T02:30:00+02:00", "2024-10-27T00:30:00Z"),
        ("20241026", "20241027033000", "2024-10-27T03:30:00+01:00", "2024-10-27T02:30:00Z"),
        # New year's night: the night folder is the previous evening's date.
        ("20231231", "20240101000500", "2024-01-01T00:05:00+01:00", "2023-12-31T23:05:00Z"),
    ],
)
def test_local_and_utc_times_across_dst(night, stamp, local, utc):
    event = make(dark((240, 320)), dark((240, 320), 1), f=frame(night, stamp),
                 streak=streak(100, 100, 140, 120))
    assert event["captured_local"] == local
    assert event["captured_utc"] == utc
    assert event["night"] == night
    assert datetime.fromisoformat(local) == datetime.fromisoformat(utc)
    check_schema(event)


def test_southern_and_western_time_zones():
    f = frame("20240606", "20240606213000")
    event = make(dark((240, 320)), dark((240, 320), 1), f=f, streak=None,
                 tz=ZoneInfo("America/Santiago"))
    assert event["captured_local"] == "2024-06-06T21:30:00-04:00"
    assert event["captured_utc"] == "2024-06-07T01:30:00Z"
    event = make(dark((240, 320)), dark((240, 320), 1), f=f, streak=None, tz=ZoneInfo("UTC"))
    assert event["captured_local"] == "2024-06-06T21:30:00+00:00"
    assert event["captured_utc"] == "2024-06-06T21:30:00Z"


def test_id_is_stable_and_unique():
    f = frame("20240606", "20240607003015")
    a = make(dark((240, 320)), dark((240, 320), 1), f=f, streak=None)
    # Same frame rebuilt later (after a restart): other pixels, time, score → same id.
    b = make(dark((240, 320), 5), dark((240, 320), 6), f=f, streak=None, score=0.91,
             processed_utc=datetime(2024, 6, 8, tzinfo=UTC))
    assert a["id"] == b["id"] == "pujalt-20240607003015"
    other_frame = make(dark((240, 320)), dark((240, 320), 1), streak=None,
                       f=frame("20240606", "20240607003045"))
    other_obs = make(dark((240, 320)), dark((240, 320), 1), f=f, streak=None,
                     observatory="montsec")
    assert len({a["id"], other_frame["id"], other_obs["id"]}) == 3


def test_preview_shows_the_streak_in_both_halves():
    cur, diff = dark(), np.zeros((976, 1304), np.uint8)
    cv2.line(cur, (600, 410), (700, 410), 220, 3)
    cv2.line(diff, (600, 410), (700, 410), 60, 3)
    event = make(cur, diff)
    image = cv2.imdecode(np.frombuffer(preview_jpeg(event), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (event["preview"]["height"], event["preview"]["width"]) == (224, 448)
    # bbox (600,410,100,0) → 224×224 crop centred on (650,410) at scale 1: the line is row 112,
    # columns 62..162 of the left half and 286..386 of the right half.
    left, right = image[:, :224].astype(int), image[:, 224:].astype(int)
    for half in (left, right):
        on_line = half[111:114, 70:155].mean()
        off_line = half[20:60, 70:155].mean()
        assert on_line > off_line + 100, (on_line, off_line)


def test_preview_colour_when_the_frame_is_colour():
    cur = np.zeros((480, 640, 3), np.uint8)
    cur[..., 2] = 200  # red sky
    event = make(cur, dark((480, 640)), streak=streak(100, 100, 200, 150))
    image = cv2.imdecode(np.frombuffer(preview_jpeg(event), np.uint8), cv2.IMREAD_COLOR)
    left = image[:, : image.shape[1] // 2]
    assert left[..., 2].mean() > 150 and left[..., 0].mean() < 40


@pytest.mark.parametrize("colour", [True, False])
@pytest.mark.parametrize("bbox", ["none", "small", "fireball"])
def test_worst_case_noise_stays_far_below_the_mqtt_limit(colour, bbox):
    """Pure noise is the hardest JPEG content; the event must still fit with room to spare."""
    rng = np.random.default_rng(7)
    shape = (976, 1304, 3) if colour else (976, 1304)
    cur = rng.integers(0, 256, shape, dtype=np.uint8)
    diff = rng.integers(0, 256, (976, 1304), dtype=np.uint8)
    geometry = {"none": None, "small": streak(600, 400, 640, 420),
                "fireball": streak(10, 20, 1290, 960)}[bbox]
    event = make(cur, diff, streak=geometry, flags=[f"flag-{i}" * 8 for i in range(16)],
                 latency_ms={f"stage_{i}": 1e6 for i in range(20)})
    payload = encode_event(event)
    assert len(payload) < MAX_EVENT_BYTES < 128 * 1024
    assert len(event["preview"]["data"]) <= SCHEMA["properties"]["preview"]["properties"][
        "data"]["maxLength"]
    assert event["preview"]["width"] <= 448 and event["preview"]["height"] <= 224
    jpeg = cv2.imdecode(np.frombuffer(preview_jpeg(event), np.uint8), cv2.IMREAD_UNCHANGED)
    assert jpeg.shape[:2] == (event["preview"]["height"], event["preview"]["width"])
    check_schema(event)


def test_flags_are_deduplicated_and_cut_to_the_schema_limits():
    flags = ["a", "a", "x" * 100, *[f"f{i}" for i in range(30)]]
    event = make(dark((240, 320)), dark((240, 320), 1), streak=None, flags=flags,
                 latency_ms={"clock_step": -3.0})
    assert event["flags"][:2] == ["a", "x" * 64] and len(event["flags"]) == 16
    assert event["latency_ms"] == {"clock_step": 0.0}
    check_schema(event)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"processed_utc": datetime(2024, 6, 7)}, "timezone-aware"),
        ({"score": 1.5}, "score"),
        ({"score": float("nan")}, "score"),
        ({"threshold": -0.1}, "threshold"),
        ({"difference": np.zeros((100, 100), np.uint8)}, "difference"),
        ({"current": np.zeros((240, 320), np.float32)}, "uint8"),
        ({"streak": {"x1": 1}}, "streak"),
        ({"suppressed": "ufo"}, "suppressed"),
        ({"observatory": "bad id!"}, "observatory"),
    ],
)
def test_bad_input_is_refused_clearly(overrides, message):
    kwargs = {"current": dark((240, 320)), "difference": dark((240, 320), 1), **overrides}
    with pytest.raises((ValueError, EventError), match=message):
        make(kwargs.pop("current"), kwargs.pop("difference"), **kwargs)


def test_encode_refuses_oversized_events():
    event = make(dark((240, 320)), dark((240, 320), 1), streak=None)
    event["preview"]["data"] = "A" * (MAX_EVENT_BYTES + 1)
    with pytest.raises(EventError, match="bytes"):
        encode_event(event)


def test_topics():
    assert event_topic("guaita", "pujalt") == "guaita/pujalt/detection"
    assert status_topic("guaita/", "pujalt") == "guaita/pujalt/status"
    assert availability_topic("lab/guaita", "pujalt") == "lab/guaita/pujalt/availability"
