"""``guaita alert-threshold``: choose a bundle's recommended threshold by the *alerts* it causes.

`guaita export` chooses the threshold from the classifier alone, so every satellite and aircraft
frame scored high counts as a false alarm. On the Pi those frames rarely become alerts: the
suppression rules (edge/decide.py) see them continue in the neighbouring frames. A threshold
budgeted on classifier positives is therefore far too cautious: it gives up meteors to silence
streaks the pipeline would have silenced anyway.

This step runs the edge's own pipeline (decode, preprocess, the bundle's model, the default
suppression with its learned mask; `edge.scan`) over the *whole* frame sequence of every
validation night, and scores each labelled frame as the Pi would alert on it: its model score
where the pipeline would alert, 0 where a rule suppressed it. The threshold rule (``fp:F``:
the lowest threshold whose non-meteor alerts stay within F of all frames; ``fp:F@C`` the same at
confidence C, a margin for the nights to come) is applied to those alert scores, and the
bundle's manifest gets the threshold, the rule and the measured numbers.

The suppression verdicts are taken from one run at threshold 0, where every frame is a
candidate (a rule's verdict on a frame does not depend on the threshold, except that a
"duplicate" needs its twin to have been an alert, and the second look at a candidate with both
explained and unexplained streaks compares with the threshold: applied afterwards, from the
second-look score each decision records). The test nights are then run again at the chosen
threshold, exactly as the Pi would run them, and both the classifier-alone and the pipeline
numbers go into the manifest: those are the figures a model card quotes.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training._common import METEOR, TrainingError, load_index
from training._metrics import at_threshold, choose_threshold, headline

log = logging.getLogger(__name__)


def night_folders(rows) -> list[Path]:
    """The AllSky night folders holding the index rows' frames, in a stable order."""
    return sorted({Path(p).parent for p in rows["frame"]})


def _night_results(bundle: str, night: Path, threshold: float,
                   threads: int) -> dict[str, dict[str, Any]]:
    """One night through a fresh pipeline, as the daemon starts a night (a fresh learned mask
    included): {frame path: score, alert, reason, second look}."""
    from edge.config import parse_config
    from edge.decide import AutoMask
    from edge.frames import list_frames
    from edge.model import open_scorer
    from edge.pipeline import make_pipeline
    from edge.scan import scan_decisions

    cfg = parse_config("", source="<built-in defaults>")  # what a fresh install runs
    cfg = replace(cfg, detection=replace(cfg.detection, threshold=threshold, threads=threads))
    scorer = open_scorer(bundle, threads=threads)
    auto_mask = AutoMask() if cfg.suppression.enabled and cfg.suppression.auto_mask else None
    pipeline = make_pipeline(cfg, scorer, auto_mask)
    frames = list_frames(night)
    out = {str(d.frame.path): {"score": float(d.score), "alert": d.alert,
                               "suppressed": d.suppressed, "second_look": d.second_look}
           for d in scan_decisions(pipeline, frames, progress=False)}
    log.info("  %s: %d frames", night.name, len(frames))
    return out


def _night_job(job: tuple[str, Path, float, int]) -> dict[str, dict[str, Any]]:
    return _night_results(*job)


def run_pipeline(bundle: Path, nights: list[Path], threshold: float, threads: int = 1,
                 workers: int = 1) -> dict[str, dict[str, Any]]:
    """Every frame of `nights` through the edge pipeline: {frame path: score, alert, reason};
    nights are independent, so `workers` processes run them side by side."""
    from training._parallel import process_map

    jobs = [(str(bundle), night, threshold, threads) for night in nights]
    out: dict[str, dict[str, Any]] = {}
    for part in process_map(_night_job, jobs, workers):
        out.update(part)
    return out


