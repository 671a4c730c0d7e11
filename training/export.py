"""``guaita export``: trained model → ONNX → int8 → parity check → model bundle.

1. ONNX: the network wrapped so the graph takes the edge's preprocessed image as float32 NCHW in
   0..255 (input "image", fixed C×H×W, batch free) with grey→RGB replication, /255 and the
   ImageNet mean/std as its first ops, and returns softmax probabilities (output "probs").
2. int8: onnxruntime ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, S8S8),
   calibrated on real preprocessed training images (meteors and non-meteors). MinMax, Entropy and
   Percentile calibration are each tried and compared on the validation nights; the one with the
   best meteor recall at the fp32 threshold wins (ties: agreement with fp32, then mean |Δp|).
3. Threshold: chosen on the VALIDATION nights with the model that ships (``--threshold-rule``;
   default: the highest threshold keeping recall >= 0.97). The test nights never choose anything.
4. Parity on the test nights: fp32 PyTorch vs fp32 ONNX vs int8 ONNX — max and mean |Δp|,
   agreement at the threshold, recall and false positives per 1,000 frames.
5. Refuses (exit 3, no bundle) when int8 meteor recall on test is more than ``--max-recall-drop``
   (1 point) below fp32. Otherwise writes the bundle with ``edge.bundle.write_bundle``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge.preprocess import PreprocessSpec
from training._common import METEOR, TrainingError, load_input, set_threads, write_json
from training._metrics import at_threshold, choose_threshold, headline, int8_refusal, parity

log = logging.getLogger(__name__)
for _chatty in ("onnxscript", "onnx_ir", "torch.onnx"):  # step-by-step INFO from the exporter
    logging.getLogger(_chatty).setLevel(logging.WARNING)

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
OPSET = 18  # torch's dynamo exporter's lowest native opset (>= 17 as the edge requires)
CALIBRATIONS = ("minmax", "entropy", "percentile")
EXIT_REFUSED = 3


# ---------------------------------------------------------------- images


def batches(paths: list[str], channels: int, size: int = 64) -> Iterator[np.ndarray]:
    """Preprocessed PNGs → float32 NCHW 0..255 batches (the ONNX input contract)."""
    for i in range(0, len(paths), size):
        images = np.stack([load_input(p, channels) for p in paths[i : i + size]])
        yield np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def torch_probs(net, paths: list[str], channels: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = [net(torch.from_numpy(b))[:, 0].numpy() for b in batches(paths, channels)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def onnx_session(model: Path | bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_probs(session, paths: list[str], channels: int, meteor_index: int = 0,
               input_name: str = INPUT_NAME) -> np.ndarray:
    out = [session.run(None, {input_name: b})[0][:, meteor_index]
           for b in batches(paths, channels)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ---------------------------------------------------------------- ONNX export


def export_onnx(net, channels: int, size: int, path: Path, classes: list[str]) -> Path:
    """Write the fp32 graph (batch dimension free, C×H×W fixed) and check it."""
    import warnings

    import onnx
    import torch

    example = torch.rand(2, channels, size, size) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    # The dynamo exporter narrates its steps on stdout; the CLI prints only the result.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=OPSET, dynamo=True, verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        )
    model = onnx.load(str(path))
    for key, value in (("classes", ",".join(classes)), ("producer", "guaita export")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))  # weights inline: one self-contained file
    Path(f"{path}.data").unlink(missing_ok=True)  # the exporter's external weights, now stale
    return path


# ---------------------------------------------------------------- int8


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed training images."""

    def __init__(self, paths: list[str], channels: int, batch: int = 16):
        # Equal batches: the histogram calibrators stack every batch's activations.
        self.batch = max(1, min(batch, len(paths)))
        self.paths = paths[: len(paths) // self.batch * self.batch]
        self.channels = channels
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = batches(self.paths, self.channels, self.batch)


def calibration_paths(df, n: int, seed: int) -> list[str]:
    """Up to n training images, half meteors where there are enough, the rest non-meteors."""
    train = df[df["split"] == "train"]
    meteors = train[train["label"] == METEOR]
    others = train[train["label"] != METEOR]
    n_met = min(len(meteors), n // 2)
    n_oth = min(len(others), n - n_met)
    picked = [meteors.sample(n_met, random_state=seed), others.sample(n_oth, random_state=seed)]
    return [p for part in picked for p in part["path"]]


def quantize(pre_path: Path, out_path: Path, reader: _Reader, method: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    import onnx

    # Probabilities stay float (int8 steps of 1/255 would blur the threshold), and so do the
    # head's two BatchNorm1d (tiny, and per-channel quantization does not apply to them) and
    # the stem convolution: 9 k of 11 M weights, but quantizing it cost the m1 model (sparse
    # streak pixels on black tiles) 4 of 259 test meteors; kept float, int8 recall equalled
    # fp32 at every threshold measured (0.5, 0.66, 0.87) for +0.1 MB.
    nodes = onnx.load(str(pre_path)).graph.node
    stem = next((n.name for n in nodes if n.op_type == "Conv"), None)
    keep_float = [n.name for n in nodes if n.op_type in ("Softmax", "BatchNormalization")]
    keep_float += [stem] if stem else []
    reader.rewind()
    cache = None
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print
        if method == "entropy":
            # quantize_static cannot pass num_bins, and its default (128 bins for 128 quantized
            # levels) leaves entropy nothing to choose: it returns MinMax's ranges. Calibrate
            # here with a finer histogram and hand quantize_static the ranges.
            cache = _entropy_ranges(pre_path, reader, out_path.with_suffix(".calib.json"))
        quantize_static(
            str(pre_path), str(out_path), None if cache else reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep_float,
            extra_options={"CalibMovingAverage": False},
            calibration_cache_path=str(cache) if cache else None,
        )
    return out_path


def _entropy_ranges(pre_path: Path, reader: _Reader, cache: Path, bins: int = 2048) -> Path:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cache.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="guaita-calib-") as tmp:
        calibrator = create_calibrator(
            pre_path, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": bins, "num_quantized_bins": 128},
        )
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()
    return cache



def pick_calibration(candidates: dict[str, dict[str, Any]]) -> str:
    """Best validation recall, then agreement with fp32, then smallest mean |Δp|."""
    return max(candidates, key=lambda m: (round(candidates[m]["recall"], 6),
                                          candidates[m]["agreement"],
                                          -candidates[m]["mean_abs_diff"]))


def latency_ms(session, channels: int, size: int, repeat: int = 20) -> float:
    x = np.random.default_rng(0).uniform(0, 255, (1, channels, size, size)).astype(np.float32)
    session.run(None, {INPUT_NAME: x})
    start = time.perf_counter()
    for _ in range(repeat):
        session.run(None, {INPUT_NAME: x})
    return (time.perf_counter() - start) / repeat * 1000


# ---------------------------------------------------------------- the whole export


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run steps 1–5; returns the report dict (raises TrainingError on refusal or bad input)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge.bundle import write_bundle
    from training._common import load_index
    from training._model import deployable_from

    set_threads(args.threads)
    net, tmeta = deployable_from(args.model)
    df, dmeta = load_index(args.data or tmeta["dataset"])
    spec = PreprocessSpec.from_dict(tmeta["preprocessing"])
    if spec.to_dict() != PreprocessSpec.from_dict(dmeta["preprocessing"]).to_dict():
        raise TrainingError("the dataset's preprocessing differs from the model's")
    channels, size = spec.channels, spec.size
    classes = list(tmeta["classes"])
    meteor_index = classes.index(METEOR)
    work = args.work or Path(args.model) / "export"
    work.mkdir(parents=True, exist_ok=True)

    valid = df[df["split"] == "valid"]
    test = df[df["split"] == "test"]
    if valid.empty or not (valid["label"] == METEOR).any():
        raise TrainingError("the validation nights hold no meteor: cannot choose a threshold")
    parity_set, parity_name = (test, "test") if not test.empty else (valid, "valid")
    if test.empty:
        log.warning("no test nights: parity is checked on the validation nights")
    yv = (valid["label"] == METEOR).to_numpy()
    yt = (parity_set["label"] == METEOR).to_numpy()
    vpaths, tpaths = list(valid["path"]), list(parity_set["path"])

    log.info("exporting fp32 ONNX (opset %d)", OPSET)
    fp32_path = export_onnx(net, channels, size, work / "fp32.onnx", classes)
    fp32 = onnx_session(fp32_path, args.threads or 1)
    pv_fp32 = onnx_probs(fp32, vpaths, channels, meteor_index)
    t_fp32, _ = choose_threshold(yv, pv_fp32, args.threshold_rule)

    report: dict[str, Any] = {"threshold_rule": args.threshold_rule, "opset": OPSET,
                              "parity_split": parity_name}
    if args.precision == "int8":
        pre_path = work / "fp32-pre.onnx"
        # onnxruntime's symbolic shape inference trips on opset-18 ReduceMax; ONNX's own is enough
        # for a graph whose only free dimension is the batch.
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
        reader = _Reader(calibration_paths(df, args.calib_images, args.seed), channels)
        methods = CALIBRATIONS if args.calibration == "auto" else (args.calibration,)
        candidates: dict[str, dict[str, Any]] = {}
        for method in methods:
            log.info("int8 calibration: %s on %d training images", method, len(reader.paths))
            path = quantize(pre_path, work / f"int8-{method}.onnx", reader, method)
            pv = onnx_probs(onnx_session(path, args.threads or 1), vpaths, channels, meteor_index)
            m = at_threshold(yv, pv, t_fp32)
            candidates[method] = {"recall": m["recall"], "fp_per_1000": m["fp_per_1000"],
                                  **parity(pv_fp32, pv, t_fp32)}
            log.info("  %-10s valid recall %.4f  FP/1000 %.2f  agreement %.4f  max|Δp| %.4f",
                     method, m["recall"], m["fp_per_1000"], candidates[method]["agreement"],
                     candidates[method]["max_abs_diff"])
        chosen = pick_calibration(candidates)
        ship_path = work / f"int8-{chosen}.onnx"
        report["calibration"] = {"chosen": chosen, "images": len(reader.paths),
                                 "threshold_used": t_fp32, "valid": candidates}
    else:
        ship_path = fp32_path
    ship = onnx_session(ship_path, args.threads or 1)

    # The recommended threshold: on validation nights, with the model that ships.
    pv_ship = onnx_probs(ship, vpaths, channels, meteor_index)
    threshold, why = choose_threshold(yv, pv_ship, args.threshold_rule)
    log.info("recommended threshold %.3f: %s", threshold, why)

    pt_torch = torch_probs(net, tpaths, channels)
    pt_fp32 = onnx_probs(fp32, tpaths, channels, meteor_index)
    pt_ship = onnx_probs(ship, tpaths, channels, meteor_index)
    per_model = {
        "torch_fp32": headline(at_threshold(yt, pt_torch, threshold)),
        "onnx_fp32": headline(at_threshold(yt, pt_fp32, threshold)),
        f"onnx_{args.precision}": headline(at_threshold(yt, pt_ship, threshold)),
    }
    report["parity"] = {
        "split": parity_name, "frames": len(yt), "meteors": int(yt.sum()),
        "threshold": threshold,
        "torch_vs_onnx_fp32": parity(pt_torch, pt_fp32, threshold),
        f"onnx_fp32_vs_{args.precision}": parity(pt_fp32, pt_ship, threshold),
        f"torch_vs_onnx_{args.precision}": parity(pt_torch, pt_ship, threshold),
        "models": per_model,
    }
    report["latency_ms_1thread"] = {"fp32": latency_ms(onnx_session(fp32_path), channels, size),
                                    args.precision: latency_ms(onnx_session(ship_path), channels,
                                                               size)}
    report["recommended_threshold"] = threshold
    report["threshold_reason"] = why
    report["valid"] = headline(at_threshold(yv, pv_ship, threshold))
    report["test"] = per_model[f"onnx_{args.precision}"]
    report["size_bytes"] = ship_path.stat().st_size
    write_json(work / "export.json", report)

    fp32_recall = per_model["onnx_fp32"]["recall"]
    ship_recall = per_model[f"onnx_{args.precision}"]["recall"]
    refusal = int8_refusal(fp32_recall, ship_recall, args.max_recall_drop)
    if args.precision == "int8" and refusal:
        raise TrainingError(f"refusing to write the bundle: {refusal}. Try another "
                            f"--calibration, more --calib-images, or --precision fp32.")

    bundle_bytes = ship_path.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(bundle_bytes))
    training = {k: tmeta.get(k) for k in (
        "arch", "pretrained", "started_from", "init_from", "epochs", "schedule", "lr", "balance",
        "neg_ratio", "batch_size", "augmentation", "input_adapter", "normalization", "data",
        "train_seconds", "device", "versions")}
    training["precision"] = args.precision
    fields = {
        "name": args.name,
        "version": args.version,
        "preprocessing": spec.to_dict(),
        "input": {"name": INPUT_NAME, "shape": [1, channels, size, size], "dtype": "float32",
                  "range": [0, 255], "batch": "dynamic"},
        "output": {"name": OUTPUT_NAME, "kind": "softmax probabilities"},
        "classes": classes,
        "recommended_threshold": threshold,
        "threshold_rule": f"{args.threshold_rule} on validation nights: {why}",
        "metrics": {"valid": report["valid"], "test": report["test"],
                    "parity": report["parity"], "calibration": report.get("calibration"),
                    "latency_ms_1thread_x86": report["latency_ms_1thread"]},
        "training": training,
    }
    bundle = write_bundle(args.out, bundle_bytes, fields)
    report["bundle"] = str(bundle.root)
    write_json(work / "export.json", report)
    log.info("bundle %s written to %s (%.1f MB, threshold %.3f; test recall %.4f, "
             "%.2f FP/1000 frames)", bundle.label, bundle.root, len(bundle_bytes) / 1e6,
             threshold, ship_recall, report["test"]["fp_per_1000"])
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", type=Path, required=True, help="`guaita train` output folder")
    parser.add_argument("--data", type=Path,
                        help="`guaita dataset index` folder (default: the one trained on)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--work", type=Path, help="intermediate files (default MODEL/export)")
    parser.add_argument("--name", default="guaita-model", help="bundle name")
    parser.add_argument("--version", default="0.1.0", help="bundle version")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--calibration", choices=["auto", *CALIBRATIONS], default="auto",
                        help="int8 calibration method; auto compares all three (default)")
    parser.add_argument("--calib-images", type=int, default=256,
                        help="training images used for calibration (default 256)")
    parser.add_argument("--threshold-rule", default="recall:0.97",
                        help="recall:R | fp:F | fbeta:B, applied on validation nights "
                             "(default recall:0.97)")
    parser.add_argument("--max-recall-drop", type=float, default=0.01,
                        help="refuse int8 if its test recall is this far below fp32 (0.01)")
    parser.add_argument("--threads", type=int, help="torch/onnxruntime CPU threads")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        export(args)
    except TrainingError as exc:
        log.error("%s", exc)
        return EXIT_REFUSED if str(exc).startswith("refusing") else 2
    except ValueError as exc:  # a bad --threshold-rule, say
        log.error("%s", exc)
        return 2
    print(args.out)
    return 0
