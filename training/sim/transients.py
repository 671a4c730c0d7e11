"""Things that cross the sky during one exposure: meteors, satellites, aircraft; and flashes.

A trail is drawn as points every ≤0.5 px along its path, splatted bilinearly into a small patch
around its bounding box and blurred with the camera's PSF, so a line of linear density ρ (grey
levels · px per px of length) peaks at ρ / (√(2π) σ) across the trail. The patch is kept so the
caller can measure what actually reached the frame (after clouds and vignetting) for the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.sim.astro import random_unit_vectors
from training.sim.camera import Camera

SQRT_2PI = math.sqrt(2 * math.pi)


@dataclass
class Patch:
    """A rendered trail: `image` is added at rows y0.., columns x0.. of the point-source layer."""

    image: np.ndarray
    x0: int
    y0: int
    endpoints: tuple[float, float, float, float]  # x1, y1, x2, y2

    def clip_to(self, height: int, width: int) -> Patch | None:
        h, w = self.image.shape
        ya, xa = max(0, -self.y0), max(0, -self.x0)
        yb, xb = min(h, height - self.y0), min(w, width - self.x0)
        if ya >= yb or xa >= xb:
            return None
        return Patch(self.image[ya:yb, xa:xb], self.x0 + xa, self.y0 + ya, self.endpoints)

    @property
    def slices(self) -> tuple[slice, slice]:
        h, w = self.image.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


def splat(image: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
    """Add weights `w` at sub-pixel positions, bilinearly, in place (out-of-frame dropped)."""
    h, wd = image.shape
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    flat = image.reshape(-1)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < wd) & (yi >= 0) & (yi < h)
            np.add.at(flat, yi[ok] * wd + xi[ok], (w * wx * wy)[ok])


def render_points(x: np.ndarray, y: np.ndarray, w: np.ndarray, sigma: float,
                  endpoints: tuple[float, float, float, float]) -> Patch | None:
    """Splat weighted points into a patch around them and blur with a Gaussian PSF."""
    if len(x) == 0:
        return None
    margin = math.ceil(4 * sigma) + 2
    x0 = math.floor(x.min()) - margin
    y0 = math.floor(y.min()) - margin
    x1 = math.ceil(x.max()) + margin
    y1 = math.ceil(y.max()) + margin
    patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
    splat(patch, x - x0, y - y0, w.astype(np.float32))
    patch = cv2.GaussianBlur(patch, (0, 0), sigma)
    return Patch(patch, x0, y0, endpoints)


def gaussian_blob(x: float, y: float, sigma: float, peak: float) -> Patch:
    """A round blob (moon core, strobe) as a patch."""
    margin = math.ceil(4 * sigma) + 1
    x0, y0 = math.floor(x) - margin, math.floor(y) - margin
    n = 2 * margin + 2
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    blob = peak * np.exp(-((xx + x0 - x) ** 2 + (yy + y0 - y) ** 2) / (2 * sigma**2))
    return Patch(blob.astype(np.float32), x0, y0, (x, y, x, y))


# -- meteors --------------------------------------------------------------------------------


@dataclass
class Meteor:
    """A straight streak within one exposure; brightness rises then fades faster.

    profile(s) ∝ s^a (1 − s)^b on s ∈ [0, 1] from start to end, peak at a / (a + b) (≈ 0.6–0.8),
    plus an optional terminal flare (a Gaussian bump near the end, 1–3 × the peak).
    `peak` is the target brightness above background in grey levels before clouds/vignetting.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    peak: float
    a: float
    b: float
    flare_at: float | None
    flare_gain: float
    glow: bool

    @property
    def length(self) -> float:
        return math.hypot(self.x2 - self.x1, self.y2 - self.y1)

    def render(self, sigma: float, gain: float) -> list[Patch]:
        n = max(2, math.ceil(self.length / 0.5) + 1)
        s = np.linspace(0.0, 1.0, n)
        prof = s**self.a * (1 - s) ** self.b
        prof /= prof.max()
        if self.flare_at is not None:
            prof = prof + self.flare_gain * np.exp(-0.5 * ((s - self.flare_at) / 0.025) ** 2)
        step = self.length / (n - 1)
        # a meteor is a moving point: its trail is a little wider than a star (wake, persistence)
        sig = sigma * 1.15
        density = self.peak * gain * SQRT_2PI * sig * prof * step
        x = self.x1 + s * (self.x2 - self.x1)
        y = self.y1 + s * (self.y2 - self.y1)
        ends = (self.x1, self.y1, self.x2, self.y2)
        patches = [p for p in [render_points(x, y, density, sig, ends)] if p]
        if self.glow:  # a bolide lights the air and the dome around it
            halo = render_points(x, y, density * 0.08, sig * 7, ends)
            if halo:
                patches.append(halo)
        return patches


