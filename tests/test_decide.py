"""The decider's rules (edge/decide.py) on synthetic sequences: noisy frames with satellites,
aircraft, meteors, flashes, a text overlay and clouds drawn in with OpenCV."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.config import ConfigError, SuppressionConfig, parse_config
from edge.decide import REASONS, AutoMask, Decider, Decision, Observation
from edge.frames import Frame
from edge.preprocess import positive_difference
from edge.streaks import Streak
from tests.drawing import draw_meteor

H, W = 488, 652
T0 = datetime(2024, 8, 12, 22, 0, 0)
Draw = Callable[[np.ndarray], None]


def frame_at(i: int, seconds: float = 30.0, night: str = "20240812") -> Frame:
    captured = T0 + timedelta(seconds=seconds * i)
    return Frame(night, captured, Path(f"/images/{night}/image-{captured:%Y%m%d%H%M%S}.jpg"))


class Night:
    """Renders frames (noise + stars + whatever each frame draws) and feeds a Decider."""

    def __init__(self, seed: int = 0, stars: int = 1200, cfg: SuppressionConfig | None = None,
                 auto_mask: AutoMask | None = None, sky: float = 30.0,
                 model: Callable[[np.ndarray], float] | None = None):
        self.rng = np.random.default_rng(seed)
        base = np.full((H, W), sky, np.float32)
        ys, xs = self.rng.integers(0, H, stars), self.rng.integers(0, W, stars)
        base[ys, xs] += self.rng.uniform(30, 200, stars)
        self.base = cv2.GaussianBlur(base, (0, 0), 0.8)
        self.decider = Decider(cfg or SuppressionConfig(), interval_s=30.0, auto_mask=auto_mask)
        self.prev: np.ndarray | None = None
        self.index = 0
        self.decisions: list[Decision] = []
        self.pushed: list[Frame] = []
        self.clock = 0.0
        self.model = model  # scores a (masked) difference for the decider's second look
        self.rescore_masks: list[np.ndarray] = []

    def render(self, draw: Draw | None = None, scale: float = 1.0, add: float = 0.0,
               sky: np.ndarray | None = None) -> np.ndarray:
        image = (self.base if sky is None else sky) * scale + add
        image = image + self.rng.normal(0, 3.5, (H, W))
        if draw is not None:
            layer = np.zeros((H, W), np.float32)
            draw(layer)
            image = image + layer
        return np.clip(image, 0, 255).astype(np.uint8)

    def push(self, score: float = 0.01, draw: Draw | None = None,
             trail_line: Streak | None = None, **render) -> list[Decision]:
        cur = self.render(draw, **render)
        if self.prev is None:
            self.prev = self.render()
        diff = positive_difference(self.prev, cur)
        if self.decider.auto_mask is not None:
            self.decider.auto_mask.update(diff)
        self.index += 1
        frame = frame_at(self.index)
        self.pushed.append(frame)
        self.clock += 30.0
        rescore = None
        if self.model is not None:
            model = self.model

            def rescore(mask: np.ndarray, diff: np.ndarray = diff) -> float:
                self.rescore_masks.append(mask)
                return model(np.where(mask > 0, diff, 0).astype(np.uint8))
        out = self.decider.push(Observation(frame, cur, diff, score, 0.5, rescore,
                                            trail_line=trail_line), now=self.clock)
        self.decisions += out
        self.prev = cur
        return out

    def quiet(self, n: int) -> None:
        for _ in range(n):
            self.push()

    def finish(self) -> dict[str, Decision]:
        self.decisions += self.decider.flush()
        assert [d.frame for d in self.decisions] == self.pushed  # one each, in order
        return {d.frame.name: d for d in self.decisions}

    def name(self, k: int) -> str:
        return self.pushed[k - 1].name


def seg(p1, p2, amp: float = 40.0, thickness: int = 1) -> Draw:
    def draw(layer: np.ndarray) -> None:
        cv2.line(layer, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), float(amp),
                 thickness, lineType=cv2.LINE_AA)
    return draw


def meteor(p1, p2, amp: float = 60.0, thickness: int = 1, a: float = 2.0,
           b: float = 0.8) -> Draw:
    """A meteor brightening and fading along its trail (tests/drawing.py)."""
    def draw(layer: np.ndarray) -> None:
        draw_meteor(layer, p1, p2, amp, thickness, a, b)
    return draw


def both(*draws: Draw) -> Draw:
    def draw(layer: np.ndarray) -> None:
        for d in draws:
            d(layer)
    return draw


def satellite(k: int, start=(60.0, 80.0), step=(110.0, 40.0), dead: float = 0.07) -> Draw:
    """Piece k of a satellite track: one exposure's worth, a short dead-time gap between."""
    x0 = start[0] + k * step[0]
    y0 = start[1] + k * step[1]
    return seg((x0, y0), (x0 + (1 - dead) * step[0], y0 + (1 - dead) * step[1]), 35)


