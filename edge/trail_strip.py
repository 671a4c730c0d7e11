"""A candidate's strip: the difference resampled along its line, the trail classifier's input.

The CNN of the bundle sees small windows, where a piece of a satellite trail and a piece of a
meteor look alike. Laid out along the whole line, they do not: a meteor brightens from nothing
and fades (its light goes on, fainter, past the ends the streak finder put at half its level),
a satellite shines evenly and is cut off where the exposure or the Earth's shadow cut it, and
what it left in the previous frame lies on the same line (the negative difference). The strip
shows all of that at a scale set by the candidate's own length, so a 40-px and a 400-px trail
look alike:

* along the line: `ALONG` samples from half a length before its first end to half a length
  past its second (the segment itself is the middle half);
* across: `ACROSS` samples, 1 px apart, centred on the line;
* each sample along is the light at one point (`"point"`, bundles up to 3.5.0) or the mean
  over its whole stretch of the line (`"mean"`): a 200-px trail puts 4 px between samples, so
  a point sample reads a quarter of the trail's pixels and a faint meteor's strip is half as
  far above the noise as the trail is. The bundle records which (`strip_sampling`);
* channel 0 what appeared (the positive difference), channel 1 what vanished (the negative
  difference), each in units of the local noise σ and compressed as sign · log(1 + |x|).

Besides the picture, a few numbers the picture cannot carry (`SCALARS`): the length, the peak
over the noise, the width, the distance from the zenith, the candidate's significance and rank,
how many candidates the frame holds, and the light along the line as the streak finder reads it
(`DiffAnalysis.steadiness`: box-ness, end quarters, the light past the ends; the logistic trail
stage's inputs, which the picture shows only at 1-px resolution across). Defined once here:
training builds its examples with these functions and the Pi scores with them.
"""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np

from edge.candidates import Candidate, CandidateParams, find_candidates
from edge.preprocess import apply_mask, positive_difference
from edge.streaks import DiffAnalysis, StreakParams, robust_spread, sample_bilinear

ALONG = 96
ACROSS = 21
CHANNELS = 2
STRIP_SAMPLINGS = ("point", "mean")  # along the line; a bundle without the field: "point"
LIGHT = ("box", "light_snr", "end_light", "end_imbalance", "end_bright", "middle", "variation",
         "peak_offset", "beyond_dim", "beyond_bright")  # TrailLight's fields, in its order
SCALARS = ("log_length", "peak_snr", "fwhm_px", "dotted", "dots", "zenith_distance",
           "significance", "rank", "candidates", "noise", *LIGHT)


class NegativeDifference:
    """The negative difference (previous − current, saturating at 0) with its noise level,
    computed once per frame for all its candidates."""

    def __init__(self, negative: np.ndarray) -> None:
        self.image = negative
        self.base, spread = robust_spread(negative[::4, ::4])
        self.spread = max(spread, 1.0)


def mean_offset(image: np.ndarray, base: float, sigma: float) -> float:
    """How far the mean of a difference's empty sky lies above its median, in σ. A difference
    saturates at 0, so half its sky pixels are 0 and their mean is about 0.4 σ above their
    median: a "mean" strip sample would put the sky at +0.4 σ·√k, higher for longer lines.
    From a subsample, stars and trails (over 5 σ) left out."""
    sample = image[::4, ::4]
    sky = sample[sample <= base + 5.0 * sigma]
    return float(sky.mean() - base) / sigma if sky.size else 0.0


def _resample(image: np.ndarray, x1: float, y1: float, ux: float, uy: float, length: float,
              base: float, sigma: float, sampling: str = "point",
              offset: float = 0.0) -> np.ndarray:
    along = np.linspace(-0.5, 1.5, ALONG, dtype=np.float32) * length
    across = np.arange(ACROSS, dtype=np.float32) - (ACROSS - 1) / 2
    # "mean": `k` points about 1 px apart across each sample's stretch of the line, averaged.
    step = 2.0 * length / (ALONG - 1)
    k = max(1, math.ceil(step)) if sampling == "mean" else 1
    offsets = ((np.arange(k, dtype=np.float32) + 0.5) / k - 0.5) * step
    points = (along[:, None] + offsets[None, :]).reshape(-1)  # (ALONG * k,)
    xs = (x1 + points[None, :] * ux - across[:, None] * uy).astype(np.float32)
    ys = (y1 + points[None, :] * uy + across[:, None] * ux).astype(np.float32)
    values = sample_bilinear(image, xs, ys, outside=float(base)).astype(np.float32)
    if k == 1:
        return (values - base) / sigma
    # From the sky's mean (`offset` σ above its median), in units of the mean's own noise
    # (σ/√k): the same sky at every length, a faint trail as far above it as its light makes it.
    values = values.reshape(ACROSS, ALONG, k).mean(axis=2)
    return (values - base - offset * sigma) / (sigma / math.sqrt(k))


