"""Preprocessing pinned on small known images (values worked out by hand, not by the code)."""

import cv2
import numpy as np
import pytest

from edge.preprocess import (
    PreprocessError,
    Preprocessor,
    PreprocessSpec,
    decode_gray,
    line_candidates,
    positive_difference,
    read_gray,
    robust_centre_sigma,
    robust_sigma,
    to_nchw,
)


def test_positive_difference_saturates_at_zero():
    prev = np.array([[50, 10, 0]], np.uint8)
    cur = np.array([[10, 30, 255]], np.uint8)
    assert positive_difference(prev, cur).tolist() == [[0, 20, 255]]


def test_v4_threshold_then_area_resize():
    prev = np.zeros((32, 32), np.uint8)
    cur = prev.copy()
    cur[0, 0] = 10  # above 3.5 → 255, alone in its 2×2 cell → 255/4 ≈ 64
    cur[2, 2] = 3  # below the threshold → 0
    cur[4:6, 4:6] = 4  # a full 2×2 cell above threshold → 255
    prev[8, 8], cur[8, 8] = 200, 100  # got darker: saturates at 0
    out = Preprocessor(PreprocessSpec(id="v4", size=16))(prev, cur)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    assert out[0, 0, 0] == 64
    assert out[1, 1, 0] == 0
    assert out[2, 2, 0] == 255
    assert out[4, 4, 0] == 0
    assert int(out.sum()) == 64 + 255


def test_v4_stretches_aspect_like_the_reference():
    prev = np.zeros((20, 40), np.uint8)
    cur = prev.copy()
    cur[:, 20:] = 50  # right half changed
    out = Preprocessor(PreprocessSpec(id="v4", size=16))(prev, cur)[:, :, 0]
    assert (out[:, :8] == 0).all() and (out[:, 8:] == 255).all()


def test_g1_channels_on_a_single_bright_pixel():
    prev = np.zeros((32, 32), np.uint8)
    cur = prev.copy()
    cur[5, 7] = 10
    cur[20:24, 20:24] = 90  # raw frame content for c2
    spec = PreprocessSpec(id="g1", size=16, blur=1, k_sigma=2.0, gain=24.0)
    out = Preprocessor(spec)(prev, cur)
    assert out.shape == (16, 16, 3)
    # Nothing else changed except the bright block → noise σ floors at 0.5; 10/0.5 − 2 = 18σ
    # → 432 grey levels → clipped at 255.
    c0, c1, c2 = out[:, :, 0], out[:, :, 1], out[:, :, 2]
    assert c0[2, 3] == 64  # area average of one 255 pixel in a 2×2 cell
    assert c1[2, 3] == 255  # max-pool keeps the thin feature at full strength
    assert c2[10, 10] == 90 and c2[0, 0] == 0  # the raw frame, area-resized


def test_g1_normalises_noise_so_cameras_look_alike():
    rng = np.random.default_rng(0)
    outs = []
    for sigma in (2.0, 6.0):
        base = np.full((240, 320), 40.0)
        prev = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
        cur = np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
        out = Preprocessor(PreprocessSpec(id="g1", size=32))(prev, cur)
        outs.append(float(out[:, :, 0].mean()))
    # Same noise statistics in σ units → similar background level for a quiet and a noisy camera.
    assert abs(outs[0] - outs[1]) < 3.0


def test_g1_faint_line_survives_where_v4_drowns_in_noise():
    rng = np.random.default_rng(1)
    base = np.full((480, 640), 35.0)
    prev = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    cur_f = base + rng.normal(0, 3, base.shape)
    line = np.zeros_like(base)
    cv2.line(line, (100, 100), (400, 300), 8.0, 2)  # 8 grey levels: a faint meteor
    cur = np.clip(cur_f + line, 0, 255).astype(np.uint8)
    spec = PreprocessSpec(id="g1", size=64)
    out = Preprocessor(spec)(prev, cur)[:, :, 1].astype(float)
    on = cv2.resize(line, (64, 64), interpolation=cv2.INTER_AREA) > 1.0
    assert out[on].mean() > 3 * out[~on].mean()


def _noisy_pair(seed: int, shape=(480, 640), level=35.0, sigma=3.0):
    rng = np.random.default_rng(seed)
    base = np.full(shape, level)
    prev = base + rng.normal(0, sigma, shape)
    cur = base + rng.normal(0, sigma, shape)
    return prev, cur


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, 255).astype(np.uint8)


