"""Metrics on (label, meteor probability) arrays: pure numpy, shared by evaluate and export.

`y` is a boolean array (True = meteor), `p` the meteor probability. "Frames" counts every frame
scored, so ``fp_per_1000`` is what an operator sees: false alerts per 1,000 frames of sky.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

SWEEP = (*(round(t, 2) for t in np.arange(0.05, 0.951, 0.05)), 0.97, 0.98, 0.99, 0.995)
# What the project asks of a shipped model: this recall at no more than 1 % false-positive frames.
TARGET_RECALL = 0.95
TARGET_FP_PER_1000 = 10.0
GRID = (*(round(t, 2) for t in np.arange(0.01, 0.995, 0.01)), 0.995, 0.999)
PEAK_EDGES = (0, 5, 10, 20, 40, 80, 160, float("inf"))
FLAG_COLUMNS = ("satellite", "aircraft", "moon", "twilight", "flash", "exposure_jump")


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    return y, p


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def at_threshold(y, p, threshold: float) -> dict[str, Any]:
    """Confusion counts and the rates derived from them at one threshold (p >= t is meteor)."""
    y, p = _arrays(y, p)
    pred = p >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "frames": int(y.size), "meteors": int(y.sum()),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_1000": _ratio(1000 * fp, y.size),
        "fp_frame_rate": _ratio(fp, y.size),
        "fpr": _ratio(fp, fp + tn),
    }


HEADLINE_KEYS = ("threshold", "frames", "meteors", "tp", "fp", "fn", "precision", "recall", "f1",
                 "fp_per_1000", "fpr")


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The part of an `at_threshold` result that reports and manifests keep."""
    return {k: m[k] for k in HEADLINE_KEYS}


def per_class(y, p, threshold: float) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support for both classes (the no-meteor recall is 1 − FPR)."""
    m = at_threshold(y, p, threshold)
    tp, fp, fn, tn = m["tp"], m["fp"], m["fn"], m["tn"]
    return {
        "meteor": {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                   "support": tp + fn},
        "no-meteor": {"precision": _ratio(tn, tn + fn), "recall": _ratio(tn, tn + fp),
                      "f1": _ratio(2 * tn, 2 * tn + fn + fp), "support": tn + fp},
    }


def sweep(y, p, thresholds=SWEEP) -> list[dict[str, Any]]:
    return [at_threshold(y, p, t) for t in sorted(set(thresholds))]


def _counts_by_score(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, tp, fp) at each distinct score, highest first: what thresholding at that score
    (p >= score is meteor) finds. Equal scores are never split."""
    order = np.argsort(-p, kind="mergesort")
    ranked = p[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), y.size - 1] if y.size else np.array([], int)
    tps = np.cumsum(y[order])[last]
    return ranked[last], tps, (last + 1) - tps


def best_within(y, p, fp_per_1000: float) -> dict[str, Any] | None:
    """The highest recall any threshold reaches with false positives within `fp_per_1000`
    frames per 1,000 (None if none does): a target's verdict, not a sweep row. Every distinct
    score is tried, not a grid: a bundle's scores crowd near 1, where 0.01 steps pass over the
    best. Of thresholds with that recall, the highest (the fewest false positives)."""
    y, p = _arrays(y, p)
    scores, tp, fp = _counts_by_score(y, p)
    within = 1000 * fp / max(y.size, 1) <= fp_per_1000
    if not within.any():
        return None
    # The first index of the largest count within the budget: the highest such threshold.
    best = int(np.argmax(np.where(within, tp, -1)))
    return {**at_threshold(y, p, float(scores[best])), "fp_budget_per_1000": fp_per_1000}


def recall_at_text(best: dict[str, Any] | None) -> str:
    """A `best_within` (or `at_threshold`) result as "0.9498 (303 of 319, threshold 0.42)": four
    places, so a miss by a hair does not print as the target it misses; "none" when no
    threshold kept within the budget."""
    if best is None:
        return "none"
    counts = f"{best['tp']} of {best['meteors']}, " if "tp" in best and "meteors" in best else ""
    return f"{best['recall']:.4f} ({counts}threshold {best['threshold']:.4g})"


STAGE_BUDGETS = (3.0, 10.0)  # false positives per 1,000 frames a second stage is judged at


def recall_within_budgets(y, p) -> dict[str, float]:
    """{"recall_within_3_per_1000": …, …}: best recall at each of STAGE_BUDGETS. No threshold
    within a budget (a few frames, one false positive too many) counts as recall 0."""
    found = {b: best_within(y, p, b) for b in STAGE_BUDGETS}
    return {f"recall_within_{b:g}_per_1000": float(m["recall"]) if m else 0.0
            for b, m in found.items()}


