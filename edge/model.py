"""Scoring with onnxruntime: a loaded bundle turned into `meteor probability = f(prev, cur)`.

The bundle's score is the model's, re-scored by the bundle's trail stage where it has one: the
logistic profile stage (edge/trail_stage.py) or the trail classifier (edge/trail_classifier.py,
a second ONNX graph that looks along every candidate line). The threshold in the manifest was
chosen for that score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.bundle import Bundle, BundleError, load_bundle
from edge.candidates import Candidate
from edge.preprocess import Preprocessor, apply_mask, positive_difference, to_nchw
from edge.streaks import DiffAnalysis, Streak
from edge.trail_classifier import TrailClassifier
from edge.trail_strip import pair_inputs


@dataclass(frozen=True)
class TrailVerdict:
    """What the trail classifier made of one frame pair: its candidate lines and their logits
    (most significant first), and the frame's trail logit (the highest; None: no candidate)."""

    candidates: list[Candidate]
    logits: np.ndarray

    @property
    def frame_logit(self) -> float | None:
        return float(self.logits.max()) if len(self.logits) else None

    @property
    def top_line(self) -> Streak | None:
        """The candidate line that gave the frame its trail logit (full-frame pixels)."""
        return self.candidates[int(self.logits.argmax())].streak if len(self.logits) else None


@dataclass(frozen=True)
class Assessment:
    """The bundle's score of one pair and, with a trail classifier, the line it rests on (for
    the decider: a satellite's line continues in the frame before or after)."""

    score: float
    trail_line: Streak | None = None


@dataclass
class Scorer:
    bundle: Bundle
    session: ort.InferenceSession
    preprocessor: Preprocessor
    trail_session: ort.InferenceSession | None = None  # the trail classifier's graph

    @property
    def manifest(self):
        return self.bundle.manifest

    def preprocess(
        self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        return self.preprocessor(previous, current, mask)

    def score_inputs(self, images: list[np.ndarray]) -> np.ndarray:
        """Preprocessed uint8 HWC images → meteor probabilities, one per image."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        out = self.session.run(None, {self.manifest.input_name: to_nchw(images)})[0]
        if out.ndim != 2 or out.shape[1] != len(self.manifest.classes):
            raise BundleError(
                f"model output shape {out.shape} does not match classes {self.manifest.classes}"
            )
        return out[:, self.manifest.meteor_index].astype(np.float32)

    def model_score(
        self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None
    ) -> float:
        """The network's probability alone, before the trail stage."""
        return float(self.score_inputs([self.preprocess(previous, current, mask)])[0])

    def score(
        self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None,
        analysis: DiffAnalysis | None = None,
    ) -> float:
        """The bundle's score: the model's, then the trail stage's for candidates.
        `analysis`: the pair's masked difference already analysed, to share (`pair_inputs`)."""
        return self.assess(previous, current, mask, analysis).score

    def assess(
        self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None,
        analysis: DiffAnalysis | None = None,
    ) -> Assessment:
        """`score`, with the trail classifier's top line where the bundle has one."""
        return self.staged_assessment(self.model_score(previous, current, mask), previous,
                                      current, mask, analysis)

    def staged(self, score: float, previous: np.ndarray, current: np.ndarray,
               mask: np.ndarray | None = None, analysis: DiffAnalysis | None = None) -> float:
        """The bundle's score from the network's `score` of the same pair."""
        return self.staged_assessment(score, previous, current, mask, analysis).score

    def staged_assessment(self, score: float, previous: np.ndarray, current: np.ndarray,
                          mask: np.ndarray | None = None,
                          analysis: DiffAnalysis | None = None) -> Assessment:
        stage = self.manifest.trail_stage
        if isinstance(stage, TrailClassifier):
            verdict = self.trail(previous, current, mask, analysis)
            return Assessment(stage.combine(score, verdict.frame_logit), verdict.top_line)
        if stage is None or score < stage.min_score:
            return Assessment(score)
        difference = apply_mask(positive_difference(previous, current), mask)
        return Assessment(stage.rescore(score, difference))

    def trail(self, previous: np.ndarray, current: np.ndarray,
              mask: np.ndarray | None = None,
              analysis: DiffAnalysis | None = None) -> TrailVerdict:
        """The trail classifier's look along every candidate line of the pair."""
        stage = self.manifest.trail_stage
        if not isinstance(stage, TrailClassifier) or self.trail_session is None:
            raise BundleError(f"{self.bundle.label} has no trail classifier")
        candidates, strips, scalars = pair_inputs(previous, current, mask,
                                                  stage.streak_params, stage.candidates,
                                                  analysis, stage.strip_sampling)
        if not candidates:
            return TrailVerdict([], np.zeros(0, np.float32))
        logits = self.trail_session.run(None, {"strips": strips, "scalars": scalars})[0]
        return TrailVerdict(candidates, np.asarray(logits, np.float32).reshape(-1))


def open_scorer(bundle: str | Path | Bundle, threads: int = 1) -> Scorer:
    """Load a bundle into onnxruntime; BundleError if the graph does not fit the manifest."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(bundle.model_path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BundleError(f"{bundle.model_path}: onnxruntime cannot load it: {exc}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != bundle.manifest.input_name:
        raise BundleError(
            f"model inputs {[i.name for i in inputs]} do not match manifest input "
            f"{bundle.manifest.input_name!r}"
        )
    trail_session = None
    stage = bundle.manifest.trail_stage
    if isinstance(stage, TrailClassifier):
        path = bundle.root / stage.model_file
        try:
            trail_session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{path}: onnxruntime cannot load it: {exc}") from None
        names = sorted(i.name for i in trail_session.get_inputs())
        if names != ["scalars", "strips"]:
            raise BundleError(f"{path}: inputs {names}, expected ['scalars', 'strips']")
    scorer = Scorer(bundle, session, Preprocessor(bundle.manifest.preprocessing), trail_session)
    # Smoke test: a blank pair must score, with the right output shape, to a probability.
    blank = np.zeros((64, 64), np.uint8)
    probability = scorer.score(blank, blank)
    if not 0.0 <= probability <= 1.0 or np.isnan(probability):
        raise BundleError(f"model smoke test returned {probability}, not a probability")
    return scorer
