"""One simulated night: parameters, the per-frame renderer and the frame stream."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import cv2
import numpy as np

from training.sim import camera as camera_mod
from training.sim.astro import (
    altaz_to_enu,
    enu_matrix,
    julian_date,
    local_sidereal_time,
    sun_equatorial,
)
from training.sim.camera import Camera, build_camera, draw_overlay
from training.sim.sky import (
    CLOUD_BASE,
    CLOUD_LP,
    CLOUD_MOON,
    LP_BROAD,
    LP_DOME,
    NATURAL_SKY,
    Clouds,
    SkyLight,
    milky_way,
    moon_light,
    star_glow,
    twilight,
)
from training.sim.transients import (
    Meteor,
    Patch,
    Track,
    flash_map,
    gaussian_blob,
    sample_aircraft,
    sample_meteor,
    sample_satellite,
)

CONDITIONS = ("clear", "moon", "cloudy", "overcast")
TRUTH_COLUMNS = (
    "night", "file", "captured_local", "frame_index",
    "meteor", "meteor_x1", "meteor_y1", "meteor_x2", "meteor_y2", "meteor_peak",
    "meteor_length_px",
    "satellite", "satellite_x1", "satellite_y1", "satellite_x2", "satellite_y2",
    "aircraft", "cloud_cover", "moon", "twilight", "flash", "exposure_jump", "condition",
)  # fmt: skip

EXPOSURE_NIGHT_S = 28.0  # 30-s cadence minus ~2 s readout and save
GAIN_NIGHT, GAIN_DAY = 150, 50  # ZWO-style 0.1 dB units; relative gain 10^((g−150)/200)
DAY_ANGLE = -6.0  # AllSky switches to day settings when the Sun is above this
AE_TARGET = 100.0  # auto-exposure aims the sky median below this (grey levels)
AE_STEPS_PER_STOP = 3  # exposure ladder: 1/3 stop
VISIBLE_PEAK = 2.5  # a trail fainter than this after clouds is not in the truth (nor drawn)


class SimulationError(ValueError):
    """Bad simulation parameters; the message names the parameter."""


@dataclass(frozen=True)
class NightParams:
    """Everything that makes one night different. Angles in degrees, rates per frame.

    moon_altitude/azimuth are the Moon's position at `start`; it then turns with the sky
    (its own 0.5°/h drift is ignored). moon_altitude ≤ 0 means no Moon all night.
    cloud_cover is the mean fraction of sky under cloud (it drifts ±15 % over the night).
    light_pollution 0 = dark site, 1 = suburban. dew_onset_h: hours after `start` at which
    dew starts forming on the dome (None = no dew); haze 0..0.3 dims stars (optical depth).
    """

    night: date
    condition: str = "clear"
    start: datetime | None = None  # local; None → 19:30 on `night`
    moon_illumination: float = 0.0
    moon_altitude: float = -30.0
    moon_azimuth: float = 120.0
    cloud_cover: float = 0.0
    light_pollution: float = 0.5
    meteor_rate: float = 0.05
    satellite_rate: float = 0.08
    aircraft_rate: float = 0.015
    flash_rate: float = 0.003
    interval_s: float = 30.0
    jitter_s: float = 1.0
    haze: float = 0.05
    dew_onset_h: float | None = None
    wind_speed: float = 10.0  # m/s at the cloud deck
    wind_direction: float = 250.0  # degrees, direction the wind blows toward
    cloud_height_km: float = 2.5
    temperature_c: float = 12.0  # ambient at `start`
    latitude: float = 41.72  # Pujalt observatory, Catalonia
    longitude: float = 1.42
    utc_offset_h: float = 1.0  # CET
    camera_seed: int = 0

    def __post_init__(self) -> None:
        if self.start is None:
            object.__setattr__(self, "start", datetime.combine(self.night, time(19, 30)))
        checks = [
            (self.condition in CONDITIONS, f"condition must be one of {CONDITIONS}, got "
                                           f"{self.condition!r}"),
            (0 <= self.moon_illumination <= 1, "moon_illumination must be in 0..1"),
            (0 <= self.cloud_cover <= 1, "cloud_cover must be in 0..1"),
            (0 <= self.light_pollution <= 1, "light_pollution must be in 0..1"),
            (0 <= self.haze <= 1, "haze must be in 0..1"),
            (self.interval_s > 2 * self.jitter_s + 2, "interval_s must exceed 2 × jitter + 2 s"),
            (self.jitter_s >= 0, "jitter_s must be >= 0"),
            (-90 < self.latitude < 90, "latitude must be in -90..90"),
            (self.cloud_height_km > 0, "cloud_height_km must be > 0"),
        ]
        for name in ("meteor_rate", "satellite_rate", "aircraft_rate", "flash_rate"):
            value = getattr(self, name)
            checks.append((math.isfinite(value) and value >= 0, f"{name} must be >= 0"))
        for ok, message in checks:
            if not ok:
                raise SimulationError(message)

    @property
    def night_name(self) -> str:
        return self.night.strftime("%Y%m%d")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["night"] = self.night.isoformat()
        data["start"] = self.start.isoformat()  # type: ignore[union-attr]
        return data

    @classmethod
    def sample(cls, rng: np.random.Generator, night: date, condition: str | None = None,
               meteor_rate: float = 0.05, camera_seed: int = 0) -> NightParams:
        """A random, plausible night. condition None → drawn (35 % clear, 25 % moon,
        25 % cloudy, 15 % overcast)."""
        if condition is None:
            condition = str(rng.choice(CONDITIONS, p=[0.35, 0.25, 0.25, 0.15]))
        if condition not in CONDITIONS:
            raise SimulationError(f"condition must be one of {CONDITIONS} or None, got "
                                  f"{condition!r}")
        start = datetime.combine(night, time(18, 0)) + timedelta(
            seconds=int(rng.integers(0, 3 * 3600)))
        site_lp = build_camera_lp(camera_seed)
        moon_up = condition == "moon" or (condition in ("cloudy", "overcast")
                                          and rng.random() < 0.5)
        illum = float(rng.uniform(0.35, 1.0)) if moon_up else float(rng.uniform(0, 1))
        cover = {"clear": 0.0, "moon": 0.0, "cloudy": float(rng.uniform(0.25, 0.75)),
                 "overcast": float(rng.uniform(0.93, 1.0))}[condition]
        dew = (float(rng.uniform(0.5, 6.0))
               if condition in ("clear", "moon") and rng.random() < 0.2 else None)
        return cls(
            night=night,
            condition=condition,
            start=start,
            moon_illumination=round(illum, 3),
            moon_altitude=round(float(rng.uniform(20, 60)), 1) if moon_up else -30.0,
            moon_azimuth=round(float(rng.uniform(60, 220)), 1),
            cloud_cover=round(cover, 3),
            light_pollution=round(float(np.clip(site_lp * rng.uniform(0.8, 1.2), 0, 1)), 3),
            meteor_rate=meteor_rate,
            satellite_rate=round(float(rng.uniform(0.05, 0.15)), 3),
            aircraft_rate=round(float(rng.uniform(0.005, 0.03)), 4),
            flash_rate=0.004 if condition in ("cloudy", "overcast") else 0.002,
            haze=round(float(rng.uniform(0.0, 0.15 if condition in ("clear", "moon") else 0.3)),
                       3),
            dew_onset_h=None if dew is None else round(dew, 2),
            wind_speed=round(float(rng.uniform(4, 20)), 1),
            wind_direction=round(float(rng.uniform(0, 360)), 1),
            cloud_height_km=round(float(rng.uniform(1.5, 4.0)), 2),
            temperature_c=round(float(rng.uniform(6, 16)), 1),
            camera_seed=camera_seed,
        )


def build_camera_lp(camera_seed: int) -> float:
    """The site's typical light pollution (a camera property), without building the maps."""
    rng = np.random.default_rng([camera_seed, 0x11647])
    return float(rng.uniform(0.35, 0.8))


