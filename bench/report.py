"""results.json → docs/BENCHMARKS.md + docs/img/bench-*.png. Every number in the report comes
from the results of one `python -m bench` run; the prose around them says what they mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import plots
from bench.metrics import BRIGHTNESS

NAMES = {
    "guaita": "guaita (shipped int8 model + suppression)",
    "guaita-model": "guaita model alone, no suppression",
    "reference": "2021 reference (V4 + fastai ResNet34, 0.85)",
    "classical": "classical Hough detector",
}
ORDER = ("guaita", "guaita-model", "reference", "classical")


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


# ---------------------------------------------------------------- sections


def section_setup(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m.get("versions", {})
    plan = r["plan"]
    model = r["model"]
    lines = [
        "## Setup",
        "",
        f"* **Machine**: {m.get('model name', '?')}, {m.get('cpus')} CPUs as seen by the OS, "
        f"{m.get('MemTotal', '?')} RAM, {m.get('os', '?')}, kernel {m.get('kernel')}; Python "
        f"{m.get('python')}, onnxruntime {v.get('onnxruntime')}, OpenCV "
        f"{v.get('opencv-python-headless')}, torch {v.get('torch')}, fastai {v.get('fastai')}, "
        f"{m.get('mosquitto') or 'mosquitto'}. No GPU. The machine is shared with other jobs: "
        f"the 1-minute load average during this run was {num(r['load']['mean'], 1)} on average "
        f"(max {num(r['load']['max'], 1)}), so wall times carry noise; CPU seconds are the "
        f"steadier measure.{_reruns(r)}",
        f"* **guaita**: bundle `{model['name']}@{model['version']}` (sha256 "
        f"`{model['sha256'][:12]}…`, {num(model['size_bytes'] / 1e6, 1)} MB), preprocessing "
        f"`{model['preprocessing']['id']}` at {model['preprocessing']['size']} px, threshold "
        f"{num(model['threshold'], 3)} (the bundle's recommended one, as the daemon uses it by "
        f"default), the default `[suppression]` settings including the learned mask. Its fp32 "
        f"twin for the cost table: {r.get('fp32_origin', '–')}.",
    ]
    ref = r.get("reference")
    if ref:
        t = ref["train"]
        counts = ref.get("dataset_counts") or {}
        tr = counts.get("train", {})
        lines.append(
            f"* **2021 reference**: V4 preprocessing at {plan['ref']['size']} px + fastai "
            f"{t.get('arch')} trained with `guaita dataset index --preprocess v4` and `guaita "
            f"train --arch resnet34 --no-pretrained --epochs {t.get('epochs')} --lr "
            f"{t.get('lr')} --balance undersample --batch-size {t.get('batch_size')}` "
            f"({t.get('schedule')}) on {tr.get('meteor', '?')} meteor and "
            f"{tr.get('no-meteor', '?')} non-meteor frames drawn from the shipped model's "
            f"{len(ref['nights']['train'])} training nights (frames "
            f"{ref.get('training_nights_origin')}); every epoch sees all the meteors and as "
            f"many freshly drawn non-meteors. It took "
            f"{num((t.get('train_seconds') or 0) / 60, 1)} min here. Scored with fastai "
            f"`Learner.predict` semantics at threshold {plan['ref']['threshold']}, no "
            f"suppression.")
    c = r["classical"]
    lines.append(
        f"* **Classical detector** (`bench/classical.py`): Gaussian blur {c['blur']}×{c['blur']}"
        f", positive difference with the previous frame, threshold {c['diff_threshold']} grey "
        f"levels (AllSky's temporal meteor module default `diff_thr`), Canny "
        f"{c['canny_low']}/{c['canny_high']}, `cv2.HoughLinesP` ρ {c['rho']:g} px, θ "
        f"{c['theta_deg']:g}°, {c['votes']} votes, min length {c['min_line_length']} px, max gap "
        f"{c['max_line_gap']} px (indi-allsky's `detectLines` defaults). A frame with any line "
        f"is a detection. indi-allsky restricts this to a central region unless a mask is drawn; "
        f"here it sees the whole frame, as the other two do. Its curve sweeps a minimum length "
        f"over the longest segment found with {c['score_votes']} votes.")
    lines += ["", "### Held-out bench nights", "",
              "Simulated with `training/simulate.py` (see docs/simulator.md) at "
              f"{plan['width']}×{plan['height']}, seeds and dates disjoint from every training "
              "run (bench/plan.py explains the seeds). *seen* = the site of training camera 0 "
              "(new nights), *unseen* = a camera no model was trained on. Event rates are "
              "raised above nature so that every class has examples; per-frame rates below do "
              "not depend on them. Frame counts include each night's first frame, which has no "
              "previous frame and is not scored by any detector.", ""]
    rows = []
    for n in r["nights"]:
        rows.append([n["label"], n["night"], n["condition"], str(n["frames"]), str(n["meteors"]),
                     str(n["satellite"]), str(n["aircraft"]), str(n["flash"]),
                     num(n["cloud_cover"], 2), num(n["moon"], 2)])
    total = [sum(n[k] for n in r["nights"]) for k in ("frames", "meteors", "satellite",
                                                       "aircraft", "flash")]
    rows.append(["**all**", "", "", *[f"**{t}**" for t in total], "", ""])
    lines.append(_table(["night", "folder", "sky", "frames", "meteor frames", "satellite frames",
                         "aircraft frames", "flashes", "mean cloud", "moon"], rows))
    return "\n".join(lines)


def section_accuracy(r: dict[str, Any], img: Path) -> str:
    a = r["accuracy"]
    d = a["detectors"]
    keys = [k for k in ORDER if k in d]
    out = ["## Accuracy", "",
           f"{a['frames']} scored frames ({d['guaita']['meteors']} with a meteor). Operating "
           f"points: guaita at its bundle threshold {num(a['threshold'], 3)} with suppression, "
           "the reference at 0.85, the classical detector at its defaults. False positives are "
           "alerts on frames without a meteor, per 1,000 frames scored.", ""]
    rows = []
    for k in keys:
        x = d[k]
        rows.append([NAMES[k], pct(x["recall"]), num(x["fp_per_1000"], 1), pct(x["precision"]),
                     f"{x['tp']}/{x['meteors']}", str(x["fp"]), pct(x["satellite"]["rejected"]),
                     pct(x["aircraft"]["rejected"])])
    out.append(_table(["detector", "recall", "FP / 1,000 frames", "precision", "meteors found",
                       "false alerts", "satellite frames rejected", "aircraft frames rejected"],
                      rows))
    out += ["", "![precision-recall](img/bench-pr.png)", "",
            "### Recall by brightness", "",
            "![recall by brightness](img/bench-recall-brightness.png)", ""]
    classes = [b[0] for b in BRIGHTNESS]
    rows = []
    for k in keys:
        rows.append([NAMES[k]] + [pct(d[k]["by_brightness"][c]["recall"], 0) for c in classes])
    rows.append(["meteor frames"] + [str(d["guaita"]["by_brightness"][c]["meteors"])
                                     for c in classes])
    out.append(_table(["detector", *[f"{c}" for c in classes]], rows))
    out += ["", "### By night condition and site", ""]
    conds = list(d["guaita"]["by_condition"])
    rows = []
    for k in keys:
        rows.append([NAMES[k]] + [f"{pct(d[k]['by_condition'][c]['recall'], 0)} / "
                                  f"{num(d[k]['by_condition'][c]['fp_per_1000'], 1)}"
                                  for c in conds])
    rows.append(["frames / meteor frames"] + [
        f"{d['guaita']['by_condition'][c]['frames']} / {d['guaita']['by_condition'][c]['meteors']}"
        for c in conds])
    out += ["Recall / false positives per 1,000 frames:", "",
            _table(["detector", *conds], rows), ""]
    sites = list(d["guaita"]["by_site"])
    rows = [[NAMES[k]] + [f"{pct(d[k]['by_site'][s]['recall'], 0)} / "
                          f"{num(d[k]['by_site'][s]['fp_per_1000'], 1)}" for s in sites]
            for k in keys]
    out += [_table(["detector", *[f"{s} site" for s in sites]], rows), ""]
    out += ["### Satellites, aircraft and what the false alerts are", ""]
    rows = []
    for k in keys:
        s = d[k]["fp_sources"]
        rows.append([NAMES[k], str(s["satellite"]), str(s["aircraft"]), str(s["flash"]),
                     str(s["other"])])
    out += ["False alerts by what the frame held (\"other\": clouds, moon, noise, overlay, "
            "twilight):", "", _table(["detector", "satellite", "aircraft", "flash", "other"],
                                     rows), ""]
    sup = d["guaita"].get("suppression")
    if sup:
        reasons = ", ".join(f"{k} {v}" for k, v in sup["by_reason"].items()) or "none"
        sat, air = d["guaita"]["satellite"], d["guaita"]["aircraft"]
        out.append(
            f"guaita's suppression: of {sup['candidates']} frames the model scored above "
            f"threshold, {sup['suppressed']} were suppressed ({reasons}); "
            f"{sup['meteors_lost']} of those held a real meteor. The model itself passed "
            f"{sat.get('candidates', 0)} satellite-only and {air.get('candidates', 0)} "
            f"aircraft-only frames as candidates; suppression caught "
            f"{pct(sat.get('suppressed'), 0)} and {pct(air.get('suppressed'), 0)} of them.")
    out += ["", "### At equal recall / equal false positives", ""]
    comp = a["comparisons"]
    items = []
    for other, label in (("classical", "classical detector"), ("reference", "2021 reference")):
        c = comp.get(other)
        if not c:
            continue
        at = c["guaita_at_their_recall"]
        items.append(
            f"* At the {label}'s recall ({pct(c['their_recall'])}), guaita "
            + (f"raises {num(at[2], 1)} false alerts per 1,000 frames (threshold "
               f"{num(at[0], 3)}) against its {num(c['their_fp_per_1000'], 1)}."
               if at else "does not reach that recall at any threshold its curve covers."))
        at = c["guaita_at_their_fp"]
        items.append(
            f"* At no more false alerts than the {label} ({num(c['their_fp_per_1000'], 1)} per "
            "1,000), guaita's best recall is "
            + (f"{pct(at[1])} (threshold {num(at[0], 3)})." if at else "– (never that few)."))
    rg = comp.get("reference_at_guaita_recall")
    if "reference" in d:
        items.append(
            f"* The reference needs {num(rg[2], 1)} false alerts per 1,000 frames to reach "
            f"guaita's recall (threshold {num(rg[0], 3)})." if rg else
            "* The reference reaches guaita's recall at no threshold.")
    cg = comp.get("classical_at_guaita_recall")
    items.append(
        f"* The classical detector's best recall at any minimum length is "
        f"{pct(comp.get('classical_best_recall'))}"
        + (f"; at guaita's recall it raises {num(cg[2], 1)} false alerts per 1,000 frames."
           if cg else ", below guaita's recall."))
    out += items
    chk = a["checks"]
    pv = chk.get("predict_vs_batched") or {}
    out += ["", "Checks run with every benchmark: guaita is scanned once at threshold "
            f"{num(a['curve_threshold'], 3)} so its whole curve is known (the rules' verdicts, "
            "and the decider's second look applied at each threshold as the daemon would: "
            "`edge.decide.alert_score`); a separate `guaita "
            f"scan` of night {chk['op_scan_night']} at the real threshold agreed with the "
            f"operating point derived from it on {chk['op_scan_agreement']} of "
            f"{chk['op_scan_frames']} frames."
            + (f" The reference's batched scores differ from `Learner.predict` one frame at a "
               f"time by at most {pv['max_abs_diff']:.1e} (first {pv['frames']} frames)."
               if pv.get("max_abs_diff") is not None else "")]
    return "\n".join(out)


def section_cost(r: dict[str, Any]) -> str:
    c = r["cost"]
    out = ["## Cost per frame", "",
           f"Each detector runs in its own process over the same {c['frames']} frames (the "
           f"first frames of nights {', '.join(c['nights'])}; the first {c['warmup']} are "
           "processed but not timed), one thread everywhere (`intra_op_num_threads=1`, "
           "`torch.set_num_threads(1)`, `cv2.setNumThreads(1)`; on the Pi guaita leaves the "
           "other cores to AllSky). Per frame: reading and decoding the JPEG, pairing with the "
           "previous frame, preprocessing, inference and, for guaita, the suppression step, "
           "exactly as `edge.pipeline` runs in the daemon. CPU = user + system time of the "
           "process (`time.process_time`). Peak RSS = VmHWM of that process: Python, "
           "libraries, model and buffers.", ""]
    rows = []
    for row in c["rows"]:
        rows.append([row["name"], num(row["wall_ms_median"], 1), num(row["wall_ms_p95"], 1),
                     num(row["cpu_ms_mean"], 1), f"{row['ratio_cpu']:.1f}×",
                     num(row["maxrss_mb"], 0), num(row["startup_s"], 1)])
    out.append(_table(["detector", "wall ms (median)", "wall ms (p95)", "CPU ms / frame",
                       "CPU × floor", "peak RSS MB", "start-up s"], rows))
    g = next((x for x in c["rows"] if x["key"] == "guaita"), None)
    ref = next((x for x in c["rows"] if x["key"] == "reference"), None)
    if g and ref:
        out += ["", f"The 2021 pipeline spends {ref['cpu_ms_mean'] / g['cpu_ms_mean']:.1f}× the "
                f"CPU of guaita per frame and {ref['maxrss_mb'] / g['maxrss_mb']:.1f}× its "
                "memory."]
    inf = c["inference"]
    rows = [[k, num(v["wall_ms_median"], 2)] for k, v in inf.items()]
    out += ["", "Inference alone (onnxruntime, one thread, median of 40 runs on a random "
            "input; *anchor* = torchvision ResNet18 at 224 px, used for the Pi estimate):", "",
            _table(["network", "ms"], rows), "", "![cost](img/bench-cost.png)"]
    return "\n".join(out)


def section_throughput(r: dict[str, Any]) -> str:
    t = r["throughput"]
    n = t["night"]
    out = ["## Whole-night batch throughput", "",
           f"`guaita scan` over one simulated {n['frames']}-frame night ({n['condition']}, "
           f"{n['meteors']} meteor frames, {n['satellite']} satellite and {n['aircraft']} "
           "aircraft frames; the whole night, not an extrapolation), timed from process start "
           "to exit (model loading included):", ""]
    rows = [[str(x["threads"]), num(x["wall_s"], 1), num(x["frames_per_s"], 1),
             num(x["cpu_ms_per_frame"], 1), num(x["maxrss_mb"], 0), num(x["load_before"], 1)]
            for x in t["runs"]]
    out.append(_table(["onnxruntime threads", "wall s", "frames / s", "CPU ms / frame",
                       "peak RSS MB", "load before"], rows))
    a = t["accuracy"]
    out += ["", f"On this night, at a realistic meteor rate, guaita alerted on {a['tp']} of "
            f"{a['meteors']} meteor frames with {a['fp']} false alerts ({num(a['fp_per_1000'], 1)}"
            " per 1,000 frames)."]
    return "\n".join(out)


def section_daemon(r: dict[str, Any]) -> str:
    d = r["daemon"]
    fc, fn, fi = (d["latency_from_close_s"], d["latency_from_next_close_s"],
                  d["latency_internal_s"])
    samples = d["rss_samples"]
    out = ["## The daemon over a long night (issue 4)", "",
           f"`guaita run` as a process (systemd notify socket, default config except the paths, "
           f"MQTT, a 5 s decision timeout and the threshold, pinned at {d.get('threshold', '?')} "
           "so that there are messages to time: this measures delivery, not accuracy), a real "
           "Mosquitto with TLS and required client "
           f"certificates (`tests/broker.py`), {d['frames']} frames of the long night written "
           f"into the watched folder the way AllSky's `cp` writes them, one every "
           f"{d['interval_s']} s ({d['play_s']} s in all). A subscriber on the same broker "
           "timestamps every detection message. Mosquitto sends the daemon its PUBACK for a "
           "QoS 1 PUBLISH while handling it, in the same pass that queues it to subscribers: "
           "we measure arrival at the subscriber, not the PUBACK packet itself.", ""]
    rows = [
        ["frames written / decided by the daemon", f"{d['frames']} / {d['processed']}"],
        ["detection messages received / expected", f"{d['messages']} / "
                                                     f"{d['detections_expected']}"],
        ["of which alerts (not suppressed)", str(d["alerts"])],
        ["latency: file closed → message at subscriber, median / p95",
         f"{num(_median(fc), 2)} s / {num(_p95(fc), 2)} s"],
        ["latency: next frame's file closed → message, median / p95",
         f"{num(_median(fn), 3)} s / {num(_p95(fn), 3)} s"],
        ["daemon's own measure (watcher event → emitted), median / p95",
         f"{num(_median(fi), 3)} s / {num(_p95(fi), 3)} s"],
        ["CPU per frame (utime + stime from READY=1 to the last decision)",
         f"{num(d['cpu_ms_per_frame'], 1)} ms"],
        ["RSS at READY=1 / at the end / peak (VmHWM)",
         f"{num(d['rss_ready_mb'], 0)} / {num(d['rss_end_mb'], 0)} / "
         f"{num(d['peak_rss_mb'], 0)} MB"],
        ["start-up to READY=1", f"{num(d['ready_s'], 1)} s"],
    ]
    out.append(_table(["measure", "value"], rows))
    if len(samples) >= 4:
        half = samples[len(samples) // 2:]
        x = np.array([s["frames"] for s in half], dtype=float)
        y = np.array([s["rss_mb"] for s in half], dtype=float)
        slope = float(np.polyfit(x, y, 1)[0]) * 100 if np.ptp(x) > 0 else 0.0
        out += ["", f"Memory over the run ({len(samples)} samples of VmRSS every 2 s): "
                f"{num(samples[0]['rss_mb'], 0)} MB at the start, "
                f"{num(max(s['rss_mb'] for s in samples), 0)} MB at most, "
                f"{num(samples[-1]['rss_mb'], 0)} MB at the end; over the second half of the "
                f"run the fitted trend is {slope:+.2f} MB per 100 frames."]
    out += ["", "A candidate is decided when the next frame arrives (a satellite continues "
            "there), so the first latency includes one frame interval: at AllSky's real cadence "
            "of one frame every 30 s a meteor alert reaches the broker about 30 s plus the "
            "second figure after the exposure is saved (or after `decision_timeout_s` when no "
            "frame follows).", "", "![daemon memory](img/bench-daemon-rss.png)"]
    return "\n".join(out)


def section_pi(r: dict[str, Any]) -> str:
    p = r["pi"]
    a = p["anchors"]
    k = p["factors"]
    out = ["## Raspberry Pi 4: an estimate, not a measurement", "",
           "No Pi was available. Published anchor: ncnn's benchmark on a Pi 4 (Cortex-A72 at "
           f"1.5 GHz, 4 threads) runs ResNet18 at 224 px in {a['fp32_ms_4t']:g} ms fp32 and "
           f"{a['int8_ms_4t']:g} ms int8. The same network here (onnxruntime, one thread) takes "
           f"{num(p['anchor_here_ms']['fp32'], 1)} ms fp32 and "
           f"{num(p['anchor_here_ms']['int8'], 1)} ms int8. Assuming one A72 thread is "
           f"{a['threads_factor']:g}× slower than four, one Pi thread is ≈ "
           f"{num(k['k_fp32'], 1)}× this machine for fp32 work and ≈ {num(k['k_int8'], 1)}× "
           "for int8 inference. Each detector's inference time here is scaled by the factor of "
           "its precision and everything else it does (decode, preprocessing, suppression) by "
           "the fp32 factor; for int8 the upper end assumes onnxruntime gains nothing from "
           "int8 on the A72 (it lacks the dot-product instructions ncnn's int8 kernels and "
           "x86 VNNI use).", ""]
    rows = []
    for row in p["rows"]:
        share = 100 * row["high"] / 30000
        rng = (num(row["low"], 0) if abs(row["high"] - row["low"]) < 0.5
               else f"{num(row['low'], 0)}–{num(row['high'], 0)}")
        rows.append([row["name"], num(row["here_ms"], 1), rng, f"{share:.1f} %"])
    out.append(_table(["detector", "CPU ms here", "Pi 4 estimate, ms (1 thread)",
                       "share of a 30 s frame interval (upper)"], rows))
    out += ["", "Treat these as ±50 %: the scale factor comes from one network and one "
            "library, and ordinary OpenCV/numpy code is usually closer to x86 than vectorised "
            "convolutions, so the non-inference part is probably overstated."]
    return "\n".join(out)


def section_discussion(r: dict[str, Any]) -> str:
    """Where guaita wins, where it does not, and why; derived from the numbers."""
    out = ["## Discussion: what these numbers do and do not show", ""]
    a = r.get("accuracy")
    c = r.get("cost")
    if a:
        d = a["detectors"]
        g = d["guaita"]
        ref = d.get("reference")
        cl = d["classical"]
        if ref:
            better_recall = (g["recall"] or 0) >= (ref["recall"] or 0)
            fewer_fp = (g["fp_per_1000"] or 0) <= (ref["fp_per_1000"] or 0)
            verdict = ("beats it on both" if better_recall and fewer_fp else
                       "does not beat it on both counts")
            out.append(
                f"* **Against the 2021 pipeline** guaita {verdict}: recall {pct(g['recall'])} vs "
                f"{pct(ref['recall'])}, false alerts {num(g['fp_per_1000'], 1)} vs "
                f"{num(ref['fp_per_1000'], 1)} per 1,000 frames.")
            weak = [cls for cls, v in g["by_brightness"].items()
                    if v["recall"] is not None and ref["by_brightness"][cls]["recall"] is not None
                    and v["recall"] < ref["by_brightness"][cls]["recall"]]
            if weak:
                out.append(f"  The reference finds more of the {', '.join(weak)} meteors.")
        at = a["comparisons"]["classical"]["guaita_at_their_recall"]
        if at is not None:
            verdict = "fewer" if at[2] < (cl["fp_per_1000"] or 0) else "no fewer"
            out.append(
                f"* **Against the classical detector** at its recall ({pct(cl['recall'])}) "
                f"guaita raises {verdict} false alerts: {num(at[2], 1)} vs "
                f"{num(cl['fp_per_1000'], 1)} per 1,000 frames.")
        worse = [cond for cond, v in g["by_condition"].items()
                 if any((d[o]["by_condition"][cond]["fp_per_1000"] or 0) < (v["fp_per_1000"] or 0)
                        for o in ("reference", "classical") if o in d)]
        if worse:
            out.append(f"* guaita raises more false alerts than a baseline on "
                       f"{', '.join(worse)} nights (table above).")
        for kind in ("satellite", "aircraft"):
            gk, ck = g[kind]["rejected"], cl[kind]["rejected"]
            if gk is not None and ck is not None and gk < ck:
                out.append(f"* The classical detector rejects more {kind} frames "
                           f"({pct(ck)} vs {pct(gk)}), mostly because it detects little.")
    if c:
        rows = {x["key"]: x for x in c["rows"]}
        if "guaita" in rows and "reference" in rows:
            ratio = rows["reference"]["cpu_ms_mean"] / rows["guaita"]["cpu_ms_mean"]
            out.append(f"* **CPU**: the 2021 pipeline costs {ratio:.1f}× guaita's CPU per frame"
                       + (" (target ≥ 10×: met)." if ratio >= 10 else
                          " (target ≥ 10×: not met here)."))
        if "classical" in rows and "guaita" in rows:
            out.append(f"* The classical detector is cheaper than guaita "
                       f"({num(rows['classical']['cpu_ms_mean'], 1)} vs "
                       f"{num(rows['guaita']['cpu_ms_mean'], 1)} CPU ms per frame): a learned "
                       "model and the suppression step cost more than a Hough transform, and "
                       "both are far below a 30 s frame interval.")
    out += [
        "* **Caveats.** All frames are simulated (docs/simulator.md lists what is not "
        "modelled); real cameras will move every number. The reference is weaker than the one "
        "of 2021: no ImageNet weights (none can be downloaded here), a few epochs on CPU "
        "instead of 35 on a GPU, so its accuracy here is a lower bound for that design, not a "
        "measurement of the 2021 model. The classical detector's parameters are other "
        "projects' defaults for their cameras, not tuned for these frames. Wall times come "
        "from a shared machine.",
    ]
    return "\n".join(out)


def section_reproduce(r: dict[str, Any]) -> str:
    dur = r["durations_s"]
    rows = [[k, num(v / 60, 1)] for k, v in dur.items()]
    return "\n".join([
        "## Reproduce", "",
        "```", "make bench            # = .venv/bin/python -m bench",
        "python -m bench --quick          # small frames, minutes: checks the harness",
        "python -m bench --report-only    # re-render this page from build/bench/full/results.json",
        "python -m bench --skip daemon    # steps: accuracy, cost, throughput, daemon",
        "python -m bench --rerun daemon   # one step again, merged into the last results.json",
        "```", "",
        f"Cache: `{r['cache']}` (override with `GUAITA_BENCH_CACHE`): the simulated bench "
        "nights, the re-simulated training nights when the shipped recipe's work folder is "
        "gone, the reference model (dataset, weights, int8 export) and the Pi anchor networks. "
        "A first run on a fresh machine also simulates ≈ 12,000 frames and trains the "
        "reference ResNet34 on CPU: count 30–60 min on a 2-core machine; later runs reuse it. "
        "Per-frame results, logs and results.json of the last run: `build/bench/`.", "",
        "Minutes per step in this run:", "", _table(["step", "minutes"], rows)])


def _reruns(r: dict[str, Any]) -> str:
    """Steps run again on their own (`--rerun`, bench.__main__.merge_rerun) and merged into
    results.json under "rerun", so the page says which figures come from another run."""
    runs = r.get("rerun") or {}
    return "".join(
        f" The {step} step was run again on its own at {run['generated_utc']} (load "
        f"{num(run['load']['mean'], 1)} on average) and its figures replace this run's."
        for step, run in runs.items())


def headline(r: dict[str, Any]) -> str:
    a, c = r.get("accuracy"), r.get("cost")
    if not a:
        return ""
    d = a["detectors"]
    cost = {x["key"]: x for x in c["rows"]} if c else {}
    keys = [k for k in ("guaita", "reference", "classical") if k in d]
    cost_key = {"guaita": "guaita", "reference": "reference", "classical": "classical"}
    rows = [
        ["recall (meteor frames alerted)"] + [pct(d[k]["recall"]) for k in keys],
        ["false alerts per 1,000 frames"] + [num(d[k]["fp_per_1000"], 1) for k in keys],
        ["precision"] + [pct(d[k]["precision"]) for k in keys],
        ["satellite-only frames rejected"] + [pct(d[k]["satellite"]["rejected"]) for k in keys],
        ["aircraft-only frames rejected"] + [pct(d[k]["aircraft"]["rejected"]) for k in keys],
    ]
    if cost:
        rows += [
            ["CPU ms per frame (1 thread)"] + [num(cost[cost_key[k]]["cpu_ms_mean"], 1)
                                               if cost_key[k] in cost else "–" for k in keys],
            ["× JPEG-decode floor"] + [f"{cost[cost_key[k]]['ratio_cpu']:.1f}×"
                                       if cost_key[k] in cost else "–" for k in keys],
            ["peak RSS, MB"] + [num(cost[cost_key[k]]["maxrss_mb"], 0)
                                if cost_key[k] in cost else "–" for k in keys],
        ]
    return _table(["", *[NAMES[k] for k in keys]], rows)


# ---------------------------------------------------------------- render


def make_plots(r: dict[str, Any], img: Path) -> None:
    img.mkdir(parents=True, exist_ok=True)
    a = r.get("accuracy")
    if a:
        d = a["detectors"]
        points = {k: (d[k]["recall"], d[k]["fp_per_1000"]) for k in d if k != "guaita-model"}
        plots.pr_curves(img / "bench-pr.png", a["curves"], points)
        classes = [b[0] for b in BRIGHTNESS]
        series = {k: (NAMES[k], [d[k]["by_brightness"][c]["recall"] for c in classes])
                  for k in ("guaita", "reference", "classical") if k in d}
        plots.recall_by_brightness(img / "bench-recall-brightness.png", classes, series,
                                   [d["guaita"]["by_brightness"][c]["meteors"] for c in classes])
    c = r.get("cost")
    if c:
        keymap = {"guaita": "guaita", "guaita-fp32": "guaita-model", "reference": "reference",
                  "ref-int8": "reference", "classical": "classical", "floor": "floor"}
        rows = [{"key": keymap.get(x["key"], x["key"]), "name": x["name"],
                 "cpu_ms": x["cpu_ms_mean"], "ratio": x["ratio_cpu"],
                 "maxrss_mb": x["maxrss_mb"]} for x in c["rows"]]
        plots.cost_bars(img / "bench-cost.png", rows)
    dm = r.get("daemon")
    if dm and dm.get("rss_samples"):
        plots.daemon_rss(img / "bench-daemon-rss.png", dm["rss_samples"], dm["frames"])


def render(r: dict[str, Any], docs: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    make_plots(r, docs / "img")
    parts = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `{r['command']}` at {r['generated_utc']}: edit bench/report.py, "
        "not this file. -->",
        "",
        "guaita against the 2021 pipeline it replaces and a classical line detector of the "
        "kind AllSky and indi-allsky ship, on the same held-out simulated frames, and what each "
        "costs per frame on this machine. Everything here is regenerated by `make bench`.",
        "",
        headline(r),
        "",
        section_setup(r),
    ]
    if r.get("accuracy"):
        parts += ["", section_accuracy(r, docs / "img")]
    if r.get("cost"):
        parts += ["", section_cost(r)]
    if r.get("throughput"):
        parts += ["", section_throughput(r)]
    if r.get("daemon"):
        parts += ["", section_daemon(r)]
    if r.get("pi"):
        parts += ["", section_pi(r)]
    parts += ["", section_discussion(r), "", section_reproduce(r), ""]
    path = docs / "BENCHMARKS.md"
    path.write_text("\n".join(parts))
    return path
