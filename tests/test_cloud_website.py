"""Daily page: grouping, escaping, and the handler end to end on moto's S3 server."""

from __future__ import annotations

import json
import posixpath
import re
from datetime import UTC, datetime, timedelta

import pytest
from test_cloud_support import (
    MADRID,
    CloudEnv,
    make_event,
    rule_event,
)

from cloud import ingest, website
from cloud.website import Detection, coincidences, parse_record, render_page, sequences

pytest_plugins = ["test_cloud_support"]  # the cloud_env and fake_telegram fixtures

NIGHT = "20240812"
T0 = datetime(2024, 8, 12, 23, 41, 7, tzinfo=MADRID)


def det(observatory: str, seconds: float, suppressed: str | None = None) -> Detection:
    event = make_event(observatory, T0 + timedelta(seconds=seconds), suppressed=suppressed)
    return parse_record(ingest.record_for(event, "unused"))


def test_sequences_chain_consecutive_frames_per_observatory() -> None:
    a = [det("pujalt", s) for s in (0, 32, 61, 95)]  # a satellite crossing four frames
    lone = det("pujalt", 3600)
    other = det("montsec", 30)  # another site at the same time is not part of the chain
    chains = sequences([lone, *reversed(a), other], gap_s=75)
    assert [[d.id for d in c] for c in chains] == [
        [d.id for d in a],
        [other.id],
        [lone.id],
    ]
    # A gap just over the limit splits the chain.
    assert [len(c) for c in sequences([det("pujalt", 0), det("pujalt", 76)], gap_s=75)] == [1, 1]


def test_coincidences_link_different_observatories_only() -> None:
    p, m, s = det("pujalt", 0), det("montsec", 4), det("sabadell", 20)
    late = det("montsec", 600)
    same_site = [det("pujalt", 1000), det("pujalt", 1002)]
    clusters = coincidences([late, s, m, p, *same_site], window_s=30)
    assert [[d.observatory for d in c] for c in clusters] == [["pujalt", "montsec", "sabadell"]]
    assert coincidences([p, m], window_s=3) == []


def test_page_escapes_all_text_and_groups() -> None:
    hostile = make_event("pujalt", T0 + timedelta(seconds=5000))
    hostile["model"]["name"] = "<script>alert('model')</script>"
    hostile["flags"] = ['"><img src=x onerror=alert(1)>']
    dets = [
        det("pujalt", 0),
        det("montsec", 3),
        *[det("pujalt", s, suppressed="satellite") for s in (2000, 2030, 2061)],
        parse_record(ingest.record_for(hostile, "unused")),
    ]
    page = render_page(NIGHT, dets, ["20240810", "20240811", "20240813"])
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;model&#x27;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img src=x" not in page
    assert '<span id="count">6</span>' in page
    assert "3 consecutive frames" in page and "likely a satellite or aircraft" in page
    assert re.search(r'class="group coincidence".*montsec.*pujalt', page)
    assert 'href="20240811.html"' in page and 'href="20240813.html"' in page
    assert 'rel="prev" href="20240811.html"' in page
    assert "<details class=\"suppressed\"><summary>Suppressed (3)</summary>" in page
    assert page.count('class="card suppressed"') == 3
    assert "http://" not in page and "https://" not in page  # no CDN, nothing external
    assert 'name="viewport"' in page


def test_unsafe_record_names_are_not_rendered() -> None:
    record = ingest.record_for(make_event(), "unused")
    record["observatory"] = '"><script>alert(1)</script>'
    with pytest.raises(ingest.Rejected):
        parse_record(record)


def test_default_night_is_the_evening_date() -> None:
    assert website.default_night(datetime(2024, 8, 13, 9, 0, tzinfo=UTC)) == "20240812"
    assert website.default_night(datetime(2024, 8, 13, 2, 0, tzinfo=UTC)) == "20240812"
    assert website.default_night(datetime(2024, 8, 12, 23, 0, tzinfo=UTC)) == "20240812"
    with pytest.raises(ValueError):
        website.check_night("2024-08-12")
    with pytest.raises(ValueError):
        website.check_night("20241340")


def _ingest_night(env: CloudEnv) -> list[dict]:
    events = [
        make_event("pujalt", T0, seed=1),
        make_event("montsec", T0 + timedelta(seconds=2), seed=2, score=0.91),
        *[make_event("pujalt", T0 + timedelta(seconds=1800 + 31 * i), seed=3 + i,
                     suppressed="satellite" if i else None) for i in range(3)],
        make_event("montsec", T0 + timedelta(hours=2), seed=7, suppressed="cloud"),
    ]
    for event in events:
        assert ingest.handler(rule_event(event), None)["status"] == "stored"
    return events


def test_handler_builds_pages_from_s3(cloud_env: CloudEnv, monkeypatch) -> None:
    monkeypatch.delenv("TELEGRAM_CHAT_ID")
    ingest.reset()
    events = _ingest_night(cloud_env)
    # Earlier nights' pages exist: they are linked, and an older rebuild keeps index.html.
    for night in ("20240810", "20240811"):
        cloud_env.s3.put_object(Bucket=cloud_env.bucket, Key=f"site/{night}.html", Body=b"x")
    # A record that is not JSON is skipped, not fatal.
    cloud_env.s3.put_object(
        Bucket=cloud_env.bucket, Key=f"detections/{NIGHT}/pujalt/broken.json", Body=b"{"
    )

    result = website.handler({"night": NIGHT}, None)
    assert result == {"night": NIGHT, "detections": len(events),
                      "written": [f"site/{NIGHT}.html", "site/index.html"]}
    page = cloud_env.get(f"site/{NIGHT}.html").decode()
    assert cloud_env.get("site/index.html").decode() == page
    head = cloud_env.s3.head_object(Bucket=cloud_env.bucket, Key="site/index.html")
    assert head["ContentType"].startswith("text/html")
    assert '<span id="count">6</span>' in page
    assert "1 multi-observatory coincidence(s)" in page
    assert "3 consecutive frames" in page
    assert 'href="20240811.html"' in page
    # Every preview link resolves, relative to site/, to an object that exists.
    links = set(re.findall(r'<img src="([^"]+)"', page))
    assert len(links) == len(events)
    for link in links:
        key = posixpath.normpath(posixpath.join("site", link))
        assert key.startswith("previews/")
        cloud_env.s3.head_object(Bucket=cloud_env.bucket, Key=key)

    # Rebuilding an older night does not replace index.html.
    older = website.handler({"night": "20240811"}, None)
    assert older["written"] == ["site/20240811.html"]
    assert cloud_env.get("site/index.html").decode() == page
    assert "No detections this night." in cloud_env.get("site/20240811.html").decode()


def test_handler_defaults_to_last_night(cloud_env: CloudEnv) -> None:
    result = website.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, None)
    assert result["night"] == website.default_night()
    assert cloud_env.keys("site/") == sorted(
        [f"site/{result['night']}.html", "site/index.html"]
    )
    assert json.dumps(result)  # JSON-serialisable for Lambda
