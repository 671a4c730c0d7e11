"""Frame → decision: pair with the previous frame, preprocess, score, decide.

Shared by the daemon (`edge.service`) and batch mode (`edge.scan`); no threads, no network. The
scorer is fetched once per frame from `scorer_source`, so a model swap lands between frames and
a frame is never scored half by each model.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.config import Config
from edge.decide import AutoMask, Decider, Decision, Observation, build_static_mask
from edge.frames import Frame, is_consecutive
from edge.model import Scorer
from edge.preprocess import PreprocessError, apply_mask, positive_difference, read_gray
from edge.streaks import DiffAnalysis
from edge.watch import previous_on_disk

log = logging.getLogger(__name__)


@dataclass
class Reference:
    frame: Frame
    gray: np.ndarray


@dataclass
class Pipeline:
    cfg: Config
    scorer_source: Callable[[], Scorer]
    threshold_for: Callable[[Scorer], float]  # the threshold that goes with this model
    auto_mask: AutoMask | None = None
    counters: Counter[str] = field(default_factory=Counter)
    last_latency_ms: dict[str, float] = field(default_factory=dict)
    _reference: Reference | None = None
    _decider: Decider | None = None
    _night: str | None = None
    _static_mask: np.ndarray | None = None
    _mask_shape: tuple[int, ...] | None = None

    def _static_for(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._mask_shape != shape:
            d = self.cfg.detection
            self._static_mask = build_static_mask(shape, d.mask or None, d.mask_rects)
            self._mask_shape = shape
        return self._static_mask

    def _mask_for(self, shape: tuple[int, ...]) -> np.ndarray | None:
        learned = self.auto_mask.mask_for(shape) if self.auto_mask is not None else None
        masks = [m for m in (self._static_for(shape), learned) if m is not None]
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else np.minimum(*masks)

    def _find_reference(self, frame: Frame, shape: tuple[int, ...]) -> Reference | None:
        max_gap = self.cfg.detection.max_gap_s
        ref = self._reference
        if ref and is_consecutive(ref.frame, frame, max_gap) and ref.gray.shape == shape:
            return ref
        # After a restart, or frames arriving out of order: the previous frame is on disk.
        previous = previous_on_disk(frame)
        if previous is None or not is_consecutive(previous, frame, max_gap):
            return None
        try:
            gray = read_gray(str(previous.path))
        except (PreprocessError, OSError):
            return None
        return Reference(previous, gray) if gray.shape == shape else None

    def _decider_for(self, night: str, shape: tuple[int, ...]) -> tuple[Decider, list[Decision]]:
        released: list[Decision] = []
        if self._decider is None or self._night != night or self._mask_shape != shape:
            if self._decider is not None:
                released = self._decider.flush()
            self._decider = Decider(self.cfg.suppression, auto_mask=self.auto_mask,
                                    static_mask=self._static_for(shape))
            self._night = night
        return self._decider, released

    def process(self, frame: Frame) -> list[Decision]:
        """Score one frame; returns the decisions that became final (possibly earlier frames)."""
        t0 = time.perf_counter()
        try:
            current = read_gray(str(frame.path))
        except (PreprocessError, OSError) as exc:
            self.counters["unreadable"] += 1
            log.warning("skipping %s: %s", frame.path, exc)
            return []
        t_decode = time.perf_counter()
        decider, released = self._decider_for(frame.night, current.shape)
        reference = self._find_reference(frame, current.shape)
        scorer = self.scorer_source()  # once per frame: a model swap lands between frames
        threshold = self.threshold_for(scorer)
        self.counters["seen"] += 1
        if reference is None:
            # First frame of a night, after a gap or a camera size change: nothing to subtract,
            # so nothing to score. It still gets its decision (in order, after whatever the
            # decider held back: a gap ends any satellite track anyway).
            self.counters["no_reference"] += 1
            t_score = time.perf_counter()
            released += decider.flush()
            released.append(Decision(
                frame=frame, score=0.0, threshold=threshold, detected=False, suppressed=None,
                streak=None, flags=["no_reference"], current=current,
                difference=np.zeros_like(current),
            ))
        else:
            mask = self._mask_for(current.shape)
            difference = apply_mask(positive_difference(reference.gray, current), mask)
            # One analysis of the difference for the scorer's trail classifier and the
            # decider: the streaks (tens of ms) are found once a frame.
            analysis = DiffAnalysis(difference, decider.params)
            assessment = scorer.assess(reference.gray, current, mask, analysis)
            t_score = time.perf_counter()
            if self.auto_mask is not None:
                self.auto_mask.update(difference)
            self.counters["scored"] += 1
            released += decider.push(Observation(
                frame=frame, current=current, difference=difference, score=assessment.score,
                threshold=threshold,
                rescore=_rescorer(scorer, reference.gray, current, mask), analysis=analysis,
                trail_line=assessment.trail_line,
            ))
        self._reference = Reference(frame, current)
        t_done = time.perf_counter()
        self.last_latency_ms = {
            "decode": (t_decode - t0) * 1e3,
            "score": (t_score - t_decode) * 1e3,
            "decide": (t_done - t_score) * 1e3,
        }
        self._count(released)
        return released

    def flush(self) -> list[Decision]:
        """Everything still pending (night end, shutdown, scan end)."""
        if self._decider is None:
            return []
        released = self._decider.flush()
        self._count(released)
        return released

    def _count(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if decision.detected and decision.suppressed:
                self.counters[f"suppressed_{decision.suppressed}"] += 1
                self.counters["suppressed"] += 1
            elif decision.detected:
                self.counters["detected"] += 1


def _rescorer(scorer: Scorer, previous: np.ndarray, current: np.ndarray,
              mask: np.ndarray | None) -> Callable[[np.ndarray], float]:
    """The same pair scored again with `extra` pixels masked too (the decider's second look)."""

    def rescore(extra: np.ndarray) -> float:
        return scorer.score(previous, current, extra if mask is None else np.minimum(mask, extra))

    return rescore


def make_pipeline(cfg: Config, scorer: Scorer, auto_mask: AutoMask | None = None) -> Pipeline:
    """A pipeline with a fixed model (batch mode)."""
    pinned = cfg.detection.threshold

    def threshold_for(model: Scorer) -> float:
        return pinned if pinned is not None else model.manifest.recommended_threshold

    return Pipeline(cfg, lambda: scorer, threshold_for, auto_mask=auto_mask)
