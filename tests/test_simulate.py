"""The AllSky night simulator: layout, truth, determinism, physics checks, calibration, CLI.

Small frames (320×240 and 640×480) and few frames keep this fast; every check reads the JPEGs
back from disk, as the edge would.
"""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main as guaita
from edge.frames import list_frames, night_of, parse_frame
from edge.preprocess import positive_difference, read_gray
from training.simulate import (
    TRUTH_COLUMNS,
    NightParams,
    SimulationError,
    iter_night,
    measure_frame_stats,
    reference_star_pixels,
    simulate,
    write_frame,
)

W, H = 320, 240


def rows_of(truth: Path) -> list[dict[str, str]]:
    with truth.open(newline="") as fh:
        return list(csv.DictReader(fh))


def jpeg_gray(image: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def segment_values(gray: np.ndarray, x1, y1, x2, y2, lo=0.1, hi=0.9, n=40) -> np.ndarray:
    """Max of each 3×3 neighbourhood at points along a segment (a 1-px line may fall between)."""
    s = np.linspace(lo, hi, n)
    xs = np.clip(np.round(float(x1) + s * (float(x2) - float(x1))).astype(int), 1,
                 gray.shape[1] - 2)
    ys = np.clip(np.round(float(y1) + s * (float(y2) - float(y1))).astype(int), 1,
                 gray.shape[0] - 2)
    dil = cv2.dilate(gray, np.ones((3, 3), np.uint8))
    return dil[ys, xs].astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(out, nights=2, frames=12, seed=7, width=W, height=H, meteor_rate=0.3,
             progress=False)
    return out


# -- layout and truth --------------------------------------------------------------------------


def test_layout_matches_allsky(run_dir: Path):
    rows = rows_of(run_dir / "truth.csv")
    assert len(rows) == 24
    folders = sorted(p.name for p in (run_dir / "images").iterdir())
    assert folders == ["20261120", "20261121"]
    for row in rows:
        path = run_dir / row["file"]
        assert path.is_file(), row["file"]
        assert row["file"] == f"images/{row['night']}/{path.name}"
        frame = parse_frame(path)
        assert frame is not None and frame.night == row["night"]
        assert frame.captured == datetime.fromisoformat(row["captured_local"])
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert path.read_bytes()[:2] == b"\xff\xd8"  # JPEG
    frames = list_frames(run_dir / "images")
    assert len(frames) == 24
    for night in folders:
        times = [f.captured for f in frames if f.night == night]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(29 <= g <= 31 for g in gaps), gaps
        assert times[0].hour in (18, 19, 20)  # the evening


def test_truth_csv_columns_and_values(run_dir: Path):
    with (run_dir / "truth.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == TRUTH_COLUMNS
    rows = rows_of(run_dir / "truth.csv")
    for row in rows:
        assert [int(row["frame_index"])] == [rows.index(row) % 12]
        for flag in ("meteor", "satellite", "aircraft", "twilight", "flash", "exposure_jump"):
            assert row[flag] in ("0", "1")
        assert 0 <= float(row["cloud_cover"]) <= 1 and 0 <= float(row["moon"]) <= 1
        assert row["condition"] in ("clear", "moon", "cloudy", "overcast")
        ends = [row[f"meteor_{k}"] for k in ("x1", "y1", "x2", "y2", "peak", "length_px")]
        if row["meteor"] == "1":
            x1, y1, x2, y2, peak, length = map(float, ends)
            assert peak > 0 and length > 0
            assert all(0 <= v < W for v in (x1, x2)) and all(0 <= v < H for v in (y1, y2))
            assert length == pytest.approx(np.hypot(x2 - x1, y2 - y1), abs=0.2)
        else:
            assert ends == [""] * 6
        sat = [row[f"satellite_{k}"] for k in ("x1", "y1", "x2", "y2")]
        assert (all(sat) if row["satellite"] == "1" else sat == [""] * 4)
    nights = json.loads((run_dir / "nights.json").read_text())
    assert [n["night"] for n in nights["nights"]] == ["2026-11-20", "2026-11-21"]
    assert {r["condition"] for r in rows} == {n["condition"] for n in nights["nights"]}
    assert all(n["meteor_rate"] == 0.3 for n in nights["nights"])


def test_night_crossing_midnight_keeps_the_evening_folder(tmp_path: Path):
    params = NightParams(night=date(2026, 11, 20), start=datetime(2026, 11, 20, 23, 58, 0))
    paths = [write_frame(tmp_path, f) for f in iter_night(params, 8, 96, 72, seed=1)]
    assert {p.parent.name for p in paths} == {"20261120"}
    names = [p.name for p in paths]
    assert names[0] == "image-20261120235800.jpg"
    assert any(n.startswith("image-20261121") for n in names)
    assert all(night_of(parse_frame(p).captured) == "20261120" for p in paths)


# -- determinism -----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    a = simulate(tmp_path / "a", nights=1, frames=3, seed=5, width=W, height=H, progress=False)
    b = simulate(tmp_path / "b", nights=1, frames=3, seed=5, width=W, height=H, progress=False)
    c = simulate(tmp_path / "c", nights=1, frames=3, seed=6, width=W, height=H, progress=False)
    assert a.read_bytes() == b.read_bytes()
    for row in rows_of(a):
        assert (a.parent / row["file"]).read_bytes() == (b.parent / row["file"]).read_bytes()
    assert (a.parent / "nights.json").read_text() == (b.parent / "nights.json").read_text()
    first_a = sorted((a.parent / "images").rglob("*.jpg"))[0].read_bytes()
    first_c = sorted((c.parent / "images").rglob("*.jpg"))[0].read_bytes()
    assert first_a != first_c


# -- what moves and what does not -------------------------------------------------------------


def clear_night(**changes) -> NightParams:
    base = NightParams(night=date(2026, 11, 20), condition="clear",
                       start=datetime(2026, 11, 20, 21, 0), satellite_rate=0.0,
                       aircraft_rate=0.0, flash_rate=0.0, meteor_rate=0.0)
    return replace(base, **changes)


def test_meteor_is_in_its_frame_only():
    frames = list(iter_night(clear_night(meteor_rate=0.6), 40, 640, 480, seed=3))
    grays = [jpeg_gray(f.image) for f in frames]
    checked = 0
    for i in range(1, len(frames) - 1):
        t = frames[i].truth
        if not t["meteor"] or (t["meteor"] and frames[i + 1].truth["meteor"]):
            continue
        if t["meteor_peak"] < 25:
            continue
        ends = (t["meteor_x1"], t["meteor_y1"], t["meteor_x2"], t["meteor_y2"])
        appeared = segment_values(positive_difference(grays[i - 1], grays[i]), *ends)
        gone = segment_values(positive_difference(grays[i], grays[i + 1]), *ends)
        # bright where it is brightest (rise and fade), nothing new there in the next frame
        assert appeared.max() > 0.5 * t["meteor_peak"], (appeared.max(), t["meteor_peak"])
        assert np.median(appeared) > 8
        assert np.median(gone) < 8 and np.percentile(gone, 90) < 0.4 * appeared.max()
        checked += 1
    assert checked >= 2


def test_satellite_continues_on_the_same_path_in_the_next_frame():
    # early in the night, while satellites are still sunlit
    params = clear_night(satellite_rate=0.4, start=datetime(2026, 11, 20, 19, 30))
    frames = list(iter_night(params, 30, 640, 480, seed=4))
    grays = [jpeg_gray(f.image) for f in frames]
    continued = 0
    for i in range(1, len(frames) - 1):
        a, b = frames[i].truth, frames[i + 1].truth
        if not (a["satellite"] and b["satellite"]):
            continue
        end_a = np.array([a["satellite_x2"], a["satellite_y2"]], float)
        start_b = np.array([b["satellite_x1"], b["satellite_y1"]], float)
        va = end_a - np.array([a["satellite_x1"], a["satellite_y1"]], float)
        vb = np.array([b["satellite_x2"], b["satellite_y2"]], float) - start_b
        if np.linalg.norm(end_a - start_b) > 0.3 * np.linalg.norm(va) + 3:
            continue  # the truth names the brightest of two satellites
        cos = va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) + 1e-9)
        assert cos > 0.9  # same direction: a collinear continuation, not a new streak
        if frames[i + 1].extra["satellite_peak"] > 15:  # and it is really in the image
            seen = segment_values(positive_difference(grays[i], grays[i + 1]),
                                  b["satellite_x1"], b["satellite_y1"], b["satellite_x2"],
                                  b["satellite_y2"])
            assert np.median(seen) > 8
        continued += 1
    assert continued >= 2