@dataclass
class SimFrame:
    captured: datetime  # naive local time (the file name's)
    image: np.ndarray  # BGR uint8
    truth: dict[str, Any]  # one truth CSV row
    extra: dict[str, Any] = field(default_factory=dict)  # exposure, gain, temperature

    @property
    def relpath(self) -> str:
        return str(self.truth["file"])


def _ladder_exposure(sky_median: float, gain_rel: float) -> tuple[float, int]:
    """Exposure from AllSky-like auto-exposure: 1/3-stop steps down from the night maximum."""
    need = sky_median * gain_rel / AE_TARGET
    if need <= 1.0:
        return EXPOSURE_NIGHT_S, 0
    k = math.ceil(AE_STEPS_PER_STOP * math.log2(need))
    return EXPOSURE_NIGHT_S * 2 ** (-k / AE_STEPS_PER_STOP), k


class NightRenderer:
    """Renders the frames of one night in order (state: tracks in flight, last exposure)."""

    def __init__(self, params: NightParams, width: int, height: int, seed: int):
        self.p = params
        self.cam: Camera = build_camera(width, height, params.camera_seed)
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.clouds = (
            Clouds(self.rng, self.cam, params.cloud_cover, params.wind_speed,
                   params.wind_direction, params.cloud_height_km)
            if params.cloud_cover > 0.005 else None
        )
        jd0 = julian_date(params.start, params.utc_offset_h)  # type: ignore[arg-type]
        m0 = enu_matrix(local_sidereal_time(jd0, params.longitude), params.latitude)
        self.moon_eq = (
            m0.T @ altaz_to_enu(params.moon_altitude, params.moon_azimuth)
            if params.moon_altitude > 0 and params.moon_illumination > 0 else None
        )
        self.tracks: list[Track] = []
        self.last_setting: tuple[int, int] | None = None
        self.last_offset = (-1, -1)

    # -- per-frame physics -----------------------------------------------------------------

    def _sky(self, t: float, m: np.ndarray, sun_enu: np.ndarray, moon_enu: np.ndarray | None,
             dew: float) -> SkyLight:
        cam, p = self.cam, self.p
        lp = p.light_pollution * (1.0 - 0.25 * min(1.0, t / (6 * 3600)))  # lights go off
        lp_sky = lp * (LP_BROAD * cam.lp_broad_low + LP_DOME * cam.dome_low)
        sky = NATURAL_SKY * cam.airglow_low + lp_sky + milky_way(cam, m)
        cb = -0.35 * lp_sky - 0.04 * sky
        cr = 0.35 * lp_sky - 0.04 * sky
        tw = twilight(cam, sun_enu)
        if tw is not None:
            sky = sky + tw
            cb = cb + 0.18 * tw
            cr = cr - 0.06 * tw
        glare = None
        psi = None
        moon_sky = 0.0
        if moon_enu is not None and moon_enu[2] > 0:
            moon_sky, glare, psi = moon_light(cam, moon_enu, p.moon_illumination)
            sky = sky + moon_sky
            cb = cb + 0.12 * moon_sky
            cr = cr - 0.03 * moon_sky
        # haze and dew scatter light back into the beam and dim the stars
        scatter = p.haze + 0.5 * dew
        if scatter > 0:
            sky = sky + scatter * (0.5 * lp_sky + 0.7 * moon_sky)
        trans = np.exp(-p.haze * cam.cloud_path) * (1.0 - 0.7 * dew)
        alpha = None
        cover = 0.0
        if self.clouds is not None:
            alpha, excess, _ = self.clouds.alpha(t)
            lit_lp = lp * CLOUD_LP * (0.55 * cam.lp_broad_low + 0.45 * cam.dome_low)
            lit = CLOUD_BASE + lit_lp
            if psi is not None:
                lit = lit + CLOUD_MOON * p.moon_illumination**2 * (
                    0.5 + 1.5 * np.exp(-psi / math.radians(25)))
            if tw is not None:
                lit = lit + 0.8 * tw
            # thicker parts of a deck scatter more light back: visible structure when overcast
            lit = lit * (1 + 0.12 * np.tanh(excess))
            sky = sky * (1 - alpha) + lit * alpha
            cb = cb * (1 - alpha) - 0.2 * lit_lp * alpha
            cr = cr * (1 - alpha) + 0.2 * lit_lp * alpha
            trans = trans * (1 - alpha)
            vis = cam.sky_vis_low > 0.5
            cover = float(alpha[vis].mean()) if vis.any() else 0.0
        if glare is not None and alpha is not None:
            glare = glare * (1 - 0.6 * alpha)
        horizon = cam.alt_low < 20
        level = float(np.median(sky[horizon])) if horizon.any() else float(np.median(sky))
        return SkyLight(
            sky=np.asarray(sky, np.float32),
            trans=np.asarray(trans * np.ones(cam.low_shape), np.float32),
            cb=np.asarray(cb, np.float32),
            cr=np.asarray(cr, np.float32),
            glare=glare,
            cloud_alpha=alpha,
            cloud_cover=cover,
            horizon_level=level,
        )

    def _dew(self, t: float) -> float:
        if self.p.dew_onset_h is None:
            return 0.0
        return float(np.clip((t / 3600 - self.p.dew_onset_h) / 1.5, 0, 0.85))

    def _sky_ok(self, x: float, y: float) -> bool:
        cam = self.cam
        xi, yi = round(x), round(y)
        if not (0 <= xi < cam.width and 0 <= yi < cam.height):
            return False
        return bool(cam.sky_vis[yi, xi] > 0.3)

    def render(self, index: int, t: float, captured: datetime) -> SimFrame:
        cam, p, rng = self.cam, self.p, self.rng
        jd = julian_date(captured, p.utc_offset_h)
        m = enu_matrix(local_sidereal_time(jd, p.longitude), p.latitude)
        sun_enu = m @ sun_equatorial(jd)
        sun_alt = math.degrees(math.asin(float(sun_enu[2])))
        moon_enu = m @ self.moon_eq if self.moon_eq is not None else None
        moon_up = moon_enu is not None and moon_enu[2] > 0
        dew = self._dew(t)
        light = self._sky(t, m, sun_enu, moon_enu, dew)

        # auto-exposure on the sky median (what AllSky's AE effectively does)
        gain = GAIN_DAY if sun_alt > DAY_ANGLE else GAIN_NIGHT
        gain_rel = 10 ** ((gain - GAIN_NIGHT) / 200)
        vis = cam.sky_vis_low > 0.5
        sky_med = float(np.median((light.sky * cam.sky_vis_low)[vis])) if vis.any() else 0.0
        exposure, step = _ladder_exposure(sky_med, gain_rel)
        scale = exposure / EXPOSURE_NIGHT_S * gain_rel
        jump = self.last_setting is not None and self.last_setting != (gain, step)
        self.last_setting = (gain, step)

        # stars
        sigma = camera_mod.PSF_SIGMA * (1 + 3.0 * dew)
        enu = cam.star_eq @ m.T.astype(np.float32)
        up = enu[:, 2] > 0.02
        enu = enu[up]
        sx, sy = cam.project(enu)
        ext = 10 ** (-0.4 * camera_mod.EXTINCTION * (
            1.0 / (enu[:, 2] + 0.025 * np.exp(-11 * enu[:, 2])) - 1))
        peak = cam.star_peak[up] * ext * scale
        point = np.zeros((cam.height, cam.width), np.float32)
        from training.sim.transients import splat

        splat(point, sx, sy, (peak * 2 * math.pi * camera_mod.PSF_SIGMA**2).astype(np.float32))
        point = cv2.GaussianBlur(point, (0, 0), sigma)
        glow = star_glow(cam, sx, sy, peak, 0.002 + 0.3 * dew + 0.05 * p.haze)

        # transients: meteors, satellites, aircraft
        t0, t1 = t, t + exposure
        patches: list[tuple[str, Patch, Any]] = []
        rate = p.meteor_rate * (0.6 + 0.8 * min(1.0, max(0.0, (captured.hour + 6) % 24 / 12)))
        for _ in range(rng.poisson(rate)):
            meteor = sample_meteor(rng, cam, self._sky_ok)
            if meteor is not None:
                for patch in meteor.render(camera_mod.PSF_SIGMA, gain_rel):
                    patches.append(("meteor", patch, meteor))
        sat_vis = float(np.clip((sun_alt + 45) / 20, 0.15, 1.0))
        for _ in range(rng.poisson(p.satellite_rate * sat_vis)):
            self.tracks.append(sample_satellite(rng, t + rng.uniform(0, p.interval_s)))
        for _ in range(rng.poisson(p.aircraft_rate)):
            self.tracks.append(sample_aircraft(rng, t + rng.uniform(0, p.interval_s),
                                               p.interval_s))
        for track in self.tracks:
            patch = track.render(cam, t0, t1, camera_mod.PSF_SIGMA, gain_rel)
            if patch is not None:
                patches.append((track.kind, patch, track))
        self.tracks = [tr for tr in self.tracks if tr.t_end > t1]

        # upsample the smooth fields
        size = (cam.width, cam.height)
        sky = light.sky * scale
        if light.glare is not None:
            sky = sky + light.glare * scale
        sky = sky + glow
        sky_full = cv2.resize(sky, size, interpolation=cv2.INTER_LINEAR)
        trans_full = cv2.resize(light.trans, size, interpolation=cv2.INTER_LINEAR)

        if moon_up:
            assert moon_enu is not None
            mx, my = cam.project(moon_enu[None, :].astype(np.float64))
            core = gaussian_blob(float(mx[0]), float(my[0]), max(1.5, cam.radius / 90 * 1.6),
                                 3000.0 * p.moon_illumination**2 * scale + 300 * scale)
            patches.append(("moon", core, None))

        truth_meteor: tuple | None = None
        truth_sat: tuple | None = None
        aircraft: tuple | None = None
        for kind, patch, obj in patches:
            clipped = patch.clip_to(cam.height, cam.width)
            if clipped is None:
                continue
            ys, xs = clipped.slices
            seen = clipped.image * trans_full[ys, xs] * cam.sky_vis[ys, xs]
            top = float(seen.max())
            if kind != "moon" and top < VISIBLE_PEAK:
                continue
            point[ys, xs] += clipped.image
            if kind == "meteor" and isinstance(obj, Meteor):
                iy, ix = np.unravel_index(int(seen.argmax()), seen.shape)
                bg = camera_mod.PEDESTAL + sky_full[ys, xs][iy, ix] * cam.sky_vis[ys, xs][iy, ix]
                peak_seen = min(top, 255.0 - bg)
                if truth_meteor is None or peak_seen > truth_meteor[4]:
                    truth_meteor = (*patch.endpoints, peak_seen, obj.length)
            elif kind == "satellite":
                if truth_sat is None or top > truth_sat[4]:
                    truth_sat = (*patch.endpoints, top)
            elif kind == "aircraft" and (aircraft is None or top > aircraft[4]):
                aircraft = (*patch.endpoints, top)

        luma = (sky_full + trans_full * point) * cam.sky_vis
        luma += (0.12 * light.horizon_level * scale) * cam.silhouette
        flash = rng.random() < p.flash_rate
        if flash:
            lightning = self.clouds is not None and rng.random() < 0.7
            fmap = flash_map(rng, cam, light.cloud_alpha, lightning)
            luma += cv2.resize(fmap, size, interpolation=cv2.INTER_LINEAR) * cam.disk

        image = self._sensor(luma, light, scale, exposure, t, captured, gain)
        truth = self._truth(index, captured, truth_meteor, truth_sat, aircraft is not None,
                            light.cloud_cover,
                            p.moon_illumination if moon_up else 0.0, sun_alt > -18.0, flash,
                            jump)
        extra = {"exposure_s": exposure, "gain": gain, "sun_altitude": sun_alt,
                 "sky_median": sky_med * scale + camera_mod.PEDESTAL,
                 "satellite_peak": truth_sat[4] if truth_sat else 0.0,
                 "aircraft_endpoints": aircraft[:4] if aircraft else None}
        return SimFrame(captured=captured, image=image, truth=truth, extra=extra)

    def _sensor(self, luma: np.ndarray, light: SkyLight, scale: float, exposure: float,
                t: float, captured: datetime, gain: int) -> np.ndarray:
        """Shot + read noise, colour, hot pixels, 8-bit clipping, the text overlay."""
        cam, rng = self.cam, self.rng
        bank = cam.noise_bank
        m2 = 2 * camera_mod.NOISE_MARGIN

        def crop() -> np.ndarray:
            while True:
                oy, ox = int(rng.integers(0, m2 + 1)), int(rng.integers(0, m2 + 1))
                if (oy, ox) != self.last_offset:
                    self.last_offset = (oy, ox)
                    return bank[oy:oy + cam.height, ox:ox + cam.width]

        var = camera_mod.READ_NOISE**2 + camera_mod.SHOT_K * np.maximum(luma, 0)
        luma += np.sqrt(var) * crop() + (camera_mod.PEDESTAL + 0.5)
        size = (cam.width, cam.height)
        cb = cv2.resize(light.cb * (scale * cam.sky_vis_low), size,
                        interpolation=cv2.INTER_LINEAR)
        cr = cv2.resize(light.cr * (scale * cam.sky_vis_low), size,
                        interpolation=cv2.INTER_LINEAR)
        cb += camera_mod.CHROMA_NOISE * crop()
        cr += camera_mod.CHROMA_NOISE * crop()
        green = luma - 0.509 * cr - 0.194 * cb
        blue = luma + cb
        red = luma + cr
        bgr = cv2.merge([blue, green, red])
        temp = self.p.temperature_c - 0.9 * t / 3600 + 4.0 + float(rng.normal(0, 0.15))
        hy, hx = cam.hot_yx
        hot = cam.hot_amp * (exposure / EXPOSURE_NIGHT_S) * 2 ** ((temp - 20) / 6)
        bgr[hy, hx, cam.hot_channel] += hot
        np.clip(bgr, 0, 255, out=bgr)
        image = bgr.astype(np.uint8)
        draw_overlay(image, [
            f"{captured:%Y-%m-%d %H:%M:%S}",
            f"Exposure: {exposure:.3f} s",
            f"Gain: {gain}",
            f"Sensor: {temp:.1f} C",
        ])
        return image

    def _truth(self, index: int, captured: datetime, meteor: tuple | None, sat: tuple | None,
               aircraft: bool, cover: float, moon: float, twilight_on: bool, flash: bool,
               jump: bool) -> dict[str, Any]:
        night = self.p.night_name
        row: dict[str, Any] = {
            "night": night,
            "file": f"images/{night}/image-{captured:%Y%m%d%H%M%S}.jpg",
            "captured_local": captured.isoformat(),
            "frame_index": index,
            "meteor": int(meteor is not None),
            "meteor_x1": "", "meteor_y1": "", "meteor_x2": "", "meteor_y2": "",
            "meteor_peak": "", "meteor_length_px": "",
            "satellite": int(sat is not None),
            "satellite_x1": "", "satellite_y1": "", "satellite_x2": "", "satellite_y2": "",
            "aircraft": int(aircraft),
            "cloud_cover": round(cover, 3),
            "moon": round(moon, 3),
            "twilight": int(twilight_on),
            "flash": int(flash),
            "exposure_jump": int(jump),
            "condition": self.p.condition,
        }  # fmt: skip
        if meteor is not None:
            x1, y1, x2, y2, peak, length = meteor
            row.update(meteor_x1=round(x1, 1), meteor_y1=round(y1, 1), meteor_x2=round(x2, 1),
                       meteor_y2=round(y2, 1), meteor_peak=round(peak, 1),
                       meteor_length_px=round(length, 1))
        if sat is not None:
            x1, y1, x2, y2, _ = sat
            row.update(satellite_x1=round(x1, 1), satellite_y1=round(y1, 1),
                       satellite_x2=round(x2, 1), satellite_y2=round(y2, 1))
        return row


def check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int)):
        raise SimulationError(f"width and height must be integers, got {width!r}×{height!r}")
    if width < 64 or height < 48:
        raise SimulationError(f"frame size must be at least 64×48, got {width}×{height}")
    if width * height > 40_000_000:
        raise SimulationError(f"frame size {width}×{height} is too large (max 40 MP)")


def iter_night(params: NightParams, frames: int, width: int = 1304, height: int = 976,
               seed: int = 0) -> Iterator[SimFrame]:
    """The night's frames in capture order, every interval_s ± jitter_s seconds."""
    if not isinstance(frames, int) or frames < 1:
        raise SimulationError(f"frames must be a positive integer, got {frames!r}")
    check_size(width, height)
    renderer = NightRenderer(params, width, height, seed)
    timing = np.random.default_rng([seed, 0x71AE])
    start = params.start
    assert start is not None
    start = start.replace(microsecond=0)
    t = 0.0
    for index in range(frames):
        if index:
            t += params.interval_s + timing.uniform(-params.jitter_s, params.jitter_s)
        seconds = round(t)
        yield renderer.render(index, float(seconds), start + timedelta(seconds=seconds))
