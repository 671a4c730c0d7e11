"""Positional astronomy, low precision (≈0.5°), enough to place the sky an all-sky camera sees.

Frames: equatorial unit vectors (x toward RA 0, z toward the north celestial pole) and local
horizontal ENU unit vectors (east, north, up). The sky turns about the celestial pole at the
sidereal rate (15.04°/h); `equatorial_to_enu` does that turn for a given local sidereal time, so
stars rotate between frames because time advances, not because an image is rotated.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

DEG = math.pi / 180.0

# J2000 equatorial → galactic rotation (Hipparcos / Liu et al. 2011).
EQ_TO_GAL = np.array(
    [
        [-0.0548755604, -0.8734370902, -0.4838350155],
        [0.4941094279, -0.4448296300, 0.7469822445],
        [-0.8676661490, -0.1980763734, 0.4559837762],
    ]
)


def julian_date(local: datetime, utc_offset_h: float) -> float:
    """Julian date of a naive local time in a zone `utc_offset_h` hours east of UTC."""
    utc = local - timedelta(hours=utc_offset_h)
    epoch = datetime(2000, 1, 1, 12, 0, 0)  # J2000.0 = JD 2451545.0
    return 2451545.0 + (utc - epoch).total_seconds() / 86400.0


def local_sidereal_time(jd: float, longitude_deg: float) -> float:
    """Local mean sidereal time in radians (IAU 1982 GMST, linear term only)."""
    gmst_h = 18.697374558 + 24.06570982441908 * (jd - 2451545.0)
    return ((gmst_h * 15.0 + longitude_deg) % 360.0) * DEG


def sun_equatorial(jd: float) -> np.ndarray:
    """Unit vector to the Sun (Astronomical Almanac low-precision formula, ≈0.01°)."""
    n = jd - 2451545.0
    mean_lon = (280.460 + 0.9856474 * n) % 360.0
    anomaly = ((357.528 + 0.9856003 * n) % 360.0) * DEG
    ecl_lon = (mean_lon + 1.915 * math.sin(anomaly) + 0.020 * math.sin(2 * anomaly)) * DEG
    obliquity = (23.439 - 0.0000004 * n) * DEG
    return np.array(
        [
            math.cos(ecl_lon),
            math.cos(obliquity) * math.sin(ecl_lon),
            math.sin(obliquity) * math.sin(ecl_lon),
        ]
    )


def enu_matrix(lst: float, latitude_deg: float) -> np.ndarray:
    """3×3 rotation taking equatorial unit vectors to ENU at sidereal time `lst` (radians)."""
    sl, cl = math.sin(lst), math.cos(lst)
    sp, cp = math.sin(latitude_deg * DEG), math.cos(latitude_deg * DEG)
    return np.array(
        [
            [-sl, cl, 0.0],
            [-sp * cl, -sp * sl, cp],
            [cp * cl, cp * sl, sp],
        ]
    )


def altaz_to_enu(alt_deg: float, az_deg: float) -> np.ndarray:
    """Azimuth from north through east."""
    a, z = alt_deg * DEG, az_deg * DEG
    return np.array([math.cos(a) * math.sin(z), math.cos(a) * math.cos(z), math.sin(a)])


def enu_altaz(v: np.ndarray) -> tuple[float, float]:
    """(altitude, azimuth) in degrees of one ENU vector."""
    alt = math.degrees(math.asin(max(-1.0, min(1.0, float(v[2])))))
    az = math.degrees(math.atan2(float(v[0]), float(v[1]))) % 360.0
    return alt, az


def airmass(cos_z: np.ndarray) -> np.ndarray:
    """Rozenberg (1966) airmass, finite (≈40) at the horizon."""
    cz = np.clip(cos_z, 0.0, 1.0)
    return 1.0 / (cz + 0.025 * np.exp(-11.0 * cz))


def random_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)
