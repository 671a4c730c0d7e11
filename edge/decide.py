"""Candidate → decision: is a frame the model scored above threshold a meteor alert, or
something we know is not (a satellite, an aircraft, a flash, cloud, the same meteor again,
masked pixels)?

Pure logic: `Observation`s in (capture order, one night stream), `Decision`s out, exactly one per
observation, in the same order. A candidate is decided when the *next* frame arrives (a satellite
continues there), so a candidate's decision is released one frame interval late; a non-candidate
is released at once unless a candidate before it is still waiting. `flush()` releases what is
pending at night end, `flush(now)` what has waited longer than ``decision_timeout_s``.

The rules, their parameters and their limits are described in docs/suppression.md.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.config import SuppressionConfig
from edge.exposure import compensated_difference, exposure_step
from edge.frames import Frame
from edge.masks import AutoMask, build_static_mask, combine_masks, star_visibility
from edge.streaks import DiffAnalysis, Streak, StreakParams, angle_between, relate

__all__ = [
    "REASONS",
    "AutoMask",
    "Decider",
    "Decision",
    "Observation",
    "alert_score",
    "build_static_mask",
    "second_look_suppresses",
]

# The event schema's `suppressed` enum (edge/schemas/event.schema.json), in priority order.
REASONS = ("flash", "masked", "aircraft", "satellite", "duplicate", "cloud")

# A trail this bright above the sky is a fireball's, or clipped by the sensor (flat-topped by
# saturation, not by its light curve): never judged a steady satellite trail.
_BOLIDE_PEAK = 200.0
_HISTORY = 4  # entries kept: two before the one being decided (chains of 3) and the next one


@dataclass(frozen=True)
class Observation:
    """One scored frame: full-resolution grey current frame and positive difference (after the
    static mask), the model's probability and the threshold in force."""

    frame: Frame
    current: np.ndarray
    difference: np.ndarray
    score: float
    threshold: float
    # The same pair scored again with more pixels masked (0 = ignore), for when some of a
    # candidate's streaks are explained and others are not; None where no model is at hand.
    rescore: Callable[[np.ndarray], float] | None = field(default=None, repr=False,
                                                          compare=False)
    # `difference` already analysed (the scorer's, so streaks are found once a frame); the
    # decider uses it if it was made with its own streak params.
    analysis: DiffAnalysis | None = field(default=None, repr=False, compare=False)
    # The trail classifier's top candidate line (full-frame pixels), where the bundle has one:
    # the line the score rests on, often too faint for the decider's own streak finder.
    trail_line: Streak | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("current", "difference"):
            image = getattr(self, name)
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 \
                    or image.size == 0:
                raise ValueError(f"Observation.{name} must be a non-empty 2-D uint8 array")
        if self.current.shape != self.difference.shape:
            raise ValueError(f"Observation: current {self.current.shape} and difference "
                             f"{self.difference.shape} differ in size")
        if not (math.isfinite(self.score) and math.isfinite(self.threshold)):
            raise ValueError("Observation: score and threshold must be finite numbers")
        if self.analysis is not None and self.analysis.difference is not self.difference:
            raise ValueError("Observation.analysis must be made from Observation.difference")

    @property
    def detected(self) -> bool:
        return self.score >= self.threshold


