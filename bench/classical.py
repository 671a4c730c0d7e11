"""A classical streak detector of the kind AllSky modules and indi-allsky ship.

difference → threshold → Canny → probabilistic Hough lines, with their default parameters:

* Gaussian blur 5×5, Canny 15/50, HoughLinesP ρ = 1 px, θ = 1°, 125 votes, minimum line length
  40 px, maximum gap 20 px: indi-allsky's ``IndiAllskyDetectLines`` (indi_allsky/detectLines.py;
  the vote threshold is its ``DETECT_METEORS_THOLD`` setting, default 125). indi-allsky runs this
  on the single frame inside a central region of interest (half the width and height) unless the
  user draws a mask; here it runs on the whole frame, so it can see every meteor the other
  detectors see.
* The difference threshold, 22 grey levels over the previous frame, is the default ``diff_thr``
  of AllSky's temporal meteor module (allsky-modules, allsky_meteordetect), which first
  subtracts the previous frame to remove stars and static clouds.

A frame is a detection when at least one line survives. For precision–recall curves the
detector also reports a score: the length of the longest segment HoughLinesP finds with the
older indi-allsky vote threshold of 15 and a 10 px minimum length (sweeping a minimum length
over it traces the curve; the operating point above is not exactly on it, since it also needs
125 votes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class ClassicalParams:
    blur: int = 5
    diff_threshold: int = 22
    canny_low: int = 15
    canny_high: int = 50
    rho: float = 1.0
    theta_deg: float = 1.0
    votes: int = 125
    min_line_length: int = 40
    max_line_gap: int = 20
    score_votes: int = 15
    score_min_length: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassicalResult:
    detected: bool  # the operating point: any line with the default parameters
    score: float  # longest segment (px) at the low vote threshold; 0 when none
    lines: int  # segments found at the operating point


def edges(previous: np.ndarray, current: np.ndarray, p: ClassicalParams) -> np.ndarray:
    """Canny edges of the thresholded positive difference of two grey frames."""
    if previous.shape != current.shape or previous.ndim != 2:
        raise ValueError(f"need two grey frames of one size, got {previous.shape} and "
                         f"{current.shape}")
    k = (p.blur, p.blur)
    diff = cv2.subtract(cv2.GaussianBlur(current, k, 0), cv2.GaussianBlur(previous, k, 0))
    _, binary = cv2.threshold(diff, p.diff_threshold, 255, cv2.THRESH_BINARY)
    return cv2.Canny(binary, p.canny_low, p.canny_high)


def _lines(edge_image: np.ndarray, p: ClassicalParams, votes: int, min_length: int) -> np.ndarray:
    found = cv2.HoughLinesP(edge_image, p.rho, np.deg2rad(p.theta_deg), votes, None, min_length,
                            p.max_line_gap)
    return np.zeros((0, 4), np.int32) if found is None else found.reshape(-1, 4)


def detect(previous: np.ndarray, current: np.ndarray,
           p: ClassicalParams = ClassicalParams(), with_score: bool = True) -> ClassicalResult:
    edge_image = edges(previous, current, p)
    lines = _lines(edge_image, p, p.votes, p.min_line_length)
    score = 0.0
    if with_score:
        segments = _lines(edge_image, p, p.score_votes, p.score_min_length)
        if len(segments):
            dx = segments[:, 2] - segments[:, 0]
            dy = segments[:, 3] - segments[:, 1]
            score = float(np.hypot(dx, dy).max())
    return ClassicalResult(detected=len(lines) > 0, score=score, lines=len(lines))