def test_g2_line_map_shows_a_faint_streak_and_not_stars():
    prev, cur = _noisy_pair(4)
    streak = np.zeros_like(cur)
    cv2.line(streak, (100, 100), (300, 240), 8.0, 2)  # faint meteor, 8 grey levels
    stars = np.zeros_like(cur)
    rng = np.random.default_rng(5)
    for x, y in rng.integers(20, 460, (60, 2)):  # bright dots: drifting stars, hot pixels
        cv2.circle(stars, (int(x) + 150, int(y)), 1, 60.0, -1)
    spec = PreprocessSpec(id="g2", size=64)
    out = Preprocessor(spec)(_u8(prev), _u8(cur + streak + stars))
    assert out.shape == (64, 64, 3)
    lines = out[:, :, 1].astype(float)
    on = cv2.resize(streak, (64, 64), interpolation=cv2.INTER_AREA) > 0.5
    dots = (cv2.resize(stars, (64, 64), interpolation=cv2.INTER_AREA) > 0.5) & ~on
    assert lines[on].mean() > 40
    assert lines[dots].mean() < 0.3 * lines[on].mean()  # the half-line minimum rejects dots
    assert lines[~on & ~dots].mean() < 10
    # c0 is exactly g1's c0: the same difference, the same knee
    g1 = Preprocessor(PreprocessSpec(id="g1", size=64))(_u8(prev), _u8(cur + streak + stars))
    assert np.array_equal(out[:, :, 0], g1[:, :, 0]) and np.array_equal(out[:, :, 2], g1[:, :, 2])


def test_g2_line_map_ignores_a_diffuse_change():
    prev, cur = _noisy_pair(6)
    yy, xx = np.mgrid[0:480, 0:640]
    glow = 25.0 * np.exp(-((xx - 320) ** 2 + (yy - 240) ** 2) / (2 * 90.0**2))  # cloud, moonrise
    out = Preprocessor(PreprocessSpec(id="g2", size=64))(_u8(prev), _u8(cur + glow))
    assert out[:, :, 0].max() > 100  # the difference itself shows the glow...
    assert out[:, :, 1].mean() < 10  # ...the line map does not


def test_g2_parameters_are_checked():
    with pytest.raises(PreprocessError, match="line_length"):
        PreprocessSpec.from_dict({"id": "g2", "line_length": 8})
    with pytest.raises(PreprocessError, match="line_width"):
        PreprocessSpec.from_dict({"id": "g2", "line_width": 4})
    tiny = Preprocessor(PreprocessSpec(id="g2", size=16))(np.zeros((8, 8), np.uint8),
                                                           np.zeros((8, 8), np.uint8))
    assert tiny.shape == (16, 16, 3)  # frames smaller than the input still work


def test_m1_puts_a_faint_streak_in_a_full_resolution_tile():
    prev, cur = _noisy_pair(7)
    streak = np.zeros_like(cur)
    cv2.line(streak, (400, 300), (560, 380), 10.0, 2)  # 10 grey levels: faint after an 8x shrink
    stars = np.zeros_like(cur)
    rng = np.random.default_rng(8)
    for x, y in rng.integers(20, 460, (40, 2)):
        cv2.circle(stars, (int(x), int(y)), 1, 60.0, -1)
    spec = PreprocessSpec.from_dict({"id": "m1", "size": 96, "tiles": 3, "line_width": 160})
    out = Preprocessor(spec)(_u8(prev), _u8(cur + streak + stars))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    # Some tile shows the streak at full resolution: a line of lit pixels in the streak's own
    # direction (slope 0.5, unscaled), with nothing vanished along it.
    def holds_the_streak(tile: np.ndarray) -> bool:
        appeared, vanished = tile[:, :, 0].astype(float), tile[:, :, 1].astype(float)
        ys, xs = np.nonzero(appeared > 40)
        if len(xs) < 25 or np.ptp(xs) < 20:
            return False
        slope = np.polyfit(xs, ys, 1)[0]
        return abs(slope - 0.5) < 0.15 and vanished.mean() < 0.2 * appeared.mean()

    tiles = [out[r:r + 32, c:c + 32] for r in (0, 32, 64) for c in (0, 32, 64)]
    assert sum(holds_the_streak(t) for t in tiles) >= 1
    # g2's whole-sky image of the same size: the streak is a few dim pixels
    g2 = Preprocessor(PreprocessSpec(id="g2", size=96))(_u8(prev), _u8(cur + streak + stars))
    assert (g2[:, :, 0] > 40).sum() < (out[:, :, 0] > 40).sum()


