"""Smooth sky light on the low-resolution grid: night sky, towns, Milky Way, twilight, Moon,
clouds. All values are grey levels at the night exposure and gain, before vignetting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.sim.astro import DEG, EQ_TO_GAL
from training.sim.camera import Camera

NATURAL_SKY = 15.0  # airglow + zodiacal light + unresolved stars at the zenith
LP_BROAD = 10.0  # scattered town light over the whole sky, per unit light pollution
LP_DOME = 110.0  # toward the brightest town at the horizon, per unit light pollution
MILKY_WAY = 9.0  # peak of the galactic band (Cygnus–Cassiopeia in November evenings)
MOON_SKY = 55.0  # moonlit sky scale for a full Moon (sky median ≈ 80 at 40° altitude)
MOON_GLARE = 300.0  # lens/dome glare at 1.5° from the Moon's image, full Moon
CLOUD_BASE = 14.0  # clouds with no Moon or towns (lit by the night sky and the ground)
CLOUD_LP = 260.0  # town light reflected by a cloud deck, per unit light pollution
CLOUD_MOON = 100.0  # moonlit clouds, full Moon


def fractal_texture(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Periodic Gaussian random field with power spectrum ∝ k^-β, unit σ (cloud-like)."""
    white = rng.standard_normal((size, size))
    k = np.fft.fftfreq(size)
    kk = np.hypot(k[:, None], k[None, :])
    kk[0, 0] = 1.0
    amp = kk ** (-beta / 2)
    amp[0, 0] = 0.0
    amp[kk > 0.35] = 0.0  # no pixel-scale structure: clouds are smooth at 4× upsampling
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * amp))
    return ((field - field.mean()) / field.std()).astype(np.float32)


