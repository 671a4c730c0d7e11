"""The trail stage: a second look at a candidate's strongest streak, fitted at training time.

The CNN sees a mosaic of small windows; a single-frame satellite trail and a meteor look alike
there. Along the whole trail they differ: a satellite shines evenly from an abrupt start to an
abrupt end, a meteor brightens and fades (`DiffAnalysis.steadiness`). The stage is a logistic
regression on the model's score, the number of streaks and that light profile, fitted on the
training nights' candidates (training/trail_stage.py) and stored in the bundle's manifest, so
the bundle's score means the same on the Pi as in evaluation.

Only candidates (model score >= min_score) are re-scored, to min_score + (1 - min_score) · p:
they stay above every other frame, and the rest of the night costs nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from edge.streaks import DiffAnalysis, StreakParams, TrailLight


@contextmanager
def stage_field_errors(error: type[ValueError]) -> Iterator[None]:
    """A manifest stage's missing key or bad value as `error` ("trail_stage: ..."), which
    edge.bundle turns into a BundleError; an `error` raised inside passes as it is."""
    try:
        yield
    except KeyError as exc:
        raise error(f"trail_stage: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"trail_stage: {exc}") from None

# The light-profile fields of `TrailLight` the stage may use.
PROFILE = ("box", "variation", "end_light", "end_bright", "end_imbalance", "middle", "peak_offset",
           "beyond_dim", "beyond_bright")
# Besides the profile: the model's score and how many streaks the frame holds.
FEATURES = ("score", "streaks", *PROFILE)


class TrailStageError(ValueError):
    """A trail stage in a manifest that cannot be used."""


def profile_features(streaks: int, light: TrailLight | None) -> dict[str, float]:
    """The frame's streak count and its strongest streak's light profile (None: no streak,
    NaN)."""
    row = {"streaks": float(streaks)}
    if light is None:
        return row | {name: math.nan for name in PROFILE}
    return row | {name: float(getattr(light, name)) for name in PROFILE}


def trail_features(difference: np.ndarray, score: float,
                   params: StreakParams) -> dict[str, float]:
    """The stage's inputs for one positive difference image; NaN where no streak is found."""
    analysis = DiffAnalysis(difference, params)
    streaks = analysis.streaks
    light = analysis.steadiness(streaks[0]) if streaks else None
    return {"score": float(score)} | profile_features(len(streaks), light)


@dataclass(frozen=True)
class TrailStage:
    """p = sigmoid(intercept + coef · (x - mean) / scale), x with NaN replaced by `impute`."""

    features: tuple[str, ...]
    impute: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    min_score: float = 0.3
    streak_params: StreakParams = field(default_factory=StreakParams)
    fitted_on: dict[str, Any] | None = None  # what it was fitted on, for the model card

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise TrailStageError("trail_stage: no features")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise TrailStageError(f"trail_stage: unknown features {unknown} (known: "
                                  f"{list(FEATURES)})")
        for name in ("impute", "mean", "scale", "coef"):
            values = getattr(self, name)
            if len(values) != n or not all(math.isfinite(v) for v in values):
                raise TrailStageError(f"trail_stage: {name} needs {n} finite numbers")
        if any(s <= 0 for s in self.scale):
            raise TrailStageError("trail_stage: scale must be positive")
        if not math.isfinite(self.intercept):
            raise TrailStageError("trail_stage: intercept must be finite")
        if not 0.0 <= self.min_score < 1.0:
            raise TrailStageError(f"trail_stage: min_score {self.min_score} not in [0, 1)")

    def probability(self, row: dict[str, float]) -> float:
        x = np.array([row[name] for name in self.features], dtype=float)
        x = np.where(np.isnan(x), np.asarray(self.impute), x)
        z = self.intercept + float(np.dot(self.coef, (x - np.asarray(self.mean)) /
                                          np.asarray(self.scale)))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def rescore(self, score: float, difference: np.ndarray) -> float:
        """The bundle's score for a frame the model scored `score` (difference: the masked
        positive difference of the pair)."""
        if score < self.min_score:
            return score
        return self.mapped(self.probability(trail_features(difference, score,
                                                           self.streak_params)))

    def mapped(self, probability: float) -> float:
        return self.min_score + (1.0 - self.min_score) * probability

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "logistic", "features": list(self.features),
               "impute": list(self.impute), "mean": list(self.mean), "scale": list(self.scale),
               "coef": list(self.coef), "intercept": self.intercept,
               "min_score": self.min_score, "streak_params": asdict(self.streak_params)}
        if self.fitted_on is not None:
            out["fitted_on"] = self.fitted_on
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrailStage:
        if not isinstance(data, dict):
            raise TrailStageError("trail_stage must be an object")
        if data.get("kind") != "logistic":
            raise TrailStageError(f"trail_stage: kind {data.get('kind')!r} not supported "
                                  "(this guaita reads 'logistic')")
        known = {f.name for f in fields(StreakParams)}
        raw = data.get("streak_params", {})
        if not isinstance(raw, dict) or set(raw) - known:
            raise TrailStageError(f"trail_stage: streak_params has unknown keys "
                                  f"{sorted(set(raw) - known) if isinstance(raw, dict) else raw}")
        with stage_field_errors(TrailStageError):
            return cls(
                features=tuple(str(f) for f in data["features"]),
                impute=tuple(float(v) for v in data["impute"]),
                mean=tuple(float(v) for v in data["mean"]),
                scale=tuple(float(v) for v in data["scale"]),
                coef=tuple(float(v) for v in data["coef"]),
                intercept=float(data["intercept"]),
                min_score=float(data.get("min_score", 0.3)),
                streak_params=StreakParams(**raw),
                fitted_on=data.get("fitted_on"),
            )
