"""When to process: always, between two local clock times, or while the sun is below an altitude.

The sun's altitude comes from the NOAA low-precision solar position formulas (error well under
0.1°, far below what a twilight boundary needs), so no network and no ephemeris package.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, time

from edge.config import NightConfig


def sun_altitude_deg(when_utc: datetime, latitude: float, longitude: float) -> float:
    """Apparent solar altitude (degrees, without refraction) at a UTC instant and place."""
    if when_utc.tzinfo is None:
        when_utc = when_utc.replace(tzinfo=UTC)
    when_utc = when_utc.astimezone(UTC)
    # Julian centuries since J2000.0.
    jd = when_utc.timestamp() / 86400.0 + 2440587.5
    t = (jd - 2451545.0) / 36525.0
    mean_long = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360
    mean_anom = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    ecc = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    m = math.radians(mean_anom)
    center = (
        math.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * m) * (0.019993 - 0.000101 * t)
        + math.sin(3 * m) * 0.000289
    )
    true_long = mean_long + center
    omega = 125.04 - 1934.136 * t
    app_long = true_long - 0.00569 - 0.00478 * math.sin(math.radians(omega))
    obliq0 = 23 + (26 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60) / 60
    obliq = obliq0 + 0.00256 * math.cos(math.radians(omega))
    decl = math.asin(math.sin(math.radians(obliq)) * math.sin(math.radians(app_long)))
    y = math.tan(math.radians(obliq / 2)) ** 2
    l0, mr = math.radians(mean_long), m
    eq_time = 4 * math.degrees(
        y * math.sin(2 * l0)
        - 2 * ecc * math.sin(mr)
        + 4 * ecc * y * math.sin(mr) * math.cos(2 * l0)
        - 0.5 * y * y * math.sin(4 * l0)
        - 1.25 * ecc * ecc * math.sin(2 * mr)
    )
    minutes = when_utc.hour * 60 + when_utc.minute + when_utc.second / 60
    true_solar = (minutes + eq_time + 4 * longitude) % 1440
    hour_angle = math.radians(true_solar / 4 - 180)
    lat = math.radians(latitude)
    cos_zenith = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(
        hour_angle
    )
    return 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def _parse(hhmm: str) -> time:
    hours, minutes = hhmm.split(":")
    return time(int(hours), int(minutes))


def in_window(night: NightConfig, local_time: datetime) -> bool:
    """Whether a frame captured at `local_time` (aware) should be processed."""
    if night.mode == "always":
        return True
    if night.mode == "times":
        start, end, now = _parse(night.start), _parse(night.end), local_time.time()
        if start <= end:
            return start <= now < end
        return now >= start or now < end  # the window crosses midnight
    altitude = sun_altitude_deg(local_time.astimezone(UTC), night.latitude, night.longitude)
    return altitude <= night.sun_altitude_deg
