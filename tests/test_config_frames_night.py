"""Config validation, AllSky naming, night window."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.config import ConfigError, NightConfig, load_config, parse_config
from edge.frames import frame_filename, is_consecutive, list_frames, night_of, parse_frame
from edge.night import in_window, sun_altitude_deg


def test_defaults_are_valid():
    cfg = parse_config("")
    assert cfg.observatory == "my-observatory" and cfg.mqtt.enabled is False


def test_full_config_round_trip(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        """
observatory = "pujalt"
timezone = "Europe/Madrid"
[detection]
threshold = 0.85
threads = 2
mask_rects = [[0, 0, 400, 60]]
[night]
mode = "sun"
latitude = 41.7
[mqtt]
port = 443
[mqtt.tls]
alpn = "x-amzn-mqtt-ca"
"""
    )
    cfg = load_config(path)
    assert cfg.detection.threshold == 0.85 and cfg.detection.mask_rects == [[0, 0, 400, 60]]
    assert cfg.night.mode == "sun" and cfg.mqtt.tls.alpn == "x-amzn-mqtt-ca"
    assert cfg.source == str(path) and cfg.client_id == "pujalt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[mqtt]\nport = "x"', "mqtt.port: expected an integer"),
        ("[mqtt]\nport = 70000", "mqtt.port: must be 1..65535"),
        ("[detection]\nthreshold = 1.5", "detection.threshold: must be between 0 and 1"),
        ("[detection]\ntreshold = 0.5", "detection.treshold: unknown key"),
        ('observatory = "../etc"', "observatory:"),
        ('timezone = "Mars/Olympus"', "timezone: unknown time zone"),
        ('[night]\nmode = "dusk"', "night.mode: must be one of"),
        ('[night]\nstart = "25:00"', "night.start: expected HH:MM"),
        ("[mqtt]\nenabled = true\n[mqtt.tls]\ncert = '/x.pem'", "mqtt.tls.key: required"),
        ("[mqtt]\nenabled = true\n[mqtt.tls]\nca = '/nonexistent/ca.pem'", "mqtt.tls.ca: file"),
        ("[detection]\nmask_rects = [[0, 0, 10]]", "detection.mask_rects[0]"),
        ("mqtt = 3", "mqtt: expected a table"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_frame_names_and_nights(tmp_path):
    frame = parse_frame(tmp_path / "20261120" / "image-20261121013000.jpg")
    assert frame is not None
    assert frame.night == "20261120" and frame.captured == datetime(2026, 11, 21, 1, 30)
    assert frame.frame_id == "20261120-20261121013000"
    assert parse_frame(tmp_path / "20261120" / "thumbnails" / "image-20261121013000.jpg") is None
    assert parse_frame(tmp_path / "20261120" / "image.jpg") is None
    assert parse_frame(tmp_path / "20261120" / "image-20261399999999.jpg") is None
    assert night_of(datetime(2026, 11, 21, 7, 0)) == "20261120"
    assert night_of(datetime(2026, 11, 20, 21, 0)) == "20261120"
    assert frame_filename(datetime(2026, 11, 20, 21, 0, 5)) == "image-20261120210005.jpg"


def test_list_frames_orders_and_filters(tmp_path):
    night = tmp_path / "images" / "20261120"
    (night / "thumbnails").mkdir(parents=True)
    for stamp in ("20261121000030", "20261120235930", "20261121000000"):
        (night / f"image-{stamp}.jpg").write_bytes(b"x")
        (night / "thumbnails" / f"image-{stamp}.jpg").write_bytes(b"x")
    (night / "notes.txt").write_text("x")
    names = [f.name for f in list_frames(tmp_path / "images")]
    assert names == ["image-20261120235930.jpg", "image-20261121000000.jpg",
                     "image-20261121000030.jpg"]
    a, b, c = list_frames(night)
    assert is_consecutive(a, b, 60) and not is_consecutive(a, c, 45)


def test_sun_altitude_matches_solstice_noon():
    # Local apparent noon at 41.9° N: 90 − 41.9 ± 23.44.
    assert sun_altitude_deg(datetime(2026, 6, 21, 11, 54), 41.9, 1.6) == pytest.approx(71.5, 0.1)
    assert sun_altitude_deg(datetime(2026, 12, 21, 11, 50), 41.9, 1.6) == pytest.approx(24.7, 0.1)


def test_night_windows():
    tz = ZoneInfo("Europe/Madrid")
    times = NightConfig(mode="times", start="20:00", end="08:00")
    assert in_window(times, datetime(2026, 11, 20, 23, 0, tzinfo=tz))
    assert in_window(times, datetime(2026, 11, 21, 7, 59, tzinfo=tz))
    assert not in_window(times, datetime(2026, 11, 21, 12, 0, tzinfo=tz))
    sun = NightConfig(mode="sun", latitude=41.9, longitude=1.6, sun_altitude_deg=-6)
    assert in_window(sun, datetime(2026, 11, 20, 23, 0, tzinfo=tz))
    assert not in_window(sun, datetime(2026, 11, 20, 13, 0, tzinfo=tz))
    # Civil dusk in Madrid late November is about 18:20 local: 17:30 is still too bright.
    assert not in_window(sun, datetime(2026, 11, 20, 17, 30, tzinfo=tz))
    assert in_window(sun, datetime(2026, 11, 20, 19, 0, tzinfo=tz))