def periodic_blur(tex: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic texture (wraps around, unlike cv2's borders)."""
    k = np.fft.fftfreq(tex.shape[0])
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    out = np.real(np.fft.ifft2(np.fft.fft2(tex) * np.exp(-2 * np.pi**2 * sigma**2 * k2)))
    return out.astype(np.float32)


@dataclass
class SkyLight:
    """One frame's low-res fields."""

    sky: np.ndarray  # background radiance (clouds included)
    trans: np.ndarray  # transmission for stars and trails (clouds, haze, dew)
    cb: np.ndarray  # colour offsets: B − Y and R − Y
    cr: np.ndarray
    glare: np.ndarray | None  # Moon glare (added after clouds, not scaled by them)
    cloud_alpha: np.ndarray | None
    cloud_cover: float
    horizon_level: float  # median sky below 20° (lights the silhouettes a little)


class Clouds:
    """Two cloud layers advected by the wind over a flat deck; cover varies slowly.

    Cloud deck 1.5–4 km high, wind 4–20 m/s: at the zenith a cloud moves several degrees
    between 30-s frames (tens of pixels), so its edges appear in every difference image.
    Optical depth τ = slant path × (κ·(T − θ) + τ₀), T the texture, θ its (1 − cover)
    quantile; opacity 1 − e^−τ. Toward the horizon the deck is seen ever more obliquely:
    the texture is sampled from a blurred copy there (no aliasing) and merges into a bank.
    """

    SIZE = 256

    def __init__(self, rng: np.random.Generator, cam: Camera, cover: float, wind_speed: float,
                 wind_dir_deg: float, height_km: float):
        self.cam = cam
        self.base_cover = cover
        self.weights = (0.8, 0.4)
        self.period = (7.0, 2.5)  # texture period in cloud heights
        self.tex = [fractal_texture(rng, self.SIZE, 3.4), fractal_texture(rng, self.SIZE, 2.9)]
        # texels per low-res pixel grow as sec²z toward the horizon: sample ever more blurred
        # copies there (a mip-map), or the deck aliases into blocks
        self.levels = [[t, periodic_blur(t, 3.0), periodic_blur(t, 10.0)] for t in self.tex]
        sec2 = 1.0 + (cam.cloud_u0**2 + cam.cloud_v0**2)
        px_per_rad = 2 * cam.radius / math.pi / cam.factor
        self.blend = [
            np.clip((np.log2(np.maximum(self.SIZE / p * sec2 / px_per_rad, 1e-3)) - 0.5) / 1.5,
                    0, 3).astype(np.float32)
            for p in self.period
        ]
        speed = wind_speed / (height_km * 1000.0)  # cloud heights per second
        d = wind_dir_deg * DEG
        d2 = d + rng.uniform(-0.5, 0.5)
        self.vel = [(speed * math.sin(d), speed * math.cos(d)),
                    (1.3 * speed * math.sin(d2), 1.3 * speed * math.cos(d2))]
        self.offset = [tuple(rng.uniform(0, 1, 2)) for _ in range(2)]
        self.kappa = float(rng.uniform(1.2, 2.2))
        self.wobble = (rng.uniform(0.05, 0.15), rng.uniform(1500, 5000), rng.uniform(0, 6.3))
        mix = self.weights[0] * self.tex[0] + self.weights[1] * self.tex[1][::-1, :]
        self.norm = float(mix.std())
        self.sorted = np.sort(mix.ravel() / self.norm)

    def cover_at(self, t: float) -> float:
        amp, period, phase = self.wobble
        if self.base_cover >= 0.9 or self.base_cover <= 0.0:
            return self.base_cover
        return float(np.clip(self.base_cover + amp * math.sin(2 * math.pi * t / period + phase),
                             0.02, 0.95))

    def alpha(self, t: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(opacity, texture value − threshold, cover) on the low-res grid at time t."""
        cam = self.cam
        cover = self.cover_at(t)
        n = self.SIZE
        total = np.zeros(cam.low_shape, np.float32)
        for i in range(2):
            period, (vu, vv), (ou, ov) = self.period[i], self.vel[i], self.offset[i]
            su = ((ou - vu * t / period) % 1.0) * n
            sv = ((ov + vv * t / period) % 1.0) * n
            mx = cam.cloud_u0 * (n / period) + np.float32(su)
            my = -cam.cloud_v0 * (n / period) + np.float32(sv)
            lv = [cv2.remap(t, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
                  for t in self.levels[i]]
            b = self.blend[i]
            # level 3 is the texture's mean (0): far off, the deck averages out into a bank
            sample = np.where(b < 1, lv[0] + b * (lv[1] - lv[0]),
                              np.where(b < 2, lv[1] + (b - 1) * (lv[2] - lv[1]),
                                       lv[2] * (3 - b)))
            total += self.weights[i] * sample
        total /= self.norm
        theta = float(np.quantile(self.sorted, 1.0 - min(cover, 0.999)))
        excess = total - theta
        tau0 = 4.0 * float(np.clip((cover - 0.85) / 0.15, 0, 1))
        tau = cam.cloud_path * (self.kappa * np.maximum(excess, 0) + tau0)
        # the grid is 4× coarser than the frame: soften so upsampling shows no pixel blocks
        tau = cv2.GaussianBlur(tau, (0, 0), 0.6)
        return (1.0 - np.exp(-tau)).astype(np.float32), excess, cover


def angle_to(cam: Camera, v: np.ndarray) -> np.ndarray:
    """Angular distance (radians) of each low-res pixel from direction v (ENU)."""
    dot = cam.enu_low @ v.astype(np.float32)
    return np.arccos(np.clip(dot, -1.0, 1.0))


def milky_way(cam: Camera, enu_from_eq: np.ndarray) -> np.ndarray:
    """The galactic band: Gaussian in latitude, brighter toward the centre, with a dark rift."""
    gal = cam.enu_low @ (enu_from_eq @ EQ_TO_GAL.T).astype(np.float32)
    b = np.arcsin(np.clip(gal[..., 2], -1, 1)) / DEG
    lon = np.arctan2(gal[..., 1], gal[..., 0])
    band = np.exp(-((b / 9.0) ** 2)) * (0.35 + 0.65 * ((1 + np.cos(lon)) / 2) ** 1.5)
    band *= 1 + 0.25 * np.sin(5 * lon + 1.0) * np.cos(0.3 * b)
    rift = np.exp(-(((b - 2.0) / 2.5) ** 2)) * np.exp(-(((lon / DEG) - 45) / 30) ** 2)
    return (MILKY_WAY * band * (1 - 0.5 * rift)).astype(np.float32)


def twilight(cam: Camera, sun_enu: np.ndarray) -> np.ndarray | None:
    """Twilight sky: ×10 per 5° of solar altitude above −18° (0.5 mag/deg), brightest low
    toward the Sun's azimuth."""
    sun_alt = math.degrees(math.asin(float(sun_enu[2])))
    if sun_alt <= -18.0:
        return None
    level = NATURAL_SKY * (10 ** (0.2 * (sun_alt + 18.0)) - 1.0)
    psi = angle_to(cam, sun_enu)
    shape = 0.6 + 0.4 * cam.airglow_low / 2 + 2.0 * np.exp(-psi / (40 * DEG)) * np.exp(
        -cam.alt_low / 20.0)
    return (level * shape).astype(np.float32)


def moon_light(cam: Camera, moon_enu: np.ndarray, illum: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scattered moonlight on the sky, glare + flare ring + dome ghost, angular distance).

    Brightness ∝ illumination² (a half Moon is ~1/10 of a full Moon; we use 1/4 as the
    phase law flattens on cameras that saturate near the Moon), dimmed by extinction at the
    Moon's airmass; the sky shape is Rayleigh (1 + cos²ψ) plus Mie aureole terms.
    """
    alt = float(moon_enu[2])
    ext = 10 ** (-0.4 * 0.25 * (1.0 / max(alt, 0.05) - 1))
    flux = illum**2 * ext
    psi = angle_to(cam, moon_enu)
    psi_deg = psi / DEG
    shape = 0.45 * (1 + np.cos(psi) ** 2) + 3.0 * np.exp(-psi_deg / 10.0) + 1.0 * np.exp(
        -psi_deg / 35.0)
    shape *= np.sqrt(cam.airglow_low)
    sky = MOON_SKY * flux * shape
    glare = MOON_GLARE * flux * (1 / (1 + (psi_deg / 1.5) ** 2) + 0.1 * np.exp(-psi_deg / 8))
    # lens ghost (a ring) and a dome reflection, on the line through the image centre
    mx, my = cam.project(moon_enu[None, :].astype(np.float64))
    fx, fy = cam.low_x, cam.low_y
    gx, gy = cam.cx - 0.55 * (mx[0] - cam.cx), cam.cy - 0.55 * (my[0] - cam.cy)
    d = np.hypot(fx - gx, fy - gy) / cam.radius
    ring = np.exp(-(((d - 0.08) / 0.015) ** 2)) + 0.3 * np.exp(-((d / 0.05) ** 2))
    dx, dy = cam.cx - 0.95 * (mx[0] - cam.cx), cam.cy - 0.95 * (my[0] - cam.cy)
    ghost = np.exp(-(np.hypot(fx - dx, fy - dy) / (0.03 * cam.radius)) ** 2)
    glare = glare + flux * (20.0 * ring + 25.0 * ghost)
    return sky.astype(np.float32), glare.astype(np.float32), psi


def star_glow(cam: Camera, x: np.ndarray, y: np.ndarray, peak: np.ndarray, spread: float
              ) -> np.ndarray:
    """Halo of bright stars (scatter in the lens, haze, dew) on the low-res grid."""
    from training.sim.transients import splat

    bright = peak > 60
    glow = np.zeros(cam.low_shape, np.float32)
    if bright.any():
        f = cam.factor
        splat(glow, (x[bright] + 0.5) / f - 0.5, (y[bright] + 0.5) / f - 0.5,
              (peak[bright] * spread).astype(np.float32))
        glow = cv2.GaussianBlur(glow, (0, 0), max(1.0, 6.0 / f))
    return glow
