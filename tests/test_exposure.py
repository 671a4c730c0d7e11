"""Exposure steps (edge/exposure.py): a global brightness step is fitted and taken out; a
local brightening is not mistaken for one."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.exposure import compensated_difference, exposure_step

H, W = 488, 652


def sky(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = 25 + 30 * np.exp(-((xx - 200) ** 2 + (yy - 300) ** 2) / 2e5)  # a glow on the horizon
    ys, xs = rng.integers(0, H, 900), rng.integers(0, W, 900)
    base[ys, xs] += rng.uniform(20, 150, 900)
    return cv2.GaussianBlur(base.astype(np.float32), (0, 0), 0.8)


def frame(light: np.ndarray, seed: int, gain: float = 1.0, pedestal: float = 8.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 2.5, light.shape)
    return np.clip(pedestal + gain * light + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gain", [1.26, 1.6, 0.8])
def test_a_gain_step_is_fitted_and_only_the_meteor_is_left(gain):
    light = sky()
    previous = frame(light, 1)
    meteor = np.zeros_like(light)
    cv2.line(meteor, (300, 250), (420, 330), 40.0, 2, lineType=cv2.LINE_AA)
    current = frame(light * gain + meteor, 2, gain=1.0, pedestal=8.0)
    lut = exposure_step(previous, current)
    assert lut is not None and lut.shape == (256,)
    assert abs(float(lut[40]) - (8 + 32 * gain)) < 2  # level 40 = pedestal + 32
    diff = compensated_difference(previous, current, lut)
    on_line = diff[cv2.line(np.zeros_like(diff), (300, 250), (420, 330), 1, 1) > 0]
    assert np.median(on_line) > 25
    plain = cv2.subtract(current, previous)
    if gain > 1:  # the plain difference is bright everywhere, the compensated one is not
        assert np.median(plain) > 8
    assert np.median(diff) <= 2


def test_a_one_sided_glow_is_not_a_step():
    light = sky()
    previous = frame(light, 1)
    glow = 80 * np.exp(-np.arange(W, dtype=np.float32) / 200.0)[None, :]  # headlights
    assert exposure_step(previous, frame(light + glow, 2)) is None


def test_a_mask_leaves_its_pixels_out_and_zeroes_them():
    light = sky()
    previous, current = frame(light, 1), frame(light * 1.5, 2)
    mask = np.full((H, W), 255, np.uint8)
    mask[:120, :] = 0  # the overlay strip
    current[:120, :] = 255  # changing completely there does not matter
    lut = exposure_step(previous, current, mask)
    assert lut is not None
    diff = compensated_difference(previous, current, lut, mask)
    assert not diff[:120].any()


def test_frames_too_small_or_too_dark_cannot_tell():
    small = np.full((64, 64), 40, np.uint8)
    assert exposure_step(small, small) is None
    black = np.zeros((H, W), np.uint8)
    assert exposure_step(black, black) is None
    with pytest.raises(ValueError, match="shape"):
        exposure_step(np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8))
