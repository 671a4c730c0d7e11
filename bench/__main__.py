"""``python -m bench`` (``make bench``): run everything, write docs/BENCHMARKS.md and its plots.

    python -m bench                 # the full benchmark (first run also builds the cache)
    python -m bench --quick         # minutes, small frames: checks the harness (docs untouched)
    python -m bench --report-only   # re-render the report from the last run's results.json
    python -m bench --skip daemon,cost,throughput,accuracy

Results of the last run: build/bench/<plan>/results.json (+ logs and per-frame files).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from bench import metrics, report
from bench.classical import ClassicalParams
from bench.fp32 import fp32_bundle
from bench.nights import SHIPPED_WORK, ensure_tree, read_truth, training_cameras
from bench.plan import REPO, Plan, cache_root, full_plan, quick_plan
from bench.reference import ensure_reference
from edge.bundle import Bundle, load_bundle
from edge.config import SuppressionConfig
from edge.decide import alert_score, second_look_suppresses

log = logging.getLogger("bench")
DEFAULT_MODEL = REPO / "models" / "guaita-r18-sim"
STEPS = ("accuracy", "cost", "throughput", "daemon")


# ---------------------------------------------------------------- helpers


class LoadSampler:
    """The machine is shared: record the load average while we measure."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.values.append(os.getloadavg()[0])
            self._stop.wait(every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict[str, float]:
        v = self.values or [os.getloadavg()[0]]
        return {"mean": round(float(np.mean(v)), 2), "max": round(float(np.max(v)), 2)}


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(cmd: list[str], log_path: Path) -> dict[str, float]:
    """Run a command to completion: wall time, CPU seconds (wait4) and peak RSS.

    Peak RSS is the child's VmHWM, polled until it exits (it only grows): wait4's ru_maxrss
    would include this (large) parent's RSS, which Linux carries across fork + exec."""
    log.debug("running %s", " ".join(cmd))
    t0 = time.perf_counter()
    peak = 0.0
    with open(log_path, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _hwm_mb(proc.pid) or 0.0)
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])}… failed (exit {proc.returncode}); see {log_path}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "maxrss_mb": round(peak, 1)}


def guaita_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli", *args]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                            "python": platform.python_version()}
    with_file = {"/proc/cpuinfo": "model name", "/proc/meminfo": "MemTotal"}
    for path, key in with_file.items():
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    info[key] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "opencv-python-headless", "numpy", "torch", "fastai",
                    "paho-mqtt"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    info["versions"] = versions
    try:
        info["mosquitto"] = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                                           check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        info["mosquitto"] = None
    return info


def write_scan_config(work: Path, tree: Path, bundle: Path) -> Path:
    config = work / "scan.toml"
    config.write_text(f"""# written by bench: the built-in defaults, with these paths
observatory = "bench"
[paths]
images = "{tree / 'images'}"
state = "{work / 'scan-state'}"
model = "{bundle}"
""")
    return config


