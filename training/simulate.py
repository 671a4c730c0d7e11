"""``guaita simulate``: AllSky nights with ground truth, for tests, demo, training, benchmarks.

Writes exactly what AllSky writes — ``OUT/images/YYYYMMDD/image-YYYYMMDDHHMMSS.jpg`` (folder =
the evening's date, file = local capture time, a colour JPEG every ~30 s) — plus
``OUT/truth.csv`` (one row per frame, columns `TRUTH_COLUMNS`) and ``OUT/nights.json`` (each
night's `NightParams`). Deterministic from the seed.

Physical model and its assumptions
----------------------------------
Units: brightness in JPEG grey levels (0–255) at the night exposure (28 s) and gain; angles in
degrees; rates per frame (Poisson means); times local and naive.

Camera (`training.sim.camera`)
  Equidistant fisheye looking up, r = R·z/90°, R = 0.49·min(W, H) (larger on 16:9 frames,
  cut at top and bottom): a sky disk with dark corners, north up / east left, rotated a few
  degrees. Vignetting 30 % at the rim. Skyline
  of hills, tree crowns with leaf-scale jitter and buildings (0.5–25° high), fixed per camera.
  Black level 6. Noise: σ² = 2.3² + 0.14·signal (read + shot: σ≈3 at a sky of 30, ≈4 at 80),
  slightly correlated (demosaicing), plus colour noise σ 2; hot pixels (4e-5 of pixels, one
  colour channel, 15–200 grey levels, ∝ exposure, doubling every 6 °C); JPEG quality 90 with
  4:2:0 chroma. AllSky's overlay top-left: date/time, exposure, gain, sensor temperature
  (ambient − 0.9 °C/h + 4 °C self-heating, jitter 0.15 °C), so it changes every frame.
Exposure
  28 s every 30 ± 1 s (2 s to read out and save). Auto-exposure keeps the sky median under
  100 by stepping the exposure down in 1/3-stop steps from 28 s; AllSky's day/night switch at
  a solar altitude of −6° changes the gain 150 → 50. A change of step or gain is an
  `exposure_jump` (a 26 % or larger brightness step; dusk/dawn, a very bright Moon).
Sky (`training.sim.sky`)
  Site: Pujalt (41.72° N, 1.42° E, UTC+1). Sun from the Astronomical Almanac formula,
  sidereal time from GMST: the sky turns 15.04°/h about the celestial pole at altitude =
  latitude, so stars move ≈0.125° (≈0.7 px at 1304×976) between frames.
  Natural sky 15 at the zenith × van Rhijn airglow × extinction (0.25 mag/airmass).
  Light pollution: 1–3 towns (site-fixed) as domes falling off e-fold in 9° and 35° of
  altitude, up to 110 per unit pollution at the horizon, plus 10 over the whole sky; pollution
  0.35–0.8 per site, ±20 % per night, −25 % over 6 h as lights go off. Orange tint.
  Milky Way: galactic band σ 9°, up to 9, brighter toward the galactic centre, a dark rift.
  Twilight: 15·(10^(0.2·(h☉+18)) − 1), i.e. ×10 per 5° of solar altitude above −18°,
  brightest low toward the Sun; `twilight` = Sun above −18°. Blue tint.
  Moon: a position at the night's start (then turning with the sky), brightness ∝
  illumination² × extinction; sky: Rayleigh (1+cos²ψ) + aureole e^(−ψ/10°) + e^(−ψ/35°);
  glare 300·(1/(1+(ψ/1.5°)²) + 0.1·e^(−ψ/8°)) from lens and dome, a flare ring (lens
  ghost) mirrored through the image centre, a dome reflection opposite the Moon; a
  saturated core. `moon` = illuminated fraction while the Moon is above the horizon.
Stars
  A random catalogue per camera concentrated toward the galactic plane, peak brightness at the
  zenith with N(> peak) ∝ peak^−1.1 (≈0.44 dex more stars per magnitude), density
  0.021 stars/px above a peak of 1.5 (so frames of any size keep per-pixel star density,
  ~25 k stars on the sphere at 1304×976), Gaussian PSF σ 0.85 px, dimmed by extinction,
  glow around bright ones.
Clouds
  Two fractal layers (power spectrum k^−3.4 and k^−2.8) on a flat deck 1.5–4 km high,
  advected by a 4–20 m/s wind (several degrees per frame near the zenith), foreshortened
  toward the horizon. Optical depth = slant path × (κ·(T − θ) + τ₀) with θ set from the cover
  (drifting ±5–15 % over hours); opacity 1 − e^−τ hides stars and trails. Clouds shine with
  town light (260 per unit pollution, orange), moonlight (100 for a full Moon, brightest near
  it) and twilight. `cloud_cover` = mean opacity over open sky. Haze (0–0.3 optical depth)
  and dew (forming 0.5–6 h into 20 % of clear nights, growing over 1.5 h): dimmer, wider stars
  (PSF ×4 at full dew), glow around bright stars and the Moon, brighter background.
Meteors (`training.sim.transients`)
  Poisson `meteor_rate` per frame (×0.6 at 18 h rising to ×1.4 by 06 h: the apex). Single
  frame, straight. Length log-normal, median 200 px, 100–450 px at 1920 px width, scaled by
  min(W, 4/3·H)/1920, foreshortened toward the horizon; 1 % fireballs of 1,500–1,800 px
  (capped at 0.9 of the disk). Profile s^a(1−s)^b (rise then faster fade), 30 % with a
  terminal flare (1–3× peak). Peak above background: 50 % faint 4–10, 45 % 10–200, 5 %
  bolides 200–1000 with a glow. Truth `meteor_peak` = what reached the frame (after clouds,
  vignetting, saturation); meteors fainter than 2.5 behind clouds are neither drawn nor true.
Satellites and aircraft
  Great circles at constant angular speed. Satellites: 0.3–1.2°/s, brightness 4–60, visible
  10–58 s (1–3 consecutive frames, continuing on the same path), 15 % with a 1–2 s flare
  (×3–15); rate `satellite_rate` × sunlit fraction (1 until the Sun is 25° down, 0.15 after
  45°). Aircraft: in view 3–10 frames while crossing 60–160° of sky (0.2–1.8°/s), faint
  steady trail (3–12) with strobe dots (peak 40–220) every 1.0–2.0 s. Truth endpoints are
  the brightest satellite's segment in the frame.
Flashes
  `flash_rate` per frame: lightning on cloudy nights (clouds light up by 20–150) or headlights
  (a glow of 25–100 from one side, lighting the trees).

Calibration: `measure_frame_stats` measures a frame the way the reference statistics were
measured (docs/simulator.md has the table; tests/test_simulate.py checks it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time as time_mod
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.sim.night import (
    CONDITIONS,
    TRUTH_COLUMNS,
    NightParams,
    SimFrame,
    SimulationError,
    check_size,
    iter_night,
)

__all__ = [
    "CONDITIONS",
    "TRUTH_COLUMNS",
    "NightParams",
    "SimFrame",
    "SimulationError",
    "add_arguments",
    "iter_night",
    "make_montage",
    "measure_frame_stats",
    "run",
    "simulate",
    "write_frame",
]

JPEG_QUALITY = 90
DEFAULT_START = date(2026, 11, 20)


def write_frame(out_dir: str | Path, sim_frame: SimFrame) -> Path:
    """Write the frame's JPEG where AllSky would put it under `out_dir`; returns its path."""
    path = Path(out_dir) / sim_frame.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", sim_frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    path.write_bytes(data.tobytes())
    return path