@dataclass
class Decision:
    """What became of one observation. `suppressed` is None for an alert (and for every frame
    that was not a candidate); `streak` follows the event schema (full-frame pixels)."""

    frame: Frame
    score: float
    threshold: float
    detected: bool
    suppressed: str | None
    streak: dict[str, Any] | None
    flags: list[str]
    current: np.ndarray = field(repr=False)
    difference: np.ndarray = field(repr=False)
    streaks: list[Streak] = field(default_factory=list, repr=False)
    # The score with the explained streaks masked, when the decider took a second look.
    second_look: float | None = None

    @property
    def alert(self) -> bool:
        return self.detected and self.suppressed is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no images), e.g. for the scan JSONL."""
        return {
            "frame_id": self.frame.frame_id,
            "image": self.frame.name,
            "score": round(float(self.score), 6),
            "threshold": round(float(self.threshold), 6),
            "detected": self.detected,
            "suppressed": self.suppressed,
            "streak": self.streak,
            "flags": list(self.flags),
        }


@dataclass(eq=False)
class _Entry:
    obs: Observation
    arrived: float
    analysis: DiffAnalysis  # of the difference the rules look at (exposure-compensated if a step)
    flash: bool
    prev: _Entry | None = None  # the consecutive frame before, while still in the history
    prev_links: dict[int, int] | None = None  # my streak index → prev's streak index
    visibility: float | None = None
    exposure_step: bool = False  # a whole-frame change explained by an exposure/gain step

    @property
    def link_streaks(self) -> list[Streak]:
        # A flash frame's residue (lit trees, cloud tops) must not pose as a continuation.
        return [] if self.flash else self.analysis.streaks


class Decider:
    """Turns one night's observations into decisions; see the module docstring.

    `auto_mask` (optional, read only: its owner updates and saves it) and `static_mask` (full
    frame, 0 = ignore) make a streak lying inside masked pixels "masked". `clock` gives the
    arrival time used by `flush(now)` (monotonic seconds).
    """

    def __init__(self, cfg: SuppressionConfig | None = None, interval_s: float = 30.0, *,
                 auto_mask: AutoMask | None = None, static_mask: np.ndarray | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.cfg = cfg or SuppressionConfig()
        self.params = StreakParams(
            analysis_width=self.cfg.analysis_width,
            k_sigma=self.cfg.streak_k_sigma,
            min_length_px=self.cfg.min_streak_px,
            min_dots=self.cfg.aircraft_min_dots,
        )
        self.interval_s = interval_s
        self.max_gap_s = 2.5 * interval_s  # a longer gap breaks persistence
        self.auto_mask = auto_mask
        self.static_mask = static_mask
        self._clock = clock
        self._history: deque[_Entry] = deque(maxlen=_HISTORY)
        self._pending: _Entry | None = None
        self._ref: tuple[float, float] | None = None  # running (median, spread) of quiet frames
        self.counters: Counter[str] = Counter({k: 0 for k in (
            "frames", "candidates", "alerts", "suppressed", "timeouts", *REASONS)})

    # ------------------------------------------------------------------ public

    @property
    def pending(self) -> int:
        return int(self._pending is not None)

    def next_deadline(self) -> float | None:
        """Clock time at which the pending candidate times out (None: nothing pending)."""
        if self._pending is None:
            return None
        return self._pending.arrived + self.cfg.decision_timeout_s

    def push(self, obs: Observation, now: float | None = None) -> list[Decision]:
        """Take the next observation; return the decisions that are now final, in order."""
        now = self._clock() if now is None else now
        released: list[Decision] = []
        last = self._history[-1] if self._history else None
        if last is not None and not self._consecutive(last.obs.frame, obs.frame):
            released += self._release_pending(None, "no_next_frame")
            self._history.clear()
            last = None
        entry = self._entry(obs, now, last)
        entry.prev = last
        self._history.append(entry)
        self._history[0].prev = None  # keep the chain as short as the history
        released += self._release_pending(entry)
        if obs.detected and self._waits():
            self._pending = entry
        else:
            released.append(self._count(self._decide(entry, None)))
        return released

    def flush(self, now: float | None = None) -> list[Decision]:
        """Release the pending candidate without its next frame: always when `now` is None
        (night end, shutdown), else only once it has waited decision_timeout_s."""
        if now is None:
            released = self._release_pending(None, "no_next_frame")
            self._history.clear()
            return released
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        self.counters["timeouts"] += 1
        return self._release_pending(None, "timeout")

    # ------------------------------------------------------------------ bookkeeping

    def _waits(self) -> bool:
        c = self.cfg
        return c.enabled and (c.persistence or c.duplicates)

    def _consecutive(self, previous: Frame, current: Frame) -> bool:
        if previous.night != current.night:
            return False
        gap = (current.captured - previous.captured).total_seconds()
        return 0 < gap <= self.max_gap_s

    def _entry(self, obs: Observation, now: float, last: _Entry | None) -> _Entry:
        cfg = self.cfg
        analysis = obs.analysis
        if analysis is None or analysis.params != self.params:
            analysis = DiffAnalysis(obs.difference, self.params)
        flash = step = False
        if cfg.enabled:
            ref = self._ref or (analysis.base, analysis.spread)
            flash = self._flash(analysis, ref)
            if flash and cfg.exposure_steps and last is not None \
                    and last.obs.current.shape == obs.current.shape:
                compensated = self._exposure_compensated(last.obs.current, obs.current)
                if compensated is not None and not self._flash(compensated, ref):
                    analysis, flash, step = compensated, False, True
            if not flash:  # follow slow changes (moonrise, noise) but not the flash itself
                a = 0.2 if self._ref else 1.0
                self._ref = (ref[0] + a * (analysis.base - ref[0]),
                             ref[1] + a * (analysis.spread - ref[1]))
        return _Entry(obs, now, analysis, flash, exposure_step=step)

    def _flash(self, analysis: DiffAnalysis, ref: tuple[float, float]) -> bool:
        share = analysis.changed_fraction(ref[0], ref[1], self.cfg.flash_k_sigma)
        return share > self.cfg.whole_frame_fraction

    def _exposure_compensated(self, previous: np.ndarray,
                              current: np.ndarray) -> DiffAnalysis | None:
        """The pair's difference with an exposure/gain step taken out, if it was one."""
        mask = self._mask_at(current.shape)
        lut = exposure_step(previous, current, mask, self.cfg.exposure_step_max_residual)
        if lut is None:
            return None
        return DiffAnalysis(compensated_difference(previous, current, lut, mask), self.params)

    def _release_pending(self, next_entry: _Entry | None, flag: str = "") -> list[Decision]:
        if self._pending is None:
            return []
        entry, self._pending = self._pending, None
        decision = self._decide(entry, next_entry)
        if flag:
            decision.flags.append(flag)
        return [self._count(decision)]

    def _count(self, decision: Decision) -> Decision:
        self.counters["frames"] += 1
        if decision.detected:
            self.counters["candidates"] += 1
            if decision.suppressed:
                self.counters["suppressed"] += 1
                self.counters[decision.suppressed] += 1
            else:
                self.counters["alerts"] += 1
        return decision

    # ------------------------------------------------------------------ the rules

    def _decide(self, entry: _Entry, nxt: _Entry | None) -> Decision:
        obs = entry.obs
        flags: list[str] = ["whole_frame_change"] if entry.flash else []
        if entry.exposure_step:
            flags.append("exposure_step")

        def done(reason: str | None, streak: Streak | None, streaks: list[Streak]) -> Decision:
            shape = obs.difference.shape
            return Decision(obs.frame, obs.score, obs.threshold, obs.detected, reason,
                            streak.to_event(shape) if streak else None, flags[:16],
                            obs.current, entry.analysis.difference, streaks)

        if not obs.detected or not self.cfg.enabled:
            # Streaks only if already measured (a candidate's neighbour): no extra work.
            known = entry.analysis.__dict__.get("_found", ([], []))[0]
            return done(None, known[0] if known else None, known)

        streaks = entry.analysis.streaks
        if entry.flash:
            keep = self.cfg.flash_keep_streak_px
            sharp = [s for s in streaks if not self._soft(s)]
            if not (keep > 0 and any(s.length_px >= keep for s in sharp)):
                return done("flash", streaks[0] if streaks else None, streaks)
            flags.append("streak_in_flash")  # a fireball lights the sky: keep it

        if not streaks:
            flags.append("no_streak")
            reason = self._diffuse_reason(entry, flags)
            if reason is None and self.cfg.persistence:
                reason = self._change_on_a_track(entry, nxt)
                if reason is not None:
                    flags.append("on_track")
            if reason is None and entry.exposure_step:
                reason = "flash"  # the step itself was all there was to see
            line = obs.trail_line
            track = self._trail_line_track(entry, nxt) if reason is None else None
            if line is not None and track is not None:
                flags.append("trail_line_on_track")
                # The line the score rests on is a moving object's; the second look asks
                # whether anything else in the frame carries the score (a meteor beside it).
                second_look = self._score_without(obs, [line])
                if second_look is None or second_look_suppresses(
                        second_look, obs.threshold, self.cfg.rescore_below):
                    if second_look is not None:
                        flags.append("rescored")
                    decision = done(track, line, streaks)
                else:
                    decision = done(None, None, streaks)
                decision.second_look = second_look
                return decision
            return done(reason, None, streaks)

        reasons = [self._explain(entry, i, nxt, flags) for i in range(len(streaks))]
        open_ = [s for s, r in zip(streaks, reasons, strict=True) if r is None]
        if not open_:
            return done(reasons[0], streaks[0], streaks)
        explained = [(s, r) for s, r in zip(streaks, reasons, strict=True) if r]
        track = self._trail_line_track(entry, nxt)
        if track is not None and obs.trail_line is not None:
            flags.append("trail_line_on_track")
            explained.append((obs.trail_line, track))
        second_look = self._score_without(obs, [s for s, _ in explained]) if explained else None
        if second_look_suppresses(second_look, obs.threshold, self.cfg.rescore_below):
            # What the model saw was the explained object; the rest (a star pair, a patch of
            # noise) does not make a meteor on its own.
            flags.append("rescored")
            first, reason = min(explained, key=lambda sr: REASONS.index(sr[1]))
            decision = done(reason, first, streaks)
        else:
            for reason in sorted({r for _, r in explained}, key=REASONS.index):
                flags.append(f"also_{reason}")  # e.g. a satellite elsewhere in a meteor's frame
            decision = done(None, open_[0], streaks)
        decision.second_look = second_look
        return decision

    def _score_without(self, obs: Observation, explained: list[Streak]) -> float | None:
        """The model's score once the explained streaks are masked out (their line, widened by
        rescore_margin_px); None when there is no second look. Under rescore_below (and the
        threshold) the explained streaks were what it saw: a meteor beside a satellite keeps
        its score (on the held-out nights it moved by 0.1 at most, unless the meteor itself
        had been taken for a track); a star pair or noise beside one scores about 0.01."""
        cfg = self.cfg
        if not cfg.rescore_mixed or obs.rescore is None:
            return None
        mask = np.full(obs.difference.shape, 255, np.uint8)
        margin = cfg.rescore_margin_px
        for s in explained:
            length = max(s.length_px, 1.0)
            ux, uy = (s.x2 - s.x1) / length, (s.y2 - s.y1) / length
            a = (round(s.x1 - margin * ux), round(s.y1 - margin * uy))
            b = (round(s.x2 + margin * ux), round(s.y2 + margin * uy))
            width = round(2 * margin + max(s.fwhm_px, s.width_px))
            cv2.line(mask, a, b, 0, thickness=max(width, 3))
        return float(obs.rescore(mask))

    def _explain(self, entry: _Entry, i: int, nxt: _Entry | None, flags: list[str]) -> str | None:
        """Why streak i of a candidate is not a meteor, or None."""
        cfg = self.cfg
        streak = entry.analysis.streaks[i]
        if self._masked_share(entry.analysis, streak.pixels) >= cfg.masked_fraction:
            return "masked"
        if cfg.persistence or cfg.duplicates:
            verdict = self._persistence(entry, i, nxt, flags)
            if verdict is not None:
                return verdict or None
        recurring = self._recurring(entry, streak, nxt, flags)
        if recurring is not None:
            flags.append("recurring")
            return recurring
        if cfg.aircraft_single_frame and streak.dotted:
            flags.append("dotted")
            return "aircraft"
        if not streak.dotted and streak.peak < _BOLIDE_PEAK and (
                cfg.steady_trail_box > 0 or cfg.even_ends_light > 0):
            light = entry.analysis.steadiness(streak)
            if cfg.steady_trail_box > 0 and light.box >= cfg.steady_trail_box \
                    and light.snr >= cfg.steady_trail_snr:
                flags.append("steady_trail")  # evenly lit, cut off sharply at both ends
                return "satellite"
            if cfg.even_ends_light > 0 and streak.peak < cfg.even_ends_max_peak \
                    and streak.length_px >= cfg.even_ends_min_px \
                    and light.end_light >= cfg.even_ends_light \
                    and light.end_imbalance <= cfg.even_ends_imbalance:
                flags.append("even_ends")  # both ends as bright as its middle: no rise and fade
                return "satellite"
        if cfg.cloud and self._soft(streak) and self._cloud_evidence(
                entry, flags):
            if self._too_bright_for_cloud(streak, flags):
                return None
            flags.append("soft_edge")  # a band far wider than the optics draw a trail
            return "cloud"
        return None

    def _too_bright_for_cloud(self, streak: Streak, flags: list[str]) -> bool:
        """A streak peaking at cloud_max_peak or more is never a cloud's edge (those are dim
        in the difference): a bright meteor blooming wider than a trail, on a cloudy frame."""
        if 0 < self.cfg.cloud_max_peak <= streak.peak:
            flags.append("bright_not_cloud")
            return True
        return False

    def _persistence(self, entry: _Entry, i: int, nxt: _Entry | None,
                     flags: list[str]) -> str | None:
        """"satellite"/"aircraft"/"duplicate"; "" for the kept half of a split meteor; None
        when the streak does not continue in a neighbouring frame."""
        cfg = self.cfg
        streak = entry.analysis.streaks[i]
        links = self._prev_links(entry)
        p = links.get(i) if entry.prev is not None else None
        q = self._next_link(entry, i, nxt)
        back = self._chain_back(entry, i)
        frames = back + (q is not None)
        if frames < 2:
            return None
        partners = []
        if p is not None and entry.prev is not None:
            partners.append((entry.prev, entry.prev.link_streaks[p]))
        if q is not None and nxt is not None:
            partners.append((nxt, nxt.link_streaks[q]))
        dotted = streak.dotted or any(s.dotted for _, s in partners)
        moving = "aircraft" if dotted and cfg.aircraft_single_frame else "satellite"
        if frames >= 3:
            flags.append(f"persistent_{min(frames, 3)}_frames")
            return moving if cfg.persistence else None
        other_entry, other = partners[0]
        if dotted or self._adjacent(streak, other):
            flags.append("persistent_2_frames")
            return moving if cfg.persistence else None
        if cfg.twin_ratio > 0 and _twins(streak, other, cfg.twin_ratio):
            # Two equal dashes with a wide gap: one steady light exposed twice (twilight's short
            # exposures leave most of each interval dark), not a meteor's rise and fade cut in
            # two by the dead time.
            flags.append("twin_pieces")
            return moving if cfg.persistence else None
        if not cfg.duplicates:
            return None
        # A wide gap: the same meteor on both sides of the dead time between exposures.
        mine = (entry.obs.detected, entry.obs.score, streak.strength, -entry.arrived)
        theirs = (other_entry.obs.detected, other_entry.obs.score, other.strength,
                  -other_entry.arrived)
        if mine >= theirs:
            flags.append("split_meteor")
            return ""
        return "duplicate"

    def _change_on_a_track(self, entry: _Entry, nxt: _Entry | None) -> str | None:
        """A candidate without a streak whose change lies on the line of a streak in the frame
        before or after, beyond its end: the short, blob-like piece of a moving object (a
        bright dash too stubby to pass as a line, a satellite's last seconds)."""
        cfg = self.cfg
        blobs = entry.analysis.blobs
        if not blobs:
            return None
        centres = [entry.analysis.to_full(float(b.pixels[1].mean()), float(b.pixels[0].mean()))
                   for b in blobs]
        for other in _neighbours(entry, nxt):
            for track in other.link_streaks:
                if self._soft(track):
                    continue
                length = max(track.length_px, 1.0)
                ux, uy = (track.x2 - track.x1) / length, (track.y2 - track.y1) / length
                for x, y in centres:
                    along = (x - track.x1) * ux + (y - track.y1) * uy
                    across = abs(-(x - track.x1) * uy + (y - track.y1) * ux)
                    beyond = max(-along, along - length)  # > 0: past one of its ends
                    if across <= cfg.link_offset_px and 0 < beyond <= (
                            cfg.link_gap_frac * length + cfg.link_offset_px):
                        return "aircraft" if track.dotted else "satellite"
        return None

    def _trail_line_track(self, entry: _Entry, nxt: _Entry | None) -> str | None:
        """"satellite"/"aircraft" when the trail classifier's top line continues a streak of
        the frame before or after (the adjacency persistence asks of two streaks): a faint
        satellite's line the streak finder missed in this frame but found in a neighbour.
        On 46 validation nights (3.2.0) it cost no meteor frame at any threshold and took 11
        of 108 false alerts at 0.3; a neighbour's candidate lines, not its streaks, would have
        linked meteors to noise (docs/suppression.md, "The trail line on a track")."""
        cfg = self.cfg
        line = entry.obs.trail_line
        if line is None or not (cfg.persistence and cfg.trail_line_links) \
                or self._soft(line):
            return None
        for other in _neighbours(entry, nxt):
            for track in other.link_streaks:
                if not self._soft(track) and self._adjacent(track, line):
                    return "aircraft" if track.dotted and cfg.aircraft_single_frame \
                        else "satellite"
        return None

    def _recurring(self, entry: _Entry, streak: Streak, nxt: _Entry | None,
                   flags: list[str]) -> str | None:
        """A streak seen again at (nearly) the same place in the frame before or after: the
        Moon's limb, a lit edge, a cloud edge drifting sideways. A meteor never repeats.
        "cloud" when clouds are moving in the frame (it may have drifted up to recur_cloud_px),
        else "masked" if it barely moved (a fixed feature a mask should cover)."""
        cfg = self.cfg
        if cfg.recur_offset_px <= 0:
            return None
        best = math.inf
        for other_entry in _neighbours(entry, nxt):
            for other in other_entry.link_streaks:
                shift = _side_shift(streak, other, 10.0)
                best = min(best, shift)
        if best > max(cfg.recur_offset_px, cfg.recur_cloud_px if cfg.cloud else 0.0):
            return None
        clouds = cfg.cloud and self._cloud_evidence(entry, flags)
        if clouds and not self._too_bright_for_cloud(streak, flags):
            return "cloud"
        # Barely moved: a fixed feature (a lit edge, the Moon's limb), bright or not.
        return "masked" if best <= cfg.recur_offset_px else None

    def _prev_links(self, entry: _Entry) -> dict[int, int]:
        if entry.prev_links is None:
            prev = entry.prev
            entry.prev_links = {} if prev is None else self._match(prev.link_streaks,
                                                                   entry.link_streaks)
        return entry.prev_links

    def _next_link(self, entry: _Entry, i: int, nxt: _Entry | None) -> int | None:
        if nxt is None or nxt.prev is not entry:
            return None
        for j, p in self._prev_links(nxt).items():
            if p == i:
                return j
        return None

    def _chain_back(self, entry: _Entry, i: int, limit: int = 3) -> int:
        frames, e, idx = 1, entry, i
        while frames < limit and e.prev is not None:
            links = self._prev_links(e)
            if idx not in links:
                break
            e, idx, frames = e.prev, links[idx], frames + 1
        return frames

    def _soft(self, streak: Streak) -> bool:
        """A band far wider than the optics draw a trail: a moving cloud's edge. Such edges
        never link across frames (they do not fly) and count as evidence of cloud."""
        return streak.fwhm_px >= self.cfg.cloud_min_fwhm_px

    def _adjacent(self, a: Streak, b: Streak) -> bool:
        """b starts (about) where a ends: a moving object's next exposure. Its path may bend
        (a great circle on a fisheye bends hard near the horizon), so the angle may be up to
        link_angle_deg; the facing ends must be within satellite_gap_frac of the longer."""
        cfg = self.cfg
        longer = max(a.length_px, b.length_px)
        if angle_between(a, b) > cfg.link_angle_deg:
            return False
        ends = min(math.dist(p, q) for p in ((a.x1, a.y1), (a.x2, a.y2))
                   for q in ((b.x1, b.y1), (b.x2, b.y2)))
        if ends > cfg.satellite_gap_frac * longer + cfg.link_offset_px:
            return False
        # ... it goes on, not back over the same stretch ...
        r = relate(a, b)
        if r.gap_px < -(0.15 * min(a.length_px, b.length_px) + cfg.link_offset_px):
            return False
        # ... and starts on a's path, not beside it: a bend of angle over the gap moves it off
        # a's line by about gap·sin(angle); a parallel streak farther off is something else
        # (a meteor beside an aircraft's path, two meteors of one shower).
        bend = abs(r.gap_px) * math.sin(math.radians(r.angle_deg))
        return r.offset_px <= cfg.link_offset_px + bend

    def _continues(self, a: Streak, b: Streak) -> tuple[bool, float]:
        """Whether b continues a in the next frame, and how well (lower is better)."""
        cfg = self.cfg
        if self._soft(a) or self._soft(b):
            return False, math.inf
        angle = angle_between(a, b)
        if self._adjacent(a, b):
            # Ranked by bend and by how far b's start sits off a's line: a meteor beside an
            # aircraft's path must not take the aircraft's next piece from its own last one.
            return True, angle + relate(a, b).offset_px
        # Farther along the same straight line: a meteor on both sides of the dead time.
        if angle > cfg.link_angle_deg / 4:
            return False, math.inf
        r = relate(a, b)
        longer = max(a.length_px, b.length_px)
        ok = (r.offset_px <= cfg.link_offset_px + 0.035 * max(r.gap_px, 0.0)
              and 0 <= r.gap_px <= cfg.link_gap_frac * longer + cfg.link_offset_px)
        return ok, 100 + angle + r.offset_px

    def _match(self, before: list[Streak], after: list[Streak]) -> dict[int, int]:
        """For each streak after, the streak before that it continues (best fit), if any."""
        out: dict[int, int] = {}
        for j, b in enumerate(after):
            best, best_cost = None, math.inf
            for i, a in enumerate(before):
                ok, cost = self._continues(a, b)
                if ok and cost < best_cost:
                    best, best_cost = i, cost
            if best is not None:
                out[j] = best
        return out

    # ------------------------------------------------------------------ masks and clouds

    def _mask_at(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """The static and learned masks together at `shape` (None: nothing masked)."""
        auto = self.auto_mask.mask_for(shape) if self.auto_mask is not None else None
        static = self.static_mask
        if static is not None and static.shape != shape:
            static = cv2.resize(static, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return combine_masks(auto, static)

    def _mask_small(self, analysis: DiffAnalysis) -> np.ndarray | None:
        mask = self._mask_at(analysis.small.shape)
        if mask is None:
            return None
        # The difference is already zeroed inside the mask: what leaks is just beside it.
        return cv2.erode(mask, np.ones((3, 3), np.uint8))

    def _masked_share(self, analysis: DiffAnalysis,
                      pixels: tuple[np.ndarray, np.ndarray]) -> float:
        ys, xs = pixels
        if len(ys) == 0:
            return 0.0
        mask = self._mask_small(analysis)
        if mask is None:
            return 0.0
        ys = np.clip(ys, 0, mask.shape[0] - 1)
        xs = np.clip(xs, 0, mask.shape[1] - 1)
        return float(np.count_nonzero(mask[ys, xs] == 0)) / len(ys)

    def _cloudy(self, entry: _Entry, flags: list[str]) -> bool:
        if entry.visibility is None:
            entry.visibility = star_visibility(entry.obs.current)
        cloudy = entry.visibility < self.cfg.cloudy_star_density
        if cloudy and "cloudy" not in flags:
            flags.append("cloudy")
        return cloudy

    def _cloud_evidence(self, entry: _Entry, flags: list[str]) -> bool:
        """Clouds moving in this frame: much diffuse change, or several soft-edged streaks.
        (Not star visibility alone: dew on the dome hides stars and blurs a meteor too.)"""
        analysis = entry.analysis
        diffuse = sum(len(b.pixels[0]) for b in analysis.blobs)
        soft = sum(self._soft(s) for s in analysis.streaks)
        if diffuse >= self.cfg.cloud_diffuse_share * analysis.small.size or soft >= 3:
            if "cloud_motion" not in flags:
                flags.append("cloud_motion")
            return True
        return False

    def _diffuse_reason(self, entry: _Entry, flags: list[str]) -> str | None:
        """No streak: changes all inside masked pixels, or diffuse changes on a cloudy frame
        where clouds are seen moving. Few stars alone is not enough: twilight's bright sky
        shows few stars too, and there the faint meteors the streak finder misses look like
        this (on the held-out nights every streakless frame called cloud on star count alone
        was a clear twilight frame: 9 meteors among 23 at threshold 0.5)."""
        blobs = entry.analysis.blobs
        if not blobs:
            return None
        ys = np.concatenate([b.pixels[0] for b in blobs])
        xs = np.concatenate([b.pixels[1] for b in blobs])
        if self._masked_share(entry.analysis, (ys, xs)) >= self.cfg.masked_fraction:
            return "masked"
        if self.cfg.cloud and self._cloudy(entry, flags) and self._cloud_evidence(entry, flags):
            return "cloud"
        return None


def second_look_suppresses(second_look: float | None, threshold: float, below: float) -> bool:
    """The second-look rule: the score with the explained streaks masked is under both the
    threshold and rescore_below (None: no second look was taken)."""
    return second_look is not None and second_look < min(threshold, below)


def alert_score(score: float, suppressed: str | None, second_look: float | None,
                below: float) -> float:
    """A decision taken with every frame a candidate (threshold 0), as one number: the frame
    alerts at threshold t exactly when alert_score >= t. 0 where a rule suppressed it; where a
    second look under `below` was taken, the lower of the two scores (second_look_suppresses
    at t is then second_look < t). For threshold sweeps (alert-threshold, the benchmark)."""
    if suppressed:
        return 0.0
    if second_look is not None and second_look < below:
        return min(score, second_look)
    return score


def _neighbours(entry: _Entry, nxt: _Entry | None) -> list[_Entry]:
    """The consecutive frames before and after `entry` that are at hand."""
    after = nxt if nxt is not None and nxt.prev is entry else None
    return [e for e in (entry.prev, after) if e is not None]


def _twins(a: Streak, b: Streak, ratio: float) -> bool:
    """Same length and same peak brightness, each within `ratio` of the other."""
    lengths = sorted((a.length_px, b.length_px))
    peaks = sorted((a.peak, b.peak))
    return lengths[1] <= ratio * lengths[0] and peaks[1] <= ratio * max(peaks[0], 1e-6)


def _side_shift(a: Streak, b: Streak, max_angle: float) -> float:
    """Perpendicular distance between two near-parallel segments that overlap along their
    length by at least half the shorter; inf otherwise."""
    if angle_between(a, b) > max_angle:
        return math.inf
    r = relate(a, b)
    if -r.gap_px < 0.5 * min(a.length_px, b.length_px):
        return math.inf
    ua = np.array([a.x2 - a.x1, a.y2 - a.y1]) / max(a.length_px, 1e-9)
    ub = np.array([b.x2 - b.x1, b.y2 - b.y1]) / max(b.length_px, 1e-9)
    ma = np.array([(a.x1 + a.x2) / 2, (a.y1 + a.y2) / 2])
    mb = np.array([(b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2])
    da = abs(float((mb - ma) @ np.array([-ua[1], ua[0]])))
    db = abs(float((ma - mb) @ np.array([-ub[1], ub[0]])))
    return max(da, db)
