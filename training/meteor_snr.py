"""How far each meteor stands out of its own sky: peak brightness over the difference's noise.

A meteor's peak in grey levels says little about how hard it is to see: the same 20 levels are
plain on a dark clear sky and lost in the noise under a bright Moon or a moving cloud. Nights
drawn into validation and test differ in those skies, so recall by peak alone can make two sets
look unlike when they only differ in noise. The signal-to-noise ratio (the simulator's peak
over the robust noise σ of the frame pair's difference around the meteor, the trail itself left
out) puts every set on one scale.
"""

from __future__ import annotations

import itertools
import logging

import cv2
import numpy as np

from edge.preprocess import PreprocessError, read_gray
from training._common import METEOR, meteor_segment
from training._metrics import bin_label
from training._parallel import process_map

log = logging.getLogger(__name__)

SNR_EDGES = (0, 3, 5, 8, 15, float("inf"))
MARGIN_PX = 80  # the sky around the trail that sets its noise
TRAIL_PX = 15  # the band along the trail left out of it (the trail, its blooming)


def local_noise(previous: np.ndarray, current: np.ndarray,
                segment: tuple[float, float, float, float]) -> float:
    """The noise σ of the signed difference within MARGIN_PX of the segment, trail excluded:
    sigma-clipped at 3σ (stars that moved, hot pixels), which unlike a median absolute deviation
    of integer differences is not stuck on a few values."""
    difference = current.astype(np.float32) - previous.astype(np.float32)
    h, w = difference.shape
    x1, y1, x2, y2 = segment
    xa, xb = int(max(0, min(x1, x2) - MARGIN_PX)), int(min(w, max(x1, x2) + MARGIN_PX + 1))
    ya, yb = int(max(0, min(y1, y2) - MARGIN_PX)), int(min(h, max(y1, y2) + MARGIN_PX + 1))
    trail = np.zeros((yb - ya, xb - xa), np.uint8)
    cv2.line(trail, (round(x1) - xa, round(y1) - ya), (round(x2) - xa, round(y2) - ya), 255,
             TRAIL_PX)
    sky = difference[ya:yb, xa:xb][trail == 0]
    if sky.size < 100:
        return float("nan")
    centre = float(np.median(sky))
    sigma = 1.4826 * float(np.median(np.abs(sky - centre))) + 1e-3
    for _ in range(5):
        kept = sky[np.abs(sky - centre) < 3.0 * sigma]
        centre, sigma = float(kept.mean()), float(kept.std())
    return sigma


Job = tuple[str, str, tuple[float, float, float, float], float]


def meteor_job(previous: str, current: str, truth) -> Job | None:
    """The SNR job for a frame pair whose truth (an index row, or a label's truth columns)
    gives its meteor's segment and peak; None where it does not."""
    segment = meteor_segment(truth)
    try:
        peak = float(truth["meteor_peak"])
    except (KeyError, TypeError, ValueError):
        return None
    if segment is None or not np.isfinite(peak):
        return None
    return previous, current, segment, peak


def _one(job: Job) -> float:
    previous, current, segment, peak = job
    try:
        noise = local_noise(read_gray(previous), read_gray(current), segment)
    except (OSError, PreprocessError):
        # A report on cached model inputs must not die for an archived JPEG: no SNR for it.
        return float("nan")
    return peak / noise if noise > 0 else float("nan")


def snr_of(jobs: list[Job], workers: int = 1) -> list[float]:
    """Each (previous frame, frame, true segment, peak)'s signal-to-noise ratio (NaN where a
    frame cannot be read, or there is no sky around the trail)."""
    values = list(process_map(_one, jobs, workers, desc="meteor SNR", unit="frame",
                              chunksize=8, serial_below=32))
    unknown = sum(1 for v in values if not np.isfinite(v))
    if unknown:
        log.warning("no signal-to-noise ratio for %d of %d meteor frames (unreadable frames, "
                    "or no sky around the trail)", unknown, len(values))
    return values


def snr_bin(value: float) -> str:
    """The SNR_EDGES bin a ratio falls in, as the report names it (e.g. "3–5")."""
    for lo, hi in itertools.pairwise(SNR_EDGES):
        if lo <= value < hi:
            return bin_label(lo, hi)
    return "unknown"  # NaN: no sky around the trail to measure


def meteor_snr(df, workers: int = 1) -> np.ndarray | None:
    """Per index row, its meteor's peak over the local noise (NaN for frames without a meteor, a
    known segment or a peak); None when the index has no simulator truth to measure it by."""
    if not {"meteor_peak", "frame", "previous"} <= set(df.columns):
        return None
    snr = np.full(len(df), np.nan)
    jobs: list[Job] = []
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        job = (meteor_job(str(row["previous"]), str(row["frame"]), row)
               if row["label"] == METEOR else None)
        if job is not None:
            jobs.append(job)
            rows.append(i)
    if not jobs:
        return None
    log.info("signal-to-noise of the %d meteor frames with a known trail", len(jobs))
    snr[rows] = snr_of(jobs, workers)
    return snr
