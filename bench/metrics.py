"""Accuracy numbers from per-frame results and the simulator's truth; pure numpy.

Definitions (the report repeats them):
  * a frame is an *alert* when the detector would tell the operator "meteor" (guaita: score ≥
    threshold and not suppressed; the others have no suppression);
  * recall = alerts on meteor frames / meteor frames; false positives = alerts on frames with
    no meteor, per 1,000 frames scored (all frames, as an operator counts them);
  * satellite / aircraft rejection = share of the frames holding a satellite (aircraft) and no
    meteor that raise no alert;
  * brightness classes by the truth's ``meteor_peak`` (grey levels above the background, after
    clouds and vignetting).
The first frame of each night has no previous frame, so no difference-based detector can score
it; it is left out of every count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BRIGHTNESS: tuple[tuple[str, float, float], ...] = (
    ("faint (<10)", 0.0, 10.0),
    ("moderate (10-40)", 10.0, 40.0),
    ("bright (40-150)", 40.0, 150.0),
    ("very bright (>=150)", 150.0, float("inf")),
)


def _flag(row: dict[str, str], key: str) -> bool:
    return str(row.get(key, "")).strip() in ("1", "True", "true")


@dataclass(frozen=True)
class Truth:
    """Per-frame truth, aligned with the per-frame results (same order)."""

    image: np.ndarray  # str: path relative to the tree root
    label: np.ndarray  # str: bench night label
    site: np.ndarray
    condition: np.ndarray
    meteor: np.ndarray  # bool
    peak: np.ndarray  # float, nan without a meteor
    satellite: np.ndarray
    aircraft: np.ndarray
    flash: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, str]]) -> Truth:
        def col(key: str, default: str = "") -> np.ndarray:
            return np.array([str(r.get(key, default)) for r in rows], dtype=object)

        peak = np.array([float(r["meteor_peak"]) if r.get("meteor_peak") not in (None, "")
                         else np.nan for r in rows], dtype=float)
        return cls(
            image=col("file"), label=col("label", "night"), site=col("site", "-"),
            condition=col("condition"), meteor=np.array([_flag(r, "meteor") for r in rows]),
            peak=peak, satellite=np.array([_flag(r, "satellite") for r in rows]),
            aircraft=np.array([_flag(r, "aircraft") for r in rows]),
            flash=np.array([_flag(r, "flash") for r in rows]),
        )

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, keep: np.ndarray) -> Truth:
        return Truth(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _core(truth: Truth, alert: np.ndarray) -> dict[str, Any]:
    tp = int((alert & truth.meteor).sum())
    fp = int((alert & ~truth.meteor).sum())
    meteors = int(truth.meteor.sum())
    return {
        "frames": len(truth), "meteors": meteors, "alerts": int(alert.sum()), "tp": tp, "fp": fp,
        "recall": _ratio(tp, meteors), "precision": _ratio(tp, tp + fp),
        "fp_per_1000": _ratio(1000 * fp, len(truth)),
    }


def _rejection(truth: Truth, alert: np.ndarray, kind: np.ndarray) -> dict[str, Any]:
    frames = kind & ~truth.meteor
    n = int(frames.sum())
    alerts = int((alert & frames).sum())
    return {"frames": n, "alerts": alerts, "rejected": _ratio(n - alerts, n)}


def summarize(truth: Truth, alert: np.ndarray, candidate: np.ndarray | None = None,
              suppressed: np.ndarray | None = None) -> dict[str, Any]:
    """Every accuracy number for one detector at one operating point.

    `candidate` (optional): the model's raw verdict before suppression; `suppressed`: the
    suppression reason per frame (None/"" when not suppressed). With both, the report can say
    how many satellite/aircraft candidates the suppression caught."""
    alert = np.asarray(alert, dtype=bool)
    if alert.shape != truth.meteor.shape:
        raise ValueError(f"{alert.shape[0]} results for {len(truth)} truth rows")
    out = _core(truth, alert)
    out["by_brightness"] = {}
    for name, low, high in BRIGHTNESS:
        sel = truth.meteor & (truth.peak >= low) & (truth.peak < high)
        n = int(sel.sum())
        out["by_brightness"][name] = {"meteors": n, "recall": _ratio(int((alert & sel).sum()), n)}
    out["satellite"] = _rejection(truth, alert, truth.satellite)
    out["aircraft"] = _rejection(truth, alert, truth.aircraft)
    out["by_condition"] = {c: _core(truth.subset(truth.condition == c), alert[truth.condition == c])
                           for c in sorted(set(truth.condition))}
    out["by_site"] = {s: _core(truth.subset(truth.site == s), alert[truth.site == s])
                      for s in sorted(set(truth.site))}
    fp = alert & ~truth.meteor
    out["fp_sources"] = {
        "satellite": int((fp & truth.satellite).sum()),
        "aircraft": int((fp & truth.aircraft & ~truth.satellite).sum()),
        "flash": int((fp & truth.flash & ~truth.satellite & ~truth.aircraft).sum()),
        "other": int((fp & ~truth.flash & ~truth.satellite & ~truth.aircraft).sum()),
    }
    if candidate is not None and suppressed is not None:
        candidate = np.asarray(candidate, dtype=bool)
        reasons = np.array([r or "" for r in suppressed], dtype=object)
        caught = candidate & (reasons != "")
        out["suppression"] = {
            "candidates": int(candidate.sum()), "suppressed": int(caught.sum()),
            "meteors_lost": int((caught & truth.meteor).sum()),
            "by_reason": {r: int((reasons[caught] == r).sum())
                          for r in sorted(set(reasons[caught]))},
        }
        for kind in ("satellite", "aircraft"):
            frames = getattr(truth, kind) & ~truth.meteor & candidate
            n = int(frames.sum())
            out[kind]["candidates"] = n
            out[kind]["suppressed"] = _ratio(int((frames & caught).sum()), n)
    return out


@dataclass(frozen=True)
class Curve:
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray  # nan where nothing is alerted
    fp_per_1000: np.ndarray


def curve(truth: Truth, score: np.ndarray, allowed: np.ndarray | None = None,
          min_threshold: float | None = None, points: int = 300) -> Curve:
    """Precision/recall/false positives as the threshold sweeps over the scores.

    alert(t) = score ≥ t (and `allowed`, e.g. "not suppressed"). `min_threshold` stops the sweep
    where `allowed` stops being known (guaita's suppression verdicts exist only for frames the
    scan saw as candidates)."""
    score = np.asarray(score, dtype=float)
    ok = np.ones_like(truth.meteor) if allowed is None else np.asarray(allowed, dtype=bool)
    values = np.unique(score)
    if min_threshold is not None:
        values = values[values >= min_threshold]
    if len(values) > points:
        values = np.unique(np.quantile(values, np.linspace(0, 1, points)))
    meteors = max(int(truth.meteor.sum()), 1)
    rec, prec, fpk = [], [], []
    for t in values:
        alert = (score >= t) & ok
        tp = int((alert & truth.meteor).sum())
        fp = int((alert & ~truth.meteor).sum())
        rec.append(tp / meteors)
        prec.append(tp / (tp + fp) if tp + fp else np.nan)
        fpk.append(1000 * fp / max(len(truth), 1))
    return Curve(values, np.array(rec), np.array(prec), np.array(fpk))


def fp_at_recall(c: Curve, target: float) -> tuple[float, float, float] | None:
    """(threshold, recall, FP per 1,000) at the highest threshold reaching `target` recall;
    None when the curve never gets there."""
    reach = np.flatnonzero(c.recall >= target - 1e-12)
    if len(reach) == 0:
        return None
    i = reach[-1]
    return float(c.thresholds[i]), float(c.recall[i]), float(c.fp_per_1000[i])


def recall_at_fp(c: Curve, max_fp_per_1000: float) -> tuple[float, float, float] | None:
    """(threshold, recall, FP per 1,000) with the best recall at no more false positives."""
    ok = np.flatnonzero(c.fp_per_1000 <= max_fp_per_1000 + 1e-12)
    if len(ok) == 0:
        return None
    i = ok[np.argmax(c.recall[ok])]
    return float(c.thresholds[i]), float(c.recall[i]), float(c.fp_per_1000[i])


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None
