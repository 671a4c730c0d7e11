"""Measure a second stage that reads the whole trail (docs/training.md, "The next lever").

The measurement behind the shipped stage (`guaita trail-stage`, edge/trail_stage.py: logistic
regression on the "profile" features, fitted on the training nights); it also compares other
classifiers and feature sets. On an index's validation and test nights,
every frame the bundle scores at least --min-score is a candidate; its strongest streak's light
profile (`DiffAnalysis.steadiness`, the decider's streak parameters) and the model's score feed a
small classifier trained on one split's candidates and scored on the other's (or, with
--fit-on train, trained on the training nights' candidates). Each candidate's
score becomes min_score + (1 - min_score) * the stage's probability, so candidates stay above
every other frame, and the best recall within 3 and 10 false positives per 1,000 frames is
compared with the model alone. --alerts puts the stage between the model and the daemon's rules
(every validation and test frame through the edge pipeline, as `guaita alert-threshold` runs it).

    .venv/bin/python -m training.recipes.trail_stage --data /tmp/guaita-shipped/data \\
        --bundle models/guaita-r18-sim --out /tmp/guaita-shipped/trail-stage.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from edge.trail_stage import PROFILE as SHAPE  # the shipped stage's profile
from training._common import METEOR, load_index, write_json
from training._metrics import best_within

GEOMETRY = ("log_peak", "log_snr", "log_length", "width")
FEATURE_SETS = {
    "profile": ("score", "streaks", *SHAPE),
    "profile + geometry": ("score", "streaks", *SHAPE, *GEOMETRY),
    "geometry": ("score", "streaks", *GEOMETRY),
}
BUDGETS = (3.0, 10.0)


def candidate_features(frame: str, previous: str, params) -> dict[str, float]:
    """The shipped stage's profile inputs of a frame pair, and its strongest streak's geometry;
    NaN where no streak is found."""
    from edge.preprocess import positive_difference, read_gray
    from edge.streaks import DiffAnalysis
    from edge.trail_stage import profile_features

    analysis = DiffAnalysis(positive_difference(read_gray(previous), read_gray(frame)), params)
    streaks = analysis.streaks
    if not streaks:
        return profile_features(0, None) | {name: math.nan for name in GEOMETRY}
    streak, light = streaks[0], analysis.steadiness(streaks[0])
    return profile_features(len(streaks), light) | {
        "log_peak": math.log(max(streak.peak, 1.0)), "log_snr": math.log(max(light.snr, 0.1)),
        "log_length": math.log(max(streak.length_px, 1.0)), "width": streak.width_px}


def candidate_table(rows, score: np.ndarray, min_score: float, params) -> dict[str, Any]:
    """Labels and scores of a split's frames, and the features of its candidates."""
    picked = np.nonzero(score >= min_score)[0]
    features = [candidate_features(rows["frame"][i], rows["previous"][i], params) | {
        "score": score[i]} for i in picked]
    return {"y": (rows["label"] == METEOR).to_numpy().astype(int), "score": score,
            "picked": picked, "features": features}


def network_only(bundle: Path) -> Path:
    """The bundle itself, or where it carries a trail stage (2.1.0 on), a temporary copy without
    it: the stage measured here re-scores the network's own scores, never a staged score."""
    import json
    import shutil
    import tempfile

    from edge.bundle import MANIFEST_NAME, MODEL_NAME, load_bundle

    root = load_bundle(bundle).root
    data = json.loads((root / MANIFEST_NAME).read_text())
    if data.pop("trail_stage", None) is None:
        return bundle
    copy = Path(tempfile.mkdtemp(prefix="guaita-network-only-"))
    shutil.copy(root / MODEL_NAME, copy / MODEL_NAME)
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    load_bundle(copy)
    print(f"{bundle} carries a trail stage: measuring its network alone ({copy})")
    return copy


def split_table(df, split: str, bundle: Path, channels: int, min_score: float, params,
                threads: int) -> dict[str, Any]:
    """A split scored by the bundle on its cached model inputs (as `guaita evaluate` does)."""
    from training.evaluate import score_bundle

    rows = df[df["split"] == split].reset_index(drop=True)
    score = score_bundle(bundle, rows, None, channels, None, False, threads).probs
    table = candidate_table(rows, score, min_score, params)
    print(f"{split}: {len(rows)} frames, {len(table['picked'])} candidates "
          f"(score >= {min_score})")
    return table


def classifiers() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "gradient boosting": lambda: HistGradientBoostingClassifier(
            max_depth=3, max_iter=200, learning_rate=0.05, random_state=0),
        "logistic regression": lambda: make_pipeline(
            SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=3000)),
    }


def matrix(table: dict[str, Any], columns: tuple[str, ...]) -> np.ndarray:
    return np.array([[f[c] for c in columns] for f in table["features"]], dtype=float)


def staged(make, columns: tuple[str, ...], fit: dict[str, Any], use: dict[str, Any],
           min_score: float) -> np.ndarray:
    """`use`'s scores with its candidates re-scored by a stage fitted on `fit`'s candidates,
    mapped above min_score so that they stay above every other frame."""
    model = make().fit(matrix(fit, columns), fit["y"][fit["picked"]])
    out = use["score"].copy()
    out[use["picked"]] = min_score + (1 - min_score) * model.predict_proba(
        matrix(use, columns))[:, 1]
    return out


