"""Exposure steps: the whole sky brighter or darker between two frames by the camera's doing.

In twilight AllSky's auto-exposure moves the exposure (or gain) in steps, so one frame pair in
many has every sky pixel change by the same factor. The difference image is then bright
everywhere and the flash rule (edge/decide.py) would throw the pair away, meteor and all. A step
differs from a real flash (lightning, headlights, the Moon leaving a cloud) in that it is one
*monotonic function of the previous frame's level*, the same everywhere in the frame; a flash
lights one part of the sky more than another.

`exposure_step` fits that function (quantile matching of the two frames, so a camera's stretch
or gamma curve is allowed, not only a gain and an offset) and accepts it only if it explains the
new frame block by block; `compensated_difference` then subtracts the previous frame mapped
through it, which leaves what really changed.

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import cv2
import numpy as np

_SCALE = 8  # fit on 1/8-size images: noise averaged, ~20k pixels
_BLOCK = 8  # residual blocks of 8 downscaled pixels (64 full-frame pixels) a side
_QUANTILES = np.linspace(1.0, 99.0, 99)


def exposure_step(previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None,
                  max_residual: float = 2.0) -> np.ndarray | None:
    """A 256-entry float32 lookup table mapping the previous frame's grey levels to the
    current frame's, if the change between the two frames is one global brightness step; None
    if it is not (some part of the sky changed differently, e.g. a flash) or cannot be told.

    Accepted when 90 % of the blocks' median residuals (current minus mapped previous, 64×64
    full-frame pixels each, saturated and masked pixels left out) are within `max_residual`
    grey levels. Measured on simulated nights: exposure steps 0.3–0.5, flashes 9 and more.
    """
    if previous.shape != current.shape or previous.ndim != 2:
        raise ValueError(f"exposure_step: frames of shape {previous.shape} and {current.shape}")
    h, w = current.shape
    sh, sw = h // _SCALE, w // _SCALE
    if sh < 2 * _BLOCK or sw < 2 * _BLOCK:
        return None  # too small to tell a step from a local change
    size = (sw, sh)
    prev = cv2.resize(previous.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    cur = cv2.resize(current.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    usable = (prev > 2) & (prev < 240) & (cur > 2) & (cur < 240)  # not black, not saturated
    if mask is not None:
        usable &= cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0
    if np.count_nonzero(usable) < 0.2 * usable.size:
        return None
    qp = np.percentile(prev[usable], _QUANTILES)
    qc = np.percentile(cur[usable], _QUANTILES)
    qp = np.maximum.accumulate(qp)  # np.interp needs the x points in order
    residual = np.where(usable, cur - np.interp(prev, qp, qc), np.nan)
    by, bx = sh // _BLOCK, sw // _BLOCK
    blocks = residual[: by * _BLOCK, : bx * _BLOCK].reshape(by, _BLOCK, bx, _BLOCK)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(by, bx, -1)
    filled = np.count_nonzero(np.isfinite(blocks), axis=2) >= _BLOCK * _BLOCK // 4
    if np.count_nonzero(filled) < 8:
        return None
    medians = np.nanmedian(blocks[filled], axis=1)
    if float(np.percentile(np.abs(medians), 90)) > max_residual:
        return None
    levels = np.arange(256, dtype=np.float32)
    # Outside the fitted range keep the nearest offset (np.interp would flatten the ends).
    lut = np.interp(levels, qp, qc).astype(np.float32)
    lo, hi = levels < qp[0], levels > qp[-1]
    lut[lo] = levels[lo] + (qc[0] - qp[0])
    lut[hi] = levels[hi] + (qc[-1] - qp[-1])
    return lut


def compensated_difference(previous: np.ndarray, current: np.ndarray, lut: np.ndarray,
                           mask: np.ndarray | None = None) -> np.ndarray:
    """current − lut(previous), saturated at 0 (uint8), zero where `mask` is 0."""
    mapped = lut[previous]
    diff = np.clip(current.astype(np.float32) - mapped + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        diff[mask == 0] = 0
    return diff
