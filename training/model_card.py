"""``python -m training.model_card``: write a bundle's README.md (its model card).

The card is rendered from what the bundle and ``guaita evaluate`` measured — the manifest
(training data, settings, calibration, parity) and one or more evaluate ``metrics.json`` (the
held-out test nights, the validation nights, an unseen camera) — so that a rebuilt model gets a
card that matches it, never hand-copied numbers.

    python -m training.model_card models/guaita-r18-sim \\
        --report test=/tmp/guaita-shipped/report --report unseen=/tmp/guaita-shipped/report-unseen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.bundle import load_bundle
from edge.trail_classifier import TrailClassifier
from training._metrics import TARGET_FP_PER_1000, TARGET_RECALL, bin_low, recall_at_text
from training.evaluate import format_value, missed_rows
from training.evaluate import markdown_table as _table

NAN = float("nan")
STATUS_SNR = 5.0  # the status line: recall at this SNR or more; one of meteor_snr.SNR_EDGES
SWEEP_SHOWN = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def _bundle_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The bundle's own entry (kind onnx) of an evaluate metrics.json."""
    models = metrics["models"]
    onnx = [m for m in models if m["kind"] == "onnx"]
    return (onnx or models)[-1]


def verdict(name: str, metrics: dict[str, Any]) -> str:
    """One honest line: the best recall any threshold (every distinct score; a 0.01 grid in
    reports before 3.5.0's second evaluation, the sweep's rows in older ones) reaches within
    the false-positive budget, and at that threshold the share found of the meteors at
    SNR 5 or more, where the report measured SNR."""
    b = _bundle_metrics(metrics)
    if "best_within_target" in b:
        best = b["best_within_target"]
    else:
        within = [s for s in b["sweep"] if s["fp_per_1000"] <= TARGET_FP_PER_1000]
        best = max(within, key=lambda s: s["recall"], default=None)
    if best is None:
        return (f"on {name}, no threshold keeps false positives within "
                f"{TARGET_FP_PER_1000:g} frames per 1,000: target recall {TARGET_RECALL} "
                "**not met**.")
    met = "met" if best["recall"] >= TARGET_RECALL else "**not met**"
    line = (f"on {name}, the best recall within {TARGET_FP_PER_1000:g} false-positive frames "
            f"per 1,000 is {recall_at_text(best)}: target "
            f"recall {TARGET_RECALL} {met}.")
    line += _found_above_snr(b)
    # `evaluate --alerts`: the same budget on what the operator receives, the rules applied.
    alerts = (b.get("alerts") or {}).get("best_within", {}).get(f"{TARGET_FP_PER_1000:g}")
    if alerts is not None:
        met = "met" if alerts["recall"] >= TARGET_RECALL else "not met"
        line += (f" The daemon's alerts (suppression rules on) reach {recall_at_text(alerts)} "
                 f"within {TARGET_FP_PER_1000:g} false alerts per 1,000: {met}.")
    return line


def _found_above_snr(bundle_metrics: dict[str, Any], snr_floor: float = STATUS_SNR) -> str:
    """At the same threshold, the share found of the meteors at SNR `snr_floor` or more: the
    two sets of nights compare on it whatever their mix of faint meteors (empty without SNR)."""
    rows = ((bundle_metrics.get("missed") or {}).get("at_best") or {}).get("rows_by_snr") or []
    binned = [(bin_low(r["bin"]), r) for r in rows if r["bin"] != "all"]
    above = [r for low, r in binned if low >= snr_floor]
    meteors = sum(r["meteors"] for r in above)
    if not meteors:
        return ""
    found = sum(r["detected"] for r in above)
    fainter = sum(r["meteors"] for low, r in binned if low < snr_floor)
    return (f" At that threshold it finds {found / meteors:.4f} ({found} of {meteors}) of the "
            f"meteor frames at SNR {snr_floor:g} or more; {fainter} are fainter.")


