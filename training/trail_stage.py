"""``guaita trail-stage``: fit a bundle's trail stage on the training nights, write a new bundle.

Every training-night frame the bundle's model scores at least --min-score is a candidate; its
strongest streak's light profile (edge/trail_stage.py: the one definition the Pi uses too) and the
model's score are the inputs of a logistic regression fitted to the labels. The new bundle holds
the same ONNX and the stage in its manifest; its threshold is carried over, so run
`guaita alert-threshold` on it next (the stage changes every candidate's score).

Why the training nights: the threshold and every reported figure must stay decisions of the
validation and test nights. The model has seen the training frames, so their scores are
optimistic, yet a stage fitted there did as well on held-out nights as one fitted on the other
held-out split (docs/training.md, "The trail stage"). The validation nights' best recall within
3 and 10 false positives per 1,000 frames, model alone and staged, is printed and recorded.

    guaita trail-stage --data ~/guaita-work/data --bundle models/guaita-r18-sim \\
        --out ~/guaita-work/bundle-staged --version 2.1.0
    guaita alert-threshold --data ~/guaita-work/data --bundle ~/guaita-work/bundle-staged
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from training._common import METEOR, TrainingError, load_index
from training._metrics import recall_within_budgets, stage_gain_summary

log = logging.getLogger(__name__)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0,
                 iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (the penalty spares the intercept):
    minimises 0.5·l2·|w|² + Σ log-loss, as scikit-learn's LogisticRegression(C=1/l2) does."""
    n, k = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.diag([l2] * k + [0.0])
    beta = np.zeros(k + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -500, 500)))
        gradient = design.T @ (p - y) + penalty @ beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return beta[:k], float(beta[k])


def fit_stage(rows: list[dict[str, float]], labels: np.ndarray, min_score: float, params,
              features: tuple[str, ...], fitted_on: dict[str, Any]):
    """A TrailStage from candidates' feature rows: NaN imputed by the column mean, standardised."""
    from edge.trail_stage import TrailStage

    x = np.array([[r[f] for f in features] for r in rows], dtype=float)
    impute = np.array([float(np.nanmean(c)) if np.isfinite(c).any() else 0.0 for c in x.T])
    x = np.where(np.isnan(x), impute, x)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    coef, intercept = fit_logistic((x - mean) / scale, labels.astype(float))
    return TrailStage(features=features, impute=tuple(impute), mean=tuple(mean),
                      scale=tuple(scale), coef=tuple(coef), intercept=intercept,
                      min_score=min_score, streak_params=params, fitted_on=fitted_on)


def candidate_rows(rows, scores: np.ndarray, min_score: float, params, mask, desc: str,
                   progress: bool) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The candidates' positions in `rows` and their stage inputs, read from the frames."""
    from tqdm import tqdm

    from edge.preprocess import apply_mask, positive_difference, read_gray
    from edge.trail_stage import trail_features

    picked = np.nonzero(scores >= min_score)[0]
    features = []
    for i in tqdm(picked, desc=desc, unit="frame", disable=not progress):
        row = rows.iloc[i]
        difference = apply_mask(positive_difference(read_gray(row["previous"]),
                                                    read_gray(row["frame"])), mask)
        features.append(trail_features(difference, scores[i], params))
    return picked, features


def held_out_gain(stage, rows, scores: np.ndarray, picked: np.ndarray,
                  features: list[dict[str, float]]) -> dict[str, Any]:
    """Best recall within each false-positive budget, model alone and staged."""
    y = (rows["label"] == METEOR).to_numpy()
    staged = scores.copy()
    staged[picked] = [stage.mapped(stage.probability(f)) for f in features]
    return {"frames": len(rows), "meteors": int(y.sum()), "candidates": len(picked),
            "model_alone": recall_within_budgets(y, scores),
            "staged": recall_within_budgets(y, staged)}


