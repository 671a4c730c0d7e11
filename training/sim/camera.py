"""One simulated AllSky camera: lens geometry, horizon, star catalogue, sensor defects, overlay.

Everything here is fixed for a camera (derived from `camera_seed` and the frame size) and is
shared by all its nights: the same trees, the same towns on the horizon, the same stars, the
same hot pixels. Built once and cached, because the full-resolution maps cost ~0.1 s.

Geometry: an equidistant fisheye (r = R · zenith angle / 90°) looking straight up, north up and
east left as seen from below, rotated by a few degrees as real mounts are; the sky disk fits the
short side (R = 0.49 · min(W, H)) so the corners are dark; on wider frames (16:9) the circle
grows with the aspect ratio (×4/3 at 16:9) and is cut at the top and bottom. Per-pixel work
that is smooth over the sky (background, clouds, glare) runs on a low-resolution grid and is
upsampled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.sim.astro import DEG, EQ_TO_GAL, airmass

# Sensor and optics (grey levels are JPEG 0–255 units at the night exposure and gain).
PEDESTAL = 6.0  # black level: what the corners outside the sky disk read
READ_NOISE = 2.3  # σ in grey levels at zero signal
SHOT_K = 0.14  # variance grows by this per grey level of signal (σ≈3 at 30, ≈4 at 80)
CHROMA_NOISE = 2.0  # σ of colour noise (debayering), grey levels
PSF_SIGMA = 0.85  # px, focus + seeing + demosaic blur of a star
VIGNETTING = 0.30  # fraction of brightness lost at the rim of the disk (cos⁴-like falloff)
EXTINCTION = 0.25  # mag per airmass
STAR_DENSITY = 0.021  # stars per px (zenith scale) brighter than STAR_MIN_PEAK
STAR_MIN_PEAK = 1.5  # grey levels: faintest catalogue star's peak at the zenith
STAR_SLOPE = 1.1  # N(> peak) ∝ peak^-slope (≈ 0.44 dex in counts per magnitude)
STAR_MAX_PEAK = 6000.0
HOT_PIXEL_FRACTION = 4e-5
NOISE_MARGIN = 24  # px: random offsets into the noise bank

FONT = cv2.FONT_HERSHEY_SIMPLEX


def low_res_factor(width: int, height: int) -> int:
    """Downscale factor of the smooth-field grid (≈200–250 px on the short side)."""
    return max(1, min(width, height) // 200)


@dataclass
class Camera:
    width: int
    height: int
    seed: int
    cx: float
    cy: float
    radius: float
    rotation: float  # radians, image angle of north from "up", counter-clockwise
    px_per_deg: float
    # full resolution, float32
    sky_vis: np.ndarray  # vignetting × inside disk × not behind a silhouette
    silhouette: np.ndarray  # inside disk and behind a tree/building (0..1, antialiased)
    disk: np.ndarray  # inside the fisheye circle (0..1)
    # low resolution
    factor: int
    low_shape: tuple[int, int]
    enu_low: np.ndarray  # (h, w, 3) ENU unit vector of each low-res pixel (below horizon clipped)
    alt_low: np.ndarray  # degrees
    az_low: np.ndarray  # degrees
    sky_vis_low: np.ndarray
    low_x: np.ndarray  # full-resolution image coordinates of the low-res pixel centres
    low_y: np.ndarray
    airglow_low: np.ndarray  # natural sky (van Rhijn × extinction), relative to zenith = 1
    dome_low: np.ndarray  # light-pollution domes relative shape (1 = brightest town at horizon)
    lp_broad_low: np.ndarray  # broad scattered town light, relative
    cloud_u0: np.ndarray  # cloud-plane coordinates in cloud heights (tan z · sin/cos az)
    cloud_v0: np.ndarray
    cloud_path: np.ndarray  # slant path through a cloud layer (≈ 1/cos z, capped)
    # the camera's sky and sensor
    star_eq: np.ndarray  # (N, 3) equatorial unit vectors
    star_peak: np.ndarray  # (N,) peak grey levels at the zenith, night exposure, no vignetting
    hot_yx: tuple[np.ndarray, np.ndarray]
    hot_channel: np.ndarray
    hot_amp: np.ndarray  # grey levels at the night exposure and 20 °C
    noise_bank: np.ndarray  # (H + 2m, W + 2m) unit normal, mildly correlated like demosaiced noise
    towns: list[tuple[float, float, float]]  # (azimuth°, width°, relative strength)
    light_pollution: float  # the site's typical light pollution 0..1

    # -- projection -------------------------------------------------------------------------

    def project(self, enu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ENU unit vectors (N, 3) → image x, y (float). Caller drops those below the horizon."""
        e, n, u = enu[:, 0], enu[:, 1], enu[:, 2]
        z = np.arccos(np.clip(u, -1.0, 1.0))
        h = np.hypot(e, n) + 1e-12
        r = self.radius * z / (math.pi / 2)
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        # east left, north up, then the mount's rotation
        ix, iy = -e / h, -n / h
        x = self.cx + r * (c * ix - s * iy)
        y = self.cy + r * (s * ix + c * iy)
        return x, y

    def pixel_enu(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inverse of `project` for image coordinates inside the disk."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        dx, dy = x - self.cx, y - self.cy
        ix, iy = c * dx + s * dy, -s * dx + c * dy
        r = np.hypot(ix, iy) + 1e-9
        z = np.clip(r / self.radius, 0, 1) * (math.pi / 2)
        e, n = -ix / r * np.sin(z), -iy / r * np.sin(z)
        return np.stack([e, n, np.cos(z)], axis=-1)


def _horizon_profile(rng: np.random.Generator, n: int = 1440) -> np.ndarray:
    """Altitude (deg) of the skyline at n azimuths: hills, tree clumps, a few buildings."""
    az = np.arange(n) * 360.0 / n
    prof = np.full(n, 1.5)
    # distant hills: a few smooth harmonics
    for k in range(1, 5):
        prof += rng.uniform(0.2, 1.2) / k * np.sin(k * az * DEG + rng.uniform(0, 2 * np.pi))
    # tree clumps: bumpy crowns with leaf-scale jitter
    for _ in range(rng.integers(2, 5)):
        centre, half = rng.uniform(0, 360), rng.uniform(8, 35)
        height = rng.uniform(6, 18)
        d = (az - centre + 180) % 360 - 180
        inside = np.abs(d) < half
        crowns = np.zeros(n)
        for _ in range(int(half / 1.5) + 1):
            c2, w2 = rng.uniform(-half, half), rng.uniform(1.5, 5.0)
            crowns = np.maximum(crowns, rng.uniform(0.55, 1.0) * np.sqrt(
                np.clip(1 - ((d - c2) / w2) ** 2, 0, None)))
        # leaf-scale roughness, correlated over a couple of samples (not independent spikes)
        jitter = np.convolve(rng.normal(0, 0.7, n), np.ones(2) / 2, mode="same")
        prof = np.where(inside, np.maximum(prof, height * crowns + jitter * (crowns > 0)), prof)
    # buildings: flat roofs, sometimes a chimney or a mast
    for _ in range(rng.integers(1, 4)):
        centre, half = rng.uniform(0, 360), rng.uniform(4, 15)
        d = (az - centre + 180) % 360 - 180
        roof = rng.uniform(5, 14)
        prof = np.where(np.abs(d) < half, np.maximum(prof, roof), prof)
        if rng.random() < 0.6:
            c2 = rng.uniform(-half, half)
            prof = np.where(np.abs(d - c2) < 0.6, np.maximum(prof, roof + rng.uniform(2, 12)), prof)
    return np.clip(prof, 0.5, 25.0)


def _noise_bank(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    bank = rng.standard_normal((height + 2 * NOISE_MARGIN, width + 2 * NOISE_MARGIN),
                               dtype=np.float32)
    # Demosaicing correlates neighbouring pixels a little; renormalise to unit σ.
    bank = cv2.GaussianBlur(bank, (3, 3), 0.5)
    bank /= float(bank.std())
    return bank


def _star_catalogue(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Random stars concentrated toward the galactic plane, with a power-law brightness.

    Density is set per image pixel at the zenith, so a smaller frame shows fewer, not denser,
    stars (its pixels are bigger: its limiting magnitude is brighter).
    """
    px_per_sr = (2 * radius / math.pi) ** 2
    n = int(STAR_DENSITY * px_per_sr * 4 * math.pi)
    # galactic coordinates, density ∝ 1 + 1.5 exp(-(b/15°)²) by rejection
    gal = rng.standard_normal((n * 2, 3))
    gal /= np.linalg.norm(gal, axis=1, keepdims=True)
    b = np.arcsin(gal[:, 2])
    keep = rng.random(len(gal)) * 2.5 < 1 + 1.5 * np.exp(-((b / (15 * DEG)) ** 2))
    gal = gal[keep][:n]
    eq = gal @ EQ_TO_GAL  # galactic → equatorial (inverse of an orthonormal matrix)
    peak = STAR_MIN_PEAK * rng.random(len(eq)) ** (-1.0 / STAR_SLOPE)
    return eq.astype(np.float32), np.minimum(peak, STAR_MAX_PEAK).astype(np.float32)


@functools.lru_cache(maxsize=2)
def build_camera(width: int, height: int, seed: int) -> Camera:
    rng = np.random.default_rng([seed, 0xA115C])
    short = min(width, height)
    cx = width / 2 - 0.5 + rng.uniform(-0.01, 0.01) * short
    cy = height / 2 - 0.5 + rng.uniform(-0.01, 0.01) * short
    # 4:3 sensors fit the whole sky disk on the short side; on wider ones (16:9) the circle is
    # larger and cut at the top and bottom, as on most full-frame all-sky cameras
    aspect = max(width, height) / short
    radius = 0.49 * short * (float(np.clip(aspect * 3 / 4, 1.0, 1.35)) if aspect > 1.5 else 1.0)
    rotation = rng.uniform(-12, 12) * DEG
    px_per_deg = radius / 90.0
    horizon = _horizon_profile(rng)

    cam = Camera.__new__(Camera)
    cam.width, cam.height, cam.seed = width, height, seed
    cam.cx, cam.cy, cam.radius, cam.rotation, cam.px_per_deg = cx, cy, radius, rotation, px_per_deg

    # full resolution maps
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy)
    disk = np.clip(radius - r + 0.5, 0, 1).astype(np.float32)
    enu = cam.pixel_enu(xx, yy)
    alt = 90.0 - r / radius * 90.0
    az = np.degrees(np.arctan2(enu[..., 0], enu[..., 1])) % 360.0
    skyline = np.interp(az, np.arange(len(horizon)) * 360.0 / len(horizon), horizon,
                        period=360.0)
    sil = np.clip((skyline - alt) * px_per_deg + 0.5, 0, 1)
    vig = 1.0 - VIGNETTING * np.clip(r / radius, 0, 1) ** 2.5
    cam.disk = disk
    cam.sky_vis = (disk * (1 - sil) * vig).astype(np.float32)
    cam.silhouette = (disk * sil).astype(np.float32)
    del xx, yy, enu, az, skyline

    # low resolution grid (pixel centres aligned with cv2.resize's convention)
    f = low_res_factor(width, height)
    lw, lh = math.ceil(width / f), math.ceil(height / f)
    cam.factor, cam.low_shape = f, (lh, lw)
    ly, lx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    fx, fy = (lx + 0.5) * (width / lw) - 0.5, (ly + 0.5) * (height / lh) - 0.5
    cam.low_x, cam.low_y = fx, fy
    enu_low = cam.pixel_enu(fx, fy)
    cam.enu_low = enu_low.astype(np.float32)
    cos_z = np.clip(enu_low[..., 2], 0.0, 1.0)
    cam.alt_low = np.degrees(np.arcsin(cos_z)).astype(np.float32)
    cam.az_low = (np.degrees(np.arctan2(enu_low[..., 0], enu_low[..., 1])) % 360).astype(
        np.float32)
    cam.sky_vis_low = cv2.resize(cam.sky_vis, (lw, lh), interpolation=cv2.INTER_AREA)
    sin2z = 1 - cos_z**2
    van_rhijn = 1.0 / np.sqrt(1 - 0.969 * sin2z)
    ext = 10 ** (-0.4 * EXTINCTION * (airmass(cos_z) - 1))
    cam.airglow_low = (van_rhijn * ext).astype(np.float32)

    # light pollution: towns on the horizon (site-fixed) and their scattered glow
    cam.light_pollution = float(rng.uniform(0.35, 0.8))
    cam.towns = [
        (float(rng.uniform(0, 360)), float(rng.uniform(12, 35)), float(s))
        for s in sorted(rng.uniform(0.25, 1.0, rng.integers(1, 4)), reverse=True)
    ]
    dome = np.zeros_like(cos_z)
    for taz, width_deg, strength in cam.towns:
        d = (cam.az_low - taz + 180) % 360 - 180
        dome += strength * np.exp(-0.5 * (d / width_deg) ** 2) * (
            0.75 * np.exp(-cam.alt_low / 9.0) + 0.25 * np.exp(-cam.alt_low / 35.0))
    cam.dome_low = (dome / max(1e-6, float(dome.max()))).astype(np.float32)
    cam.lp_broad_low = (0.6 + 0.4 * (1 - cos_z) ** 2).astype(np.float32)

    # clouds live on a flat layer: tan z in units of the layer's height, capped near the horizon
    tan_z = np.sqrt(sin2z) / np.maximum(cos_z, 0.03)
    cam.cloud_u0 = (tan_z * enu_low[..., 0] / np.sqrt(np.maximum(sin2z, 1e-9))).astype(np.float32)
    cam.cloud_v0 = (tan_z * enu_low[..., 1] / np.sqrt(np.maximum(sin2z, 1e-9))).astype(np.float32)
    cam.cloud_path = np.minimum(1.0 / np.maximum(cos_z, 0.05), 5.0).astype(np.float32)

    cam.star_eq, cam.star_peak = _star_catalogue(rng, radius)

    n_hot = max(3, int(width * height * HOT_PIXEL_FRACTION))
    hy = rng.integers(0, height, n_hot)
    hx = rng.integers(0, width, n_hot)
    cam.hot_yx = (hy, hx)
    cam.hot_channel = rng.integers(0, 3, n_hot)
    cam.hot_amp = (15 + rng.exponential(50, n_hot)).astype(np.float32)

    cam.noise_bank = _noise_bank(rng, height, width)
    return cam


def draw_overlay(image: np.ndarray, lines: list[str]) -> None:
    """AllSky's default text block, top-left, white, in place."""
    scale = max(0.25, min(image.shape[0], image.shape[1]) / 976 * 0.7)
    thick = 1 if scale < 0.9 else 2
    step = round(28 * scale) + 2
    y = step
    for line in lines:
        cv2.putText(image, line, (int(8 * scale) + 2, y), FONT, scale, (235, 235, 235), thick,
                    cv2.LINE_AA)
        y += step