def strobes(k: int, start=(80.0, 420.0), step=(120.0, -25.0), spacing: float = 12.0) -> Draw:
    """Piece k of an aircraft: a faint steady light with a bright strobe every `spacing` px."""
    def draw(layer: np.ndarray) -> None:
        x0, y0 = start[0] + k * step[0], start[1] + k * step[1]
        x1, y1 = x0 + 0.93 * step[0], y0 + 0.93 * step[1]
        seg((x0, y0), (x1, y1), 6)(layer)
        n = int(np.hypot(x1 - x0, y1 - y0) // spacing)
        for j in range(n + 1):
            f = j / max(n, 1)
            cv2.circle(layer, (int(x0 + f * (x1 - x0)), int(y0 + f * (y1 - y0))), 1, 110.0, -1)
    return draw


METEOR = meteor((300, 250), (420, 330), 60, 2)


def headlights(night: Night) -> np.ndarray:
    """The night's sky lit from one side (up to +90 grey levels), fading across the frame."""
    return night.base + 90.0 * np.exp(-np.arange(W, dtype=np.float32) / 220.0)[None, :]


# ------------------------------------------------------------------ ordering and latency


def test_every_observation_gets_one_decision_in_order_and_candidates_wait_one_frame():
    night = Night(1)
    assert len(night.push()) == 1  # a non-candidate is final at once
    assert night.push(0.9, METEOR) == []  # a candidate waits for the next frame
    assert night.decider.pending == 1
    released = night.push()
    assert [d.frame for d in released] == night.pushed[1:3]
    assert night.push(0.9, meteor((100, 400), (200, 300), 50, 2)) == []
    assert night.push(0.8, meteor((500, 100), (600, 60), 50, 2)) != []
    decisions = night.finish()  # flush releases the last pending candidate
    assert len(decisions) == 5
    last = decisions[night.name(5)]
    assert "no_next_frame" in last.flags and last.alert
    assert night.decider.pending == 0 and night.decider.flush() == []


def test_single_frame_meteor_is_an_alert_with_its_geometry():
    night = Night(2)
    night.quiet(2)
    night.push(0.95, METEOR)
    night.quiet(2)
    d = night.finish()[night.name(3)]
    assert d.detected and d.alert and d.suppressed is None
    assert d.streak is not None
    assert abs(d.streak["x1"] - 300) <= 3 and abs(d.streak["y1"] - 250) <= 3
    assert abs(d.streak["x2"] - 420) <= 3 and abs(d.streak["y2"] - 330) <= 3
    assert d.current is not None and d.difference.shape == (H, W)
    assert night.decider.counters["alerts"] == 1


def test_satellite_over_three_frames_is_suppressed_in_every_frame():
    night = Night(3)
    night.quiet(1)
    for k in range(3):
        night.push(0.9, satellite(k))
    night.quiet(2)
    decisions = night.finish()
    for k in range(3):
        d = decisions[night.name(2 + k)]
        assert d.suppressed == "satellite", (k, d.flags)
        assert d.streak is not None
    assert night.decider.counters["satellite"] == 3


def test_satellite_found_even_when_its_neighbours_scored_low():
    night = Night(4)
    night.quiet(1)
    night.push(0.1, satellite(0))
    night.push(0.9, satellite(1))  # only the middle frame is a candidate
    night.push(0.1, satellite(2))
    night.quiet(1)
    d = night.finish()[night.name(3)]
    assert d.suppressed == "satellite"
    assert "persistent_3_frames" in d.flags


def test_two_frame_satellite_with_uneven_pieces_is_a_satellite():
    # It entered the frame late: a short first piece, a full second one, then shadow.
    night = Night(5)
    night.quiet(1)
    night.push(0.9, seg((200, 200), (260, 222), 35))
    night.push(0.9, seg((266, 224), (400, 273), 35))
    night.quiet(1)
    decisions = night.finish()
    assert decisions[night.name(2)].suppressed == "satellite"
    assert decisions[night.name(3)].suppressed == "satellite"


def test_aircraft_with_strobes_is_suppressed_as_aircraft():
    night = Night(6)
    night.quiet(1)
    for k in range(4):
        night.push(0.9, strobes(k))
    night.quiet(1)
    decisions = night.finish()
    for k in range(4):
        d = decisions[night.name(2 + k)]
        assert d.suppressed == "aircraft", (k, d.flags)
    assert night.decider.counters["aircraft"] == 4


@pytest.mark.parametrize(("dash", "on_track"), [
    (((272, 164), (290, 171)), True),  # just past the end of the piece before
    (((400, 300), (418, 307)), False),  # elsewhere in the sky
], ids=["on-the-track", "elsewhere"])
def test_a_stubby_dash_is_a_satellite_only_on_a_track(dash, on_track):
    # A bright, stubby dash (a twilight aircraft's short exposure, a satellite's flare): too
    # thick for its length to pass as a streak.
    night = Night(17)
    night.quiet(2)
    night.push(0.2, seg((100, 100), (260, 160), 35, 2))
    night.push(0.9, seg(*dash, 60, 11))
    night.quiet(2)
    d = night.finish()[night.name(4)]
    if on_track:
        assert d.suppressed == "satellite" and "on_track" in d.flags and "no_streak" in d.flags
    else:
        assert d.alert and "on_track" not in d.flags


def test_a_lone_row_of_strobe_dots_is_an_aircraft():
    def dots(layer: np.ndarray) -> None:
        for j in range(9):
            cv2.circle(layer, (200 + 15 * j, 150 + 6 * j), 1, 120.0, -1)

    night = Night(7)
    night.quiet(1)
    night.push(0.9, dots)
    night.quiet(1)
    d = night.finish()[night.name(2)]
    assert d.suppressed == "aircraft" and "dotted" in d.flags

    no_single = dataclasses.replace(SuppressionConfig(), aircraft_single_frame=False)
    night = Night(7, cfg=no_single)
    night.quiet(1)
    night.push(0.9, dots)
    night.quiet(1)
    assert night.finish()[night.name(2)].alert


def test_meteor_beside_a_satellite_is_still_an_alert():
    night = Night(8)
    night.quiet(1)
    night.push(0.9, satellite(0))
    night.push(0.97, both(satellite(1), meteor((150, 380), (260, 460), 60, 2)))
    night.push(0.9, satellite(2))
    night.quiet(1)
    decisions = night.finish()
    middle = decisions[night.name(3)]
    assert middle.alert
    assert "also_satellite" in middle.flags
    assert middle.streak is not None and abs(middle.streak["x1"] - 150) < 5
    assert decisions[night.name(2)].suppressed == "satellite"
    assert decisions[night.name(4)].suppressed == "satellite"


def bright_thing_model(diff: np.ndarray) -> float:
    """A stand-in model for the second look: it sees a meteor where a 5x5 box of the (masked)
    difference averages 12 grey levels or more (a 2-px trail at 60), not in a dim 1-px line."""
    return 0.95 if float(cv2.blur(diff, (5, 5)).max()) >= 12 else 0.05


FAINT_LINE = seg((420, 380), (460, 400), 30)  # a thin line no meteor model would alert on


def satellite_beside(extra: Draw, score: float = 0.9, **night: Any) -> tuple[Night, Decision]:
    """A satellite over three frames with `extra` drawn in the middle one; that frame's decision."""
    n = Night(8, **night)
    n.quiet(1)
    n.push(0.9, satellite(0))
    n.push(score, both(satellite(1), extra))
    n.push(0.9, satellite(2))
    n.quiet(1)
    return n, n.finish()[n.name(3)]


def test_a_faint_line_beside_a_satellite_is_not_an_alert_once_the_satellite_is_masked():
    # Without the second look the unexplained line keeps the satellite's frame an alert.
    for model, alert in ((None, True), (bright_thing_model, False)):
        night, middle = satellite_beside(FAINT_LINE, model=model)
        assert middle.alert is alert, (model, middle.flags)
        if not alert:
            assert middle.suppressed == "satellite" and "rescored" in middle.flags
            (mask,) = night.rescore_masks
            # The satellite's line is masked out, the faint line is left to the model.
            assert mask[140, 225] == 0  # the middle of satellite(1)
            assert mask[390, 440] == 255


def test_a_meteor_beside_a_satellite_survives_the_second_look():
    night, middle = satellite_beside(meteor((150, 380), (260, 460), 60, 2), 0.97,
                                     model=bright_thing_model)
    assert middle.alert and "also_satellite" in middle.flags and "rescored" not in middle.flags
    assert len(night.rescore_masks) == 1


def test_the_second_look_can_be_turned_off():
    cfg = dataclasses.replace(SuppressionConfig(), rescore_mixed=False)
    night, middle = satellite_beside(FAINT_LINE, cfg=cfg, model=bright_thing_model)
    assert middle.alert and night.rescore_masks == []


def trail_line_after(line: Streak, draw: Draw | None = None, model=bright_thing_model,
                     cfg: SuppressionConfig | None = None) -> tuple[Night, Decision]:
    """A satellite piece in one frame; in the next, nothing the streak finder can see (or
    `draw`), and a trail classifier whose top line is `line`. That next frame's decision."""
    night = Night(9, cfg=cfg, model=model)
    night.quiet(1)
    night.push(0.01, satellite(0))
    night.push(0.9, draw, trail_line=line)
    night.quiet(1)
    return night, night.finish()[night.name(3)]


# satellite(1)'s place: where satellite(0) goes on, too faint here for the streak finder.
NEXT_PIECE = Streak(170.0, 120.0, 272.0, 157.0, 2.0, 6.0, fwhm_px=2.0)


def test_a_trail_line_continuing_a_neighbours_streak_is_a_satellite():
    night, decision = trail_line_after(NEXT_PIECE)
    assert decision.suppressed == "satellite", decision.flags
    assert {"no_streak", "trail_line_on_track", "rescored"} <= set(decision.flags)
    assert decision.second_look is not None and decision.second_look < 0.5
    (mask,) = night.rescore_masks
    assert mask[138, 220] == 0 and mask[400, 500] == 255  # the line is masked, not the rest
    # Without a second look at hand there is nothing else in the frame to keep it.
    assert trail_line_after(NEXT_PIECE, model=None)[1].suppressed == "satellite"


def test_a_trail_line_elsewhere_or_soft_or_switched_off_keeps_the_alert():
    apart = Streak(300.0, 380.0, 420.0, 440.0, 2.0, 6.0, fwhm_px=2.0)  # not on the track
    soft = dataclasses.replace(NEXT_PIECE, fwhm_px=9.0)  # a cloud edge does not fly
    off = dataclasses.replace(SuppressionConfig(), trail_line_links=False)
    for line, cfg in ((apart, None), (soft, None), (NEXT_PIECE, off), (None, None)):
        night, decision = trail_line_after(line, cfg=cfg)
        assert decision.alert and "trail_line_on_track" not in decision.flags, (line, cfg)
        assert night.rescore_masks == []


def test_a_meteor_beside_a_trail_line_on_a_track_survives_the_second_look():
    night, decision = trail_line_after(NEXT_PIECE, meteor((150, 380), (260, 460), 60, 2))
    assert decision.alert and decision.second_look == 0.95
    assert {"trail_line_on_track", "also_satellite"} <= set(decision.flags)
    (mask,) = night.rescore_masks
    assert mask[138, 220] == 0 and mask[420, 205] == 255
    # The same frame scored by a faint line, not a meteor, takes the satellite's reason.
    night, decision = trail_line_after(NEXT_PIECE, FAINT_LINE)
    assert decision.suppressed == "satellite" and "rescored" in decision.flags


def two_frames(seed: int, first: Draw, second: Draw, scores: tuple[float, float] = (0.9, 0.9),
               cfg: SuppressionConfig | None = None) -> tuple[Decision, Decision]:
    """Two consecutive candidates between quiet frames; their decisions."""
    night = Night(seed, cfg=cfg)
    night.quiet(1)
    night.push(scores[0], first)
    night.push(scores[1], second)
    night.quiet(1)
    decisions = night.finish()
    return decisions[night.name(2)], decisions[night.name(3)]


def test_meteors_of_one_shower_side_by_side_in_consecutive_frames_are_not_a_track():
    # Parallel and end to start, but 27 px apart sideways: no moving object jumps off its path.
    first, second = two_frames(12, meteor((100, 100), (220, 160), 60, 2),
                               meteor((230, 195), (330, 245), 60, 2))
    assert first.alert, first.flags
    assert second.alert, second.flags


@pytest.mark.parametrize("twin_ratio", [1.3, 0.0], ids=["twins", "rule-off"])
def test_two_equal_dashes_far_apart_are_one_light_exposed_twice(twin_ratio):
    # Short twilight exposures: a steady light leaves equal dashes with most of each interval
    # dark between them, which the split-meteor rule would otherwise keep as a meteor.
    cfg = dataclasses.replace(SuppressionConfig(), twin_ratio=twin_ratio)
    first, second = two_frames(13, seg((100, 300), (150, 290), 45, 2),
                               seg((220, 276), (270, 266), 45, 2), cfg=cfg)
    if twin_ratio:
        assert first.suppressed == second.suppressed == "satellite"
        assert "twin_pieces" in first.flags
    else:
        assert first.alert and "split_meteor" in first.flags
        assert second.suppressed == "duplicate"


def test_meteor_split_over_two_frames_keeps_the_stronger_half():
    # The dead time between exposures leaves a wide gap between the two pieces.
    first, second = two_frames(9, meteor((100, 100), (180, 140), 70, 2),
                               meteor((300, 200), (340, 220), 40, 2), (0.95, 0.70))
    assert first.alert and "split_meteor" in first.flags
    assert second.suppressed == "duplicate"
    # ... and the other way round when the second half scored higher.
    first, second = two_frames(9, meteor((100, 100), (180, 140), 40, 2),
                               meteor((300, 200), (340, 220), 70, 2), (0.60, 0.90))
    assert first.suppressed == "duplicate"
    assert second.alert


def test_split_meteor_rule_can_be_turned_off():
    cfg = dataclasses.replace(SuppressionConfig(), duplicates=False)
    first, second = two_frames(9, meteor((100, 100), (180, 140), 70, 2),
                               meteor((300, 200), (340, 220), 40, 2), (0.95, 0.70), cfg)
    assert first.alert and second.alert


def test_flash_and_dawn_exposure_jump_are_suppressed():
    night = Night(10)
    night.quiet(3)
    night.push(0.9, sky=headlights(night))  # from one side: not one global brightness curve
    night.quiet(3)
    night.push(0.9, scale=1.6)  # dawn: auto-exposure steps up, the sky jumps
    night.quiet(1)
    decisions = night.finish()
    flash, step = decisions[night.name(4)], decisions[night.name(8)]
    assert flash.suppressed == "flash" and "whole_frame_change" in flash.flags
    # The step is compensated, leaving nothing: it was all the model could have seen.
    assert step.suppressed == "flash" and "exposure_step" in step.flags
    assert "whole_frame_change" not in step.flags and "no_streak" in step.flags
    assert night.decider.counters["flash"] == 2
    # A non-candidate flash is only flagged.
    assert all(d.suppressed is None for n, d in decisions.items()
               if n not in (night.name(4), night.name(8)))


@pytest.mark.parametrize("render", [{"scale": 1.6}, {"add": 45.0}])
def test_a_meteor_on_an_exposure_step_is_kept(render):
    # Twilight: a meteor in the very pair where auto-exposure stepped up (or the whole sky
    # brightened evenly) is found on the compensated difference and alerts.
    night = Night(12)
    night.quiet(3)
    night.push(0.95, METEOR, **render)
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.alert, (d.suppressed, d.flags)
    assert "exposure_step" in d.flags and "whole_frame_change" not in d.flags
    assert abs(d.streak["x1"] - 300) <= 4 and abs(d.streak["x2"] - 420) <= 4
    assert int(np.percentile(d.difference, 50)) <= 2  # the decision carries the clean difference


@pytest.mark.parametrize(("cfg", "render"), [
    (SuppressionConfig(exposure_steps=False), {"scale": 1.6}),  # compensation turned off
    (SuppressionConfig(), {"glow": True}),  # headlights: not one global brightness curve
], ids=["steps-off", "headlights"])
def test_a_short_meteor_in_a_flash_that_is_no_exposure_step_stays_a_flash(cfg, render):
    night = Night(13, cfg=cfg)
    night.quiet(3)
    render = dict(render)
    if render.pop("glow", False):
        render["sky"] = headlights(night)
    short = meteor((300, 250), (370, 295), 60, 2)  # below flash_keep_streak_px
    night.push(0.95, short, **render)
    night.quiet(1)
    d = night.finish()[night.name(4)]
    assert d.suppressed == "flash" and "exposure_step" not in d.flags


def test_a_steady_trail_cut_off_at_both_ends_is_a_satellite_even_alone():
    # One frame only (it entered the Earth's shadow): evenly lit from end to end.
    night = Night(14)
    night.quiet(3)
    night.push(0.95, seg((150, 120), (330, 200), 30, 2))
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.suppressed == "satellite" and "steady_trail" in d.flags


@pytest.mark.parametrize("shape", [(1.2, 0.5), (2.0, 0.8), (2.5, 1.1)])
def test_a_meteor_that_brightens_and_fades_is_not_a_steady_trail(shape):
    night = Night(15)
    night.quiet(3)
    night.push(0.95, meteor((150, 120), (330, 200), 60, 1, *shape))
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.alert and "steady_trail" not in d.flags, (d.suppressed, d.flags)


def test_a_saturated_fireball_is_never_a_steady_trail():
    night = Night(16)
    night.quiet(3)
    night.push(0.99, seg((80, 60), (560, 420), 240, 3))  # clipped flat by the sensor
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.alert and "steady_trail" not in d.flags, (d.suppressed, d.flags)


def test_single_frame_trail_rules_can_be_turned_off():
    night = Night(14, cfg=SuppressionConfig(steady_trail_box=0, even_ends_light=0))
    night.quiet(3)
    night.push(0.95, seg((150, 120), (330, 200), 30, 2))
    night.quiet(2)
    assert night.finish()[night.name(4)].alert


# The end-light criterion on its own, at the value measured in docs/suppression.md (off by default).
EVEN_ONLY = SuppressionConfig(steady_trail_box=0, even_ends_light=0.7)


def test_a_trail_bright_to_both_ends_is_a_satellite_by_its_end_light():
    night = Night(14, cfg=EVEN_ONLY)
    night.quiet(3)
    night.push(0.95, seg((150, 120), (330, 200), 30, 2))
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.suppressed == "satellite" and "even_ends" in d.flags, (d.suppressed, d.flags)


@pytest.mark.parametrize("shape", [(1.2, 0.5), (2.0, 0.8), (2.5, 1.1)])
def test_a_meteor_has_a_dim_end_so_its_end_light_spares_it(shape):
    night = Night(15, cfg=EVEN_ONLY)
    night.quiet(3)
    night.push(0.95, meteor((150, 120), (330, 200), 60, 1, *shape))
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.alert and "even_ends" not in d.flags, (d.suppressed, d.flags)


@pytest.mark.parametrize("draw", [seg((150, 120), (330, 200), 150, 2),  # a bright meteor's core
                                  seg((150, 120), (180, 130), 30, 2)],  # too short to judge
                         ids=["bright", "short"])
def test_end_light_is_not_judged_on_bright_or_short_trails(draw):
    night = Night(14, cfg=EVEN_ONLY)
    night.quiet(3)
    night.push(0.95, draw)
    night.quiet(2)
    d = night.finish()[night.name(4)]
    assert d.alert and "even_ends" not in d.flags, (d.suppressed, d.flags)


def test_a_long_bright_streak_in_a_flash_frame_is_kept():
    night = Night(11)
    night.quiet(3)
    night.push(0.99, meteor((80, 60), (560, 420), 120, 3), sky=headlights(night))  # a fireball
    night.quiet(1)
    d = night.finish()[night.name(4)]
    assert d.alert and "streak_in_flash" in d.flags and "whole_frame_change" in d.flags


def test_streak_inside_learned_overlay_mask_is_masked():
    auto = AutoMask(warmup=20, learn_width=W)
    night = Night(12, auto_mask=auto)

    def overlay(i: int) -> Draw:
        def draw(layer: np.ndarray) -> None:
            text = np.zeros(layer.shape, np.uint8)
            cv2.putText(text, f"{i * 7 % 100:02d}{i * 13 % 100:02d}{i % 89:02d}", (10, 30),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.9, 200, 2)
            layer += text
        return draw

    for i in range(25):
        night.push(0.01, overlay(i))
    assert auto.ready
    # The model fires on an overlay change that drew a line: inside the mask.
    night.push(0.9, both(overlay(25), seg((16, 20), (100, 20), 120, 2)))
    night.push(0.01, overlay(26))
    decisions = night.finish()
    d = decisions[night.name(26)]
    assert d.suppressed == "masked"
    assert night.decider.counters["masked"] == 1


def test_streak_inside_a_static_mask_is_masked():
    mask = np.full((H, W), 255, np.uint8)
    mask[400:, 500:] = 0  # say, a street lamp's corner
    night = Night(21)
    night.decider = Decider(SuppressionConfig(), static_mask=mask)
    night.quiet(1)
    night.push(0.9, meteor((520, 420), (640, 470), 80, 2))  # the raw difference still shows it
    night.push(0.9, meteor((100, 100), (200, 160), 80, 2))
    night.quiet(1)
    decisions = night.finish()
    assert decisions[night.name(2)].suppressed == "masked"
    assert decisions[night.name(3)].alert


def test_a_feature_recurring_in_place_is_not_a_meteor():
    # The Moon's limb (or a lit edge) creeping a pixel per frame leaves the same thin arc in
    # every difference.
    night = Night(13)
    night.quiet(1)
    for k in range(5):
        night.push(0.9 if k == 2 else 0.1, seg((400 + k, 100), (470 + k, 180), 120, 3))
    night.quiet(1)
    d = night.finish()[night.name(4)]
    assert d.suppressed == "masked" and "recurring" in d.flags
    assert d.streak is not None


class Clouds:
    """Broken cloud with soft edges drifting over the star field, `cover` of the sky."""

    def __init__(self, night: Night, cover: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        field = cv2.GaussianBlur(rng.normal(0, 1, (H + 200, W + 200)).astype(np.float32),
                                 (0, 0), 18)
        cut = np.quantile(field, 1 - cover)
        self.alpha = np.clip((field - cut) / (0.8 * field.std()), 0, 1)
        self.night = night

    def sky(self, k: int, step: int = 8) -> np.ndarray:
        alpha = self.alpha[100: 100 + H, 20 + step * k: 20 + step * k + W]
        return self.night.base * (1 - alpha) + 75.0 * alpha


def test_moving_cloud_edges_are_cloud_but_a_meteor_between_them_is_not():
    night = Night(14)
    clouds = Clouds(night, cover=0.6, seed=14)
    for k in range(3):
        night.push(0.01, sky=clouds.sky(k))
    night.push(0.9, sky=clouds.sky(3))  # the model fired on moving cloud edges
    night.push(0.01, sky=clouds.sky(4))
    night.push(0.9, meteor((150, 150), (330, 260), 90, 2), sky=clouds.sky(5))
    night.push(0.01, sky=clouds.sky(6))
    decisions = night.finish()
    cloud = decisions[night.name(4)]
    assert cloud.suppressed == "cloud", cloud.flags
    between = decisions[night.name(6)]
    assert between.alert and abs(between.streak["x1"] - 150) < 5


def test_a_bright_meteor_wider_than_a_trail_on_a_cloudy_frame_is_not_cloud():
    # A bright meteor blooms wider than cloud_min_fwhm_px; on a frame with clouds moving that
    # alone made it a cloud's soft edge until cloud_max_peak (0 restores that).
    def run(cfg: SuppressionConfig):
        night = Night(14, cfg=cfg)
        clouds = Clouds(night, cover=0.6, seed=14)
        for k in range(4):
            night.push(0.01, sky=clouds.sky(k))
        night.push(0.98, meteor((150, 150), (330, 260), 230, 7), sky=clouds.sky(4))
        night.push(0.01, sky=clouds.sky(5))
        return night.finish()[night.name(5)]

    bright = run(SuppressionConfig())
    assert bright.alert and "bright_not_cloud" in bright.flags, bright.flags
    assert abs(bright.streak["x1"] - 150) < 5 and bright.streak["peak"] >= 200
    without = run(dataclasses.replace(SuppressionConfig(), cloud_max_peak=0.0))
    assert without.suppressed == "cloud" and "soft_edge" in without.flags


def test_a_bright_feature_recurring_in_place_on_a_cloudy_frame_is_still_masked():
    # Too bright for a cloud's edge, so not "cloud"; but it barely moved between frames: a
    # fixed feature (the Moon's limb), not a meteor.
    night = Night(14)
    clouds = Clouds(night, cover=0.6, seed=14)
    for k in range(6):
        night.push(0.9 if k == 4 else 0.1, seg((150 + k, 150), (330 + k, 260), 230, 3),
                   sky=clouds.sky(k))
    night.push(0.01, sky=clouds.sky(6))
    d = night.finish()[night.name(5)]
    assert d.suppressed == "masked" and d.streak["peak"] >= 160, d.flags
    assert {"recurring", "bright_not_cloud", "cloud_motion"} <= set(d.flags)


def test_overcast_diffuse_change_without_a_streak_is_cloud():
    night = Night(15)
    clouds = Clouds(night, cover=0.97, seed=15)
    for k in range(3):
        night.push(0.01, sky=clouds.sky(k, step=12))
    night.push(0.9, sky=clouds.sky(3, step=12))
    night.push(0.01, sky=clouds.sky(4, step=12))
    d = night.finish()[night.name(4)]
    assert d.suppressed == "cloud"
    assert "cloudy" in d.flags or "cloud_motion" in d.flags


def test_cloud_rules_can_be_turned_off():
    night = Night(14, cfg=dataclasses.replace(SuppressionConfig(), cloud=False))
    clouds = Clouds(night, cover=0.6, seed=14)
    for k in range(3):
        night.push(0.01, sky=clouds.sky(k))
    night.push(0.9, sky=clouds.sky(3))
    night.push(0.01, sky=clouds.sky(4))
    assert night.finish()[night.name(4)].alert


def test_diffuse_change_on_a_starry_frame_stays_an_alert():
    night = Night(15)
    night.quiet(2)

    def glow(layer: np.ndarray) -> None:
        blob = np.zeros_like(layer)
        cv2.circle(blob, (300, 250), 40, 25.0, -1)
        layer += cv2.GaussianBlur(blob, (0, 0), 10)

    night.push(0.9, glow)
    night.quiet(1)
    d = night.finish()[night.name(3)]
    assert d.alert and "no_streak" in d.flags


def test_a_streakless_change_on_a_bright_starless_sky_without_moving_cloud_stays_an_alert():
    # Twilight: the bright sky shows few stars, which is not cloud. A faint meteor too short
    # and soft for the streak finder must stay an alert there (it used to go as "cloud").
    night = Night(17, stars=0, sky=90.0)
    night.quiet(2)

    def dash(layer: np.ndarray) -> None:
        blob = np.zeros_like(layer)
        cv2.ellipse(blob, (320, 240), (16, 6), 30, 0, 360, 30.0, -1)
        layer += cv2.GaussianBlur(blob, (0, 0), 2)

    night.push(0.9, dash)
    night.quiet(1)
    d = night.finish()[night.name(3)]
    assert "no_streak" in d.flags and "cloudy" in d.flags, d.flags  # the case in question
    assert d.alert and "cloud_motion" not in d.flags


def test_timeout_releases_a_candidate_without_its_next_frame():
    night = Night(16)
    night.quiet(1)
    night.push(0.9, METEOR)
    deadline = night.decider.next_deadline()
    assert deadline == pytest.approx(night.clock + 120.0)
    assert night.decider.flush(now=deadline - 1) == []
    released = night.decider.flush(now=deadline + 1)
    assert len(released) == 1 and "timeout" in released[0].flags and released[0].alert
    night.decisions += released
    assert night.decider.counters["timeouts"] == 1
    assert night.decider.next_deadline() is None
    night.quiet(1)
    night.finish()


def test_a_gap_in_the_frames_releases_the_pending_candidate():
    # The single-frame trail rules off: this is about what persistence does without a next frame.
    night = Night(17, cfg=SuppressionConfig(steady_trail_box=0, even_ends_light=0))
    night.quiet(1)
    night.push(0.9, satellite(0))
    cur = night.render(satellite(1))
    late = frame_at(50)  # 24 minutes later: not the next frame
    out = night.decider.push(Observation(late, cur, positive_difference(night.prev, cur), 0.9,
                                         0.5), now=1e6)
    assert [d.frame for d in out] == [night.pushed[1]]
    assert out[0].alert and "no_next_frame" in out[0].flags
    assert night.decider.flush()[0].frame == late


def test_disabled_suppression_decides_at_once_and_never_suppresses():
    cfg = dataclasses.replace(SuppressionConfig(), enabled=False)
    night = Night(18, cfg=cfg)
    night.quiet(1)
    for k in range(3):
        assert len(night.push(0.9, satellite(k))) == 1  # no waiting
    night.push(0.9, add=50.0)
    decisions = night.finish()
    assert all(d.suppressed is None for d in decisions.values())
    assert night.decider.counters["alerts"] == 4


def test_counters_add_up():
    night = Night(19)
    night.quiet(1)
    for k in range(3):
        night.push(0.9, satellite(k))
    night.push(0.9, METEOR)
    night.push(0.9, add=50.0)
    night.quiet(1)
    night.finish()
    c = night.decider.counters
    assert c["frames"] == 7 and c["candidates"] == 5
    assert c["alerts"] + c["suppressed"] == c["candidates"]
    assert sum(c[r] for r in REASONS) == c["suppressed"]
    assert set(REASONS) <= set(c)


def test_observation_is_checked():
    img = np.zeros((H, W), np.uint8)
    with pytest.raises(ValueError, match="difference"):
        Observation(frame_at(1), img, np.zeros((H, W), np.float32), 0.5, 0.5)
    with pytest.raises(ValueError, match="differ in size"):
        Observation(frame_at(1), img, np.zeros((10, 10), np.uint8), 0.5, 0.5)
    with pytest.raises(ValueError, match="finite"):
        Observation(frame_at(1), img, img, float("nan"), 0.5)
    assert Observation(frame_at(1), img, img, 0.5, 0.5).detected


def test_decision_to_dict_is_json_ready():
    import json

    night = Night(20)
    night.quiet(1)
    night.push(0.95, METEOR)
    night.quiet(1)
    d = night.finish()[night.name(2)]
    data = json.loads(json.dumps(d.to_dict()))
    assert data["frame_id"] == d.frame.frame_id and data["suppressed"] is None
    assert set(data["streak"]) == {"x1", "y1", "x2", "y2", "length_px", "angle_deg", "bbox",
                                   "peak"}


@pytest.mark.parametrize(("line", "key"), [
    ("whole_frame_fraction = 0", "suppression.whole_frame_fraction"),
    ("analysis_width = 10", "suppression.analysis_width"),
    ("link_angle_deg = 90", "suppression.link_angle_deg"),
    ("aircraft_min_dots = 2", "suppression.aircraft_min_dots"),
    ("masked_fraction = 1.5", "suppression.masked_fraction"),
    ("satellite_gap_frac = 4.0\nlink_gap_frac = 1.0", "suppression.satellite_gap_frac"),
    ("decision_timeout_s = 0", "suppression.decision_timeout_s"),
    ("persistence = 'yes'", "suppression.persistence"),
    ("exposure_step_max_residual = 0", "suppression.exposure_step_max_residual"),
    ("steady_trail_box = 1.5", "suppression.steady_trail_box"),
    ("steady_trail_snr = -1", "suppression.steady_trail_snr"),
    ("even_ends_light = 1.5", "suppression.even_ends_light"),
    ("even_ends_imbalance = -0.1", "suppression.even_ends_imbalance"),
    ("even_ends_min_px = -1", "suppression.even_ends_min_px"),
    ("even_ends_max_peak = 0", "suppression.even_ends_max_peak"),
    ("twin_ratio = 0.5", "suppression.twin_ratio"),
    ("rescore_below = 2", "suppression.rescore_below"),
    ("rescore_margin_px = -1", "suppression.rescore_margin_px"),
])
def test_bad_suppression_settings_name_the_key(line, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(f"[suppression]\n{line}\n")


def test_suppression_settings_load():
    cfg = parse_config("[suppression]\nlink_angle_deg = 10\ncloud = false\n").suppression
    assert cfg.link_angle_deg == 10.0 and cfg.cloud is False and cfg.enabled


def test_alert_score_alerts_exactly_where_a_run_at_that_threshold_would():
    from edge.decide import alert_score, second_look_suppresses

    cases = [(s, r, look) for s in (0.1, 0.6, 0.95) for r in (None, "satellite")
             for look in (None, 0.02, 0.4, 0.7, 0.99)]
    for score, reason, look in cases:
        for t in np.linspace(0.05, 0.99, 40):
            at_t = score >= t and reason is None and not second_look_suppresses(look, t, 0.5)
            assert (alert_score(score, reason, look, 0.5) >= t) == at_t, (score, reason, look, t)