def sample_meteor(rng: np.random.Generator, cam: Camera, sky_ok) -> Meteor | None:
    """A random meteor inside the sky disk; `sky_ok(x, y)` says whether a point is open sky.

    Lengths: log-normal, median 200 px, clipped to 100–450 px at 1920 px width (the reference
    camera), scaled by frame width; 1 % are fireballs of 1,500–1,800 px (capped at 0.9 × the
    disk). A fisheye shortens a meteor near the horizon by ≈ cos(zenith) along the line of sight.
    Peaks: half faint (4–10 grey levels, barely above noise), 45 % 10–200, 5 % bolides
    200–1000 (saturated, with glow).
    """
    scale = min(cam.width, cam.height * 4 / 3) / 1920.0
    fireball = rng.random() < 0.01
    if fireball:
        length = rng.uniform(1500, 1800) * scale
    else:
        length = float(np.clip(rng.lognormal(math.log(200), 0.45), 100, 450)) * scale
    length = max(3.0, min(length, 1.8 * cam.radius))
    u = rng.random()
    if fireball or u > 0.95:
        peak = float(rng.uniform(200, 1000))
    elif u < 0.5:
        peak = float(rng.uniform(4, 10))
    else:
        peak = float(math.exp(rng.uniform(math.log(10), math.log(200))))
    for _ in range(30):
        rr = cam.radius * math.sqrt(rng.uniform(0.0, 0.85))
        th = rng.uniform(0, 2 * math.pi)
        xm, ym = cam.cx + rr * math.cos(th), cam.cy + rr * math.sin(th)
        foreshorten = 0.35 + 0.65 * math.cos(rr / cam.radius * math.pi / 2)
        ln = length * (1.0 if fireball else foreshorten)
        ang = rng.uniform(0, 2 * math.pi)
        dx, dy = 0.5 * ln * math.cos(ang), 0.5 * ln * math.sin(ang)
        x1, y1, x2, y2 = xm - dx, ym - dy, xm + dx, ym + dy
        if sky_ok(x1, y1) and sky_ok(x2, y2):
            a = rng.uniform(1.2, 2.5)
            b = rng.uniform(0.5, 1.1)
            flare_at = float(rng.uniform(0.75, 0.95)) if rng.random() < 0.3 else None
            return Meteor(x1, y1, x2, y2, peak, a, b, flare_at, float(rng.uniform(1, 3)),
                          glow=peak >= 200)
    return None


# -- satellites and aircraft ------------------------------------------------------------------


@dataclass
class Track:
    """Something moving along a great circle of the local sky at constant angular speed.

    Satellites: uniform brightness, 1–3 frames, sometimes a flare (a 1–3 s Gaussian
    brightening). Aircraft: a faint steady trail (navigation lights) with strobe dots every
    `strobe_period` s, over 3–10 frames.
    """

    kind: str  # "satellite" | "aircraft"
    p0: np.ndarray  # ENU unit vector at t_start
    q0: np.ndarray  # ENU unit vector 90° ahead along the path
    omega: float  # rad/s
    t_start: float  # s since the night's first frame
    duration: float  # s
    brightness: float  # grey levels peak across the trail
    flare_t: float | None = None
    flare_width: float = 2.0
    flare_gain: float = 0.0
    strobe_period: float = 0.0
    strobe_phase: float = 0.0
    strobe_peak: float = 0.0
    fade: float = 1.5  # s to fade in/out (entering the Earth's shadow, going behind haze)
    theta0: float = 0.0  # radians along the path at t_start, from p0

    @property
    def t_end(self) -> float:
        return self.t_start + self.duration

    def position(self, t: np.ndarray) -> np.ndarray:
        th = self.theta0 + self.omega * (t - self.t_start)
        return np.outer(np.cos(th), self.p0) + np.outer(np.sin(th), self.q0)

    def render(self, cam: Camera, t0: float, t1: float, sigma: float, gain: float,
               ) -> Patch | None:
        a, b = max(t0, self.t_start), min(t1, self.t_end)
        if b <= a:
            return None
        n = max(2, math.ceil(self.omega * (b - a) * cam.radius / 0.5) + 1)
        t = np.linspace(a, b, n)
        pos = self.position(t)
        up = pos[:, 2] > 0.0
        if up.sum() < 2:
            return None
        t, pos = t[up], pos[up]
        x, y = cam.project(pos)
        ds = np.hypot(np.diff(x), np.diff(y))
        ds = np.concatenate([ds[:1], 0.5 * (ds[1:] + ds[:-1]), ds[-1:]])
        env = np.clip(np.minimum(t - self.t_start, self.t_end - t) / self.fade, 0, 1)
        level = self.brightness * env
        if self.flare_t is not None:
            level = level * (1 + self.flare_gain * np.exp(
                -0.5 * ((t - self.flare_t) / self.flare_width) ** 2))
        w = level * gain * SQRT_2PI * sigma * ds
        ends = (float(x[0]), float(y[0]), float(x[-1]), float(y[-1]))
        if self.strobe_period > 0:
            k0 = math.ceil((a - self.strobe_phase) / self.strobe_period)
            k1 = math.floor((b - self.strobe_phase) / self.strobe_period)
            if k1 >= k0:
                ts = self.strobe_phase + self.strobe_period * np.arange(k0, k1 + 1)
                sp = self.position(ts)
                ok = sp[:, 2] > 0
                sx, sy = cam.project(sp[ok])
                x = np.concatenate([x, sx])
                y = np.concatenate([y, sy])
                w = np.concatenate(
                    [w, np.full(len(sx), self.strobe_peak * gain * 2 * math.pi * sigma**2)])
        return render_points(x, y, w, sigma, ends)