def results_for(rows, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's result for each index row, in row order."""
    missing = [p for p in rows["frame"] if str(p) not in results]
    if missing:
        raise TrainingError(f"{missing[0]}: the pipeline did not score this frame (unreadable?)"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return [results[str(p)] for p in rows["frame"]]


def alerts_at(bundle: Path, rows, threshold: float, threads: int = 1,
              workers: int = 1) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """The rows' nights through the pipeline at `threshold`, exactly as the Pi runs them: the
    results by frame, and per row 1.0 where it alerted, else 0.0."""
    results = run_pipeline(bundle, night_folders(rows), threshold, threads, workers)
    return results, np.asarray([float(r["alert"]) for r in results_for(rows, results)])


def alerts_headline(y: np.ndarray, alerted: np.ndarray, threshold: float) -> dict[str, Any]:
    """Recall and false alerts of `alerts_at`'s verdicts (already decided at `threshold`)."""
    return {**headline(at_threshold(y, alerted, 0.5)), "threshold": threshold}


def alert_scores(rows, results: dict[str, dict[str, Any]],
                 rescore_below: float | None = None) -> np.ndarray:
    """Per index row: the model score where the pipeline would not suppress it, else 0.

    The one threshold-dependent rule, the decider's second look (a frame whose explained streaks
    masked out score under min(threshold, rescore_below) takes their reason), is applied here:
    at threshold 0 it never fires, so such a frame alerts at t only while t <= its second look.
    """
    from edge.decide import alert_score

    below = _rescore_below(rescore_below)
    return np.asarray([alert_score(r["score"], r["suppressed"], r.get("second_look"), below)
                       for r in results_for(rows, results)], dtype=np.float64)


def _rescore_below(value: float | None) -> float:
    from edge.config import SuppressionConfig

    return SuppressionConfig().rescore_below if value is None else value


def _suppressed_at(result: dict[str, Any], threshold: float, below: float) -> bool:
    """Whether a threshold-0 result is suppressed when run at `threshold`."""
    from edge.decide import second_look_suppresses

    return bool(result["suppressed"]) or second_look_suppresses(result.get("second_look"),
                                                                threshold, below)


def _flag(rows, column: str):
    """A 0/1 truth column as booleans (all False when the labels have no such column)."""
    import pandas as pd

    if column not in rows.columns:
        return pd.Series(False, index=rows.index)
    return pd.to_numeric(rows[column], errors="coerce").fillna(0) > 0


def _suppressed_shares(rows, results: dict[str, dict[str, Any]], threshold: float,
                       rescore_below: float | None = None) -> dict:
    """Among frames the classifier puts over `threshold`: how many each rule removed. Satellite
    and aircraft frames are those without a meteor (a meteor beside a satellite must alert)."""
    below = _rescore_below(rescore_below)
    meteor = rows["label"] == METEOR
    out: dict[str, Any] = {}
    for name, kind in (("meteor", meteor),
                       ("satellite", _flag(rows, "satellite") & ~meteor),
                       ("aircraft", _flag(rows, "aircraft") & ~meteor)):
        over = [results[str(p)] for p in rows.loc[kind, "frame"]
                if results[str(p)]["score"] >= threshold]
        removed = sum(1 for r in over if _suppressed_at(r, threshold, below))
        out[name] = {"over_threshold": len(over), "suppressed": removed,
                     "suppressed_share": removed / len(over) if over else None}
    return out


def _quiet_share(frames: int, alerts: int) -> dict[str, Any]:
    return {"frames": frames, "alerts": alerts,
            "no_alert_share": (frames - alerts) / frames if frames else None}


def breakdown(rows, classifier: np.ndarray, alerted: np.ndarray, threshold: float) -> dict:
    """Per sky condition and over all: recall and false alerts (model alone, then model +
    rules), and of the frames holding a satellite or aircraft (no meteor) how many raised no
    alert, whether the model scored them under the threshold or a rule removed them. That last
    share is the system's: `suppressed_over_threshold` gives the rules' part alone."""
    y = (rows["label"] == METEOR).to_numpy()
    moving = {"satellite": _flag(rows, "satellite").to_numpy() & ~y,
              "aircraft": _flag(rows, "aircraft").to_numpy() & ~y}
    moving["satellite_or_aircraft"] = moving["satellite"] | moving["aircraft"]
    conditions = (rows["condition"].fillna("unknown").astype(str).to_numpy()
                  if "condition" in rows.columns else np.full(len(rows), "unknown"))
    out: dict[str, Any] = {}
    for name in ["all", *sorted(set(conditions))]:
        keep = np.ones(len(rows), bool) if name == "all" else conditions == name
        out[name] = {
            "classifier": headline(at_threshold(y[keep], classifier[keep], threshold)),
            # `alerted` is already decided at `threshold`: 0.5 only splits its 0s from its 1s.
            "pipeline": {**headline(at_threshold(y[keep], alerted[keep].astype(float), 0.5)),
                         "threshold": threshold},
            **{kind: _quiet_share(int(np.count_nonzero(m & keep)),
                                  int(np.count_nonzero(m & keep & alerted)))
               for kind, m in moving.items()},
        }
    return out


def choose(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from edge.bundle import MANIFEST_NAME, load_bundle

    bundle = load_bundle(args.bundle)
    indexes = [load_index(path)[0] for path in args.data]
    for path, index in zip(args.data, indexes, strict=True):
        if "frame" not in index.columns:
            raise TrainingError(f"{path}: the index has no frame paths")
    # More indexes add validation nights (e.g. nights labelled for the threshold alone, indexed
    # with --all-in valid); the test nights are the first index's.
    df = indexes[0]
    valid = pd.concat([index[index["split"] == "valid"] for index in indexes],
                      ignore_index=True)
    test = df[df["split"] == "test"]
    if valid["frame"].duplicated().any():
        raise TrainingError("the same validation frame is in two --data indexes")
    if valid.empty or not (valid["label"] == METEOR).any():
        raise TrainingError("the validation nights hold no meteor: cannot choose a threshold")

    log.info("validation nights through the pipeline (threshold 0: every frame a candidate)")
    v_results = run_pipeline(bundle.root, night_folders(valid), 0.0, args.threads,
                             args.workers)
    yv = (valid["label"] == METEOR).to_numpy()
    classifier_v = np.asarray([r["score"] for r in results_for(valid, v_results)])
    pipeline_v = alert_scores(valid, v_results)
    threshold, why = choose_threshold(yv, pipeline_v, args.rule, valid["night"].to_numpy())
    log.info("alert threshold %.3f: %s", threshold, why)
    report: dict[str, Any] = {
        "rule": args.rule, "threshold": threshold, "why": why,
        "valid": {"classifier": headline(at_threshold(yv, classifier_v, threshold)),
                  "pipeline": headline(at_threshold(yv, pipeline_v, threshold)),
                  "suppressed_over_threshold": _suppressed_shares(valid, v_results, threshold),
                  "by_condition": breakdown(valid, classifier_v, pipeline_v >= threshold,
                                            threshold)},
        "sweep_valid": [
            {"threshold": t,
             "classifier": headline(at_threshold(yv, classifier_v, t)),
             "pipeline": headline(at_threshold(yv, pipeline_v, t))}
            for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)],
    }
    if not test.empty and not args.no_test:
        log.info("test nights through the pipeline at threshold %.3f, as the Pi runs them",
                 threshold)
        t_results, alerts_t = alerts_at(bundle.root, test, threshold, args.threads,
                                        args.workers)
        yt = (test["label"] == METEOR).to_numpy()
        classifier_t = np.asarray([r["score"] for r in results_for(test, t_results)])
        report["test"] = {
            "classifier": headline(at_threshold(yt, classifier_t, threshold)),
            "pipeline": alerts_headline(yt, alerts_t, threshold),
            "suppressed_over_threshold": _suppressed_shares(test, t_results, threshold),
            "by_condition": breakdown(test, classifier_t, alerts_t > 0.5, threshold),
        }
        log.info("test: classifier recall %.4f at %.2f FP/1000; pipeline recall %.4f at %.2f "
                 "false alerts/1000", report["test"]["classifier"]["recall"],
                 report["test"]["classifier"]["fp_per_1000"],
                 report["test"]["pipeline"]["recall"], report["test"]["pipeline"]["fp_per_1000"])

    if not args.dry_run:
        # Rewrite the manifest in place: the ONNX (and its sha256) are untouched.
        path = bundle.root / MANIFEST_NAME
        data = json.loads(path.read_text())
        data["recommended_threshold"] = threshold
        data["threshold_rule"] = (f"{args.rule} on validation-night pipeline alerts "
                                  f"(guaita alert-threshold): {why}")
        data.setdefault("metrics", {})["alerts"] = report
        path.write_text(json.dumps(data, indent=2) + "\n")
        load_bundle(bundle.root)  # still a bundle the edge accepts
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="the `guaita dataset index` output the model was trained on; "
                             "repeat to add the validation nights of other indexes (a more "
                             "reliable threshold: false alerts cluster by night)")
    parser.add_argument("--rule", default="fp:0.003@0.9",
                        help="threshold rule on validation alert scores (default fp:0.003@0.9: "
                             "at most 3 false alerts per 1,000 frames at 90 %% confidence; "
                             "fp:0.003 without the margin)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes running nights side by side (default 1)")
    parser.add_argument("--no-test", action="store_true", help="skip the test-night run")
    parser.add_argument("--dry-run", action="store_true", help="report, leave the bundle as is")
    parser.add_argument("--report", type=Path, help="also write the report JSON here")


def run(args: argparse.Namespace) -> int:
    try:
        report = choose(args)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"guaita alert-threshold: {exc}")
        return 2
    print(f"recommended threshold {report['threshold']:.3f}: {report['why']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guaita alert-threshold")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