def by_condition_table(by: dict[str, Any] | None) -> list[str]:
    """Per sky condition: recall and false alerts, and the satellite/aircraft frames (no
    meteor) that raised no alert, by the model's score or by a rule."""
    if not by:
        return []

    def quiet(v: dict[str, Any]) -> str:
        share = v["no_alert_share"]
        return f"{v['frames'] - v['alerts']} of {v['frames']}" + (
            f" ({share:.1%})" if share is not None else "")

    rows = [[name, v["pipeline"]["frames"], v["pipeline"]["meteors"], v["classifier"]["recall"],
             v["pipeline"]["recall"], v["classifier"]["fp_per_1000"], v["pipeline"]["fp_per_1000"],
             quiet(v["satellite"]), quiet(v["aircraft"])]
            for name, v in sorted(by.items(), key=lambda kv: kv[0] == "all")]
    return ["", "By sky condition (model alone → with the rules; satellite and aircraft frames "
            "holding no meteor that raised no alert):", "",
            *_table(["condition", "frames", "meteor frames", "recall (model)", "recall (alerts)",
                     "FP / 1,000 (model)", "false alerts / 1,000", "satellite frames quiet",
                     "aircraft frames quiet"], rows)]


def alerts_section(alerts: dict[str, Any] | None, alone: str = "model alone") -> list[str]:
    """What the Pi would alert on: `guaita alert-threshold`'s pipeline runs, if it was run."""
    if not alerts:
        return []
    lines = ["## What the daemon alerts on (model + suppression rules)", "",
             f"The threshold was chosen by `guaita alert-threshold` (rule `{alerts['rule']}`): "
             "the validation nights' every frame through the edge pipeline, and a satellite or "
             "aircraft frame the suppression rules remove no longer counts as a false alarm. "
             f"Result: {alerts['why']}.", ""]
    test = alerts.get("test")
    if test:
        c, p = test["classifier"], test["pipeline"]
        lines += [f"Test nights ({c['frames']} frames, {c['meteors']} meteor frames) run as the "
                  f"Pi runs them, threshold {alerts['threshold']:g}:", ""]
        lines += _table(["", "meteor recall", "false positives / 1,000 frames"],
                        [[alone, c["recall"], c["fp_per_1000"]],
                         ["model + suppression (alerts)", p["recall"], p["fp_per_1000"]]])
        shares = test.get("suppressed_over_threshold", {})
        if shares:
            lines += ["", "Of the frames the model scored over the threshold, suppressed:", ""]
            lines += _table(["frames holding", "over threshold", "suppressed", "share"],
                            [[k, v["over_threshold"], v["suppressed"],
                              v["suppressed_share"] if v["suppressed_share"] is not None
                              else NAN] for k, v in shares.items()])
        lines += by_condition_table(test.get("by_condition"))
        lines.append("")
    sweep = alerts.get("sweep_valid", [])
    if sweep:
        lines += ["Validation nights, threshold sweep:", ""]
        lines += _table(["threshold", "recall (model)", "FP / 1,000 (model)",
                         "recall (alerts)", "false alerts / 1,000"],
                        [[r["threshold"], r["classifier"]["recall"],
                          r["classifier"]["fp_per_1000"], r["pipeline"]["recall"],
                          r["pipeline"]["fp_per_1000"]] for r in sweep])
        lines.append("")
    return lines


def missed_table(missed: dict[str, Any] | None) -> list[str]:
    """`guaita evaluate`'s blame for each meteor frame lost at the target's threshold."""
    if not missed:
        return []
    lines = ["", f"Where the meteors are lost at {missed['threshold']:.4g}, the best threshold "
             f"within {TARGET_FP_PER_1000:g} false positives per 1,000 (each meteor frame "
             "under the first reason):", "", *_table(*missed_rows(missed))]
    if missed.get("rows_by_snr"):
        lines += ["", "The same, by the meteor's signal-to-noise ratio:", "",
                  *_table(*missed_rows(missed, "snr"))]
    return lines


def _gain_table(gain: dict[str, Any], rows: list[tuple[str, str]]) -> list[str]:
    """Best recall within each false-positive budget, one row per (title, key of `gain`)."""
    keys = sorted(gain["model_alone"], key=lambda k: float(k.split("_")[2]))
    header = ["score", *[k.replace("recall_within_", "≤ ").replace("_per_1000", " / 1,000")
                         for k in keys]]
    return _table(header, [[title, *[gain[key][k] for k in keys]] for title, key in rows])