def night_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed for night `index` of a run."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def plan_nights(nights: int, seed: int, start: date, meteor_rate: float,
                condition: str | None) -> list[NightParams]:
    rng = np.random.default_rng([seed, 0x9A1])
    return [
        NightParams.sample(rng, date.fromordinal(start.toordinal() + i), condition,
                           meteor_rate, camera_seed=seed)
        for i in range(nights)
    ]


def _check_args(nights: int, frames: int, meteor_rate: float, condition: str | None,
                width: int, height: int) -> None:
    if not isinstance(nights, int) or nights < 1:
        raise SimulationError(f"nights must be a positive integer, got {nights!r}")
    if not isinstance(frames, int) or frames < 1:
        raise SimulationError(f"frames must be a positive integer, got {frames!r}")
    if not np.isfinite(meteor_rate) or meteor_rate < 0:
        raise SimulationError(f"meteor_rate must be >= 0 (meteors per frame), got {meteor_rate}")
    if condition is not None and condition not in CONDITIONS:
        raise SimulationError(f"condition must be one of {', '.join(CONDITIONS)}, got "
                              f"{condition!r}")
    check_size(width, height)


def simulate(
    out_dir: str | Path,
    nights: int = 2,
    frames: int = 200,
    seed: int = 0,
    width: int = 1304,
    height: int = 976,
    start: date = DEFAULT_START,
    meteor_rate: float = 0.05,
    condition: str | None = None,
    progress: bool = True,
) -> Path:
    """Write `nights` simulated nights of `frames` frames each; returns the truth CSV path."""
    _check_args(nights, frames, meteor_rate, condition, width, height)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_nights(nights, seed, start, meteor_rate, condition)
    (out / "nights.json").write_text(json.dumps(
        {"seed": seed, "width": width, "height": height, "frames": frames,
         "nights": [p.to_dict() | {"seed": night_seed(seed, i)} for i, p in enumerate(plans)]},
        indent=2) + "\n")
    truth_path = out / "truth.csv"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=nights * frames, unit="frame", desc="simulate", file=sys.stderr)
    try:
        with truth_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(TRUTH_COLUMNS))
            writer.writeheader()
            for i, params in enumerate(plans):
                for frame in iter_night(params, frames, width, height, night_seed(seed, i)):
                    write_frame(out, frame)
                    writer.writerow(frame.truth)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return truth_path


