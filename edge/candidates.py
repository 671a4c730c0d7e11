"""Where a meteor might be in a frame pair: line segments found by a seed-and-trace search.

The streak finder (`edge.streaks`) thresholds pixels and joins what passes. A meteor 15–20 grey
levels above the sky is only 2–3 σ in each pixel of the difference, so it breaks into pieces too
short to keep: that finder held 195 of the 259 test-night meteors, this search 239 in its 16
candidates a frame (docs/training.md, "The trail classifier"). It integrates along the line
before it decides anything:

1. **seeds**: the line map (`edge.preprocess.line_response` on the blurred signed difference at
   the streak finder's analysis scale, `directions` orientations) and its `seeds` strongest
   local maxima; a faint streak lights it along its whole length, a star's crescent does not;
2. **direction**: at each seed, the angle whose two half-lines (`reach` px each way) are
   brightest on the streak finder's ridge map (`DiffAnalysis.ridge`, local noise units);
3. **trace**: along that direction both ways while the smoothed ridge profile stays above
   `trace_level` σ (gaps up to `trace_gap` px bridged: a star, a noise dip); the pixels near the
   traced line re-fit its direction, and it is traced once more;
4. the segment is measured on the full-resolution difference like every streak
   (`DiffAnalysis.measure_segment`: ends, peak, width), joined with the streak finder's own
   streaks and with collinear pieces, and ranked by its **significance** (mean ridge level along
   it × √its length in analysis px: a long faint line outranks a short bright scratch of noise),
   the sharp lines first: a band `soft_fwhm_px` wide or wider is a moving cloud's edge, not
   something the optics draw, and on a cloudy frame thirty of them would push a faint meteor
   out of the `max_candidates` kept.

Pure: arrays in, candidates out. Used by the trail classifier on the Pi and in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from edge.preprocess import PreprocessSpec, line_candidates, line_response, normalised_difference
from edge.streaks import DiffAnalysis, Streak, merge_fragments, sample_bilinear


@dataclass(frozen=True)
class CandidateParams:
    """The search's knobs (analysis px are the streak finder's downscaled pixels)."""

    seeds: int = 32  # line-map maxima traced per frame
    nms_radius: int = 6  # seeds at least this far apart, analysis px
    line_length: int = 9  # line-map kernel side, analysis px (odd)
    directions: int = 16  # line-map orientations
    blur: int = 3  # box blur of both frames before differencing (odd)
    reach: int = 16  # half-line length for the direction scan, analysis px
    angle_step_deg: float = 2.0
    trace_level: float = 0.7  # the smoothed ridge profile's floor, local σ
    trace_smooth: int = 9  # profile smoothing window, analysis px
    trace_gap: int = 6  # gaps bridged while tracing, analysis px
    fit_level: float = 1.5  # pixels at least this bright re-fit the direction, local σ
    min_length_px: float = 16.0  # shorter segments are dropped, full-frame px
    max_candidates: int = 16  # kept per frame, most significant first (cloudy frames have many)
    # Lines at least this wide across (FWHM, full-frame px) are ranked after the sharp ones: the
    # optics draw meteors 2-4 px wide, a moving cloud's edge 6 px and more, and on a cloudy frame
    # those edges would otherwise fill the max_candidates places (0 = rank by significance only,
    # as bundles made before this knob did).
    soft_fwhm_px: float = 6.0

    def __post_init__(self) -> None:
        for name in ("seeds", "nms_radius", "directions", "reach", "trace_smooth",
                     "max_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"candidates: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("line_length", "blur"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0 or (name == "line_length" and value < 3):
                raise ValueError(f"candidates: {name} must be odd (line_length >= 3), got "
                                 f"{value}")
        if not 0.0 < self.angle_step_deg <= 15.0:
            raise ValueError(f"candidates: angle_step_deg must be in (0, 15], got "
                             f"{self.angle_step_deg}")
        if self.trace_gap < 0 or self.min_length_px <= 0:
            raise ValueError("candidates: trace_gap must be >= 0 and min_length_px > 0")
        if not (math.isfinite(self.soft_fwhm_px) and self.soft_fwhm_px >= 0):
            raise ValueError(f"candidates: soft_fwhm_px must be >= 0, got {self.soft_fwhm_px}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateParams:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"candidates: unknown parameters {sorted(unknown)}")
        # A manifest written before soft_fwhm_px existed ranked by significance alone.
        return cls(**{"soft_fwhm_px": 0.0, **data})


@dataclass(frozen=True)
class Candidate:
    streak: Streak
    significance: float  # mean ridge level along it × √(length in analysis px)


def line_map(previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None,
             analysis: DiffAnalysis, params: CandidateParams) -> np.ndarray:
    """The line map at the analysis scale (`analysis.ridge`'s shape), in its own σ."""
    spec = PreprocessSpec(id="g2", blur=params.blur, line_length=params.line_length,
                          line_width=analysis.params.analysis_width)
    norm = normalised_difference(spec, previous, current, mask)
    response = line_response(norm, spec, params.directions)
    h, w = analysis.ridge.shape
    if response.shape != (h, w):
        response = cv2.resize(response, (w, h), interpolation=cv2.INTER_LINEAR)
    return response


def direction(ridge: np.ndarray, x: float, y: float, params: CandidateParams) -> float:
    """The angle (radians, 0..π) of the brightest pair of half-lines through (x, y)."""
    angles = np.deg2rad(np.arange(0.0, 180.0, params.angle_step_deg))
    r = np.arange(1, params.reach + 1, dtype=np.float32)[None, :]
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    ahead = sample_bilinear(ridge, x + r * c, y + r * s).mean(axis=1)
    behind = sample_bilinear(ridge, x - r * c, y - r * s).mean(axis=1)
    score = np.minimum(ahead, behind)  # a star beside the line lights one half only
    k = int(np.argmax(score))
    # Parabola through the neighbours (the scan wraps at 180°) for a sub-step angle.
    left, mid, right = score[k - 1], score[k], score[(k + 1) % len(score)]
    curvature = left - 2 * mid + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float(angles[k] + offset * math.radians(params.angle_step_deg))


def trace(ridge: np.ndarray, x: float, y: float, theta: float,
          params: CandidateParams) -> tuple[float, float] | None:
    """How far the line through (x, y) at `theta` stays lit, both ways: (t0 <= 0, t1 >= 0) in
    analysis px along it, or None if it is not lit at the seed itself."""
    reach = int(0.45 * max(ridge.shape))
    t = np.arange(-reach, reach + 1, dtype=np.float32)
    profile = sample_bilinear(ridge, (x + t * math.cos(theta))[None, :],
                              (y + t * math.sin(theta))[None, :])[0]
    k = params.trace_smooth
    lit = np.convolve(profile, np.ones(k, np.float32) / k, mode="same") >= params.trace_level
    if not lit[reach - 2: reach + 3].any():
        return None

    def run(steps: range) -> int:
        last, misses = reach, 0
        for i in steps:
            if lit[i]:
                last, misses = i, 0
            else:
                misses += 1
                if misses > params.trace_gap:
                    break
        return last

    return float(t[run(range(reach, -1, -1))]), float(t[run(range(reach, len(t)))])


def refit(ridge: np.ndarray, x: float, y: float, theta: float, t0: float, t1: float,
          params: CandidateParams) -> tuple[float, float, float]:
    """The traced line re-fitted to the bright pixels within 1.5 px of it (weighted PCA), as
    (the seed projected onto the new line, its angle); unchanged when too few pixels."""
    ux, uy = math.cos(theta), math.sin(theta)
    ends_x, ends_y = (x + t0 * ux, x + t1 * ux), (y + t0 * uy, y + t1 * uy)
    h, w = ridge.shape
    xa, xb = int(max(min(ends_x) - 3, 0)), int(min(max(ends_x) + 4, w))
    ya, yb = int(max(min(ends_y) - 3, 0)), int(min(max(ends_y) + 4, h))
    window = ridge[ya:yb, xa:xb]
    ys, xs = np.nonzero(window >= params.fit_level)
    weights = window[ys, xs]
    px, py = (xs + xa).astype(float), (ys + ya).astype(float)
    across = (px - x) * -uy + (py - y) * ux
    along = (px - x) * ux + (py - y) * uy
    near = (np.abs(across) <= 1.5) & (along >= t0 - 2) & (along <= t1 + 2)
    if near.sum() < 5:
        return x, y, theta
    px, py, weights = px[near], py[near], weights[near]
    cx, cy = float(np.average(px, weights=weights)), float(np.average(py, weights=weights))
    dx, dy = px - cx, py - cy
    cxx = float(np.average(dx * dx, weights=weights))
    cyy = float(np.average(dy * dy, weights=weights))
    cxy = float(np.average(dx * dy, weights=weights))
    fitted = 0.5 * math.atan2(2 * cxy, cxx - cyy)
    ux, uy = math.cos(fitted), math.sin(fitted)
    s = (x - cx) * ux + (y - cy) * uy
    return cx + s * ux, cy + s * uy, fitted


def significance(analysis: DiffAnalysis, streak: Streak) -> float:
    """Mean ridge level along the segment (best of ±1 px across) × √(its analysis px)."""
    a = np.array(analysis.to_small(streak.x1, streak.y1))
    b = np.array(analysis.to_small(streak.x2, streak.y2))
    length = float(np.hypot(*(b - a)))
    n = max(int(length), 2)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    xs, ys = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
    ux, uy = (b - a) / max(length, 1e-9)
    best = np.max([sample_bilinear(analysis.ridge, (xs - off * uy)[None, :],
                                   (ys + off * ux)[None, :])[0]
                   for off in (-1.0, 0.0, 1.0)], axis=0)
    return float(np.mean(best) * math.sqrt(n))


def traced_streaks(analysis: DiffAnalysis, previous: np.ndarray, current: np.ndarray,
                   mask: np.ndarray | None, params: CandidateParams) -> list[Streak]:
    """One segment per line-map seed that traces into a line at least min_length_px long."""
    ridge = analysis.ridge
    seeds = line_candidates(line_map(previous, current, mask, analysis, params), params.seeds,
                            params.nms_radius)
    none = (np.zeros(0, np.int32), np.zeros(0, np.int32))
    out: list[Streak] = []
    for sy, sx in seeds:
        x, y = float(sx), float(sy)
        theta = direction(ridge, x, y, params)
        span = trace(ridge, x, y, theta, params)
        if span is None:
            continue
        fx, fy, fitted = refit(ridge, x, y, theta, *span, params)
        again = trace(ridge, fx, fy, fitted, params)
        if again is not None:
            x, y, theta, span = fx, fy, fitted, again
        t0, t1 = span
        if (t1 - t0) * analysis.factor < params.min_length_px:
            continue
        ux, uy = math.cos(theta), math.sin(theta)
        a = np.array([x + t0 * ux, y + t0 * uy])
        b = np.array([x + t1 * ux, y + t1 * uy])
        out.append(analysis.measure_segment(a, b, float(analysis.factor), none))
    return out


def find_candidates(analysis: DiffAnalysis, previous: np.ndarray, current: np.ndarray,
                    mask: np.ndarray | None = None,
                    params: CandidateParams | None = None) -> list[Candidate]:
    """The frame's most significant line segments: the streak finder's and the traced ones,
    collinear pieces joined, at most max_candidates, the sharp ones (FWHM under soft_fwhm_px)
    before the soft ones."""
    params = params or CandidateParams()
    lines = list(analysis.streaks) + traced_streaks(analysis, previous, current, mask, params)
    lines = merge_fragments(lines, analysis.factor, analysis.remeasure)
    scored = [Candidate(s, significance(analysis, s)) for s in lines
              if s.length_px >= params.min_length_px]
    soft = params.soft_fwhm_px
    scored.sort(key=lambda c: (bool(soft) and c.streak.fwhm_px >= soft, -c.significance))
    return scored[: params.max_candidates]