def best(y: np.ndarray, p: np.ndarray) -> list[float]:
    return [float(best_within(y, p, budget)["recall"]) for budget in BUDGETS]


def measure(tables: dict[str, dict[str, Any]], min_score: float,
            fit_on: str) -> list[dict[str, Any]]:
    results = [{"stage": "model alone", "features": "",
                **{split: best(tables[split]["y"], tables[split]["score"])
                   for split in ("valid", "test")}}]
    pairs = ((("train", "test"), ("train", "valid")) if fit_on == "train"
             else (("valid", "test"), ("test", "valid")))
    for kind, make in classifiers().items():
        for name, columns in FEATURE_SETS.items():
            row: dict[str, Any] = {"stage": kind, "features": name}
            for train, test in pairs:
                use = tables[test]
                row[test] = best(use["y"], staged(make, columns, tables[train], use, min_score))
            results.append(row)
    return results


def alert_level(df, tables: dict[str, dict[str, Any]], bundle: Path, min_score: float,
                fit_on: str, params, threads: int) -> dict[str, Any]:
    """The stage between the model and the daemon's rules: every valid/test frame through the
    edge pipeline at threshold 0 (`guaita alert-threshold`'s run), candidates re-scored by the
    profile stage (gradient boosting), then each frame's alert score (0 where a rule
    suppressed it); the threshold chosen on validation by the shipped rule, fp:0.003."""
    from edge.decide import alert_score
    from training._metrics import at_threshold, choose_threshold
    from training.alert_threshold import _rescore_below, night_folders, results_for, run_pipeline

    below = _rescore_below(None)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for split in ("valid", "test"):
        rows = df[df["split"] == split].reset_index(drop=True)
        found = results_for(rows, run_pipeline(bundle, night_folders(rows), 0.0, threads))
        table = candidate_table(rows, np.array([r["score"] for r in found]), min_score, params)
        fit = tables["train" if fit_on == "train" else ("test" if split == "valid" else "valid")]
        stage = staged(classifiers()["gradient boosting"], FEATURE_SETS["profile"], fit, table,
                       min_score)
        scores[split] = {"y": table["y"], **{
            name: np.array([alert_score(s, r["suppressed"], r.get("second_look"), below)
                            for s, r in zip(values, found, strict=True)])
            for name, values in (("rules", table["score"]), ("stage + rules", stage))}}
        print(f"{split}: {len(rows)} frames through the pipeline, "
              f"{len(table['picked'])} candidates")
    out: dict[str, Any] = {}
    for name in ("rules", "stage + rules"):
        t, _ = choose_threshold(scores["valid"]["y"], scores["valid"][name], "fp:0.003")
        out[name] = {"threshold": t, **{
            split: {"at_threshold": at_threshold(v["y"], v[name], t),
                    "best": best(v["y"], v[name])} for split, v in scores.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipes.trail_stage",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a `guaita dataset index` output")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--fit-on", choices=("other", "train"), default="other",
                        help="train the stage on the other held-out split's candidates (default), "
                             "or on the training nights' (the model's scores there are its own "
                             "training frames': optimistic)")
    parser.add_argument("--alerts", action="store_true",
                        help="also measure alerts: the stage between the model and the rules")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)

    from edge.decide import Decider
    from edge.preprocess import PreprocessSpec

    df, meta = load_index(args.data)
    channels = PreprocessSpec.from_dict(meta["preprocessing"]).channels
    params = Decider().params
    splits = ("valid", "test", "train") if args.fit_on == "train" else ("valid", "test")
    bundle = network_only(args.bundle)
    tables = {split: split_table(df, split, bundle, channels, args.min_score, params,
                                 args.threads) for split in splits}
    results = measure(tables, args.min_score, args.fit_on)
    print("| stage | features | test: <= 3 FP / 1,000, <= 10 | validation: <= 3, <= 10 |")
    print("|---|---|---|---|")
    for r in results:
        cells = [", ".join(f"{v:.3f}" for v in r[s]) for s in ("test", "valid")]
        print(f"| {r['stage']} | {r['features']} | {cells[0]} | {cells[1]} |")
    alerts = None
    if args.alerts:
        alerts = alert_level(df, tables, bundle, args.min_score, args.fit_on, params,
                             args.threads)
        print("| alerts | threshold (fp:0.003 on validation) | test: recall, false alerts / 1,000 "
              "| validation | test: best <= 3, <= 10 | validation: best <= 3, <= 10 |")
        print("|---|---|---|---|---|---|")
        for name, r in alerts.items():
            cells = [f"{r[s]['at_threshold']['recall']:.3f}, "
                     f"{r[s]['at_threshold']['fp_per_1000']:.1f}" for s in ("test", "valid")]
            bests = [", ".join(f"{v:.3f}" for v in r[s]["best"]) for s in ("test", "valid")]
            print(f"| {name} | {r['threshold']:.2f} | {cells[0]} | {cells[1]} | {bests[0]} "
                  f"| {bests[1]} |")
    if args.out:
        write_json(args.out, {"min_score": args.min_score, "budgets": BUDGETS,
                              "fit_on": args.fit_on, "alerts": alerts,
                              "bundle": str(args.bundle), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
