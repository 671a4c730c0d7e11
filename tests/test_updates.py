"""Model updates against a real S3 API (moto server): publish → verify → swap → roll back."""

from __future__ import annotations

import http.client
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from tinymodel import make_tiny_bundle, meteor_probability

from edge.config import Config, parse_config
from edge.model_admin import publish, rollback
from edge.signing import generate_keypair
from edge.updates import ModelManager, channel_keys

BLANK = np.zeros((64, 64), np.uint8)
V1_BIAS, V2_BIAS, V3_BIAS = (0.0, 0.0), (2.0, 0.0), (-2.0, 0.0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"guaita-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return name


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1")


class Station:
    """A station's config + state dir, and a maintainer publishing to its bucket."""

    def __init__(self, tmp: Path, bucket: str, endpoint: str, keys: tuple[Path, Path]):
        self.tmp, self.bucket, self.endpoint = tmp, bucket, endpoint
        self.private, self.public = keys
        self.shipped = make_tiny_bundle(tmp / "shipped", version="1", bias=V1_BIAS)
        self.events: list[tuple[str, dict]] = []
        self.event_seen = threading.Condition()

    def config(self, endpoint: str | None = None, **sections: dict[str, Any]) -> Config:
        tables: dict[str, dict[str, Any]] = {
            "paths": {"state": str(self.tmp / "state"), "model": str(self.shipped)},
            "updates": {"enabled": True, "bucket": self.bucket,
                        "endpoint_url": endpoint or self.endpoint,
                        "public_key": str(self.public)},
        }
        for name, values in sections.items():
            tables.setdefault(name, {}).update(values)
        lines = ['observatory = "test-station"']
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        return parse_config("\n".join(lines))

    def on_change(self, kind: str, info: dict) -> None:
        with self.event_seen:
            self.events.append((kind, info))
            self.event_seen.notify_all()

    def wait_for(self, kind: str, count: int = 1, timeout: float = 30.0) -> None:
        with self.event_seen:
            ok = self.event_seen.wait_for(
                lambda: sum(k == kind for k, _ in self.events) >= count, timeout)
        assert ok, f"no {kind!r} event within {timeout} s: {self.events}"

    def manager(self, cfg: Config | None = None, **kwargs: Any) -> ModelManager:
        return ModelManager(cfg or self.config(), self.on_change, **kwargs)

    def publish(self, version: str, bias: tuple[float, float] = V2_BIAS, *,
                broken: str | None = None, key: Path | None = None, **kwargs: Any) -> Any:
        bundle = make_tiny_bundle(self.tmp / f"release-{version}-{uuid.uuid4().hex[:6]}",
                                  version=version, bias=bias, broken=broken,
                                  threshold=kwargs.pop("threshold", 0.5))
        return publish(bundle, bucket=self.bucket, private_key=key or self.private,
                       endpoint_url=self.endpoint, region="eu-west-1",
                       check=broken is None, force=True, **kwargs)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


@pytest.fixture
def station(tmp_path: Path, bucket: str, s3_endpoint: str, keys: tuple[Path, Path]) -> Station:
    return Station(tmp_path, bucket, s3_endpoint, keys)


def score(manager: ModelManager) -> tuple[float, str]:
    scorer = manager.active()
    return scorer.score(BLANK, BLANK), scorer.manifest.version


# ---------------------------------------------------------------- the happy path


def test_publish_then_manager_switches_and_keeps_previous(station: Station) -> None:
    manager = station.manager()
    assert score(manager) == pytest.approx((meteor_probability(V1_BIAS), "1"))
    empty = manager.check()  # nothing published yet: an error, not a crash
    assert empty.startswith("error: ") and "NoSuchKey" in empty

    station.publish("2", V2_BIAS, release_notes="sharper")
    assert manager.check() == "switched to tiny@2"
    p, version = score(manager)
    assert version == "2" and p == pytest.approx(meteor_probability(V2_BIAS), abs=1e-6)
    models = station.tmp / "state" / "models"
    assert (models / "active").resolve() == (models / "tiny-2").resolve()
    assert (models / "previous").resolve() == station.shipped.resolve()
    kind, info = station.events[-1]
    assert kind == "switched" and info["from"] == "tiny@1" and info["to"] == "tiny@2"
    assert info["release_notes"] == "sharper"

    station.publish("3", V3_BIAS)
    assert manager.check() == "switched to tiny@3"
    assert score(manager)[1] == "3"
    assert (models / "previous").resolve() == (models / "tiny-2").resolve()
    assert (models / "tiny-2" / "model.onnx").is_file()  # the previous one is kept
    assert manager.check() == "up-to-date"

    status = manager.status()
    assert status["active"]["label"] == "tiny@3"
    assert status["previous"]["label"] == "tiny@2"
    assert status["updates"]["last_result"] == "up-to-date"
    assert status["trial"] == {"label": "tiny@3", "frames": 0, "detections": 0}
    # A fresh daemon starts on what the pointer says, not on the shipped model.
    assert station.manager().active().bundle.label == "tiny@3"


def test_threshold_recommended_unless_pinned(station: Station) -> None:
    manager = station.manager()
    assert manager.threshold() == 0.5
    station.publish("2", threshold=0.7)
    manager.check()
    assert manager.threshold() == 0.7  # the new model brings its own score scale

    pinned = station.manager(station.config(detection={"threshold": 0.85}))
    assert pinned.active().bundle.label == "tiny@2"
    assert pinned.threshold() == 0.85
    assert pinned.status()["threshold_source"] == "pinned"


def test_older_equal_or_too_new_versions_are_skipped(station: Station, caplog) -> None:
    manager = station.manager(this_version="0.1.0")
    station.publish("1")
    assert manager.check() == "up-to-date"
    station.publish("0.9")
    assert manager.check() == "up-to-date"

    station.publish("2", min_guaita_version="99.0")
    caplog.set_level(logging.INFO, logger="edge.updates")
    result = manager.check()
    assert result == "skipped: needs guaita >= 99.0, this is 0.1.0"
    assert "model update skipped: tiny@2: needs guaita >= 99.0" in caplog.text
    assert station.events[-1][0] == "skipped"
    assert score(manager)[1] == "1"


# ---------------------------------------------------------------- rejections


def _bad_signature(station: Station, s3: Any) -> None:
    other_private, _ = generate_keypair(station.tmp / "other-key")
    station.publish("2", key=other_private)


def _flip_tarball_byte(station: Station, s3: Any) -> None:
    entry = station.publish("2")
    data = bytearray(s3.get_object(Bucket=station.bucket, Key=entry.key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    s3.put_object(Bucket=station.bucket, Key=entry.key, Body=bytes(data))


def _truncated_upload(station: Station, s3: Any) -> None:
    entry = station.publish("2")
    data = s3.get_object(Bucket=station.bucket, Key=entry.key)["Body"].read()
    s3.put_object(Bucket=station.bucket, Key=entry.key, Body=data[: len(data) // 2])


def _tampered_manifest(station: Station, s3: Any) -> None:
    station.publish("2")
    entry_key, _ = channel_keys("models", "stable")
    raw = s3.get_object(Bucket=station.bucket, Key=entry_key)["Body"].read()
    edited = raw.replace(b'"recommended_threshold": 0.5', b'"recommended_threshold": 0.1')
    assert edited != raw
    s3.put_object(Bucket=station.bucket, Key=entry_key, Body=edited)


REJECTIONS: dict[str, tuple[Callable[[Station, Any], None], str]] = {
    "bad signature": (_bad_signature, "bad signature"),
    "manifest edited after signing": (_tampered_manifest, "bad signature"),
    "tampered tarball": (_flip_tarball_byte, "sha256 mismatch"),
    "truncated upload": (_truncated_upload, "truncated or replaced upload"),
    "tampered onnx inside a signed release": (
        lambda st, s3: st.publish("2", broken="tampered"), "invalid bundle"),
    "garbage model": (lambda st, s3: st.publish("2", broken="garbage"),
                      "onnxruntime cannot load it"),
    "wrong output shape": (lambda st, s3: st.publish("2", broken="wrong_shape"),
                           "output shape (1, 3) does not match classes"),
    "nan output": (lambda st, s3: st.publish("2", broken="nan"), "not a probability"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_bad_releases_are_rejected_and_the_old_model_keeps_scoring(
    station: Station, s3: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    manager = station.manager()
    setup, reason = REJECTIONS[case]
    setup(station, s3)
    caplog.set_level(logging.INFO, logger="edge.updates")

    result = manager.check()

    assert result.startswith("rejected: ") and reason in result
    lines = [r.getMessage() for r in caplog.records if "model update rejected" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0] and lines[0].endswith("still running tiny@1")
    kind, info = station.events[-1]
    assert kind == "rejected" and reason in info["reason"]
    assert manager.status()["updates"]["last_rejection"]["reason"] == info["reason"]
    for _ in range(3):  # the old model keeps scoring, unchanged
        assert score(manager) == pytest.approx((meteor_probability(V1_BIAS), "1"))
    models = station.tmp / "state" / "models"
    assert not (models / "active").exists() and not (models / "tiny-2").exists()
    # The same bad entry is not downloaded and rejected over and over.
    assert manager.check().startswith("skipped: ")
    assert sum(k == "rejected" for k, _ in station.events) == 1


def test_bundle_over_the_size_limit_is_refused_before_download(
    station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    manager = station.manager(station.config(updates={"max_bundle_mb": 0.0001}))
    station.publish("2")
    result = manager.check()
    assert result.startswith("rejected: ") and "over updates.max_bundle_mb" in result
    assert not list((station.tmp / "state" / "models" / "staging").glob("*"))


def test_a_model_too_slow_for_the_bound_is_refused(station: Station) -> None:
    # Any real scoring takes longer than a nanosecond: the bound itself is what is tested.
    manager = station.manager(station.config(updates={"smoke_max_s": 1e-9}))
    station.publish("2")
    result = manager.check()
    assert result.startswith("rejected: fails to load: ") and "updates.smoke_max_s" in result
    assert manager.active().bundle.label == "tiny@1"


# ---------------------------------------------------------------- interrupted download


class CuttingProxy:
    """HTTP proxy in front of moto that can drop the connection mid-way through a tarball."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.cut_at: int | None = None
        self.ranges: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items()
                                      if k.lower() != "connection"})
                resp = conn.getresponse()
                data = resp.read()
                tarball = self.command == "GET" and self.path.split("?")[0].endswith(".tar.gz")
                cut = proxy.cut_at if tarball else None
                if tarball:
                    proxy.ranges.append(self.headers.get("Range"))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                if cut is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data if cut is None else data[:cut])
                conn.close()

            do_GET = do_HEAD = do_PUT = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[CuttingProxy]:
    p = CuttingProxy(s3_endpoint)
    yield p
    p.close()


def test_interrupted_download_is_kept_and_resumed(
    station: Station, proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    manager = station.manager(station.config(endpoint=proxy.url))
    entry = station.publish("2")
    proxy.cut_at = entry.size // 3
    caplog.set_level(logging.INFO, logger="edge.updates")

    result = manager.check()

    assert result.startswith("error: ") and f"interrupted at {entry.size // 3} of" in result
    assert "model update check failed" in caplog.text and "still running tiny@1" in caplog.text
    assert score(manager)[1] == "1"
    part = station.tmp / "state" / "models" / "staging" / f"{entry.sha256}.part"
    assert part.stat().st_size == entry.size // 3

    proxy.cut_at = None
    assert manager.check() == "switched to tiny@2"
    assert proxy.ranges == [None, f"bytes={entry.size // 3}-"]
    assert f"from byte {entry.size // 3}" in caplog.text
    assert not part.exists()


# ---------------------------------------------------------------- swapping between frames


def test_swap_happens_between_frames(station: Station) -> None:
    manager = station.manager()
    expected = {"1": meteor_probability(V1_BIAS), "2": meteor_probability(V2_BIAS)}
    seen: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def frames() -> None:
        while not stop.is_set():
            try:
                scorer = manager.active()  # once per frame, as the daemon does
                seen.append((scorer.manifest.version, scorer.score(BLANK, BLANK)))
            except BaseException as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=frames)
    worker.start()
    try:
        station.publish("2", V2_BIAS)
        assert manager.check() == "switched to tiny@2"
        n = len(seen)
        while len(seen) < n + 20 and worker.is_alive():
            threading.Event().wait(0.01)
    finally:
        stop.set()
        worker.join(10)
    assert not errors
    versions = [v for v, _ in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # never back to the old model
    for version, p in seen:  # each score wholly from one model
        assert p == pytest.approx(expected[version], abs=1e-6)


# ---------------------------------------------------------------- rollbacks


def test_absurd_detection_rate_rolls_back(station: Station,
                                          caplog: pytest.LogCaptureFixture) -> None:
    manager = station.manager()
    station.publish("2", (4.0, 0.0))  # scores 0.98 on everything
    manager.check()
    assert manager.active().bundle.label == "tiny@2"
    caplog.set_level(logging.INFO, logger="edge.updates")
    frames_on_2 = 0
    while manager.active().bundle.label == "tiny@2" and frames_on_2 < 250:
        scorer = manager.active()
        manager.note_frame(scorer.score(BLANK, BLANK) >= manager.threshold(scorer))
        frames_on_2 += 1
    assert frames_on_2 == 200  # the guard waits for guard_min_frames, then acts at once
    assert manager.active().bundle.label == "tiny@1"
    kind, info = station.events[-1]
    assert kind == "rolled_back" and info["from"] == "tiny@2" and "detection rate 100%" in \
        info["reason"]
    assert "model rolled back: tiny@2 → tiny@1: detection rate 100% over its first 200 frames" \
        in caplog.text
    # Blocked: the channel still offers 2, the station does not take it again.
    assert manager.check() == "skipped: it was rolled back (" + info["reason"] + ")"
    assert manager.active().bundle.label == "tiny@1"


def test_a_sane_model_passes_its_trial(station: Station) -> None:
    manager = station.manager(station.config(updates={"guard_min_frames": 10,
                                                      "guard_window_frames": 30}))
    station.publish("2", (-4.0, 0.0))
    manager.check()
    for _ in range(30):
        manager.note_frame(False)
    assert manager.status()["trial"] is None
    assert manager.store.read_state()["trial"] is None
    assert manager.active().bundle.label == "tiny@2"


def test_model_that_fails_to_load_at_start_is_rolled_back(station: Station,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    manager = station.manager()
    station.publish("2")
    manager.check()
    installed = station.tmp / "state" / "models" / "tiny-2" / "model.onnx"
    installed.write_bytes(b"\0" * installed.stat().st_size)  # e.g. a corrupted SD card

    restarted = station.manager()
    assert restarted.active().bundle.label == "tiny@1"
    assert "model rolled back: tiny@2 → tiny@1" in caplog.text
    assert "tiny@2" in restarted.store.read_state()["blocked"]


def test_repeated_restarts_during_the_trial_roll_back(station: Station) -> None:
    cfg = station.config(updates={"trial_max_starts": 2})
    station.publish("2")
    assert station.manager(cfg).check() == "switched to tiny@2"
    assert station.manager(cfg).active().bundle.label == "tiny@2"  # restart 1
    assert station.manager(cfg).active().bundle.label == "tiny@2"  # restart 2
    third = station.manager(cfg)  # restart 3: it keeps crashing the daemon
    assert third.active().bundle.label == "tiny@1"
    assert "restarted 3 times" in station.events[-1][1]["reason"]


def test_three_scoring_failures_on_trial_roll_back(station: Station) -> None:
    manager = station.manager()
    station.publish("2")
    manager.check()
    for _ in range(3):
        manager.note_failure(RuntimeError("onnxruntime exploded"))
    assert manager.active().bundle.label == "tiny@1"
    assert "scoring failed 3 frames in a row" in station.events[-1][1]["reason"]


def test_background_checks_and_admin_rollback_are_followed(station: Station) -> None:
    cfg = station.config(updates={"interval_min": 60.0})
    manager = station.manager(cfg, poll_s=0.1)
    manager.start()
    try:
        station.publish("2")
        manager.check_now()  # e.g. SIGHUP or an MQTT "model available" message
        station.wait_for("switched")
        assert manager.active().bundle.label == "tiny@2"

        old, new = rollback(cfg, "admin says so")  # `guaita model rollback`, another process
        assert (old, new) == ("tiny@2", "tiny@1")
        station.wait_for("switched", count=2)
        assert manager.active().bundle.label == "tiny@1"
        assert manager.status()["trial"] is None
    finally:
        manager.stop()
