"""The benchmark harness (bench/) on tiny data: its detectors, metrics, subprocess cost runner,
int8 → fp32 conversion, daemon latency bookkeeping and report. No timing assertions: the
numbers themselves are the benchmark's job, these tests check that they are computed right."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench import metrics, pi
from bench.classical import ClassicalParams, detect
from bench.daemon import summarize_run
from bench.fp32 import fp32_bundle, strip_qdq
from bench.nights import night_params
from bench.plan import SEEN_CAMERA, UNSEEN_CAMERA, TrainingSims, full_plan
from bench.reference import select_frames
from edge.bundle import load_bundle
from tests.tinymodel import make_tiny_bundle, tiny_onnx
from training.simulate import night_seed

REPO = Path(__file__).resolve().parent.parent


def noise(seed: int, shape=(240, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(30 + rng.normal(0, 3, shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- classical detector


def test_classical_finds_a_new_line_and_ignores_noise():
    before, after = noise(1), noise(2)
    quiet = detect(before, after)
    assert not quiet.detected and quiet.lines == 0
    streak = after.copy()
    cv2.line(streak, (30, 40), (290, 200), 140, 3)
    found = detect(before, streak)
    assert found.detected and found.lines >= 1
    assert found.score >= 150  # the longest segment runs along most of the 305 px line
    # The same line already in the previous frame is no change: nothing new to detect.
    assert not detect(streak, streak).detected
    # Fainter than the difference threshold: invisible to it (that is its design).
    faint = after.copy()
    cv2.line(faint, (30, 40), (290, 200), 30 + ClassicalParams().diff_threshold // 2, 3)
    assert not detect(before, faint).detected


def test_classical_rejects_mismatched_frames():
    with pytest.raises(ValueError, match="one size"):
        detect(noise(1), noise(2, (100, 100)))


# ---------------------------------------------------------------- metrics


def truth_rows() -> list[dict[str, str]]:
    """Ten frames: 4 meteors (peaks 5, 20, 60, 300), 2 satellite-only, 1 aircraft-only."""
    peaks = ["5", "20", "60", "300", "", "", "", "", "", ""]
    rows = []
    for i, peak in enumerate(peaks):
        rows.append({"file": f"f{i}", "label": "n", "site": "seen" if i < 5 else "unseen",
                     "condition": "clear" if i % 2 == 0 else "cloudy",
                     "meteor": "1" if peak else "0", "meteor_peak": peak,
                     "satellite": "1" if i in (4, 5) else "0", "aircraft": "1" if i == 6 else "0",
                     "flash": "0"})
    return rows


def test_summarize_counts_everything_by_hand():
    truth = metrics.Truth.from_rows(truth_rows())
    alert = np.array([0, 1, 1, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    s = metrics.summarize(truth, alert)
    assert (s["tp"], s["fp"], s["meteors"], s["frames"]) == (3, 2, 4, 10)
    assert s["recall"] == 0.75 and s["precision"] == 0.6 and s["fp_per_1000"] == 200.0
    b = s["by_brightness"]
    assert [v["meteors"] for v in b.values()] == [1, 1, 1, 1]
    assert [v["recall"] for v in b.values()] == [0.0, 1.0, 1.0, 1.0]
    assert s["satellite"] == {"frames": 2, "alerts": 1, "rejected": 0.5}
    assert s["aircraft"]["rejected"] == 1.0
    assert s["fp_sources"] == {"satellite": 1, "aircraft": 0, "flash": 0, "other": 1}
    assert s["by_site"]["seen"]["recall"] == 0.75 and s["by_site"]["unseen"]["meteors"] == 0
    # Suppression bookkeeping: the model flagged frames 1-5; 4 and 5 (satellites) suppressed.
    candidate = np.array([0, 1, 1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    reasons = np.array([None, None, None, None, "satellite", "satellite", None, None, None,
                        None], dtype=object)
    s = metrics.summarize(truth, candidate & (reasons == None), candidate, reasons)  # noqa: E711
    assert s["suppression"] == {"candidates": 6, "suppressed": 2, "meteors_lost": 0,
                                "by_reason": {"satellite": 2}}
    assert s["satellite"]["candidates"] == 2 and s["satellite"]["suppressed"] == 1.0
    with pytest.raises(ValueError):
        metrics.summarize(truth, alert[:5])


def test_curve_and_equal_recall_lookups():
    truth = metrics.Truth.from_rows(truth_rows())
    score = np.array([0.2, 0.9, 0.8, 0.95, 0.85, 0.1, 0.3, 0.7, 0.05, 0.0])
    c = metrics.curve(truth, score)
    i = list(c.thresholds).index(0.8)  # alerts at ≥ 0.8: frames 1, 2, 3 (meteors) and 4
    assert c.recall[i] == 0.75 and c.precision[i] == 0.75 and c.fp_per_1000[i] == 100.0
    assert metrics.fp_at_recall(c, 0.75) == (0.8, 0.75, 100.0)
    assert metrics.fp_at_recall(c, 1.0) == (0.2, 1.0, 300.0)
    assert metrics.recall_at_fp(c, 0.0) == (0.9, 0.5, 0.0)
    # Suppression removes frame 4 (a satellite) from the alerts at every threshold.
    allowed = np.ones(10, dtype=bool)
    allowed[4] = False
    c2 = metrics.curve(truth, score, allowed, min_threshold=0.5)
    assert c2.thresholds.min() >= 0.5
    assert metrics.fp_at_recall(c2, 0.75) == (0.8, 0.75, 0.0)
    assert metrics.fp_at_recall(c2, 1.0) is None


# ---------------------------------------------------------------- int8 → fp32


def _calibration(batches: list[np.ndarray]):
    """An onnxruntime calibration reader over the given input batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    return Reader()