def write_staged_bundle(bundle, out: Path, stage: dict[str, Any], version: str | None,
                        gain: dict[str, Any], measured_without: str,
                        extra_files: dict[str, bytes] | None = None):
    """`bundle` again at `out` with its manifest's trail_stage replaced; the alert threshold
    was measured without this stage, so the manifest says to choose it again."""
    from edge.bundle import MANIFEST_NAME, MODEL_NAME, write_bundle

    data = json.loads((bundle.root / MANIFEST_NAME).read_text())
    data["trail_stage"] = stage
    if version:
        data["version"] = version
    data.pop("created_at", None)
    metrics = data.setdefault("metrics", {})
    metrics.pop("alerts", None)  # measured without this stage: run alert-threshold again
    metrics["trail_stage_valid"] = gain
    data["threshold_rule"] = (f"carried over from {bundle.label} ({measured_without}): run "
                              "guaita alert-threshold on this bundle")
    return write_bundle(out, (bundle.root / MODEL_NAME).read_bytes(), data, extra_files)


def build(args: argparse.Namespace) -> dict[str, Any]:
    from edge.bundle import load_bundle
    from edge.decide import Decider
    from edge.model import open_scorer
    from edge.preprocess import PreprocessSpec, read_gray
    from edge.trail_stage import FEATURES
    from training.evaluate import score_cached

    bundle = load_bundle(args.bundle)
    df, meta = load_index(args.data)
    if "frame" not in df.columns or "previous" not in df.columns:
        raise TrainingError(f"{args.data}: the index has no frame paths (the stage reads frames)")
    spec = PreprocessSpec.from_dict(meta["preprocessing"])
    if spec.fingerprint() != bundle.manifest.preprocessing.fingerprint():
        raise TrainingError(f"{args.data} was preprocessed as {spec.id}, the bundle expects "
                            f"{bundle.manifest.preprocessing.id}: not the model's index")
    if not 0.0 <= args.min_score < 1.0:
        raise TrainingError(f"--min-score {args.min_score} not in [0, 1)")
    mask = read_gray(meta["mask"]) if meta.get("mask") else None
    scorer = open_scorer(bundle, threads=args.threads)
    params = Decider().params  # the daemon's default streak finder, recorded in the stage
    splits: dict[str, Any] = {}
    for split in ("train", "valid"):
        rows = df[df["split"] == split].reset_index(drop=True)
        if rows.empty:
            raise TrainingError(f"{args.data}: no {split} frames")
        scores = score_cached(scorer, list(rows["path"]), spec.channels)
        picked, features = candidate_rows(rows, scores, args.min_score, params, mask,
                                          f"{split} candidates", args.progress)
        splits[split] = (rows, scores, picked, features)
        log.info("%s: %d frames, %d candidates (model score >= %.2f)", split, len(rows),
                 len(picked), args.min_score)
    rows, _, picked, features = splits["train"]
    y = (rows["label"] == METEOR).to_numpy()[picked]
    if y.all() or not y.any():
        raise TrainingError("the training candidates must hold both meteors and non-meteors")
    fitted_on = {"split": "train", "candidates": len(picked), "meteors": int(y.sum()),
                 "nights": int(rows["night"].nunique()), "dataset": str(args.data)}
    stage = fit_stage(features, y, args.min_score, params, FEATURES, fitted_on)
    gain = held_out_gain(stage, *splits["valid"])

    out = write_staged_bundle(bundle, args.out, stage.to_dict(), args.version, gain,
                              "model alone")
    report = {"bundle": out.label, "fitted_on": fitted_on, "valid": gain,
              "stage": stage.to_dict()}
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", type=Path, required=True,
                        help="the `guaita dataset index` output the model was trained on")
    parser.add_argument("--bundle", type=Path, required=True, help="the model's bundle")
    parser.add_argument("--out", type=Path, required=True, help="write the staged bundle here")
    parser.add_argument("--version", help="the new bundle's version (default: unchanged)")
    parser.add_argument("--min-score", type=float, default=0.3,
                        help="candidates: frames the model scores at least this (default 0.3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--report", type=Path, help="also write the report JSON here")


def run(args: argparse.Namespace) -> int:
    try:
        report = build(args)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"guaita trail-stage: {exc}")
        return 2
    print(f"wrote {args.out} ({report['bundle']}): stage fitted on "
          f"{report['fitted_on']['candidates']} training candidates; validation best recall "
          f"{stage_gain_summary(report['valid'], 'stage')}. "
          f"Next: guaita alert-threshold --bundle {args.out}")
    return 0
