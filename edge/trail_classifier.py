"""The trail classifier: a bundle's second stage that looks along every candidate line.

The bundle's CNN sees its mosaic of small windows; the trail classifier sees each candidate
line of the frame pair (`edge.candidates`, a search sensitive to meteors 15 grey levels faint)
laid out as a strip along its own length (`edge.trail_strip`), and a small CNN (`trail.onnx` in
the bundle, fitted by `guaita trail-classifier`) gives each a meteor logit. The frame's trail
logit is the highest of its candidates'; the bundle's score combines it with the network's:

    score = sigmoid(trail_weight · trail_logit + network_weight · logit(network) + bias)

(a frame with no candidate line gets `empty_logit`). The weights are fitted with the classifier
(logistic regression on validation-night frames; the network's scores on its own training
nights are too confident to fit them there). This module describes the stage as the manifest
stores it and combines the scores; it imports no onnxruntime, so a bundle validates anywhere
(the session lives in `edge.model`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.candidates import CandidateParams
from edge.streaks import StreakParams
from edge.trail_stage import stage_field_errors
from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS, STRIP_SAMPLINGS

KIND = "classifier"
MODEL_FILE = "trail.onnx"


class TrailClassifierError(ValueError):
    """A trail classifier in a manifest that cannot be used."""


def made_inputs() -> dict[str, Any]:
    """The inputs this guaita makes (edge.trail_strip), as a manifest records them."""
    return {"strips": [CHANNELS, ACROSS, ALONG], "scalars": list(SCALARS)}


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class TrailClassifier:
    sha256: str  # of model_file
    trail_weight: float
    network_weight: float
    bias: float
    empty_logit: float = -12.0  # the trail logit of a frame without candidate lines
    model_file: str = MODEL_FILE
    candidates: CandidateParams = field(default_factory=CandidateParams)
    streak_params: StreakParams = field(default_factory=StreakParams)
    inputs: dict[str, Any] = field(default_factory=made_inputs)
    fitted_on: dict[str, Any] | None = None
    strip_sampling: str = "point"  # along the line (edge.trail_strip); bundles up to 3.5.0

    def __post_init__(self) -> None:
        for name in ("trail_weight", "network_weight", "bias", "empty_logit"):
            if not math.isfinite(getattr(self, name)):
                raise TrailClassifierError(f"trail_stage: {name} must be a finite number")
        if self.trail_weight <= 0:
            raise TrailClassifierError("trail_stage: trail_weight must be positive")
        if len(self.sha256) != 64:
            raise TrailClassifierError("trail_stage: sha256 must be 64 hex digits")
        if "/" in self.model_file or not self.model_file.endswith(".onnx"):
            raise TrailClassifierError(f"trail_stage: model_file {self.model_file!r} must be a "
                                       "file name ending in .onnx")
        if self.strip_sampling not in STRIP_SAMPLINGS:
            raise TrailClassifierError(f"trail_stage: strip_sampling must be one of "
                                       f"{STRIP_SAMPLINGS}, got {self.strip_sampling!r}")
        want = made_inputs()
        if self.inputs != want:
            raise TrailClassifierError(
                f"trail_stage: the classifier was fitted on inputs {self.inputs}, this guaita "
                f"makes {want}")

    def combine(self, network: float, trail_logit: float | None) -> float:
        """The bundle's score from the network's probability and the frame's trail logit."""
        z = self.trail_weight * (self.empty_logit if trail_logit is None else trail_logit)
        z += self.network_weight * logit(network) + self.bias
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": KIND, "model_file": self.model_file, "sha256": self.sha256,
               "trail_weight": self.trail_weight, "network_weight": self.network_weight,
               "bias": self.bias, "empty_logit": self.empty_logit,
               "candidates": self.candidates.to_dict(),
               "streak_params": asdict(self.streak_params), "inputs": self.inputs,
               "strip_sampling": self.strip_sampling}
        if self.fitted_on is not None:
            out["fitted_on"] = self.fitted_on
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrailClassifier:
        if data.get("kind") != KIND:
            raise TrailClassifierError(f"trail_stage: kind {data.get('kind')!r} is not {KIND!r}")
        with stage_field_errors(TrailClassifierError):
            return cls(
                sha256=str(data["sha256"]),
                trail_weight=float(data["trail_weight"]),
                network_weight=float(data["network_weight"]),
                bias=float(data["bias"]),
                empty_logit=float(data.get("empty_logit", -12.0)),
                model_file=str(data.get("model_file", MODEL_FILE)),
                candidates=CandidateParams.from_dict(data.get("candidates", {})),
                streak_params=StreakParams(**data.get("streak_params", {})),
                inputs=data.get("inputs", {}),
                fitted_on=data.get("fitted_on"),
                strip_sampling=str(data.get("strip_sampling", "point")),
            )