def read_jsonl(path: Path, root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        item = json.loads(line)
        out[Path(item["image"]).resolve().relative_to(root.resolve()).as_posix()] = item
    return out


def scan_alert_score(item: dict[str, Any] | None, below: float) -> float:
    """A scan line (taken at a low threshold) as the score it alerts at (0: suppressed);
    `below` is the scan's rescore_below."""
    if item is None:
        return 0.0
    return alert_score(float(item["score"]), item["suppressed"], item.get("second_look"), below)


def scan_reason(item: dict[str, Any] | None, threshold: float, below: float) -> str | None:
    """Why a low-threshold scan line does not alert at `threshold`: the rule's reason, or
    "second look" (the decider would have named the explained streaks' reason)."""
    if item is None:
        return None
    if item["suppressed"]:
        return item["suppressed"]
    return "second look" if second_look_suppresses(item.get("second_look"), threshold,
                                                   below) else None


def truth_summary(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        n = out.setdefault(r["label"], {
            "label": r["label"], "site": r["site"], "condition": r["condition"],
            "night": r["night"], "frames": 0, "meteors": 0, "satellite": 0, "aircraft": 0,
            "flash": 0, "cloud_cover": [], "moon": 0.0, "twilight": 0})
        n["frames"] += 1
        for key in ("meteor", "satellite", "aircraft", "flash", "twilight"):
            n["meteors" if key == "meteor" else key] += r[key] == "1"
        n["cloud_cover"].append(float(r["cloud_cover"] or 0))
        n["moon"] = max(n["moon"], float(r["moon"] or 0))
    for n in out.values():
        n["cloud_cover"] = round(float(np.mean(n["cloud_cover"])), 2)
    return list(out.values())


def curve_dict(name: str, c: metrics.Curve) -> dict[str, Any]:
    def clean(a: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 5) for v in a]

    return {"name": name, "thresholds": clean(c.thresholds), "recall": clean(c.recall),
            "precision": clean(c.precision), "fp_per_1000": clean(c.fp_per_1000)}


# ---------------------------------------------------------------- steps


def step_accuracy(plan: Plan, tree: Path, bundle: Bundle, ref, work: Path,
                  threads: int) -> dict[str, Any]:
    t_op = bundle.manifest.recommended_threshold
    t_low = min(plan.low_threshold, t_op)
    config = write_scan_config(work, tree, bundle.root)
    jsonl = work / "guaita-scan.jsonl"
    log.info("accuracy: guaita scan of %s at threshold %.3f (curve) ...", tree.name, t_low)
    scan_run = run_child(guaita_cmd("scan", str(tree / "images"), "--out", str(jsonl),
                                    "--model", str(bundle.root), "--config", str(config),
                                    "--threshold", str(t_low), "--threads", str(threads),
                                    "--no-progress"), work / "scan.log")
    baseline_csv = work / "baselines.csv"
    log.info("accuracy: classical detector and the 2021 reference on the same frames ...")
    cmd = [sys.executable, "-m", "bench.score", "--tree", str(tree), "--out",
           str(baseline_csv), "--threads", str(threads)]
    if ref is not None:
        cmd += ["--learner", str(ref.learner), "--size", str(plan.ref.size)]
    score_run = run_child(cmd, work / "score.log")

    rows = read_truth(tree)
    scanned = read_jsonl(jsonl, tree)
    with open(baseline_csv, newline="") as fh:
        base = {r["file"]: r for r in csv.DictReader(fh)}
    keep = np.array([r["frame_index"] != "0" for r in rows])
    rows_k = [r for r, k in zip(rows, keep, strict=True) if k]
    truth = metrics.Truth.from_rows(rows_k)
    g_score = np.array([float(scanned.get(r["file"], {}).get("score", 0.0)) for r in rows_k])
    # What guaita alerts on at each threshold, from the one low-threshold scan: the rules'
    # verdicts, and the second look, which depends on the threshold (edge.decide.alert_score).
    below = SuppressionConfig().rescore_below  # the scan ran on the built-in defaults
    g_alert = np.array([scan_alert_score(scanned.get(r["file"]), below) for r in rows_k])
    g_supp = np.array([scan_reason(scanned.get(r["file"]), t_op, below) for r in rows_k],
                      dtype=object)
    c_det = np.array([base[r["file"]]["classical_detected"] == "1" for r in rows_k])
    c_score = np.array([float(base[r["file"]]["classical_score"] or 0) for r in rows_k])
    has_ref = ref is not None
    r_prob = np.array([float(base[r["file"]]["ref_prob"] or 0) for r in rows_k]) if has_ref \
        else None

    detectors = {
        "guaita": metrics.summarize(truth, g_alert >= t_op,
                                    candidate=g_score >= t_op, suppressed=g_supp),
        "guaita-model": metrics.summarize(truth, g_score >= t_op),
        "classical": metrics.summarize(truth, c_det),
    }
    curves = {
        "guaita": curve_dict("guaita (model + suppression)",
                             metrics.curve(truth, g_alert, min_threshold=t_low)),
        "guaita-model": curve_dict("guaita model alone (no suppression)",
                                   metrics.curve(truth, g_score)),
        "classical": curve_dict("classical Hough (score: longest segment)",
                                metrics.curve(truth, c_score)),
    }
    if r_prob is not None:
        detectors["reference"] = metrics.summarize(truth, r_prob >= plan.ref.threshold)
        curves["reference"] = curve_dict("2021 reference (V4 + ResNet34)",
                                         metrics.curve(truth, r_prob))
    g_curve = metrics.curve(truth, g_alert, min_threshold=t_low)
    comparisons: dict[str, Any] = {}
    for other in ("classical", "reference"):
        if other not in detectors:
            continue
        d = detectors[other]
        comparisons[other] = {
            "their_recall": d["recall"], "their_fp_per_1000": d["fp_per_1000"],
            "guaita_at_their_recall": metrics.fp_at_recall(g_curve, d["recall"] or 0.0),
            "guaita_at_their_fp": metrics.recall_at_fp(g_curve, d["fp_per_1000"] or 0.0),
        }
    if r_prob is not None:
        r_curve = metrics.curve(truth, r_prob)
        g = detectors["guaita"]
        comparisons["reference_at_guaita_recall"] = metrics.fp_at_recall(r_curve, g["recall"]
                                                                          or 0.0)
        comparisons["reference_at_guaita_fp"] = metrics.recall_at_fp(r_curve, g["fp_per_1000"]
                                                                     or 0.0)
    c_curve = metrics.curve(truth, c_score)
    comparisons["classical_at_guaita_recall"] = metrics.fp_at_recall(
        c_curve, detectors["guaita"]["recall"] or 0.0)
    comparisons["classical_best_recall"] = float(c_curve.recall.max()) if len(c_curve.recall) \
        else None

    # The scan at a low threshold must decide every frame as the real one does: check a night.
    check_label = next((n.label for n in plan.nights if n.condition == "cloudy"),
                       plan.nights[0].label)
    night_dir = tree / "images" / next(r["night"] for r in rows if r["label"] == check_label)
    op_jsonl = work / "guaita-scan-op.jsonl"
    run_child(guaita_cmd("scan", str(night_dir), "--out", str(op_jsonl), "--model",
                         str(bundle.root), "--config", str(config), "--threads", str(threads),
                         "--no-progress"), work / "scan.log")
    op = read_jsonl(op_jsonl, tree)
    agree = total = 0
    for file, item in op.items():
        low = scanned.get(file)
        if low is None:
            continue
        total += 1
        derived = scan_alert_score(low, below) >= t_op
        agree += derived == (item["detected"] and item["suppressed"] is None)
    score_check = json.loads(baseline_csv.with_suffix(".json").read_text())
    return {
        "threshold": t_op, "curve_threshold": t_low, "frames": len(truth),
        "detectors": detectors, "curves": curves, "comparisons": comparisons,
        "checks": {"op_scan_night": check_label, "op_scan_frames": total,
                   "op_scan_agreement": agree,
                   "predict_vs_batched": score_check.get("predict_vs_batched")},
        "runs": {"guaita_scan": scan_run, "baselines": score_run},
    }


def cost_frames(plan: Plan, tree: Path) -> list[Path]:
    rows = read_truth(tree)
    out = []
    for label in plan.cost_labels:
        out += [tree / r["file"] for r in rows if r["label"] == label][: plan.cost_frames]
    return out


def step_cost(plan: Plan, tree: Path, bundle: Bundle, fp32: Bundle, ref, work: Path,
              cache: Path) -> dict[str, Any]:
    frames = cost_frames(plan, tree)
    listing = work / "cost-frames.txt"
    listing.write_text("\n".join(str(p) for p in frames) + "\n")
    warmup = min(5, max(len(frames) // 4, 1))
    spec = bundle.manifest.preprocessing
    arch = str(bundle.manifest.training.get("arch", "ResNet")).replace("resnet", "ResNet")
    what = f"{arch} ({spec.id}, {spec.size} px)"
    runs: list[tuple[str, str, list[str]]] = [
        ("floor", "JPEG decode alone (the floor)", ["floor"]),
        ("guaita", f"guaita: int8 {what} + suppression",
         ["guaita", "--bundle", str(bundle.root)]),
        ("guaita-fp32", f"guaita: fp32 {what} + suppression",
         ["guaita", "--bundle", str(fp32.root)]),
    ]
    if ref is not None and ref.bundle is not None:
        runs.append(("ref-int8", "2021 ResNet34 (V4, 224 px) as int8 ONNX in guaita's pipeline",
                     ["guaita", "--bundle", str(ref.bundle)]))
    if ref is not None:
        runs.append(("reference", "2021 pipeline: V4 + fastai ResNet34 Learner.predict",
                     ["fastai", "--learner", str(ref.learner), "--size", str(plan.ref.size)]))
    runs.append(("classical", "classical: difference, threshold, Canny, HoughLinesP",
                 ["classical"]))
    rows = []
    for key, name, args in runs:
        out = work / f"cost-{key}.json"
        log.info("cost: %s (%d frames, 1 thread) ...", name, len(frames))
        load = os.getloadavg()[0]
        child = run_child([sys.executable, "-m", "bench.costrun", *args, "--frames",
                           str(listing), "--out", str(out), "--threads", "1", "--warmup",
                           str(warmup)], work / "cost.log")
        result = json.loads(out.read_text())
        rows.append({"key": key, "name": name, **result, "process": child,
                     "load_before": round(load, 2)})
    floor = next(r for r in rows if r["key"] == "floor")
    for r in rows:
        r["ratio_cpu"] = r["cpu_ms_mean"] / floor["cpu_ms_mean"]
        r["ratio_wall"] = r["wall_ms_median"] / floor["wall_ms_median"]

    # Inference alone, one thread: the Pi estimate's inputs.
    from bench import pi

    anchor_fp32, anchor_int8 = pi.build_anchor(cache)
    spec = bundle.manifest.preprocessing
    shapes = {"anchor-fp32": (anchor_fp32, "1,3,224,224"),
              "anchor-int8": (anchor_int8, "1,3,224,224"),
              "guaita": (bundle.model_path, f"1,{spec.channels},{spec.size},{spec.size}"),
              "guaita-fp32": (fp32.model_path, f"1,{spec.channels},{spec.size},{spec.size}")}
    if ref is not None and ref.bundle is not None:
        shapes["ref-int8"] = (ref.bundle / "model.onnx", f"1,1,{plan.ref.size},{plan.ref.size}")
    inference = {}
    for key, (model, shape) in shapes.items():
        out = work / f"infer-{key}.json"
        run_child([sys.executable, "-m", "bench.costrun", "onnx", "--onnx", str(model),
                   "--shape", shape, "--out", str(out), "--threads", "1", "--repeat", "40"],
                  work / "cost.log")
        inference[key] = json.loads(out.read_text())
    return {"frames": len(frames), "warmup": warmup, "nights": list(plan.cost_labels),
            "rows": rows, "inference": inference}


def pi_estimate(cost: dict[str, Any]) -> dict[str, Any]:
    from bench import pi

    inf = {k: v["wall_ms_median"] for k, v in cost["inference"].items()}
    k = pi.scale_factors(inf["anchor-fp32"], inf["anchor-int8"])
    rows = []
    for r in cost["rows"]:
        key = r["key"]
        total = r["cpu_ms_mean"]
        if key == "guaita":
            est = pi.estimate(total, inf["guaita"], True, k, inf.get("guaita-fp32"))
        elif key == "guaita-fp32":
            est = pi.estimate(total, inf["guaita-fp32"], False, k)
        elif key == "ref-int8":
            est = pi.estimate(total, inf.get("ref-int8"), True, k)
        else:
            est = pi.estimate(total, None, False, k)
        rows.append({"key": key, "name": r["name"], "here_ms": total, **est})
    return {"anchor_here_ms": {"fp32": inf["anchor-fp32"], "int8": inf["anchor-int8"]},
            "factors": k, "rows": rows, "anchors": {
                "fp32_ms_4t": pi.PI_R18_FP32_MS_4T, "int8_ms_4t": pi.PI_R18_INT8_MS_4T,
                "threads_factor": pi.THREADS_FACTOR}}


def step_throughput(plan: Plan, long_tree: Path, bundle: Bundle, work: Path) -> dict[str, Any]:
    config = write_scan_config(work, long_tree, bundle.root)
    runs = []
    frames = plan.long_night.frames
    jsonl = work / "long-scan.jsonl"
    for threads in plan.throughput_threads:
        log.info("throughput: guaita scan of a %d-frame night, %d thread(s) ...", frames,
                 threads)
        load = os.getloadavg()[0]
        child = run_child(guaita_cmd("scan", str(long_tree / "images"), "--out", str(jsonl),
                                     "--model", str(bundle.root), "--config", str(config),
                                     "--threads", str(threads), "--no-progress"),
                          work / "throughput.log")
        runs.append({"threads": threads, "frames": frames, **child,
                     "frames_per_s": round(frames / child["wall_s"], 2),
                     "cpu_ms_per_frame": round(1000 * child["cpu_s"] / frames, 2),
                     "load_before": round(load, 2)})
    rows = read_truth(long_tree)
    scanned = read_jsonl(jsonl, long_tree)
    keep = [r for r in rows if r["frame_index"] != "0"]
    truth = metrics.Truth.from_rows(keep)
    alert = np.array([bool(scanned.get(r["file"], {}).get("detected"))
                      and scanned.get(r["file"], {}).get("suppressed") is None for r in keep])
    return {"runs": runs, "accuracy": metrics.summarize(truth, alert),
            "night": truth_summary(rows)[0]}


def step_daemon(plan: Plan, long_tree: Path, bundle: Bundle, work: Path) -> dict[str, Any]:
    from bench.daemon import run_daemon

    rows = read_truth(long_tree)[: plan.daemon_frames]
    frames = [long_tree / r["file"] for r in rows]
    target = work / "daemon"
    shutil.rmtree(target, ignore_errors=True)
    log.info("daemon: %d frames into a watched folder, one every %.2f s, TLS Mosquitto ...",
             len(frames), plan.daemon_interval_s)
    result = run_daemon(target, frames, bundle.root, plan.daemon_interval_s,
                        threshold=plan.daemon_threshold)
    result["meteor_frames"] = sum(r["meteor"] == "1" for r in rows)
    result["threshold"] = (plan.daemon_threshold if plan.daemon_threshold is not None
                           else bundle.manifest.recommended_threshold)
    return result


def merge_rerun(previous: dict[str, Any], rerun: dict[str, Any], step: str) -> dict[str, Any]:
    """The last full run with one step's figures replaced by a run of that step alone (a
    step disturbed by other work on the machine, or after a change to it). The step's time,
    load and the model it ran with are kept under "rerun" so the report can say so."""
    if rerun["model"]["sha256"] != previous["model"]["sha256"]:
        raise SystemExit(f"--rerun {step}: results.json was made with model "
                         f"{previous['model']['name']} {previous['model']['version']}, not "
                         f"{rerun['model']['name']} {rerun['model']['version']}; run the "
                         "whole bench")
    merged = dict(previous)
    merged[step] = rerun[step]
    if step == "cost":
        merged["pi"] = rerun["pi"]
    merged["rerun"] = {**previous.get("rerun", {}), step: {
        "generated_utc": rerun["generated_utc"], "load": rerun["load"],
        "minutes": round(rerun["durations_s"][step] / 60, 1), "plan": rerun["plan"]}}
    return merged


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small, fast plan (no docs)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="guaita bundle")
    parser.add_argument("--cache", type=Path, help="cache folder (default: $GUAITA_BENCH_CACHE "
                        "or ~/.cache/guaita-bench)")
    parser.add_argument("--work", type=Path, help="run folder (default build/bench/<plan>)")
    parser.add_argument("--docs", type=Path, help="report folder (default docs; quick: the "
                        "run folder)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps from {STEPS}")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave out the 2021 reference (no training)")
    parser.add_argument("--threads", type=int, default=2, help="threads for accuracy scoring")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render report and plots from the last results.json")
    parser.add_argument("--rerun", choices=STEPS, help="run this one step again and merge its "
                        "figures into the last results.json (the report says so)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # the ONNX exporter narrates
        logging.getLogger(chatty).setLevel(logging.WARNING)
    plan = quick_plan() if args.quick else full_plan()
    work = args.work or REPO / "build" / "bench" / plan.name
    docs = args.docs or (work / "docs" if args.quick else REPO / "docs")
    results_path = work / "results.json"
    if args.report_only:
        results = json.loads(results_path.read_text())
        report.render(results, docs)
        print(docs / "BENCHMARKS.md")
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    if args.rerun:
        if not results_path.is_file():
            parser.error(f"--rerun merges into {results_path}: run the whole bench first")
        skip = set(STEPS) - {args.rerun}
        # Only accuracy and cost measure the 2021 reference.
        args.no_reference = args.no_reference or args.rerun not in ("accuracy", "cost")
    cache = args.cache or cache_root()
    work.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    durations: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):
        t = time.perf_counter()
        value = fn(*a, **kw)
        durations[name] = round(time.perf_counter() - t, 1)
        return value

    if not args.model.exists():
        parser.error(f"no model bundle at {args.model}: build the shipped one with `make model` "
                     "or pass --model")
    bundle = load_bundle(args.model)
    results: dict[str, Any] = {
        "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"), "plan": plan.to_dict(),
        "machine": machine(), "cache": str(cache), "command": "python -m bench"
        + (" --quick" if args.quick else ""), "durations_s": durations,
        "model": {"path": str(args.model), "name": bundle.manifest.name,
                  "version": bundle.manifest.version, "sha256": bundle.manifest.sha256,
                  "threshold": bundle.manifest.recommended_threshold,
                  "preprocessing": bundle.manifest.preprocessing.to_dict(),
                  "training": bundle.manifest.training, "test_metrics":
                      bundle.manifest.metrics.get("test"),
                  "size_bytes": bundle.model_path.stat().st_size},
        "classical": ClassicalParams().to_dict(),
    }
    with LoadSampler() as load:
        tree = timed("simulate_bench", ensure_tree, cache, "bench", plan.nights, plan.width,
                     plan.height)
        long_tree = timed("simulate_long", ensure_tree, cache, "long", (plan.long_night,),
                          plan.width, plan.height)
        truth_rows = read_truth(tree)
        results["nights"] = truth_summary(truth_rows)
        ref = None
        if not args.no_reference:
            cameras, origin = timed("training_nights", training_cameras, cache, plan.train)
            ref = timed("reference", ensure_reference, cache, cameras, plan.train, plan.ref)
            results["reference"] = {**ref.meta, "training_nights_origin": origin,
                                    "learner": str(ref.learner),
                                    "int8_bundle": str(ref.bundle) if ref.bundle else None}
        exported = SHIPPED_WORK / "model" / "export" / "fp32.onnx"
        # Keyed by the whole manifest: bundles sharing a network differ in their trail stage.
        manifest_digest = hashlib.sha256((bundle.root / "manifest.json").read_bytes()).hexdigest()
        fp32_dir = cache / "models" / f"{manifest_digest[:12]}-fp32"
        if (fp32_dir / "manifest.json").is_file():
            fp32 = load_bundle(fp32_dir)
            origin = json.loads((fp32_dir / "origin.json").read_text())["origin"]
        else:
            # fp32_bundle uses the recipe's fp32.onnx only if its export made this bundle.
            fp32, origin = fp32_bundle(bundle, fp32_dir, exported)
            (fp32_dir / "origin.json").write_text(json.dumps({"origin": origin}))
        results["fp32_origin"] = origin
        if "accuracy" not in skip:
            results["accuracy"] = timed("accuracy", step_accuracy, plan, tree, bundle, ref,
                                        work, args.threads)
        if "cost" not in skip:
            results["cost"] = timed("cost", step_cost, plan, tree, bundle, fp32, ref, work,
                                    cache)
            results["pi"] = pi_estimate(results["cost"])
        if "throughput" not in skip:
            results["throughput"] = timed("throughput", step_throughput, plan, long_tree,
                                          bundle, work)
        if "daemon" not in skip:
            results["daemon"] = timed("daemon", step_daemon, plan, long_tree, bundle, work)
    results["load"] = load.summary()
    durations["total"] = round(time.perf_counter() - started, 1)
    if args.rerun:
        results = merge_rerun(json.loads(results_path.read_text()), results, args.rerun)
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.render(results, docs)
    log.info("done in %.1f min: %s", durations["total"] / 60, docs / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