def test_overlay_changes_every_frame_and_the_corner_does_not():
    frames = list(iter_night(clear_night(), 3, W, H, seed=2))
    grays = [jpeg_gray(f.image) for f in frames]
    for before, after in itertools.pairwise(grays):
        text = cv2.absdiff(before[: H // 8, : W // 3], after[: H // 8, : W // 3])
        corner = cv2.absdiff(before[-H // 8:, -W // 8:], after[-H // 8:, -W // 8:])
        assert (text > 80).sum() >= 5
        assert corner.max() < 40  # outside the sky disk: only noise
    assert frames[0].truth["captured_local"] != frames[1].truth["captured_local"]


def test_stars_turn_about_the_celestial_pole():
    """Frames 20 min apart: every bright star of the first frame is found in the second where
    a rotation of 15.04°/h × 20 min westward about the pole (altitude = latitude, due north)
    puts it; not where it was, and not where an eastward turn would."""
    from training.sim.camera import build_camera

    params = clear_night(interval_s=1200.0, jitter_s=0.0)
    a, b = (jpeg_gray(f.image) for f in iter_night(params, 2, 640, 480, seed=8))
    cam = build_camera(640, 480, params.camera_seed)
    local_b = b.astype(np.int16) - cv2.medianBlur(b, 5)
    local_a = a.astype(np.int16) - cv2.medianBlur(a, 5)
    peaks = (local_a > 40) & (local_a == cv2.dilate(local_a, np.ones((5, 5), np.uint8)))
    ys, xs = np.nonzero(peaks)
    inner = np.hypot(xs - cam.cx, ys - cam.cy) < 0.6 * cam.radius
    xs, ys = xs[inner].astype(float), ys[inner].astype(float)
    assert len(xs) >= 15
    lat = np.radians(params.latitude)
    pole = np.array([0.0, np.cos(lat), np.sin(lat)])  # ENU

    def found(turn_deg: float) -> float:
        v = cam.pixel_enu(xs, ys)
        th = np.radians(turn_deg)
        v = (v * np.cos(th) + np.cross(pole, v) * np.sin(th)
             + np.outer(v @ pole, pole) * (1 - np.cos(th)))
        px, py = cam.project(v)
        hits = 0
        for x, y in zip(np.round(px).astype(int), np.round(py).astype(int), strict=True):
            hits += int(local_b[y - 2: y + 3, x - 2: x + 3].max() > 20)
        return hits / len(xs)

    turn = 15.041 * 1200 / 3600
    assert found(-turn) > 0.8  # westward, as the sky turns
    assert found(0.0) < 0.3 and found(turn) < 0.3


def test_dusk_has_twilight_and_exposure_jumps():
    params = clear_night(start=datetime(2026, 11, 20, 17, 50))
    truth = [f.truth for f in iter_night(params, 40, 96, 72, seed=1)]
    assert truth[0]["twilight"] == 1
    assert sum(t["exposure_jump"] for t in truth) >= 3
    late = list(iter_night(clear_night(start=datetime(2026, 11, 20, 22, 0)), 5, 96, 72, seed=1))
    assert all(f.truth["twilight"] == 0 and f.truth["exposure_jump"] == 0 for f in late)


def test_flash_brightens_the_whole_frame():
    frames = list(iter_night(clear_night(flash_rate=0.5), 12, W, H, seed=9))
    means = [float(jpeg_gray(f.image).mean()) for f in frames]
    flashes = [i for i in range(1, 12) if frames[i].truth["flash"] and not
               frames[i - 1].truth["flash"]]
    assert flashes
    assert all(means[i] > means[i - 1] + 3 for i in flashes)


def test_moon_and_clouds_are_in_the_truth():
    moon = NightParams(night=date(2026, 11, 20), condition="moon", moon_illumination=0.9,
                       moon_altitude=40)
    t = next(iter_night(moon, 1, W, H, seed=0)).truth
    assert t["moon"] == pytest.approx(0.9) and t["condition"] == "moon"
    cloudy = NightParams(night=date(2026, 11, 20), condition="cloudy", cloud_cover=0.5)
    covers = [f.truth["cloud_cover"] for f in iter_night(cloudy, 3, W, H, seed=0)]
    assert all(0.1 < c < 0.9 for c in covers)
    assert next(iter_night(clear_night(), 1, W, H, seed=0)).truth["cloud_cover"] == 0


# -- calibration against real frames (shared/reference.md) ------------------------------------


def stats_for(params: NightParams, width=640, height=480, frames=4, seed=0) -> list[dict]:
    out = []
    for f in iter_night(params, frames, width, height, seed):
        assert f.truth["twilight"] == 0
        out.append(measure_frame_stats(jpeg_gray(f.image)))
    return out


def test_measure_frame_stats_on_known_images():
    rng = np.random.default_rng(0)
    flat = np.clip(30 + rng.normal(0, 3, (200, 200)), 0, 255).astype(np.uint8)
    s = measure_frame_stats(flat)
    assert s["crop_pixels"] == 100 * 100 and s["background"] == pytest.approx(30, abs=1)
    assert 2.5 < s["noise_sigma"] < 3.5 and s["star_pixels"] == 0
    flat[100, 100] = flat[120, 80] = 200  # two "stars" inside the central half
    flat[10, 10] = 250  # outside it
    assert measure_frame_stats(flat)["star_pixels"] == 2
    with pytest.raises(ValueError):
        measure_frame_stats(np.zeros((4, 4), np.uint8))


def test_calibration_matches_reference_frames():
    lo, hi = reference_star_pixels(640, 480)
    clear = []
    for cam in range(3):  # three cameras: different skylines, towns and star fields
        params = replace(clear_night(camera_seed=cam), light_pollution=0.35 + 0.2 * cam)
        clear += stats_for(params, seed=cam)
    for s in clear:
        assert 2.0 <= s["noise_sigma"] <= 4.5  # reference ≈ 3.0 (4.5 on some frames)
        assert 20 <= s["background"] <= 45  # reference clear moonless 24–38
    stars = float(np.mean([s["star_pixels"] for s in clear]))
    assert 0.75 * lo <= stars <= 1.25 * hi, (stars, lo, hi)  # reference 1,200–2,200 @1080p

    moon = stats_for(NightParams(night=date(2026, 11, 20), condition="moon",
                                 moon_illumination=1.0, moon_altitude=45, meteor_rate=0))
    assert all(60 <= s["background"] <= 100 for s in moon)  # reference moonlit 82

    overcast = stats_for(NightParams(night=date(2026, 11, 20), condition="overcast",
                                     cloud_cover=1.0, light_pollution=0.6, meteor_rate=0))
    assert all(s["star_pixels"] <= 0.02 * lo for s in overcast)  # reference ≈ 0
    assert all(65 <= s["background"] <= 110 for s in overcast)  # reference 87
    assert all(2.0 <= s["noise_sigma"] <= 4.5 for s in overcast)

    thin = stats_for(NightParams(night=date(2026, 11, 20), condition="cloudy",
                                 cloud_cover=0.75, light_pollution=0.6, meteor_rate=0))
    thin_stars = float(np.mean([s["star_pixels"] for s in thin]))
    assert 0.02 * lo < thin_stars < 0.6 * stars  # reference thin cloud 90–460 @1080p
    assert float(np.mean([s["background"] for s in thin])) > np.mean(
        [s["background"] for s in clear]) + 10


# -- sizes and arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 48), (160, 400), (333, 211), (1000, 180)])
def test_any_frame_size_works(tmp_path: Path, size):
    w, h = size
    params = clear_night(meteor_rate=1.0, satellite_rate=0.5, aircraft_rate=0.5, flash_rate=0.3)
    for f in iter_night(params, 3, w, h, seed=1):
        assert f.image.shape == (h, w, 3)
        path = write_frame(tmp_path, f)
        assert read_gray(str(path)).shape == (h, w)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 0}, "frames"),
        ({"nights": -1}, "nights"),
        ({"width": 10}, "size"),
        ({"meteor_rate": -0.1}, "meteor_rate"),
        ({"condition": "foggy"}, "condition"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path: Path, kwargs, message):
    with pytest.raises(SimulationError, match=message):
        simulate(tmp_path, **{"nights": 1, "frames": 2, "width": W, "height": H,
                              "progress": False, **kwargs})
    assert not (tmp_path / "truth.csv").exists()


def test_bad_night_params_are_refused():
    with pytest.raises(SimulationError, match="cloud_cover"):
        NightParams(night=date(2026, 11, 20), cloud_cover=1.5)
    with pytest.raises(SimulationError, match="satellite_rate"):
        NightParams(night=date(2026, 11, 20), satellite_rate=-1)
    with pytest.raises(SimulationError, match="frames"):
        next(iter_night(clear_night(), 0, W, H))


# -- command line ----------------------------------------------------------------------------------


def test_cli_writes_a_night_and_prints_a_summary(tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc = guaita(["simulate", "--nights", "1", "--frames", "4", "--width", "160", "--height",
                 "120", "--seed", "3", "--condition", "cloudy", "--start", "2026-12-01",
                 "--meteor-rate", "0.5", "--no-progress", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "truth.csv") in printed
    assert "4 frames" in printed and "meteors" in printed and "satellites" in printed
    rows = rows_of(out / "truth.csv")
    assert [r["night"] for r in rows] == ["20261201"] * 4
    assert {r["condition"] for r in rows} == {"cloudy"}


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys):
    assert guaita(["simulate", "--frames", "0", "--no-progress", str(tmp_path)]) == 2
    assert "frames must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        guaita(["simulate", "--condition", "foggy", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        guaita(["simulate", "--start", "20-11-2026", str(tmp_path)])


def test_simulator_imports_neither_torch_nor_matplotlib():
    code = ("import sys, training.simulate; "
            "bad = [m for m in ('torch', 'fastai', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_frames_are_spaced_by_the_interval():
    params = clear_night(interval_s=60.0, jitter_s=0.0)
    times = [f.captured for f in iter_night(params, 4, 96, 72, seed=0)]
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=60)] * 3