def _share_clause(fitted: dict[str, Any]) -> str:
    if "network_share" not in fitted:  # bundles before 3.5.0: a plain logistic regression
        return ""
    return (f": the network's share {fitted['network_share']:g} of the trail's, chosen by "
            f"{fitted.get('network_share_by', '?')} where a plain logistic regression gives "
            f"{fitted.get('logistic_network_share', float('nan')):.2f}")


def _members_clause(fitted: dict[str, Any]) -> str:
    members = int(fitted.get("members", 1))
    if members <= 1:
        return "a small CNN"
    seeds = ", ".join(str(s) for s in fitted.get("seeds", []))
    return (f"the mean logit of {members} small CNNs (one graph; the same training from seeds "
            f"{seeds})")


def _sharp_clause(stage) -> str:
    soft = stage.candidates.soft_fwhm_px
    return (f", lines under {soft:g} px FWHM before wider ones (cloud edges)" if soft > 0
            else "")


def _sampling_clause(stage) -> str:
    return (", each sample the mean over its stretch of the line" if stage.strip_sampling ==
            "mean" else "")


def classifier_section(stage, gain: dict[str, Any] | None) -> list[str]:
    """The trail classifier: what it looks at, what it was fitted on, what it adds."""
    fitted = stage.fitted_on or {}
    scalars = stage.inputs.get("scalars", [])
    lines = ["## Trail classifier", "",
             "Every frame pair's candidate lines (`edge/candidates.py`: the line map's "
             f"{stage.candidates.seeds} strongest maxima traced along their direction, with the "
             "streak finder's streaks, the "
             f"{stage.candidates.max_candidates} most significant kept{_sharp_clause(stage)}) "
             "are laid out as strips "
             "along their own length (`edge/trail_strip.py`: what appeared and what vanished, "
             "from half a length before the line to half a length past it"
             f"{_sampling_clause(stage)}), with "
             f"{len(scalars)} numbers each ({', '.join(scalars)}), and scored by "
             f"{_members_clause(fitted)} (`{stage.model_file}`, "
             f"{fitted.get('epochs', '?')} epochs on {fitted.get('candidates', '?')} candidates "
             f"of {fitted.get('frames', '?')} training-night frames, "
             f"{fitted.get('meteor_frames', '?')} of them meteor frames; hard-negative share "
             f"{fitted.get('hard_share', '?')}). The frame's trail logit is its best "
             "candidate's; the bundle's score is sigmoid("
             f"{stage.trail_weight:.3f} × trail logit {stage.network_weight:+.3f} × "
             f"logit(network) {stage.bias:+.3f}) (fitted on the validation nights"
             f"{_share_clause(fitted)}), "
             "so every figure on this card (except int8 against fp32, the network alone) and "
             "the threshold are for that score.", ""]
    if gain:
        lines += [f"Validation nights ({gain['frames']} frames, {gain['meteors']} meteor "
                  "frames), best recall within the false-positive budget:", ""]
        lines += _gain_table(gain, [("network alone", "model_alone"),
                                    ("trail classifier alone", "trail_alone"),
                                    ("the bundle's score (both)", "staged")])
        lines.append("")
    return lines