def _great_circle(rng: np.random.Generator, min_alt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    while True:
        p0 = random_unit_vectors(rng, 1)[0]
        if p0[2] > math.sin(math.radians(min_alt_deg)):
            break
    d = random_unit_vectors(rng, 1)[0]
    q0 = d - p0 * float(d @ p0)
    return p0, q0 / np.linalg.norm(q0)


def sample_satellite(rng: np.random.Generator, t_start: float) -> Track:
    """LEO satellites cross 0.3–1.2°/s; visible 10–58 s (so 1–3 frames) before shadow/haze."""
    p0, q0 = _great_circle(rng, 12)
    flare = rng.random() < 0.15
    duration = float(rng.uniform(10, 58))
    return Track(
        kind="satellite",
        p0=p0,
        q0=q0,
        omega=math.radians(rng.uniform(0.3, 1.2)),
        t_start=t_start,
        duration=duration,
        brightness=float(math.exp(rng.uniform(math.log(4), math.log(60)))),
        flare_t=t_start + float(rng.uniform(0.2, 0.8)) * duration if flare else None,
        flare_width=float(rng.uniform(0.7, 2.0)),
        flare_gain=float(rng.uniform(3, 15)),
    )


def sample_aircraft(rng: np.random.Generator, t_start: float, interval_s: float) -> Track:
    """Airliners at ~10 km: in view for 3–10 frames while crossing 60–160° of sky (so
    0.2–1.8°/s, fastest overhead), a faint steady trail of navigation lights and a white
    strobe every 1.0–2.0 s that leaves a dotted line."""
    p0, q0 = _great_circle(rng, 5)
    duration = float(rng.integers(3, 11)) * interval_s - 2.0
    arc = math.radians(rng.uniform(60, 160))
    return Track(
        kind="aircraft",
        p0=p0,
        q0=q0,
        omega=arc / duration,
        t_start=t_start,
        duration=duration,
        brightness=float(rng.uniform(3, 12)),
        strobe_period=float(rng.uniform(1.0, 2.0)),
        strobe_phase=float(rng.uniform(0, 1.5)) + t_start,
        strobe_peak=float(rng.uniform(40, 220)),
        fade=0.5,
        theta0=-arc / 2,  # the pass is centred on p0
    )


# -- flashes -------------------------------------------------------------------------------


def flash_map(rng: np.random.Generator, cam: Camera, cloud_alpha: np.ndarray | None,
              lightning: bool) -> np.ndarray:
    """Low-res whole-frame brightening in grey levels.

    Lightning (cloudy nights): the clouds light up, brightest toward the strike, 20–150 grey
    levels. Headlights / a torch: a glow from one side of the horizon falling off over ~0.6 R,
    25–100 grey levels, lighting the trees as well.
    """
    fx, fy = cam.low_x, cam.low_y
    ang = rng.uniform(0, 2 * math.pi)
    px, py = cam.cx + cam.radius * math.cos(ang), cam.cy + cam.radius * math.sin(ang)
    dist = np.hypot(fx - px, fy - py) / cam.radius
    if lightning:
        amp = rng.uniform(20, 150)
        base = 0.4 + 0.6 * cloud_alpha if cloud_alpha is not None else 1.0
        return (amp * base * (0.5 + 0.5 * np.exp(-dist))).astype(np.float32)
    amp = rng.uniform(25, 100)
    return (amp * np.exp(-dist / 0.6)).astype(np.float32)