def test_m1_candidates_are_ranked_and_apart():
    response = np.zeros((50, 50), np.float32)
    response[10, 10], response[11, 11], response[40, 30], response[25, 5] = 5.0, 4.0, 3.0, 1.0
    assert line_candidates(response, 3, radius=3) == [(10, 10), (40, 30), (25, 5)]
    assert line_candidates(response, 2, radius=3) == [(10, 10), (40, 30)]
    flat = np.ones((20, 20), np.float32)  # a plateau is one candidate per radius, not 400
    assert len(line_candidates(flat, 100, radius=4)) <= 16
    assert line_candidates(np.zeros((20, 20), np.float32), 5, radius=2) == []


def test_m1_blank_and_tiny_frames_give_black_tiles():
    spec = PreprocessSpec.from_dict({"id": "m1", "size": 64, "tiles": 4})
    blank = np.zeros((64, 64), np.uint8)
    assert not Preprocessor(spec)(blank, blank).any()
    tiny = Preprocessor(spec)(np.zeros((8, 8), np.uint8), np.full((8, 8), 9, np.uint8))
    assert tiny.shape == (64, 64, 3)
    with pytest.raises(PreprocessError, match="divisible"):
        PreprocessSpec.from_dict({"id": "m1", "size": 100, "tiles": 3})
    with pytest.raises(PreprocessError, match="nms_radius"):
        PreprocessSpec.from_dict({"id": "m1", "size": 96, "tiles": 3, "nms_radius": 0})


def test_robust_sigma_of_gaussian_noise():
    rng = np.random.default_rng(2)
    assert robust_sigma(rng.normal(0, 4.0, (400, 400)), step=1) == pytest.approx(4.0, rel=0.05)


def test_robust_sigma_counts_integers_to_the_same_value_as_the_float_median():
    # The integer path (the signed difference) must give np.median's value exactly, odd and
    # even sample sizes, integer and half-integer medians.
    rng = np.random.default_rng(5)
    for trial in range(300):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        values = np.round(rng.normal(rng.integers(-5, 6), rng.choice([0.4, 3.0, 60.0]), shape))
        values = np.clip(values, -255, 255).astype(np.int16)
        step = int(rng.choice([1, 2, 4]))
        sample = values[::step, ::step].astype(np.float32)
        median = float(np.median(sample))
        expected = max(1.4826 * float(np.median(np.abs(sample - median))), 0.5)
        assert robust_centre_sigma(values, step) == (median, expected), trial


def test_mismatched_and_bad_inputs_are_refused():
    p = Preprocessor(PreprocessSpec(id="v4", size=16))
    with pytest.raises(PreprocessError, match="sizes differ"):
        p(np.zeros((32, 32), np.uint8), np.zeros((32, 40), np.uint8))
    with pytest.raises(PreprocessError, match="uint8"):
        p(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32))
    with pytest.raises(PreprocessError, match="unknown preprocessing id"):
        PreprocessSpec.from_dict({"id": "v9"})
    with pytest.raises(PreprocessError, match="unknown preprocessing parameters"):
        PreprocessSpec.from_dict({"id": "v4", "treshold": 3})


def test_colour_frames_are_converted_with_opencv_luma():
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[0, 0] = (255, 0, 0)  # pure blue: luma 0.114 × 255 ≈ 29 → above 3.5
    out = Preprocessor(PreprocessSpec(id="v4", size=16))(np.zeros_like(bgr), bgr)
    assert out[0, 0, 0] == 64


def test_truncated_jpeg_is_refused(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)
    _, data = cv2.imencode(".jpg", image)
    full = tmp_path / "image-20261120200000.jpg"
    full.write_bytes(data.tobytes())
    assert read_gray(str(full)).shape == (64, 64)
    half = tmp_path / "image-20261120200030.jpg"
    half.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(PreprocessError, match="truncated"):
        read_gray(str(half))
    with pytest.raises(PreprocessError):
        decode_gray(b"not an image")


def test_spec_round_trip_and_fingerprint():
    spec = PreprocessSpec(id="g1", size=160)
    again = PreprocessSpec.from_dict(spec.to_dict())
    assert again == spec and again.fingerprint() == spec.fingerprint()
    assert PreprocessSpec(id="g1", size=224).fingerprint() != spec.fingerprint()


def test_to_nchw_layout():
    hwc = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    nchw = to_nchw(hwc)
    assert nchw.shape == (1, 3, 2, 3) and nchw.dtype == np.float32
    assert nchw[0, 1, 0, 2] == hwc[0, 2, 1]