def read_truth(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def summarize(truth_path: str | Path) -> dict[str, int]:
    rows = read_truth(truth_path)
    return {
        "frames": len(rows),
        "nights": len({r["night"] for r in rows}),
        "meteors": sum(r["meteor"] == "1" for r in rows),
        "satellites": sum(r["satellite"] == "1" for r in rows),
        "aircraft": sum(r["aircraft"] == "1" for r in rows),
        "flashes": sum(r["flash"] == "1" for r in rows),
    }


# -- calibration ----------------------------------------------------------------------------


def measure_frame_stats(gray: np.ndarray) -> dict[str, float]:
    """The reference measurement on the central half (middle W/2 × H/2) of a grey frame.

    noise_sigma: 1.4826 × MAD of (frame − 5×5 median filter); background: median;
    star_pixels: pixels more than 20 above the 5×5 median; crop_pixels: pixels measured.
    """
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.dtype != np.uint8 or gray.ndim != 2 or min(gray.shape) < 8:
        raise ValueError("measure_frame_stats needs a 2-D uint8 frame of at least 8×8")
    h, w = gray.shape
    crop = gray[h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2]
    local = crop.astype(np.int16) - cv2.medianBlur(crop, 5).astype(np.int16)
    mad = float(np.median(np.abs(local - np.median(local))))
    return {
        "noise_sigma": 1.4826 * mad,
        "background": float(np.median(crop)),
        "star_pixels": int((local > 20).sum()),
        "crop_pixels": int(crop.size),
    }


REFERENCE_CROP_PIXELS = 960 * 540  # central half of the 1920×1080 reference frames


def reference_star_pixels(width: int, height: int, low: int = 1200, high: int = 2200,
                          ) -> tuple[float, float]:
    """The reference star-pixel range (1,200–2,200 per 1920×1080 central half) scaled by
    the measured area, since the simulator keeps star density per pixel."""
    f = (width // 2) * (height // 2) / REFERENCE_CROP_PIXELS
    return low * f, high * f


REFERENCE = {  # shared/reference.md, measured on 1920×1080 indi-allsky frames
    "clear moonless": {"noise_sigma": "≈3.0 (4.5 some)", "background": "24–38",
                       "star_pixels": "1,200–2,200"},
    "moonlit": {"noise_sigma": "≈3.0 (4.5 some)", "background": "82", "star_pixels": "—"},
    "thin cloud": {"noise_sigma": "≈3.0 (4.5 some)", "background": "64–78",
                   "star_pixels": "90–460"},
    "overcast": {"noise_sigma": "≈3.0 (4.5 some)", "background": "87", "star_pixels": "≈0"},
}


def calibration_cases(cameras: int = 3) -> dict[str, list[NightParams]]:
    """The nights `calibration_report` measures: a few cameras (skylines, towns, star fields)
    per kind of sky, away from twilight."""
    night = DEFAULT_START
    start = datetime(night.year, night.month, night.day, 21, 0)
    quiet = {"meteor_rate": 0.0, "satellite_rate": 0.0, "aircraft_rate": 0.0,
             "flash_rate": 0.0, "start": start}
    cases: dict[str, list[NightParams]] = {k: [] for k in REFERENCE}
    for cam in range(cameras):
        lp = 0.35 + 0.45 * cam / max(1, cameras - 1)
        common = {**quiet, "camera_seed": cam, "light_pollution": round(lp, 2)}
        cases["clear moonless"].append(NightParams(night=night, condition="clear", **common))
        cases["moonlit"].append(NightParams(night=night, condition="moon", moon_illumination=1.0,
                                            moon_altitude=35 + 10 * cam, **common))
        cases["thin cloud"].append(NightParams(night=night, condition="cloudy",
                                               cloud_cover=0.75, **common))
        cases["overcast"].append(NightParams(night=night, condition="overcast", cloud_cover=1.0,
                                             **common))
    return cases


def calibration_report(width: int = 1920, height: int = 1080, frames: int = 3,
                       cameras: int = 3) -> list[dict[str, Any]]:
    """Measure simulated frames like the reference frames were measured (JPEG round trip)."""
    rows = []
    for case, nights in calibration_cases(cameras).items():
        stats = [
            measure_frame_stats(_jpeg_gray(f.image))
            for i, params in enumerate(nights)
            for f in iter_night(params, frames, width, height, seed=i)
        ]
        rows.append({
            "case": case,
            "frames": len(stats),
            **{k: (min(s[k] for s in stats), float(np.median([s[k] for s in stats])),
                   max(s[k] for s in stats)) for k in ("noise_sigma", "background",
                                                       "star_pixels")},
            "reference": REFERENCE[case],
        })
    return rows


def format_report(rows: list[dict[str, Any]], width: int, height: int) -> str:
    def rng(v: tuple[float, float, float], fmt: str) -> str:
        return f"{v[0]:{fmt}}–{v[2]:{fmt}} (median {v[1]:{fmt}})"

    lines = [
        f"Simulated {width}×{height}, central half {width // 2}×{height // 2} px:",
        "",
        "| sky | frames | noise σ | reference | background | reference | star pixels | "
        "reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r["reference"]
        lines.append(
            f"| {r['case']} | {r['frames']} | {rng(r['noise_sigma'], '.2f')} | "
            f"{ref['noise_sigma']} | {rng(r['background'], '.0f')} | {ref['background']} | "
            f"{rng(r['star_pixels'], '.0f')} | {ref['star_pixels']} |")
    return "\n".join(lines)


# -- montage ---------------------------------------------------------------------------------


def _montage_frames(width: int, height: int) -> list[tuple]:
    """(title, previous grey, current grey, truth, current colour, extra) per kind of frame."""
    dark = lambda r: r["twilight"] == "0"  # noqa: E731
    wanted = {
        "clear": lambda r: r["condition"] == "clear" and dark(r) and r["meteor"] == "0",
        "moon": lambda r: r["condition"] == "moon" and r["meteor"] == "0",
        "cloudy": lambda r: r["condition"] == "cloudy" and float(r["cloud_cover"]) > 0.2,
        "overcast": lambda r: r["condition"] == "overcast",
        "bright meteor": lambda r: dark(r) and r["meteor"] == "1"
        and 40 < float(r["meteor_peak"]) < 150,
        "faint meteor": lambda r: dark(r) and r["meteor"] == "1" and float(r["meteor_peak"]) < 9,
        "satellite": lambda r: dark(r) and r["satellite"] == "1" and r["meteor"] == "0"
        and float(r["satellite_peak"]) > 10 and _length(r, "satellite") > 80,
        "aircraft": lambda r: dark(r) and r["aircraft"] == "1" and r["meteor"] == "0",
        "flash": lambda r: dark(r) and r["flash"] == "1",
        "dusk exposure jump": lambda r: r["exposure_jump"] == "1",
    }
    found: dict[str, tuple] = {}
    # one night per condition, rates raised so every kind of event shows up in a few frames
    specs = [("clear", 11, 19), ("moon", 12, 19), ("cloudy", 13, 19), ("overcast", 14, 19),
             ("clear", 15, 18)]
    for condition, seed, hour in specs:
        rng = np.random.default_rng(seed)
        params = NightParams.sample(rng, DEFAULT_START, condition, 0.25, camera_seed=1)
        params = replace(params, flash_rate=0.04, aircraft_rate=0.05,
                         start=params.start.replace(hour=hour, minute=5))  # type: ignore
        previous = None
        for frame in iter_night(params, 100, width, height, seed):
            if previous is not None:
                row = {k: str(v) for k, v in (frame.truth | frame.extra).items()}
                for title, test in wanted.items():
                    if title not in found and test(row):
                        found[title] = (title, _jpeg_gray(previous.image),
                                        _jpeg_gray(frame.image), frame.truth, frame.image,
                                        frame.extra)
            previous = frame
            if len(found) == len(wanted):
                break
    return [found[t] for t in wanted if t in found]


def _length(row: dict[str, str], kind: str) -> float:
    return float(np.hypot(float(row[f"{kind}_x2"]) - float(row[f"{kind}_x1"]),
                          float(row[f"{kind}_y2"]) - float(row[f"{kind}_y1"])))


def _jpeg_gray(image: np.ndarray) -> np.ndarray:
    """Round-trip through JPEG as the edge sees it."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def _zoom_box(title: str, truth: dict[str, Any], extra: dict[str, Any], width: int,
              height: int) -> tuple[int, int, int, int]:
    """A 4:3 crop around the example's event (or the zenith), ~1/3 of the frame wide."""
    cw, ch = width // 3, height // 3
    if "meteor" in title:
        x = (float(truth["meteor_x1"]) + float(truth["meteor_x2"])) / 2
        y = (float(truth["meteor_y1"]) + float(truth["meteor_y2"])) / 2
        span = max(abs(float(truth["meteor_x2"]) - float(truth["meteor_x1"])),
                   abs(float(truth["meteor_y2"]) - float(truth["meteor_y1"])) * 4 / 3)
        cw = int(min(width, max(cw // 2, span * 1.3)))
        ch = int(cw * 3 / 4)
    elif title == "satellite":
        x = (float(truth["satellite_x1"]) + float(truth["satellite_x2"])) / 2
        y = (float(truth["satellite_y1"]) + float(truth["satellite_y2"])) / 2
    elif title == "aircraft":
        x1, y1, x2, y2 = extra["aircraft_endpoints"]
        x, y = (x1 + x2) / 2, (y1 + y2) / 2
    else:
        x, y = width / 2, height / 2
    x0 = int(min(max(0, x - cw / 2), width - cw))
    y0 = int(min(max(0, y - ch / 2), height - ch))
    return x0, y0, cw, ch


def make_montage(out_png: str | Path = "docs/img/simulator-montage.png", width: int = 1304,
                 height: int = 976) -> Path:
    """Sample frames with their positive difference images, whole and zoomed, for eyes.

    Columns: the colour frame, its difference from the previous frame (×4), and the same two
    zoomed on the event (or the zenith). Red ticks mark a meteor's true endpoints.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge.preprocess import positive_difference

    examples = _montage_frames(width, height)
    rows = len(examples)
    fig, axes = plt.subplots(rows, 4, figsize=(16, rows * 3.05))
    axes = np.atleast_2d(axes)
    for r, (title, before, cur, truth, colour, extra) in enumerate(examples):
        diff = np.minimum(positive_difference(before, cur).astype(np.float32) * 4, 255)
        rgb = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
        x0, y0, cw, ch = _zoom_box(title, truth, extra, width, height)
        panels = [
            (rgb, f"{title} · {truth['captured_local'][11:]} · cover {truth['cloud_cover']}"
                  f" · moon {truth['moon']}"),
            (diff, "positive difference ×4"),
            (rgb[y0:y0 + ch, x0:x0 + cw], "zoom"),
            (diff[y0:y0 + ch, x0:x0 + cw], "zoom, difference ×4"),
        ]
        if truth["meteor"]:
            panels[3] = (panels[3][0], f"zoom, difference ×4 · meteor peak "
                                       f"{float(truth['meteor_peak']):.0f}")
        for c, (img, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
            if truth["meteor"]:
                ox, oy = (x0, y0) if c >= 2 else (0, 0)
                for k in ("1", "2"):
                    ax.plot(float(truth[f"meteor_x{k}"]) - ox, float(truth[f"meteor_y{k}"]) - oy,
                            marker="+", color="red", markersize=7, mew=0.8)
    fig.tight_layout(pad=0.4)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=66, format="png")
    plt.close(fig)
    # matplotlib writes RGBA; noise compresses badly, so drop alpha and squeeze harder
    rgba = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(out), rgba, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out


# -- CLI ---------------------------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder (AllSky layout)")
    parser.add_argument("--nights", type=int, default=2, help="nights to simulate (2)")
    parser.add_argument("--frames", type=int, default=200, help="frames per night (200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--width", type=int, default=1304, help="frame width (1304)")
    parser.add_argument("--height", type=int, default=976, help="frame height (976)")
    parser.add_argument("--meteor-rate", type=float, default=0.05,
                        help="meteors per frame, Poisson mean (0.05)")
    parser.add_argument("--condition", choices=CONDITIONS, default=None,
                        help="sky condition for every night (default: drawn per night)")
    parser.add_argument("--start", type=_date, default=DEFAULT_START,
                        help="date of the first evening, YYYY-MM-DD (2026-11-20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    began = time_mod.perf_counter()
    try:
        truth = simulate(args.out, nights=args.nights, frames=args.frames, seed=args.seed,
                         width=args.width, height=args.height, start=args.start,
                         meteor_rate=args.meteor_rate, condition=args.condition,
                         progress=not args.no_progress)
    except SimulationError as exc:
        print(f"guaita simulate: {exc}", file=sys.stderr)
        return 2
    elapsed = time_mod.perf_counter() - began
    s = summarize(truth)
    print(truth)
    print(f"{s['frames']} frames in {s['nights']} nights ({s['frames'] / elapsed:.1f} frames/s): "
          f"{s['meteors']} with meteors, {s['satellites']} with satellites, "
          f"{s['aircraft']} with aircraft, {s['flashes']} flashes")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.simulate [montage [PNG] | calibrate [W H] | OUT options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "montage":
        print(make_montage(*argv[1:2]))
        return 0
    if argv and argv[0] == "calibrate":
        w, h = (int(argv[1]), int(argv[2])) if len(argv) >= 3 else (1920, 1080)
        print(format_report(calibration_report(w, h), w, h))
        return 0
    parser = argparse.ArgumentParser(prog="python -m training.simulate",
                                     description="write simulated AllSky nights")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

