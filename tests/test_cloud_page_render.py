"""The daily page rendered by headless Chromium (Debian ``chromium``): content and loaded images.

The page and the previews are copied out of the S3 (moto) bucket with their key layout and
served over HTTP, as CloudFront would serve them. The preview JPEGs carry a pure-green
difference streak, a colour the page itself never uses: green pixels in the screenshot mean the
relative preview links resolved and the images loaded. The same page served without previews/
is the control that shows the check can fail. The screenshots (phone and desktop width) are
kept in build/test-artifacts/.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cloud_support import MADRID, CloudEnv, make_event, rule_event

from cloud import ingest, website

pytest_plugins = ["test_cloud_support"]  # the cloud_env and fake_telegram fixtures

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "build" / "test-artifacts" / "daily-page.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NIGHT = "20240812"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def screenshot(url: str, path: Path, profile: Path, size: tuple[int, int] = (412, 2400)) -> None:
    run = chromium([f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000",
                    f"--screenshot={path}", url], profile)
    assert path.is_file(), run.stderr[-2000:]


def green_pixels(path: Path) -> int:
    image = cv2.imread(str(path))
    assert image is not None
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((g > 180) & (r < 90) & (b < 90)))


def mirror(env: CloudEnv, directory: Path, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        for key in env.keys(prefix):
            target = directory / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(env.get(key))


def ingest_night() -> int:
    t0 = make_event()["captured_local"]
    from datetime import datetime

    start = datetime.fromisoformat(t0).astimezone(MADRID)
    events = [
        make_event("pujalt", start, seed=1),
        make_event("montsec", start + timedelta(seconds=3), seed=2, score=0.91),
        *[make_event("pujalt", start + timedelta(minutes=40, seconds=31 * i), seed=3 + i,
                     score=0.9 - 0.05 * i, suppressed="satellite" if i else None)
          for i in range(3)],
        make_event("sabadell", start + timedelta(hours=3), seed=6, score=0.86),
        make_event("montsec", start + timedelta(hours=4), seed=7, suppressed="cloud"),
    ]
    for event in events:
        assert ingest.handler(rule_event(event), None)["status"] == "stored"
    return len(events)


def test_daily_page_renders_in_chromium(cloud_env: CloudEnv, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TELEGRAM_CHAT_ID")
    ingest.reset()
    count = ingest_night()
    assert website.handler({"night": NIGHT}, None)["detections"] == count

    full, bare = tmp_path / "full", tmp_path / "bare"
    mirror(cloud_env, full, ("site/", "previews/"))
    mirror(cloud_env, bare, ("site/",))
    shot, control = tmp_path / "page.png", tmp_path / "control.png"
    desktop = tmp_path / "desktop.png"
    with serve(full) as url:
        page_url = f"{url}/site/{NIGHT}.html"
        dom = chromium(["--dump-dom", page_url], tmp_path / "profile").stdout
        screenshot(page_url, shot, tmp_path / "profile")
        screenshot(page_url, desktop, tmp_path / "profile", size=(1100, 1500))
    with serve(bare) as url:
        screenshot(f"{url}/site/{NIGHT}.html", control, tmp_path / "profile")

    assert f'<span id="count">{count}</span>' in dom
    assert len(set(re.findall(r'<figure[^>]* data-id="([^"]+)"', dom))) == count
    assert dom.count("<figure") == count + 2  # the coincidence's two also shown on top
    assert "Seen from several observatories" in dom
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    shutil.copyfile(desktop, ARTIFACT.with_name("daily-page-desktop.png"))
    assert green_pixels(shot) > 500, "no preview image loaded"
    assert green_pixels(control) == 0
