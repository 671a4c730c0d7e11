"""The candidate search (edge/candidates.py) and the strips cut along its lines
(edge/trail_strip.py), on frame pairs drawn at the Pi camera's 1304×976 with real noise."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge.candidates import Candidate, CandidateParams, find_candidates
from edge.preprocess import positive_difference
from edge.streaks import DiffAnalysis, Streak, StreakParams
from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS, frame_inputs
from tests.drawing import draw_meteor

H, W = 976, 1304
SIGMA = 3.0  # per-frame noise of the simulated and reference cameras


def frames(seed: int, draw_current=None, draw_previous=None, stars: int = 400):
    """A previous and a current frame of one sky: stars, sky glow and noise; `draw_*(layer)`
    adds light to one of them."""
    rng = np.random.default_rng(seed)
    sky = np.full((H, W), 30.0, np.float32)
    ys, xs = rng.integers(5, H - 5, stars), rng.integers(5, W - 5, stars)
    sky[ys, xs] += rng.uniform(20, 150, stars)
    sky = cv2.GaussianBlur(sky, (0, 0), 1.2)
    out = []
    for draw in (draw_previous, draw_current):
        image = sky + rng.normal(0, SIGMA, (H, W)).astype(np.float32)
        if draw is not None:
            layer = np.zeros((H, W), np.float32)
            draw(layer)
            image += cv2.GaussianBlur(layer, (0, 0), 1.0)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out[0], out[1]


def analyse(previous, current, params=None):
    analysis = DiffAnalysis(positive_difference(previous, current), StreakParams())
    return analysis, find_candidates(analysis, previous, current, None, params)


def along(candidate: Candidate, p1, p2) -> float:
    """How much of the drawn segment p1–p2 the candidate covers (0 if off its line)."""
    s = candidate.streak
    length = math.dist(p1, p2)
    ux, uy = (p2[0] - p1[0]) / length, (p2[1] - p1[1]) / length
    ends = ((s.x1, s.y1), (s.x2, s.y2))
    if max(abs((x - p1[0]) * -uy + (y - p1[1]) * ux) for x, y in ends) > 6:
        return 0.0
    t = sorted((x - p1[0]) * ux + (y - p1[1]) * uy for x, y in ends)
    return max(0.0, min(t[1], length) - max(t[0], 0.0)) / length


FAINT = ((420, 300), (560, 380))  # 161 px


def faint_meteor(amp: float):
    return lambda layer: draw_meteor(layer, *FAINT, amp, 1, floor=0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_faint_meteor_the_streak_finder_misses_is_a_candidate(seed: int):
    # About 15 grey levels at its brightest before the optics blur it: 2-3 σ per pixel of the
    # difference, so thresholding pixels breaks it up; tracing along the line does not.
    previous, current = frames(seed, faint_meteor(22.0))
    analysis, candidates = analyse(previous, current)
    peak = int(positive_difference(previous, current)[300:381, 420:561].max())
    assert peak < 40
    found = [along(c, *FAINT) for c in candidates]
    assert max(found) >= 0.5, found
    # ...and it ranks among the first: its significance beats the noise's and the stars'.
    best = int(np.argmax(found))
    assert best < 4, [round(c.significance, 1) for c in candidates]
    assert not any(along(Candidate(s, 0.0), *FAINT) >= 0.5 for s in analysis.streaks)


def test_noise_and_stars_alone_give_few_weak_candidates():
    previous, current = frames(7)
    _, candidates = analyse(previous, current)
    _, with_meteor = analyse(*frames(7, faint_meteor(22.0)))
    assert len(candidates) <= CandidateParams().max_candidates
    meteor = max(with_meteor, key=lambda c: along(c, *FAINT))
    assert all(c.significance < meteor.significance for c in candidates)


def test_a_bright_streak_is_one_candidate_not_many_pieces():
    p1, p2 = (300, 600), (900, 420)
    previous, current = frames(4, lambda layer: cv2.line(layer, p1, p2, 80.0, 2, cv2.LINE_AA))
    _, candidates = analyse(previous, current)
    covering = [c for c in candidates if along(c, p1, p2) > 0.1]
    assert len(covering) == 1 and along(covering[0], p1, p2) >= 0.9
    assert covering[0] is candidates[0]


def test_at_most_max_candidates_most_significant_first():
    draws = [((100 + 90 * k, 100), (160 + 90 * k, 700)) for k in range(12)]

    def many(layer):
        for p1, p2 in draws:
            cv2.line(layer, p1, p2, 60.0, 1, cv2.LINE_AA)

    params = CandidateParams(max_candidates=5)
    _, candidates = analyse(*frames(5, many), params)
    assert len(candidates) == 5
    sig = [c.significance for c in candidates]
    assert sig == sorted(sig, reverse=True)


# Ten soft bands (a cloud's moving edges: 7 px drawn, blurred to about 8 px FWHM), each far
# more significant than the faint meteor beside them.
CLOUD_EDGES = ([((100, 120 + 90 * k), (380, 60 + 90 * k)) for k in range(6)]
               + [((700, 600 + 50 * k), (1200, 520 + 50 * k)) for k in range(4)])


def cloudy_with_faint_meteor(layer):
    faint_meteor(22.0)(layer)
    bands = np.zeros_like(layer)
    for p1, p2 in CLOUD_EDGES:
        cv2.line(bands, p1, p2, 14.0, 7, cv2.LINE_AA)
    layer += cv2.GaussianBlur(bands, (0, 0), 2.0)


def test_cloud_edges_do_not_push_a_faint_meteor_out_of_the_kept_candidates():
    previous, current = frames(11, cloudy_with_faint_meteor)
    _, every = analyse(previous, current, CandidateParams(max_candidates=100, soft_fwhm_px=0.0))
    meteor = [k for k, c in enumerate(every) if along(c, *FAINT) >= 0.3]
    soft = [c for c in every if c.streak.fwhm_px >= 6.0]
    # By significance alone the bands come first and six places hold no meteor ...
    assert meteor and meteor[0] >= 6 and len(soft) >= 6
    assert all(c.significance > every[meteor[0]].significance for c in every[:6])
    _, by_significance = analyse(previous, current,
                                 CandidateParams(max_candidates=6, soft_fwhm_px=0.0))
    assert max(along(c, *FAINT) for c in by_significance) == 0.0
    # ... the sharp lines first keeps it, and the rest of the places still go to the bands.
    _, sharp_first = analyse(previous, current, CandidateParams(max_candidates=6))
    assert along(sharp_first[0], *FAINT) >= 0.3
    assert sum(c.streak.fwhm_px >= 6.0 for c in sharp_first) == 5


def test_a_manifest_without_soft_fwhm_ranks_by_significance_as_before():
    recorded = CandidateParams().to_dict()
    del recorded["soft_fwhm_px"]
    assert CandidateParams.from_dict(recorded).soft_fwhm_px == 0.0
    assert CandidateParams.from_dict(CandidateParams().to_dict()) == CandidateParams()


@pytest.mark.parametrize("bad", [{"seeds": 0}, {"line_length": 8}, {"blur": 2},
                                 {"angle_step_deg": 0}, {"trace_gap": -1},
                                 {"min_length_px": 0}, {"soft_fwhm_px": -1.0}])
def test_bad_candidate_params_are_refused(bad):
    with pytest.raises(ValueError, match="candidates"):
        CandidateParams(**bad)
    with pytest.raises(ValueError, match="unknown"):
        CandidateParams.from_dict({"seedz": 3})


def test_params_survive_a_round_trip():
    params = CandidateParams(seeds=12, trace_level=1.2)
    assert CandidateParams.from_dict(params.to_dict()) == params


# ---------------------------------------------------------------- strips


def test_the_strip_lays_the_trail_along_its_middle_half():
    p1, p2 = (400, 500), (700, 600)
    previous, current = frames(8, lambda layer: cv2.line(layer, p1, p2, 60.0, 1, cv2.LINE_AA))
    analysis = DiffAnalysis(positive_difference(previous, current), StreakParams())
    streak = Streak(*p1, *p2, width_px=2.0, peak=60.0)
    strips, numbers = frame_inputs(analysis, positive_difference(current, previous),
                                   [Candidate(streak, 30.0)])
    assert strips.shape == (1, CHANNELS, ACROSS, ALONG) and strips.dtype == np.float32
    assert numbers.shape == (1, len(SCALARS)) and numbers.dtype == np.float32
    appeared = strips[0, 0]
    centre = ACROSS // 2
    middle = slice(ALONG // 4 + 2, 3 * ALONG // 4 - 2)
    before, after = slice(0, ALONG // 4 - 3), slice(3 * ALONG // 4 + 3, ALONG)
    # Bright on the line between its ends, sky level across it and beyond the ends.
    assert float(np.median(appeared[centre, middle])) > 1.5  # log(1 + 5 σ) and more
    assert appeared[centre, middle].min() > 0.8
    assert abs(float(np.median(appeared[centre, before]))) < 0.7
    assert abs(float(np.median(appeared[centre, after]))) < 0.7
    assert abs(float(np.median(appeared[0, middle]))) < 0.7
    # Nothing vanished along it: the negative difference is sky.
    assert abs(float(np.median(strips[0, 1][centre, middle]))) < 0.7
    named = dict(zip(SCALARS, numbers[0], strict=True))
    assert named["log_length"] == pytest.approx(math.log(math.dist(p1, p2)), rel=1e-5)
    assert named["significance"] == 30.0 and named["rank"] == 0 and named["candidates"] == 1
    assert named["peak_snr"] > 5


def test_what_the_previous_frame_held_shows_in_the_second_channel():
    # A satellite: its previous piece ends where this frame's begins, on the same line.
    earlier, now = ((250, 300), (450, 360)), ((450, 360), (650, 420))
    previous, current = frames(
        9, lambda layer: cv2.line(layer, *now, 40.0, 1, cv2.LINE_AA),
        lambda layer: cv2.line(layer, *earlier, 40.0, 1, cv2.LINE_AA))
    analysis = DiffAnalysis(positive_difference(previous, current), StreakParams())
    streak = Streak(*now[0], *now[1], width_px=2.0, peak=40.0)
    strips, _ = frame_inputs(analysis, positive_difference(current, previous),
                             [Candidate(streak, 20.0)])
    vanished = strips[0, 1, ACROSS // 2]
    # The strip reaches half a length before the first end: the earlier piece lies there.
    assert float(np.median(vanished[2: ALONG // 4 - 2])) > 1.0
    assert abs(float(np.median(vanished[3 * ALONG // 4 + 2:]))) < 0.7


def test_no_candidates_no_inputs():
    previous, current = frames(10)
    analysis = DiffAnalysis(positive_difference(previous, current), StreakParams())
    strips, numbers = frame_inputs(analysis, positive_difference(current, previous), [])
    assert strips.shape == (0, CHANNELS, ACROSS, ALONG) and numbers.shape == (0, len(SCALARS))


def _line_strip(p1, p2, level: float, sampling: str, seed: int = 11) -> np.ndarray:
    previous, current = frames(seed, lambda layer: cv2.line(layer, p1, p2, level, 1,
                                                            cv2.LINE_AA))
    analysis = DiffAnalysis(positive_difference(previous, current), StreakParams())
    streak = Streak(*p1, *p2, width_px=2.0, peak=level)
    strips, _ = frame_inputs(analysis, positive_difference(current, previous),
                             [Candidate(streak, 10.0)], sampling)
    return strips[0]


def test_mean_sampling_lifts_a_faint_long_trail_out_of_the_noise():
    # 400 px: 8.4 px between samples, so a point sample reads one pixel in eight.
    p1, p2 = (300, 300), (700, 400)
    faint = 8.0  # after the optics' blur about 1 σ of the difference's noise at its centre
    point, mean = (_line_strip(p1, p2, faint, s) for s in ("point", "mean"))
    centre, middle = ACROSS // 2, slice(ALONG // 4 + 2, 3 * ALONG // 4 - 2)
    contrast = {name: float(np.median(s[0, centre, middle]) - np.median(s[0, 0, middle]))
                for name, s in (("point", point), ("mean", mean))}
    assert contrast["mean"] > 2 * contrast["point"] and contrast["mean"] > 0.6


def test_mean_sampling_puts_empty_sky_at_zero_at_every_length():
    # The difference saturates at 0: without the sky's mean offset, a mean of k samples would
    # sit at about +0.4 σ·√k, so longer lines would have brighter skies.
    for p2 in ((400, 320), (700, 400), (1000, 600)):
        sky = _line_strip((300, 300), p2, 0.0, "mean")
        assert abs(float(np.median(sky[0]))) < 0.25
        assert abs(float(np.median(sky[1]))) < 0.25


def test_on_a_short_line_mean_sampling_is_point_sampling():
    # Under ALONG / 2 px the samples are less than 1 px apart: nothing to average.
    p1, p2 = (500, 500), (530, 510)
    assert np.array_equal(_line_strip(p1, p2, 40.0, "point"), _line_strip(p1, p2, 40.0, "mean"))


def test_an_unknown_strip_sampling_is_refused():
    with pytest.raises(ValueError, match="strip sampling"):
        _line_strip((300, 300), (400, 300), 40.0, "median")