def test_strip_qdq_gives_a_float_graph_that_scores_like_the_int8_one(tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    float_path.write_bytes(tiny_onnx((-3.0, 0.0), sensitivity=200.0))
    rng = np.random.default_rng(0)
    data = [rng.random((4, 3, 32, 32), dtype=np.float32) * 80 for _ in range(4)]

    quantize_static(str(float_path), str(int8_path), _calibration(data),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    int8 = onnx.load(str(int8_path))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    stripped = strip_qdq(int8)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   for n in stripped.graph.node)
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in stripped.graph.initializer)

    def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})[0]

    x = data[0]
    original = run(float_path.read_bytes(), x)
    recovered = run(stripped.SerializeToString(), x)
    assert np.abs(recovered - original).max() < 0.05  # only weight rounding remains
    assert np.abs(recovered - run(int8_path.read_bytes(), x)).max() < 0.1

    bundle = make_tiny_bundle(tmp_path / "b8")
    twin, origin = fp32_bundle(load_bundle(bundle), tmp_path / "b32")
    assert twin.manifest.preprocessing == load_bundle(bundle).manifest.preprocessing
    assert twin.manifest.name.endswith("-fp32") and "quantization removed" in origin
    # A bundle with the trail classifier: its twin carries the same classifier graph.
    from edge.trail_classifier import MODEL_FILE
    from tests.tinymodel import make_tiny_classifier_bundle

    staged = make_tiny_classifier_bundle(tmp_path / "c8")
    twin, _ = fp32_bundle(load_bundle(staged), tmp_path / "c32")
    assert (twin.root / MODEL_FILE).read_bytes() == (staged / MODEL_FILE).read_bytes()
    assert twin.manifest.trail_stage == load_bundle(staged).manifest.trail_stage