def trail_stage_section(stage, gain: dict[str, Any] | None) -> list[str]:
    """What the bundle's trail stage is, what it was fitted on, what it gained on validation."""
    if stage is None:
        return []
    if isinstance(stage, TrailClassifier):
        return classifier_section(stage, gain)
    fitted = stage.fitted_on or {}
    weights = ", ".join(f"{name} {c:+.2f}" for name, c in zip(stage.features, stage.coef,
                                                                strict=True))
    lines = ["## Trail stage", "",
             f"Frames the network scores at least {stage.min_score:g} are re-scored by a "
             "logistic regression on the network's score, the number of streaks and the "
             "strongest streak's light profile (`edge/trail_stage.py`): the bundle's score is "
             f"then {stage.min_score:g} + {1 - stage.min_score:g} × its probability, so every "
             "figure on this card (except int8 against fp32, the network alone) and the "
             f"threshold are for that score. Fitted on {fitted.get('candidates', '?')} "
             f"candidates of the training nights ({fitted.get('meteors', '?')} meteor frames, "
             f"{fitted.get('nights', '?')} nights). Standardised weights: {weights}.", ""]
    if gain:
        lines += [f"Validation nights ({gain['frames']} frames, {gain['meteors']} meteor frames, "
                  f"{gain['candidates']} candidates), best recall within the false-positive "
                  "budget:", ""]
        lines += _gain_table(gain, [("network alone", "model_alone"),
                                    ("with the trail stage", "staged")])
        lines.append("")
    return lines


def _mining_clause(training: dict[str, Any]) -> str:
    mined = training.get("hard_negatives")
    if not mined:
        return ""
    return (f", {mined.get('hard_share', 0):.0%} of each epoch's non-meteors drawn by "
            f"{mined.get('model', '?')}'s score (hard-negative mining: "
            f"{mined.get('scoring_0.5_or_more', '?')} of {mined.get('negatives_scored', '?')} "
            "training non-meteors scored 0.5 or more)")


def _stage(training: dict[str, Any]) -> str:
    return (f"{training.get('started_from', '?')}; {training.get('schedule', '?')}, batch "
            f"{training.get('batch_size', '?')}, balance `{training.get('balance', '?')}` "
            f"(neg_ratio {training.get('neg_ratio', '–')}){_mining_clause(training)}, "
            f"augmentation: {training.get('augmentation', '?')}; "
            f"{training.get('train_seconds', '?')} s on {training.get('device', '?')}.")


def _training_line(training: dict[str, Any]) -> str:
    """One sentence per training stage, the bundle's own first, then what it started from."""
    line = _stage(training)
    parent = training.get("parent")
    while parent:
        line += f" That model, {parent.get('name', '?')} {parent.get('version', '?')}: "
        line += _stage(parent)
        parent = parent.get("parent")
    return line