def stage_gain_summary(valid: dict[str, Any], staged_name: str) -> str:
    """"within 3/1,000: network 0.345, with the <staged_name> 0.658, …" for a CLI's last line."""
    return ", ".join(
        f"within {b:g}/1,000: network {valid['model_alone'][k]:.3f}, with the {staged_name} "
        f"{valid['staged'][k]:.3f}"
        for b in STAGE_BUDGETS for k in [f"recall_within_{b:g}_per_1000"])


def roc_curve(y, p) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auc) over every distinct score; auc by the trapezoid rule."""
    y, p = _arrays(y, p)
    _, tps, fps = _counts_by_score(y, p)
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def partial_roc_area(y, p, max_fpr: float) -> float:
    """The ROC curve's area over false-positive rates 0..max_fpr, divided by max_fpr (1: every
    meteor ranked above the top max_fpr of the others). Where a budget is a few false
    positives per 1,000 frames, this compares rankings where the alerts are, and unlike the
    best recall within that budget it moves smoothly as the ranking changes."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], not {max_fpr}")
    fpr, tpr, _ = roc_curve(y, p)
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    xs, ys = fpr[:inside], tpr[:inside]
    if inside < fpr.size:  # the curve's piece that crosses max_fpr, cut there
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], tpr[inside - 1], tpr[inside]
        xs, ys = np.r_[xs, max_fpr], np.r_[ys, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    return float(np.trapezoid(ys, xs) / max_fpr)


def pr_curve(y, p) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision) over every distinct score."""
    y, p = _arrays(y, p)
    _, tps, fps = _counts_by_score(y, p)
    precision = tps / (tps + fps)
    recall = tps / max(int(y.sum()), 1)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if recall.size else float("nan")
    return np.r_[0.0, recall], np.r_[1.0, precision], ap


def choose_threshold(y, p, rule: str, groups=None) -> tuple[float, str]:
    """The recommended threshold on validation frames, by a named rule; returns (t, why).

    ``recall:R``  the highest threshold keeping meteor recall >= R (fewest false alarms that
                  still catch the wanted share of meteors);
    ``fp:F``      the lowest threshold with false positives <= F of all frames (most meteors
                  within an alarm budget);
    ``fp:F@C``    the same with a margin for the next nights. With `groups` (each frame's
                  night): in a share C of 2,000 resamplings of the nights (with replacement)
                  the false positives stay within F of the frames; false alarms come in
                  clusters (a night of satellites), so whole nights are what varies. Without:
                  the one-sided upper confidence bound, at level C, of the false-positive count
                  (Poisson). Validation nights are a sample: a threshold that just meets the
                  budget there exceeds it on about half of the nights to come;
    ``fbeta:B``   the threshold maximising F-beta (B > 1 weighs recall more).
    """
    y, p = _arrays(y, p)
    if not y.any():
        raise ValueError("cannot choose a threshold: the validation frames hold no meteor")
    kind, _, value = rule.partition(":")
    value, _, level = value.partition("@")
    try:
        target = float(value)
        confidence = float(level) if level else None
    except ValueError:
        raise ValueError(f"threshold rule {rule!r}: expected recall:R, fp:F, fp:F@C or "
                         "fbeta:B") from None
    if confidence is not None and (kind != "fp" or not 0.5 <= confidence < 1.0):
        raise ValueError(f"threshold rule {rule!r}: a confidence level (@C, 0.5 <= C < 1) "
                         "goes with fp:F only")
    table = [at_threshold(y, p, t) for t in GRID]
    if kind == "recall":
        ok = [m for m in table if m["recall"] >= target]
        if not ok:
            return GRID[0], f"no threshold reaches recall {target}; lowest grid value"
        best = max(ok, key=lambda m: m["threshold"])
        return best["threshold"], (f"highest threshold with validation recall >= {target} "
                                   f"(recall {best['recall']:.3f}, "
                                   f"{best['fp_per_1000']:.1f} FP/1000 frames)")
    if kind == "fp" and confidence is not None:
        if groups is not None:
            rates = resampled_fp_rates(y, p, groups, confidence)
            nights = len(set(np.asarray(groups).tolist()))
            within = [r <= target for r in rates]
            margin = f"in {confidence:.0%} of {RESAMPLINGS:,} resamplings of the {nights} nights"
            notes = [f"{r:.2%} at that quantile" for r in rates]
            unmet = f"in {confidence:.0%} of night resamplings"
        else:
            uppers = [poisson_upper(m["fp"], confidence) for m in table]
            within = [u <= target * m["frames"] for u, m in zip(uppers, table, strict=True)]
            margin = f"at {confidence:.0%} confidence"
            notes = [f"Poisson upper bound {u:.1f}" for u in uppers]
            unmet = f"at confidence {confidence}"
        ok = [i for i, keeps in enumerate(within) if keeps]
        if not ok:
            return GRID[-1], (f"no threshold keeps false positives <= {target} {unmet}; "
                              "highest grid value")
        i = min(ok, key=lambda k: table[k]["threshold"])
        best = table[i]
        return best["threshold"], (
            f"lowest threshold whose validation false positives ({best['fp']} of "
            f"{best['frames']} frames) stay within {target:.2%} of frames {margin} "
            f"({notes[i]}; recall {best['recall']:.3f})")
    if kind == "fp":
        ok = [m for m in table if m["fp_frame_rate"] <= target]
        if not ok:
            return GRID[-1], f"no threshold keeps false positives <= {target}; highest grid value"
        best = min(ok, key=lambda m: m["threshold"])
        return best["threshold"], (f"lowest threshold with validation false positives <= "
                                   f"{target:.2%} of frames (recall {best['recall']:.3f})")
    if kind == "fbeta":
        b2 = target * target

        def fbeta(m: dict) -> float:
            denom = (1 + b2) * m["tp"] + b2 * m["fn"] + m["fp"]
            return (1 + b2) * m["tp"] / denom if denom else 0.0

        best = max(table, key=lambda m: (fbeta(m), m["threshold"]))
        return best["threshold"], f"maximum validation F{target:g} ({fbeta(best):.3f})"
    raise ValueError(f"threshold rule {rule!r}: expected recall:R, fp:F, fp:F@C or fbeta:B")


RESAMPLINGS = 2000


def resampled_fp_rates(y, p, groups, confidence: float, seed: int = 0) -> np.ndarray:
    """For each GRID threshold, the `confidence` quantile of the false-positive frame rate over
    resamplings of the groups (nights) with replacement: a fixed seed, so a rerun agrees."""
    y, p = _arrays(y, p)
    keys, group = np.unique(np.asarray(groups), return_inverse=True)
    if group.shape != y.shape:
        raise ValueError(f"groups {group.shape} and labels {y.shape} differ in shape")
    grid = np.asarray(GRID)
    negative = ~y
    # False positives of each night at each threshold, and each night's frame count.
    fp = np.stack([np.bincount(group, weights=negative & (p >= t), minlength=len(keys))
                   for t in grid], axis=1)
    frames = np.bincount(group, minlength=len(keys)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(keys), (RESAMPLINGS, len(keys)))
    rates = fp[draws].sum(axis=1) / frames[draws].sum(axis=1)[:, None]
    return np.quantile(rates, confidence, axis=0)


def poisson_upper(count: int, confidence: float) -> float:
    """The one-sided upper confidence bound on a Poisson mean having seen `count` events: the
    mean under which seeing `count` or fewer has probability 1 - confidence (bisection)."""

    def cdf(mean: float) -> float:  # P(X <= count), summed in log space
        terms = [k * math.log(mean) - mean - math.lgamma(k + 1) for k in range(count + 1)]
        top = max(terms)
        return math.exp(top) * sum(math.exp(t - top) for t in terms)

    lo, hi = float(count), float(count) + 10.0 * math.sqrt(count + 1) + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - confidence else (lo, mid)
    return hi


def bin_label(lo: float, hi: float) -> str:
    """A bin's name in reports and metrics.json, e.g. "3–5", "160–inf" (`bin_low` reads it)."""
    return f"{lo:g}–{hi:g}"