def test_strip_qdq_restores_the_relus_the_quantizer_fused_away(tmp_path):
    """onnxruntime drops a Conv's ReLU into the QuantizeLinear that follows (its range starts at
    0); a stripped graph without it would pass negatives on and score garbage."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantFormat, quantize_static

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["out"])],
        "relu", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 8])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(float_path))
    data = [rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32) for _ in range(4)]

    quantize_static(str(float_path), str(int8_path), _calibration(data),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    int8 = onnx.load(str(int8_path))
    assert not any(n.op_type == "Relu" for n in int8.graph.node)  # fused away, as in ResNets
    stripped = strip_qdq(int8)
    # (also after the pooling: its range starts at 0 too, where a ReLU changes nothing)
    assert any(n.op_type == "Relu" for n in stripped.graph.node)

    def run(blob: bytes) -> np.ndarray:
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": data[0]})[0]

    original = run(float_path.read_bytes())
    assert (original > 0).all()  # ReLU then mean: a graph without it would go negative
    assert np.abs(run(stripped.SerializeToString()) - original).max() < 0.05


# ---------------------------------------------------------------- cost runner


def allsky_frames(folder: Path, count: int, meteor_at: int) -> list[Path]:
    paths = []
    start = datetime(2027, 6, 1, 22, 0, 0)
    for i in range(count):
        image = noise(i)
        if i == meteor_at:
            cv2.line(image, (40, 30), (260, 200), 160, 3)
        path = folder / "20270601" / f"image-{start + timedelta(seconds=30 * i):%Y%m%d%H%M%S}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["floor", "classical", "guaita"])
def test_costrun_measures_a_real_process(tmp_path, kind):
    frames = allsky_frames(tmp_path / "images", 8, meteor_at=4)
    listing = tmp_path / "frames.txt"
    listing.write_text("\n".join(map(str, frames)))
    out = tmp_path / "cost.json"
    extra = []
    if kind == "guaita":
        extra = ["--bundle", str(make_tiny_bundle(tmp_path / "model", bias=(-14.0, 0.0),
                                                  sensitivity=255.0))]
    # This test process holds 300 MB more than the child will: ru_maxrss would report it
    # (Linux carries the parent's peak across fork + exec); the runner must not.
    ballast = np.ones(300 * 2**20, np.uint8)
    subprocess.run([sys.executable, "-m", "bench.costrun", kind, "--frames", str(listing),
                    "--out", str(out), "--warmup", "2", *extra], check=True, cwd=REPO)
    del ballast
    result = json.loads(out.read_text())
    assert result["kind"] == kind and result["frames"] == 8 and result["timed"] == 6
    assert result["cpu_ms_mean"] > 0 and result["wall_ms_median"] > 0
    assert 10 < result["maxrss_mb"] < 280


def test_costrun_rejects_non_frames(tmp_path):
    listing = tmp_path / "frames.txt"
    listing.write_text(str(tmp_path / "holiday.jpg"))
    run = subprocess.run([sys.executable, "-m", "bench.costrun", "floor", "--frames",
                          str(listing), "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, check=False, cwd=REPO)
    assert run.returncode != 0 and "not AllSky frame paths" in run.stderr


# ---------------------------------------------------------------- daemon bookkeeping, Pi


def test_daemon_latencies_pair_messages_with_file_closes():
    order = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    closes = {"a.jpg": 100.0, "b.jpg": 100.5, "c.jpg": 101.0, "d.jpg": 101.5}
    detections = [
        (101.12, {"id": "x-b", "image": "b.jpg", "suppressed": None,  # released by c
                  "latency_ms": {"since_file_closed": 110.0}}),
        (101.13, {"id": "x-b", "image": "b.jpg", "suppressed": None}),  # a re-send: once
        (101.90, {"id": "x-d", "image": "d.jpg", "suppressed": "satellite"}),  # by timeout
        (102.00, {"id": "x-q", "image": "elsewhere.jpg", "suppressed": None}),
    ]
    r = summarize_run(order=order, closes=closes, detections=detections, frames=4, processed=4,
                      detected=2, cpu_s=0.2, samples=[], mem_ready={"VmRSS": 100.0},
                      mem_end={"VmRSS": 101.0, "VmHWM": 105.0}, ready_s=1.0, play_s=2.0,
                      interval_s=0.5, statuses=1)
    assert r["messages"] == 2 and r["alerts"] == 1
    assert r["latency_from_close_s"] == pytest.approx([0.62, 0.4])
    assert r["latency_from_next_close_s"] == pytest.approx([0.12])  # d has no next frame
    assert r["latency_internal_s"] == [0.11]
    assert r["cpu_ms_per_frame"] == 50.0 and r["peak_rss_mb"] == 105.0


def test_pi_estimate_scales_inference_and_the_rest_separately():
    k = pi.scale_factors(anchor_fp32_ms=17.6, anchor_int8_ms=9.8)
    assert k == pytest.approx({"k_fp32": 30.0, "k_int8": 30.0})
    assert pi.estimate(10.0, None, False, k) == pytest.approx({"low": 300.0, "high": 300.0})
    est = pi.estimate(10.0, 4.0, True, {"k_fp32": 30.0, "k_int8": 20.0}, inference_fp32_ms=6.0)
    assert est == {"low": 6 * 30 + 4 * 20, "high": 6 * 30 + 6 * 30}


# ---------------------------------------------------------------- plan and reference data


def test_bench_nights_share_no_seed_or_date_with_training():
    plan = full_plan()
    sims = TrainingSims()
    training_seeds = {night_seed(sims.camera_seed(k), i) for k in range(sims.cameras)
                      for i in range(sims.nights)}
    training_seeds |= {night_seed(12025, i) for i in range(4)}  # the recipe's unseen camera
    nights = [*plan.nights, plan.long_night]
    assert not {n.seed for n in nights} & training_seeds
    assert len({n.seed for n in nights}) == len(nights)
    assert {n.camera_seed for n in nights} == {SEEN_CAMERA, UNSEEN_CAMERA}
    assert sims.camera_seed(0) == SEEN_CAMERA and UNSEEN_CAMERA not in {
        sims.camera_seed(k) for k in range(sims.cameras)}
    assert min(n.night for n in nights) > date(2027, 3, 31)  # after every training date
    assert {n.condition for n in plan.nights} == {"clear", "moon", "cloudy", "overcast"}
    spec = plan.nights[2]
    assert night_params(spec) == night_params(spec)  # deterministic
    assert night_params(spec).condition == spec.condition
    assert night_params(spec).aircraft_rate == spec.aircraft_rate


def test_reference_selection_follows_the_recipe_split(tmp_path):
    sims = TrainingSims(cameras=1, nights=7, frames=20)
    cam = tmp_path / "camera0"
    cam.mkdir()
    nights = [f"2026090{i}" for i in range(1, 8)]
    with open(cam / "truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["night", "file", "frame_index", "meteor"])
        writer.writeheader()
        for night in nights:
            for i in range(20):
                writer.writerow({"night": night, "file": f"images/{night}/f{i}.jpg",
                                 "frame_index": str(i), "meteor": "1" if i % 4 == 1 else "0"})
    from bench.plan import RefPlan

    ref = RefPlan(train_meteors=6, negatives_per_meteor=2, holdout_meteors=2,
                  holdout_negatives=3)
    chosen, split = select_frames([cam], sims, ref)
    rows = chosen[cam]
    assert all(r["frame_index"] != "0" for r in rows)  # no previous frame: never chosen
    from training.dataset import split_nights

    assert split == {s: sorted(n for n, v in split_nights(nights, 0.15, 0.15, seed=2026).items()
                               if v == s) for s in ("train", "valid", "test")}
    by = {s: [r for r in rows if r["night"] in split[s]] for s in split}
    assert sum(r["meteor"] == "1" for r in by["train"]) == 6
    assert sum(r["meteor"] != "1" for r in by["train"]) == 12
    for s in ("valid", "test"):
        assert sum(r["meteor"] == "1" for r in by[s]) == 2
        assert sum(r["meteor"] != "1" for r in by[s]) == 3
    assert select_frames([cam], sims, ref) == (chosen, split)  # seeded


# ---------------------------------------------------------------- report


def test_report_renders_tables_and_plots(tmp_path):
    from bench import report

    truth = metrics.Truth.from_rows(truth_rows())
    score = np.linspace(0, 1, 10)
    summary = metrics.summarize(truth, score > 0.5)
    curve = {"name": "x", **{k: list(map(float, getattr(metrics.curve(truth, score), k)))
                             for k in ("thresholds", "recall", "precision", "fp_per_1000")}}
    results = {
        "command": "python -m bench", "generated_utc": "2027-01-01T00:00:00+00:00",
        "cache": "/tmp/cache", "durations_s": {"total": 60.0}, "load": {"mean": 1.0, "max": 2.0},
        "machine": {"cpus": 2, "versions": {}}, "plan": full_plan().to_dict(),
        "model": {"name": "m", "version": "1", "sha256": "0" * 64, "size_bytes": 1e6,
                  "threshold": 0.5, "preprocessing": {"id": "g1", "size": 160}},
        "classical": ClassicalParams().to_dict(), "fp32_origin": "test",
        "nights": [{"label": "n", "night": "20270601", "condition": "clear", "frames": 10,
                    "meteors": 4, "satellite": 2, "aircraft": 1, "flash": 0,
                    "cloud_cover": 0.0, "moon": 0.0}],
        "accuracy": {
            "threshold": 0.5, "curve_threshold": 0.02, "frames": 10,
            "detectors": {"guaita": summary, "guaita-model": summary, "classical": summary},
            "curves": {"guaita": curve, "classical": curve},
            "comparisons": {"classical": {"their_recall": 0.5, "their_fp_per_1000": 100.0,
                                          "guaita_at_their_recall": (0.6, 0.5, 50.0),
                                          "guaita_at_their_fp": None},
                            "classical_at_guaita_recall": None, "classical_best_recall": 1.0},
            "checks": {"op_scan_night": "n", "op_scan_frames": 9, "op_scan_agreement": 9},
        },
    }
    path = report.render(results, tmp_path)
    text = path.read_text()
    assert "## Accuracy" in text and "| guaita (shipped int8 model + suppression) |" in text
    assert "raises 50.0 false alerts per 1,000 frames" in text
    for name in ("bench-pr.png", "bench-recall-brightness.png"):
        assert (tmp_path / "img" / name).stat().st_size > 1000


def test_the_reference_cache_key_covers_the_code_that_builds_it():
    import ast

    from bench.plan import REPO
    from bench.reference import REFERENCE_CODE

    names = {p.relative_to(REPO).as_posix() for p in REFERENCE_CODE}
    assert all(p.is_file() for p in REFERENCE_CODE)
    # Everything the index/train/export steps import from training/ is in the key ...
    for name in ("training/dataset.py", "training/train.py", "training/export.py"):
        tree = ast.parse((REPO / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training."):
                assert node.module.replace(".", "/") + ".py" in names, (name, node.module)
    # ... and reporting-only modules are not.
    assert not names & {"training/evaluate.py", "training/model_card.py",
                        "training/alert_threshold.py"}


def test_a_rerun_step_replaces_only_its_figures_and_is_recorded():
    from bench.__main__ import merge_rerun
    from bench.report import _reruns

    model = {"name": "m", "version": "1", "sha256": "a" * 64}
    previous = {"generated_utc": "2027-01-01T00:00:00+00:00", "model": model,
                "daemon": {"interval_s": 0.3}, "cost": {"rows": [1]}, "pi": {"rows": [2]},
                "rerun": {"cost": {"generated_utc": "x", "load": {"mean": 1.0}}}}
    rerun = {"generated_utc": "2027-01-02T00:00:00+00:00", "model": model,
             "daemon": {"interval_s": 0.6}, "durations_s": {"daemon": 90.0},
             "load": {"mean": 0.5, "max": 1.0}, "plan": {"daemon_interval_s": 0.6}}
    merged = merge_rerun(previous, rerun, "daemon")
    assert merged["daemon"] == {"interval_s": 0.6}
    assert merged["cost"] == {"rows": [1]} and merged["pi"] == {"rows": [2]}
    assert merged["generated_utc"] == previous["generated_utc"]
    assert set(merged["rerun"]) == {"cost", "daemon"}
    assert merged["rerun"]["daemon"]["minutes"] == 1.5
    assert "daemon step was run again on its own at 2027-01-02" in _reruns(merged)
    assert previous["daemon"] == {"interval_s": 0.3}  # the last run's dict is not changed
    other = {**rerun, "model": {**model, "sha256": "b" * 64, "version": "2"}}
    with pytest.raises(SystemExit, match="made with model m 1, not m 2"):
        merge_rerun(previous, other, "daemon")