def render(bundle_dir: Path, reports: dict[str, Path],
           figures: dict[str, str] | None = None) -> str:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    # The loaded manifest drops keys the edge does not need, such as the threshold rule.
    threshold_rule = json.loads((bundle_dir / "manifest.json").read_text()).get(
        "threshold_rule", "rule not recorded")
    training = m.training
    data = training.get("data", {})
    splits = data.get("splits", {})
    lines = [f"# Model card: {m.name} {m.version}", ""]
    lines += [
        f"int8 ResNet ({training.get('arch', '?')}) meteor classifier for AllSky frame pairs, "
        f"input {m.preprocessing.channels}×{m.preprocessing.size}×{m.preprocessing.size}, "
        f"preprocessing `{m.preprocessing.id}` (`edge/preprocess.py`), "
        f"{bundle.model_path.stat().st_size / 1e6:.1f} MB. "
        f"Recommended threshold **{m.recommended_threshold:g}** "
        f"({threshold_rule}).",
        "",
        "**Trained on simulated skies only** (`guaita simulate`): treat every number below as "
        "a measurement on the simulator, not a promise for your camera. Fine-tune on your own "
        "labelled nights (below) before trusting its alerts.",
        "",
    ]
    loaded = {name: json.loads((folder / "metrics.json").read_text())
              for name, folder in reports.items()}
    if loaded:
        scored = ("the bundle's score (network and trail stage)" if m.trail_stage
                  else "model alone")
        lines += ["**Status against the project's target** (recall ≥ "
                  f"{TARGET_RECALL} at ≤ {TARGET_FP_PER_1000:g} false-positive frames per "
                  f"1,000, {scored}, before the daemon's suppression rules; and its alerts, the "
                  "rules applied, where the report ran the nights through the pipeline):", ""]
        lines += [f"- {verdict(name, metrics)}" for name, metrics in loaded.items()]
        lines.append("")
    lines += alerts_section(m.metrics.get("alerts"), "network and trail stage, no rules"
                            if m.trail_stage else "model alone")
    lines += trail_stage_section(m.trail_stage, m.metrics.get("trail_stage_valid"))
    lines += ["## Data", ""]
    source = data.get("source", {})
    lines.append(f"Source: {source.get('kind', '?')}, {len(source.get('path', []))} simulated "
                 f"cameras (sites), meteors under {source.get('min_peak', '?')} grey levels left "
                 "out as neither class. Split by whole nights:")
    lines.append("")
    lines += _table(["split", "nights", "frames", "meteor frames", "other frames"],
                    [[s, len(v.get("nights", [])), v.get("frames"), v.get("meteor"),
                      v.get("no-meteor")] for s, v in splits.items()])
    lines += ["", "## Training", ""]
    lines.append(_training_line(training))
    lines += ["", "## Results on held-out nights", ""]
    if figures:
        lines += [f"![{alt}]({link})" for alt, link in figures.items()] + [""]
    for name, metrics in loaded.items():
        b = _bundle_metrics(metrics)
        a = b["at_threshold"]
        lines += [f"### {name}: {metrics['frames']} frames, {metrics['meteors']} meteor frames, "
                  f"{len(metrics['nights'])} nights", ""]
        lines.append(f"At the recommended threshold {b['threshold']:g}: recall "
                     f"**{a['recall']:.3f}**, precision {a['precision']:.3f}, "
                     f"**{a['fp_per_1000']:.1f} false-positive frames per 1,000**; "
                     f"ROC AUC {b['roc_auc']:.4f}, average precision "
                     f"{b['average_precision']:.4f}.")
        if b.get("alerts"):
            al = b["alerts"]
            lines += ["", f"Through the daemon's pipeline (suppression rules on) at "
                      f"{al['threshold']:g}, as the Pi runs these nights: alert recall "
                      f"**{al['recall']:.3f}**, **{al['fp_per_1000']:.1f} false alerts per "
                      f"1,000 frames** ({al['fp']} of {al['frames']})."]
        lines.append("")
        shown = [s for s in b["sweep"] if round(s["threshold"], 3) in SWEEP_SHOWN
                 or abs(s["threshold"] - b["threshold"]) < 1e-9]
        lines += _table(["threshold", "recall", "precision", "FP frames / 1,000"],
                        [[s["threshold"], s["recall"], s["precision"], s["fp_per_1000"]]
                         for s in shown])
        if b.get("recall_by_peak"):
            lines += ["", "Recall by the meteor's peak brightness (grey levels above the sky):", ""]
            lines += _table(["peak", "meteors", "recall"],
                            [[r.get("bin", r.get("range", "?")), r.get("meteors", r.get("n")),
                              r.get("recall")] for r in b["recall_by_peak"]])
        if b.get("recall_by_snr"):
            # The same meteors on one scale whatever the sky: peak over the local noise σ.
            lines += ["", "Recall by the meteor's signal-to-noise ratio (its peak over the "
                      "difference's noise σ around it; training/meteor_snr.py):", ""]
            lines += _table(["SNR", "meteors", "recall"],
                            [[r["bin"], r["meteors"], r["recall"]] for r in b["recall_by_snr"]])
        lines += missed_table((b.get("missed") or {}).get("at_best"))
        for key, what in (("by_condition", "sky condition"), ("by_camera", "camera")):
            if b.get(key):
                lines += ["", f"By {what}:", ""]
                lines += _table([what.split()[-1], "frames", "meteors", "recall", "FP / 1,000"],
                                [[g["group"], g["frames"], g["meteors"], g["recall"],
                                  g["fp_per_1000"]] for g in b[key]])
        if b.get("false_positives_by_flag"):
            lines += ["", "False positives among frames that hold:", ""]
            lines += _table(["what", "frames", "false positives", "rate"],
                            [[f["negatives_with"], f["frames"], f["false_positives"],
                              f["fp_rate"]] for f in b["false_positives_by_flag"]])
        lines.append("")
    parity = m.metrics.get("parity", {})
    if parity:
        lines += ["## int8 against fp32 (the network alone)", ""]
        rows = []
        for key, v in parity.get("models", {}).items():
            rows.append([key, v.get("recall"), v.get("fp_per_1000")])
        lines += _table(["graph", f"recall @ {parity.get('threshold')}", "FP / 1,000"], rows)
        agree = parity.get("onnx_fp32_vs_int8", {})
        latency = m.metrics.get("latency_ms_1thread_x86", {})
        timing = ", ".join(f"{k} {v:.1f} ms" for k, v in latency.items())
        lines += ["", f"fp32 vs int8 ONNX on {parity.get('frames')} test frames: agreement "
                  f"{format_value(agree.get('agreement', NAN))}, "
                  f"max |Δp| {format_value(agree.get('max_abs_diff', NAN))}. "
                  f"Inference, 1 thread x86: {timing or 'not measured'}.", ""]
    lines += [
        "## Known limits",
        "",
        "- Simulated training data: real optics, compression, overlays and weather differ. "
        "Measure on your own nights first (`docs/training.md`, step 5).",
        "- A satellite crossing a single frame looks like a meteor to a per-frame classifier; "
        "the daemon's suppression rules (`docs/suppression.md`) look at the neighbouring frames"
        + (", and the trail stage at the light along the trail, whose light curves here are "
           "the simulator's (check it on labelled real nights)." if m.trail_stage else "."),
        *(["- The trail classifier learnt what meteors, satellites, aircraft and cloud edges "
           "look like along their lines from the simulator alone: its meteors' rise and fade, "
           "its satellites' steady light. A real camera's trails (tumbling satellites, meteor "
           "wakes, JPEG at another quality) need labelled real nights before its figures hold."]
          if isinstance(m.trail_stage, TrailClassifier) else []),
        "- Meteors fainter than the training cut (above) were never shown to the model as "
        "positives; the recall-by-brightness table says how it fares on them.",
        "",
        "## Fine-tune on your own nights",
        "",
        "```sh",
        "guaita dataset index --folders ~/guaita-work/labels --rest-negative \\",
        f"    --images ~/guaita-work/images --out ~/guaita-work/data --preprocess "
        f"{m.preprocessing.id} --size {m.preprocessing.size}",
        f"guaita train --data ~/guaita-work/data --out ~/guaita-work/model --init-from "
        f"models/{m.name} --epochs 10 --freeze-epochs 1",
        "guaita export --model ~/guaita-work/model --out ~/guaita-work/bundle --name my-site "
        "--version 1.0.0",
        *(["guaita trail-classifier --data ~/guaita-work/data --bundle ~/guaita-work/bundle "
           "--out ~/guaita-work/bundle --workers 4"]
          if isinstance(m.trail_stage, TrailClassifier) else
          ["guaita trail-stage --data ~/guaita-work/data --bundle ~/guaita-work/bundle "
           "--out ~/guaita-work/bundle"]),
        "guaita alert-threshold --bundle ~/guaita-work/bundle --data ~/guaita-work/data",
        "guaita evaluate --data ~/guaita-work/data --model ~/guaita-work/bundle "
        "--out ~/guaita-work/report",
        "```",
        "",
        "The whole procedure, with labelling, is in `docs/training.md`; the recipe that built "
        "this bundle is `training/recipes/shipped_model.sh`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--report", action="append", default=[], metavar="NAME=DIR",
                        help="an evaluate output folder (metrics.json), e.g. test=DIR")
    parser.add_argument("--figure", action="append", default=[], metavar="ALT=LINK",
                        help="an image to show, as a link relative to the card")
    args = parser.parse_args(argv)
    reports: dict[str, Path] = {}
    for item in args.report:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "metrics.json").is_file():
            parser.error(f"--report {item!r}: want NAME=DIR with DIR/metrics.json")
        reports[name] = Path(folder)
    figures = dict(item.partition("=")[::2] for item in args.figure)
    text = render(args.bundle, reports, figures)
    (args.bundle / "README.md").write_text(text)
    print(args.bundle / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