def bin_low(label: str) -> float:
    """The lower edge of a `bin_label`."""
    return float(label.split("–")[0])


def recall_by_bins(y, p, threshold: float, values, edges=PEAK_EDGES) -> list[dict[str, Any]]:
    """Meteor recall per bin of `values` (e.g. peak brightness above background)."""
    y, p = _arrays(y, p)
    v = np.asarray(values, dtype=np.float64)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = y & (v >= lo) & (v < hi)
        n = int(sel.sum())
        if n:
            hits = int((p[sel] >= threshold).sum())
            rows.append({"bin": bin_label(lo, hi), "meteors": n, "detected": hits,
                         "recall": hits / n})
    return rows


def parity(reference, other, threshold: float) -> dict[str, float]:
    """How closely two models' meteor probabilities agree on the same frames."""
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    diff = np.abs(a - b)
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "agreement": float(((a >= threshold) == (b >= threshold)).mean()) if diff.size else 1.0,
    }


def int8_refusal(fp32_recall: float, int8_recall: float, max_drop: float = 0.01) -> str | None:
    """Why the int8 model must not ship (recall more than `max_drop` below fp32), else None."""
    if np.isnan(fp32_recall) or np.isnan(int8_recall):
        return "recall is undefined (no meteors in the parity set): cannot vouch for int8"
    drop = fp32_recall - int8_recall
    if drop > max_drop + 1e-9:
        return (f"int8 meteor recall {int8_recall:.4f} is {drop * 100:.2f} points below fp32 "
                f"{fp32_recall:.4f} (allowed: {max_drop * 100:.2f})")
    return None
