"""Static masks, the learned auto mask and the star-visibility measure (edge/masks.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.masks import AutoMask, MaskError, build_static_mask, combine_masks, star_visibility
from edge.preprocess import positive_difference

H, W = 488, 652


def test_no_mask_configured_gives_none():
    assert build_static_mask((H, W)) is None
    assert build_static_mask((H, W), "", []) is None


def test_rectangles_are_masked_and_clipped():
    mask = build_static_mask((H, W), None, [[10, 20, 30, 40], [640, 480, 100, 100]])
    assert mask is not None and mask.dtype == np.uint8 and mask.shape == (H, W)
    assert (mask[20:60, 10:40] == 0).all()
    assert mask[19, 10] == 255 and mask[20, 40] == 255
    assert (mask[480:, 640:] == 0).all()
    assert np.count_nonzero(mask == 0) == 30 * 40 + 12 * 8


def test_mask_image_is_resized_to_the_frame(tmp_path):
    small = np.full((H // 2, W // 2), 255, np.uint8)
    small[:20, :50] = 0  # black = ignore, drawn on a half-size thumbnail
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), small)
    mask = build_static_mask((H, W), path, [[600, 400, 10, 10]])
    assert mask is not None and mask.shape == (H, W)
    assert (mask[:40, :100] == 0).all() and mask[45, 105] == 255
    assert (mask[400:410, 600:610] == 0).all()


def test_bad_masks_are_refused(tmp_path):
    with pytest.raises(MaskError, match="cannot read"):
        build_static_mask((H, W), tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MaskError, match="cannot read"):
        build_static_mask((H, W), bad)
    with pytest.raises(MaskError, match="rectangle 0"):
        build_static_mask((H, W), None, [[1, 2, 0, 5]])


def test_combine_masks():
    a = np.full((4, 4), 255, np.uint8)
    b = a.copy()
    a[0, 0] = 0
    b[3, 3] = 0
    both = combine_masks(a, None, b)
    assert both is not None and both[0, 0] == 0 and both[3, 3] == 0 and both[1, 1] == 255
    assert combine_masks(None, None) is None


# --- the auto mask ------------------------------------------------------------------------


def overlay_night(frames: int, seed: int = 0, flash_every: int = 0):
    """Differences of noisy frames carrying an AllSky-like clock overlay top-left."""
    rng = np.random.default_rng(seed)
    prev = None
    for i in range(frames + 1):
        frame = np.clip(rng.normal(30, 3.5, (H, W)), 0, 255).astype(np.uint8)
        if flash_every and i % flash_every == 0:
            frame[H // 3:] = cv2.add(frame[H // 3:], 60)  # headlights light most of the frame
        text = f"2024-08-12 22:{i // 2 % 60:02d}:{(i * 30) % 60:02d}  {i % 97:02d}"
        cv2.putText(frame, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1)
        if prev is not None:
            yield positive_difference(prev, frame)
        prev = frame


TEXT_BOX = (slice(8, 30), slice(8, 250))


def test_auto_mask_learns_the_changing_overlay_and_nothing_else():
    auto = AutoMask(warmup=30)
    diffs = list(overlay_night(40))
    for d in diffs[:29]:
        auto.update(d)
    assert auto.mask is None and not auto.ready  # still warming up
    for d in diffs[29:]:
        auto.update(d)
    mask = auto.mask
    assert mask is not None and mask.shape == (H, W)
    # The pixels of digits that change often (seconds, counter) are masked ...
    share = np.mean([d > 60 for d in diffs], axis=0)
    often = share[TEXT_BOX] >= 0.3
    assert often.sum() > 50
    assert np.mean(mask[TEXT_BOX][often] == 0) > 0.95
    # ... the sky is not.
    outside = np.ones((H, W), bool)
    outside[0:40, 0:270] = False
    assert np.mean(mask[outside] == 0) < 0.01
    assert 0 < auto.masked_share < 0.05


def test_auto_mask_ignores_flashes():
    auto = AutoMask(warmup=10)
    for d in overlay_night(30, flash_every=3):
        auto.update(d)
    assert auto.skipped == 10  # every third difference is lit
    assert auto.frames == 30 - auto.skipped
    mask = auto.mask
    assert mask is not None
    assert np.mean(mask[100:, :] == 0) < 0.01  # the sky was not learned as "busy"


def test_auto_mask_takes_boolean_maps_and_resizes():
    auto = AutoMask(warmup=3, grow=0, learn_width=W)
    busy = np.zeros((H, W), bool)
    busy[100:110, 200:220] = True
    for _ in range(3):
        assert auto.update(busy)
    small = auto.mask_for((H // 2, W // 2))
    assert small is not None and small.shape == (H // 2, W // 2)
    assert (small[51:54, 101:109] == 0).all() and small[10, 10] == 255


def test_auto_mask_save_and_load_round_trip(tmp_path):
    auto = AutoMask(warmup=5)
    for d in overlay_night(8):
        auto.update(d)
    path = tmp_path / "state" / "automask.npz"
    auto.save(path)
    again = AutoMask.load(path, warmup=5)
    assert again.frames == auto.frames and again.ready
    assert np.array_equal(again.mask, auto.mask)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    fresh = AutoMask.load(tmp_path / "nothing.npz")
    assert fresh.frames == 0 and fresh.mask is None


def test_corrupt_auto_mask_file(tmp_path):
    path = tmp_path / "automask.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(MaskError, match="not a guaita auto mask"):
        AutoMask.load(path)
    assert AutoMask.load(path, discard_corrupt=True).frames == 0


def test_a_new_resolution_starts_learning_again():
    auto = AutoMask(warmup=2)
    for d in overlay_night(3):
        auto.update(d)
    assert auto.ready
    auto.update(np.zeros((100, 200), np.uint8))
    assert auto.frames == 1 and not auto.ready and auto.shape == (100, 200)


def test_auto_mask_parameters_are_checked():
    with pytest.raises(ValueError, match="share"):
        AutoMask(share=0)
    with pytest.raises(ValueError, match="max_changed"):
        AutoMask(max_changed=2)


# --- star visibility -------------------------------------------------------------------------


def sky(stars: int, cloud: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((H, W), 30.0, np.float32)
    ys, xs = rng.integers(0, H, stars), rng.integers(0, W, stars)
    image[ys, xs] += rng.uniform(40, 200, stars)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    image = image * (1 - cloud) + 80 * cloud  # a cloud layer hides the stars and glows
    return np.clip(image + rng.normal(0, 3.0, (H, W)), 0, 255).astype(np.uint8)


def test_star_visibility_separates_clear_from_cloudy():
    clear = star_visibility(sky(3000, 0.0))
    thin = star_visibility(sky(3000, 0.85))
    overcast = star_visibility(sky(3000, 1.0))
    assert clear > 20
    assert thin < clear / 3
    assert overcast < 0.5


def test_star_visibility_refuses_colour():
    with pytest.raises(ValueError, match="grey"):
        star_visibility(np.zeros((10, 10, 3), np.uint8))