def strip(analysis: DiffAnalysis, negative: NegativeDifference,
          candidate: Candidate, sampling: str = "point",
          offsets: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The candidate's (CHANNELS, ACROSS, ALONG) float32 strip, `sampling` one of
    STRIP_SAMPLINGS (for "mean", `offsets`: both differences' `mean_offset`)."""
    if sampling not in STRIP_SAMPLINGS:
        raise ValueError(f"strip sampling must be one of {STRIP_SAMPLINGS}, got {sampling!r}")
    s = candidate.streak
    length = max(s.length_px, 8.0)
    ux, uy = (s.x2 - s.x1) / length, (s.y2 - s.y1) / length
    # The local noise near the candidate (moonlight, lit cloud), relative to the frame's.
    local = analysis.sigma_at((s.x1 + s.x2) / 2, (s.y1 + s.y2) / 2) / analysis.full_noise[1]
    appeared = _resample(analysis.difference, s.x1, s.y1, ux, uy, length,
                         analysis.full_noise[0], analysis.full_noise[1] * local, sampling,
                         offsets[0])
    vanished = _resample(negative.image, s.x1, s.y1, ux, uy, length, negative.base,
                         negative.spread * local, sampling, offsets[1])
    both = np.stack([appeared, vanished])
    return np.sign(both) * np.log1p(np.abs(both))


def scalars(analysis: DiffAnalysis, candidate: Candidate, rank: int,
            count: int) -> np.ndarray:
    """The candidate's `SCALARS`, float32, in that order."""
    s = candidate.streak
    h, w = analysis.difference.shape
    sigma = analysis.sigma_at((s.x1 + s.x2) / 2, (s.y1 + s.y2) / 2)
    zenith = math.hypot((s.x1 + s.x2 - w) / 2, (s.y1 + s.y2 - h) / 2) / (0.5 * min(h, w))
    light = astuple(analysis.steadiness(s))
    return np.array([math.log(max(s.length_px, 1.0)), s.peak / sigma, s.fwhm_px,
                     float(s.dotted), float(s.dots), zenith, candidate.significance,
                     float(rank), float(count), sigma, *light], np.float32)


def pair_inputs(previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None,
                streak_params: StreakParams, params: CandidateParams,
                analysis: DiffAnalysis | None = None, sampling: str = "point",
                ) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """A frame pair's candidate lines and their strips and scalars (`frame_inputs`): what the
    Pi's scorer feeds the classifier and what training fits it on, the same code.

    `analysis`: the pair's masked positive difference already analysed (the daemon shares the
    decider's, so its streaks are found once a frame); used only if made with `streak_params`."""
    if analysis is None or analysis.params != streak_params:
        analysis = DiffAnalysis(apply_mask(positive_difference(previous, current), mask),
                                streak_params)
    candidates = find_candidates(analysis, previous, current, mask, params)
    negative = apply_mask(positive_difference(current, previous), mask)
    return (candidates, *frame_inputs(analysis, negative, candidates, sampling))


def frame_inputs(analysis: DiffAnalysis, negative: np.ndarray, candidates: list[Candidate],
                 sampling: str = "point") -> tuple[np.ndarray, np.ndarray]:
    """All of a frame's candidates as a batch: strips (N, CHANNELS, ACROSS, ALONG) and
    scalars (N, len(SCALARS))."""
    if not candidates:
        return (np.zeros((0, CHANNELS, ACROSS, ALONG), np.float32),
                np.zeros((0, len(SCALARS)), np.float32))
    neg = NegativeDifference(negative)
    # Once a frame, not once a candidate: only the "mean" samples need them.
    offsets = ((mean_offset(analysis.difference, *analysis.full_noise),
                mean_offset(neg.image, neg.base, neg.spread)) if sampling == "mean"
               else (0.0, 0.0))
    strips = np.stack([strip(analysis, neg, c, sampling, offsets) for c in candidates])
    numbers = np.stack([scalars(analysis, c, k, len(candidates))
                        for k, c in enumerate(candidates)])
    return strips, numbers
